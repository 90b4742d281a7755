//! Durations (`60s`, `500ms`, `2m`, `1h`) and sizes (`64MiB`, `16M`, `1024`) in config values.
//!
//! Both also accept their text form inside a `${NAME}` substitution, which always yields a
//! string.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub const fn secs(s: u64) -> Self {
        Seconds(Duration::from_secs(s))
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("invalid duration '{s}': expected a number with a unit, like 60s or 500ms")
        })?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "" => return Err(format!("duration '{s}' needs a unit: ms, s, m or h")),
            other => {
                return Err(format!(
                    "unknown duration unit '{other}' in '{s}': use ms, s, m or h"
                ))
            }
        };
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("duration '{s}' is out of range"));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 60s, 500ms, 2m or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                Seconds::parse(v).map(Seconds).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes, written as a number or with a unit (K, KiB, M, MiB, G, GiB; binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size '{s}': expected a number of bytes, or one with a unit like 64MiB")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "KiB" => 1 << 10,
            "M" | "MB" | "MiB" => 1 << 20,
            "G" | "GB" | "GiB" => 1 << 30,
            other => return Err(format!("unknown size unit '{other}' in '{s}'")),
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("size '{s}' is out of range"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 67108864 or 64MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a count that may also come as text from a `${NAME}` substitution.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative whole number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v)
                .map_err(|_| E::custom(format!("{v} is not a non-negative whole number")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            v.trim()
                .parse()
                .map_err(|_| E::custom(format!("'{v}' is not a non-negative whole number")))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Seconds::parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(Seconds::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(Seconds::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(Seconds::parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(Seconds::parse("60").is_err());
        assert!(Seconds::parse("60x").is_err());
        assert!(Seconds::parse("-1s").is_err());
        assert!(Seconds::parse("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1024"), Ok(1024));
        assert_eq!(ByteSize::parse("64MiB"), Ok(64 << 20));
        assert_eq!(ByteSize::parse("16M"), Ok(16 << 20));
        assert!(ByteSize::parse("12XB").is_err());
        assert!(ByteSize::parse("99999999999999999999G").is_err());
    }
}
