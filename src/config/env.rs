//! `${NAME}` substitution in string values.
//!
//! Substitution happens on parsed string scalars, not on the raw text, so a secret containing
//! quotes, colons or newlines can never change the document's structure. `$${` writes a
//! literal `${`.

use serde_norway::Value;

use super::ConfigError;

pub fn substitute(
    value: &mut Value,
    path: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, lookup).map_err(|m| ConfigError::new(display(path), m))?;
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                substitute(v, &format!("{path}[{i}]"), lookup)?;
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                substitute(v, &child, lookup)?;
            }
        }
        Value::Tagged(t) => substitute(&mut t.value, path, lookup)?,
        _ => {}
    }
    Ok(())
}

fn display(path: &str) -> String {
    if path.is_empty() {
        "document".into()
    } else {
        path.into()
    }
}

fn expand(s: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated '${{' in '{s}'"))?;
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "'${{{name}}}' is not a valid environment variable name"
                ));
            }
            let v =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&v);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("a\"b: c".into()),
            "PORT" => Some("3306".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_escapes() {
        assert_eq!(expand("x${PW}y", &env).unwrap(), "xa\"b: cy");
        assert_eq!(expand("$${PW}", &env).unwrap(), "${PW}");
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(expand("${PORT}${PORT}", &env).unwrap(), "33063306");
    }

    #[test]
    fn reports_missing_and_malformed() {
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(expand("${PW", &env).unwrap_err().contains("unterminated"));
        assert!(expand("${1X}", &env).unwrap_err().contains("not a valid"));
    }

    #[test]
    fn error_names_the_field() {
        let mut v: Value = serde_norway::from_str("a:\n  b: [x, '${NOPE}']").unwrap();
        let e = substitute(&mut v, "", &env).unwrap_err();
        assert_eq!(e.field, "a.b[1]");
    }
}
