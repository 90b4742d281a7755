//! MySQL errors that Tandem itself sends to clients: a code, a SQLSTATE and a message.
//!
//! Each client-facing failure has a named constructor, so the code and SQLSTATE for a given
//! situation are chosen in one place and match what the database would have said.

use std::fmt;

/// A MySQL error as it appears in an ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlError {
    pub code: u16,
    pub state: [u8; 5],
    pub message: String,
}

impl MysqlError {
    pub fn new(code: u16, state: &str, message: impl Into<String>) -> Self {
        let mut s = *b"HY000";
        if state.len() == 5 {
            s.copy_from_slice(state.as_bytes());
        }
        MysqlError {
            code,
            state: s,
            message: message.into(),
        }
    }

    /// 1045: unknown user or wrong password.
    pub fn access_denied(user: &str, host: &str, using_password: bool) -> Self {
        let yes_no = if using_password { "YES" } else { "NO" };
        Self::new(
            1045,
            "28000",
            format!("Access denied for user '{user}'@'{host}' (using password: {yes_no})"),
        )
    }

    /// 1043: the handshake response could not be understood.
    pub fn bad_handshake() -> Self {
        Self::new(1043, "08S01", "Bad handshake")
    }

    /// 1047: a command Tandem does not know or does not allow.
    pub fn unknown_command(cmd: u8) -> Self {
        Self::new(1047, "08S01", format!("Unknown command 0x{cmd:02x}"))
    }

    /// 1153: a packet over the listener's max_allowed_packet.
    pub fn packet_too_large() -> Self {
        Self::new(
            1153,
            "08S01",
            "Got a packet bigger than 'max_allowed_packet' bytes",
        )
    }

    /// 1156: sequence ids out of order.
    pub fn packets_out_of_order() -> Self {
        Self::new(1156, "08S01", "Got packets out of order")
    }

    /// 1835: a command whose payload is not well formed.
    pub fn malformed_packet(what: &str) -> Self {
        Self::new(
            1835,
            "HY000",
            format!("Malformed communication packet: {what}"),
        )
    }

    /// 3159: the listener requires TLS and the client did not ask for it.
    pub fn insecure_transport() -> Self {
        Self::new(
            3159,
            "HY000",
            "Connections using insecure transport are prohibited by this Tandem listener",
        )
    }

    /// 2003: the data source cannot be reached.
    pub fn backend_unavailable(data_source: &str, why: &str) -> Self {
        Self::new(
            2003,
            "HY000",
            format!("Can't connect to data source '{data_source}': {why}"),
        )
    }

    /// 2013: the backend connection broke while a statement was running.
    pub fn backend_lost(data_source: &str) -> Self {
        Self::new(
            2013,
            "HY000",
            format!("Lost connection to data source '{data_source}' during query"),
        )
    }

    /// 1040: the data source's pool is exhausted and stayed so for the acquire timeout.
    pub fn too_many_connections(data_source: &str) -> Self {
        Self::new(
            1040,
            "08004",
            format!("Too many connections: the pool of data source '{data_source}' is exhausted"),
        )
    }

    /// 1053: Tandem is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(1053, "08S01", "Server shutdown in progress")
    }

    /// 1235: a feature Tandem does not support.
    /// 1094: a `KILL` names no live connection.
    pub fn no_such_thread(id: u32) -> Self {
        Self::new(1094, "HY000", format!("Unknown thread id: {id}"))
    }

    /// 1095: a `KILL` of another user's connection.
    pub fn kill_denied(id: u32) -> Self {
        Self::new(1095, "HY000", format!("You are not owner of thread {id}"))
    }

    /// 1927: the session killed its own connection.
    pub fn connection_killed() -> Self {
        Self::new(1927, "70100", "Connection was killed")
    }

    /// 1038 (ER_OUT_OF_SORTMEMORY): a merge would hold more rows than it may.
    pub fn out_of_sort_memory(why: &str) -> Self {
        Self::new(1038, "HY001", why)
    }

    pub fn not_supported(what: &str) -> Self {
        Self::new(
            1235,
            "42000",
            format!("This version of Tandem doesn't yet support '{what}'"),
        )
    }

    /// 1210: bad arguments to one of Tandem's SQL functions.
    pub fn wrong_arguments(function: &str, why: &str) -> Self {
        Self::new(
            1210,
            "HY000",
            format!("Incorrect arguments to {function}: {why}"),
        )
    }

    /// 1582: wrong number of arguments to one of Tandem's SQL functions.
    pub fn wrong_param_count(function: &str) -> Self {
        Self::new(
            1582,
            "42000",
            format!("Incorrect parameter count in the call to native function '{function}'"),
        )
    }

    /// 1397 (XAER_NOTA): the XID names no global transaction Tandem knows.
    pub fn unknown_xid(xid: &str) -> Self {
        Self::new(
            1397,
            "XAE04",
            format!("XAER_NOTA: Unknown global transaction '{xid}'"),
        )
    }

    /// 1105: the coordinator store failed.
    pub fn coordinator_unavailable(why: &str) -> Self {
        Self::new(
            1105,
            "HY000",
            format!("Global transaction coordinator unavailable: {why}"),
        )
    }

    /// 1205: a global row lock stayed held by another global transaction.
    pub fn global_lock_timeout(key: &str, holder: &str) -> Self {
        Self::new(
            1205,
            "HY000",
            format!("Lock wait timeout exceeded; global row lock on {key} is held by global transaction {holder}"),
        )
    }

    /// 1402 (XA_RBROLLBACK): the global transaction no longer takes branches.
    pub fn global_not_active(xid: &str, why: &str) -> Self {
        Self::new(
            1402,
            "XA100",
            format!("XA_RBROLLBACK: global transaction {xid} takes no new branches: {why}"),
        )
    }

    /// 1402 (XA_RBROLLBACK): the local transaction that was a branch has been rolled back
    /// (by Tandem, when a statement's change could not be undone exactly, or by the database,
    /// after a deadlock or a lock wait timeout); statements are refused until ROLLBACK.
    pub fn branch_rolled_back(why: &str) -> Self {
        Self::new(
            1402,
            "XA100",
            format!("XA_RBROLLBACK: the local transaction was rolled back: {why}"),
        )
    }

    /// 1064: a statement Tandem must understand inside a global transaction does not parse.
    pub fn cannot_parse(why: &str) -> Self {
        Self::new(
            1064,
            "42000",
            format!("Tandem cannot parse this statement inside a global transaction: {why}"),
        )
    }

    /// 1146: no such table.
    pub fn no_such_table(table: &str) -> Self {
        Self::new(1146, "42S02", format!("Table '{table}' doesn't exist"))
    }

    /// 1173: a global transaction needs a primary key to lock and restore rows.
    pub fn requires_primary_key(table: &str) -> Self {
        Self::new(
            1173,
            "42000",
            format!("Table '{table}' has no primary key, which a global transaction needs"),
        )
    }

    /// Encodes the ERR packet payload (protocol 4.1 form, with SQLSTATE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(0xff);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        out.extend_from_slice(&self.state);
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// Decodes an ERR packet payload (with the 0xFF header).
    pub fn decode(payload: &[u8]) -> Option<Self> {
        if payload.len() < 3 || payload[0] != 0xff {
            return None;
        }
        let code = u16::from_le_bytes([payload[1], payload[2]]);
        let rest = &payload[3..];
        let (state, message) = if rest.len() >= 6 && rest[0] == b'#' {
            let mut s = [0u8; 5];
            s.copy_from_slice(&rest[1..6]);
            (s, &rest[6..])
        } else {
            (*b"HY000", rest)
        };
        Some(MysqlError {
            code,
            state,
            message: String::from_utf8_lossy(message).into_owned(),
        })
    }
}

impl fmt::Display for MysqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code,
            String::from_utf8_lossy(&self.state),
            self.message
        )
    }
}

impl std::error::Error for MysqlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_packet_round_trips() {
        let e = MysqlError::access_denied("app", "127.0.0.1", true);
        let bytes = e.encode();
        assert_eq!(bytes[0], 0xff);
        assert_eq!(&bytes[1..3], &1045u16.to_le_bytes());
        assert_eq!(&bytes[3..9], b"#28000");
        assert_eq!(MysqlError::decode(&bytes), Some(e));
    }

    #[test]
    fn decode_rejects_non_error() {
        assert!(MysqlError::decode(&[0, 0, 0]).is_none());
        assert!(MysqlError::decode(&[0xff]).is_none());
    }
}
