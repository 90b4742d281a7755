//! Data source names: `mysql://user:password@host:port/database`, and
//! `mysql://user:password@host:port/database?socket=/path/to/mysqld.sock` for a database on
//! the same host reached over its Unix socket.

use std::fmt;

/// A parsed DSN. The password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    /// The server's Unix socket, when Tandem reaches it that way. `host:port` still names the
    /// server (its [`identity`](Dsn::identity)): give the one other sidecars reach it by.
    pub socket: Option<String>,
}

impl Dsn {
    pub fn parse(s: &str) -> Result<Dsn, String> {
        let rest = s
            .strip_prefix("mysql://")
            .ok_or("a DSN starts with mysql://")?;
        let (auth, rest) = match rest.rfind('@') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => ("", rest),
        };
        let (user, password) = match auth.find(':') {
            Some(c) => (&auth[..c], &auth[c + 1..]),
            None => (auth, ""),
        };
        let (rest, options) = match rest.find('?') {
            Some(q) => (&rest[..q], &rest[q + 1..]),
            None => (rest, ""),
        };
        let mut socket = None;
        for option in options.split('&').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("socket", path)) if !path.is_empty() => {
                    socket = Some(percent_decode(path)?);
                }
                Some(("socket", _)) => return Err("the DSN's socket is empty".into()),
                _ => {
                    return Err(format!(
                        "unknown DSN option '{option}' (the one option is socket=/path)"
                    ))
                }
            }
        }
        let (hostport, db) = match rest.find('/') {
            Some(sl) => (&rest[..sl], &rest[sl + 1..]),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rfind(':') {
            Some(c) if !hostport.ends_with(']') => {
                let port = hostport[c + 1..]
                    .parse::<u16>()
                    .map_err(|_| format!("invalid port '{}'", &hostport[c + 1..]))?;
                (&hostport[..c], port)
            }
            _ => (hostport, 3306),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the DSN has no host".into());
        }
        if user.is_empty() {
            return Err("the DSN has no user".into());
        }
        Ok(Dsn {
            user: percent_decode(user)?,
            password: percent_decode(password)?,
            host: host.to_string(),
            port,
            database: (!db.is_empty()).then(|| percent_decode(db)).transpose()?,
            socket,
        })
    }

    /// `host:port/db`: how the data source is named in branches, lock keys and messages.
    pub fn identity(&self) -> String {
        format!(
            "{}/{}",
            self.server_identity(),
            self.database.as_deref().unwrap_or("")
        )
    }

    /// `host:port` of the server, spelled one way: host names in lower case, and the loopback
    /// names (`localhost`, `127.0.0.1`, `::1`) as `127.0.0.1`, so two DSNs naming one server
    /// differently still see each other's row locks.
    pub fn server_identity(&self) -> String {
        let host = self.host.to_ascii_lowercase();
        let host = match host.as_str() {
            "localhost" | "::1" | "127.0.0.1" => "127.0.0.1",
            h => h,
        };
        if host.contains(':') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in '{s}'"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' does not decode to UTF-8"))
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mysql://{}:***@{}", self.user, self.identity())
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_dsn() {
        let d = Dsn::parse("mysql://root:p%40ss@127.0.0.1:3307/orders").unwrap();
        assert_eq!(d.user, "root");
        assert_eq!(d.password, "p@ss");
        assert_eq!(d.host, "127.0.0.1");
        assert_eq!(d.port, 3307);
        assert_eq!(d.database.as_deref(), Some("orders"));
        assert_eq!(d.identity(), "127.0.0.1:3307/orders");
        assert!(!format!("{d:?}").contains("p@ss"));
    }

    #[test]
    fn defaults_and_errors() {
        let d = Dsn::parse("mysql://u@db").unwrap();
        assert_eq!((d.port, d.password.as_str(), d.database), (3306, "", None));
        assert!(Dsn::parse("postgres://u@h").is_err());
        assert!(Dsn::parse("mysql://u@h:99999/x").is_err());
        assert!(Dsn::parse("mysql://@h/x").is_err());
        assert!(Dsn::parse("mysql://u@:1/x").is_err());
        assert!(Dsn::parse("mysql://u:%zz@h/x").is_err());
        assert!(Dsn::parse("mysql://u@h/x?ssl=1").is_err());
        assert!(Dsn::parse("mysql://u@h/x?socket=").is_err());
    }

    #[test]
    fn a_socket_reaches_the_server_its_host_and_port_name() {
        let d =
            Dsn::parse("mysql://u:p?w@localhost:3307/orders?socket=/run/my%20sql.sock").unwrap();
        assert_eq!(d.password, "p?w");
        assert_eq!(d.socket.as_deref(), Some("/run/my sql.sock"));
        assert_eq!(d.identity(), "127.0.0.1:3307/orders");
        let d = Dsn::parse("mysql://u@localhost?socket=/tmp/m.sock").unwrap();
        assert_eq!(
            (d.database, d.socket.as_deref()),
            (None, Some("/tmp/m.sock"))
        );
    }

    #[test]
    fn one_server_has_one_identity() {
        let id = |s: &str| Dsn::parse(s).unwrap().identity();
        assert_eq!(id("mysql://u@localhost:3307/a"), "127.0.0.1:3307/a");
        assert_eq!(id("mysql://u@[::1]:3307/a"), "127.0.0.1:3307/a");
        assert_eq!(id("mysql://u@DB.Example:3307/a"), "db.example:3307/a");
        assert_eq!(id("mysql://u@[fe80::1]/a"), "[fe80::1]:3306/a");
        assert_ne!(
            id("mysql://u@localhost:3307/a"),
            id("mysql://u@localhost:3308/a")
        );
    }
}
