//! Which shard holds a sharding value: the four algorithms of `sharded_tables`.
//!
//! Routing and placement use the same function, so all that matters for exactness is that a
//! statement is sent to every shard that may hold a row it matches. Where a condition cannot
//! be narrowed exactly (a range under `mod`, a value of the wrong type), the answer is every
//! shard: a superset is always correct, a guess never is.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::config::{IntervalUnit, ShardAlgorithm, ShardedTable};

use super::ShardSet;

/// A sharding value as a literal or a parameter gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// An exact integer.
    Int(i128),
    /// Text, as its bytes.
    Text(Vec<u8>),
}

/// One table's placement rule.
#[derive(Debug, Clone)]
pub struct Sharder {
    shards: usize,
    rule: Rule,
    /// What the sharding column holds, learnt from a shard ([`ColumnKind`] as a byte);
    /// shared by the rule's clones, so a plan made before a DDL sees what came after.
    kind: Arc<AtomicU8>,
}

impl PartialEq for Sharder {
    fn eq(&self, other: &Sharder) -> bool {
        self.shards == other.shards && self.rule == other.rule
    }
}

impl Eq for Sharder {}

/// What a sharding column holds, which decides how a value compared with it places the
/// rows it matches: MariaDB compares a string with an integer column as a number, and a
/// number with a string column as a number too (`'7.0' = 7`), so a value of the other
/// kind can match rows placed anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Not learnt yet (the table did not exist when Tandem last read the shards): values
    /// are read as the algorithm expects them (an integer, a date, a binary string).
    Unknown = 0,
    /// TINYINT … BIGINT.
    Integer = 1,
    /// A string of a binary collation (`…_bin`), which pads with spaces: `'a' = 'a  '`.
    PaddedText = 2,
    /// VARBINARY, BLOB, or a string of a `…_nopad_bin` collation: equal means same bytes.
    Bytes = 3,
    /// DATE, DATETIME, TIMESTAMP.
    Temporal = 4,
    /// A column the algorithm cannot place exactly (found after a DDL): every statement
    /// on the table goes to every shard, and a row cannot be placed.
    Unusable = 5,
}

impl ColumnKind {
    fn from_byte(b: u8) -> ColumnKind {
        match b {
            1 => ColumnKind::Integer,
            2 => ColumnKind::PaddedText,
            3 => ColumnKind::Bytes,
            4 => ColumnKind::Temporal,
            5 => ColumnKind::Unusable,
            _ => ColumnKind::Unknown,
        }
    }

    /// The kind of a column from its `information_schema.COLUMNS` `DATA_TYPE` and
    /// `COLLATION_NAME`, or why none of the algorithms' kinds fits (a case-insensitive
    /// collation: `'a' = 'A'`, whose rows a hash of bytes would place apart).
    pub fn of(data_type: &str, collation: Option<&str>) -> Result<ColumnKind, String> {
        let t = data_type.to_ascii_lowercase();
        Ok(match t.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
                ColumnKind::Integer
            }
            "date" | "datetime" | "timestamp" => ColumnKind::Temporal,
            "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColumnKind::Bytes,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                let c = collation.unwrap_or("").to_ascii_lowercase();
                if c.ends_with("_nopad_bin") {
                    ColumnKind::Bytes
                } else if c.ends_with("_bin") {
                    ColumnKind::PaddedText
                } else {
                    return Err(format!(
                        "{c} compares strings that differ in bytes as equal, which a hash \
                         of bytes would place on different shards; give the column a binary \
                         collation (…_bin)"
                    ));
                }
            }
            other => return Err(format!("no algorithm places a {other} exactly")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Mod,
    HashMod,
    /// Shard i holds values below `boundaries[i]`; the last shard the rest.
    Range(Vec<i64>),
    /// Day numbers (days since 1970-01-01) or month numbers (`year * 12 + month - 1`) or
    /// years, counted from `start` in `unit`s.
    Interval {
        unit: IntervalUnit,
        start: Civil,
    },
}

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

impl Civil {
    /// Reads the date that starts a DATE, DATETIME or TIMESTAMP literal (`YYYY-MM-DD…`).
    /// Anything after the date is checked to be a time of day, so that a value MariaDB would
    /// read differently is not taken for a date.
    pub fn parse(text: &[u8]) -> Option<Civil> {
        let s = std::str::from_utf8(text).ok()?;
        let (date, rest) = match s.find([' ', 'T']) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
        let mut parts = date.split('-');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || y.len() != 4
            || !(1..=2).contains(&m.len())
            || !(1..=2).contains(&d.len())
        {
            return None;
        }
        let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(y) || !all_digits(m) || !all_digits(d) {
            return None;
        }
        let civil = Civil {
            year: y.parse().ok()?,
            month: m.parse().ok()?,
            day: d.parse().ok()?,
        };
        if !(1..=12).contains(&civil.month) || civil.day < 1 || civil.day > days_in(civil) {
            return None;
        }
        if !rest.is_empty() && !is_time_of_day(rest) {
            return None;
        }
        Some(civil)
    }

    /// Days since 1970-01-01 (H. Hinnant's days_from_civil).
    fn days(self) -> i64 {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = self.month as i64;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + self.day as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn count(self, unit: IntervalUnit) -> i64 {
        match unit {
            IntervalUnit::Day => self.days(),
            IntervalUnit::Month => self.year * 12 + self.month as i64 - 1,
            IntervalUnit::Year => self.year,
        }
    }
}

fn days_in(c: Civil) -> u32 {
    match c.month {
        4 | 6 | 9 | 11 => 30,
        2 if (c.year % 4 == 0 && c.year % 100 != 0) || c.year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// `HH:MM:SS` with an optional fraction.
fn is_time_of_day(s: &str) -> bool {
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
        && frac
            .is_none_or(|f| !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a table's placement rule is not usable (a config error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: &'static str,
    pub message: String,
}

fn rule_error(field: &'static str, message: impl Into<String>) -> RuleError {
    RuleError {
        field,
        message: message.into(),
    }
}

impl Sharder {
    pub fn new(table: &ShardedTable, shards: usize) -> Result<Sharder, RuleError> {
        let only = |field: &'static str, set: bool, algorithm: &str| {
            if set {
                Err(rule_error(
                    field,
                    format!("only for algorithm: {algorithm}"),
                ))
            } else {
                Ok(())
            }
        };
        let rule = match table.algorithm {
            ShardAlgorithm::Mod | ShardAlgorithm::HashMod => {
                only("boundaries", !table.boundaries.is_empty(), "range")?;
                only("unit", table.unit.is_some(), "interval")?;
                only("start", table.start.is_some(), "interval")?;
                if table.algorithm == ShardAlgorithm::Mod {
                    Rule::Mod
                } else {
                    Rule::HashMod
                }
            }
            ShardAlgorithm::Range => {
                only("unit", table.unit.is_some(), "interval")?;
                only("start", table.start.is_some(), "interval")?;
                let b = &table.boundaries;
                if b.len() + 1 != shards {
                    return Err(rule_error(
                        "boundaries",
                        format!(
                            "{shards} shards need {} boundaries, not {}",
                            shards.saturating_sub(1),
                            b.len()
                        ),
                    ));
                }
                if b.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(rule_error("boundaries", "must be strictly ascending"));
                }
                Rule::Range(b.clone())
            }
            ShardAlgorithm::Interval => {
                only("boundaries", !table.boundaries.is_empty(), "range")?;
                let unit = table
                    .unit
                    .ok_or_else(|| rule_error("unit", "required for algorithm: interval"))?;
                let start = table
                    .start
                    .as_deref()
                    .ok_or_else(|| rule_error("start", "required for algorithm: interval"))?;
                let start = Civil::parse(start.as_bytes())
                    .filter(|_| start.len() == 10)
                    .ok_or_else(|| rule_error("start", "must be a date, YYYY-MM-DD"))?;
                Rule::Interval { unit, start }
            }
        };
        Ok(Sharder {
            shards,
            rule,
            kind: Arc::new(AtomicU8::new(ColumnKind::Unknown as u8)),
        })
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn kind(&self) -> ColumnKind {
        ColumnKind::from_byte(self.kind.load(Ordering::Relaxed))
    }

    /// Takes what the sharding column holds, or refuses a column this rule cannot place
    /// exactly (which then makes the table's statements go everywhere and its rows
    /// unplaceable until the column is fixed).
    pub fn learn_kind(&self, kind: ColumnKind) -> Result<(), String> {
        use ColumnKind::*;
        let fits = kind == Unknown
            || match self.rule {
                Rule::Mod | Rule::Range(_) => matches!(kind, Integer),
                Rule::HashMod => matches!(kind, Integer | PaddedText | Bytes),
                Rule::Interval { .. } => matches!(kind, Temporal),
            };
        let stored = if fits { kind } else { Unusable };
        self.kind.store(stored as u8, Ordering::Relaxed);
        if fits {
            Ok(())
        } else {
            let needs = match self.rule {
                Rule::Mod => "mod needs an integer column",
                Rule::Range(_) => "range needs an integer column",
                Rule::HashMod => {
                    "hash_mod needs an integer column or a string of a binary collation"
                }
                Rule::Interval { .. } => "interval needs a DATE, DATETIME or TIMESTAMP column",
            };
            Err(needs.to_string())
        }
    }

    /// Whether the rule reads its values as dates.
    pub fn temporal(&self) -> bool {
        matches!(self.rule, Rule::Interval { .. })
    }

    /// The shard of a row whose sharding value is `key`; `None` when the rule cannot place
    /// it (a text under `mod`, a non-date under `interval`).
    pub fn shard_of(&self, key: &Key) -> Option<usize> {
        let n = self.shards as i128;
        match (self.kind(), key) {
            (ColumnKind::Unusable, _) => return None,
            // A number compared with a string column matches every string that reads as
            // it (`'07'`, `'7.0'`, `' 7'`).
            (ColumnKind::PaddedText | ColumnKind::Bytes, Key::Int(_)) => return None,
            // Trailing spaces do not count in a padded comparison, so they do not place.
            (ColumnKind::PaddedText, Key::Text(t)) if t.last() == Some(&b' ') => {
                let end = t.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                return self.shard_of_text(&t[..end]);
            }
            // An integer column reads a string as the number it starts with
            // (`'42abc' = 42`): only digits alone are placed.
            (ColumnKind::Integer, Key::Text(t)) if matches!(self.rule, Rule::HashMod) => {
                return self.shard_of(&Key::Int(integer(t)?));
            }
            _ => {}
        }
        match (&self.rule, key) {
            (Rule::Mod, Key::Int(v)) => Some(v.rem_euclid(n) as usize),
            (Rule::HashMod, Key::Int(v)) => {
                Some((fnv1a(v.to_string().as_bytes()) % self.shards as u64) as usize)
            }
            (Rule::HashMod, Key::Text(t)) => self.shard_of_text(t),
            (Rule::Range(b), Key::Int(v)) => {
                Some(b.partition_point(|&edge| i128::from(edge) <= *v))
            }
            // An integer column compares with a string as a number: `'42'` is 42. Only a
            // string of digits alone is read; anything else goes everywhere.
            (Rule::Mod | Rule::Range(_), Key::Text(t)) => self.shard_of(&Key::Int(integer(t)?)),
            (Rule::Interval { unit, start }, Key::Text(t)) => {
                let at = Civil::parse(t)?;
                Some(self.interval_index(*unit, *start, at))
            }
            _ => None,
        }
    }

    /// A string under `hash_mod`: digits hash as the integer they are, whichever way they
    /// were written, so that a string column and an integer one place alike.
    fn shard_of_text(&self, t: &[u8]) -> Option<usize> {
        match integer(t) {
            Some(v) => Some((fnv1a(v.to_string().as_bytes()) % self.shards as u64) as usize),
            None => Some((fnv1a(t) % self.shards as u64) as usize),
        }
    }

    fn interval_index(&self, unit: IntervalUnit, start: Civil, at: Civil) -> usize {
        let i = at.count(unit) - start.count(unit);
        i.clamp(0, self.shards as i64 - 1) as usize
    }

    /// The shards that may hold values between `low` and `high` (both inclusive; `None`: no
    /// bound). Exclusive bounds are given as inclusive ones: one shard too many is harmless.
    pub fn shards_between(&self, low: Option<&Key>, high: Option<&Key>) -> ShardSet {
        let all = ShardSet::all(self.shards);
        if self.kind() == ColumnKind::Unusable {
            return all;
        }
        match &self.rule {
            Rule::Mod => match (low, high) {
                (Some(Key::Int(lo)), Some(Key::Int(hi))) if lo <= hi => {
                    if hi - lo + 1 >= self.shards as i128 {
                        return all;
                    }
                    let mut set = ShardSet::EMPTY;
                    let mut v = *lo;
                    while v <= *hi {
                        set.insert(v.rem_euclid(self.shards as i128) as usize);
                        v += 1;
                    }
                    set
                }
                (Some(Key::Int(lo)), Some(Key::Int(hi))) if lo > hi => ShardSet::EMPTY,
                _ => all,
            },
            Rule::HashMod => all,
            Rule::Range(_) => {
                let index = |k: Option<&Key>, default: usize| match k {
                    None => Some(default),
                    Some(k @ Key::Int(_)) => self.shard_of(k),
                    Some(Key::Text(_)) => None,
                };
                match (index(low, 0), index(high, self.shards - 1)) {
                    (Some(a), Some(b)) => ShardSet::span(a..=b),
                    _ => all,
                }
            }
            Rule::Interval { unit, start } => {
                let index = |k: Option<&Key>, default: usize| match k {
                    None => Some(default),
                    Some(Key::Text(t)) => {
                        Civil::parse(t).map(|c| self.interval_index(*unit, *start, c))
                    }
                    Some(Key::Int(_)) => None,
                };
                match (index(low, 0), index(high, self.shards - 1)) {
                    (Some(a), Some(b)) => ShardSet::span(a..=b),
                    _ => all,
                }
            }
        }
    }
}

impl ShardSet {
    fn span(r: RangeInclusive<usize>) -> ShardSet {
        let mut set = ShardSet::EMPTY;
        for i in r {
            set.insert(i);
        }
        set
    }
}

/// A string that is an integer written with digits alone (and a sign).
pub fn integer(t: &[u8]) -> Option<i128> {
    let digits = t.strip_prefix(b"-").unwrap_or(t);
    if digits.is_empty() || digits.len() > 30 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// FNV-1a, 64 bits: stable across versions and platforms, which placement needs (a hash
/// that changed would move every row).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(algorithm: ShardAlgorithm) -> ShardedTable {
        ShardedTable {
            table: "t".into(),
            column: "k".into(),
            algorithm,
            boundaries: Vec::new(),
            unit: None,
            start: None,
            binding: None,
            key_generator: None,
            tables: None,
        }
    }

    fn int(v: i128) -> Key {
        Key::Int(v)
    }

    fn text(s: &str) -> Key {
        Key::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn a_value_of_the_other_kind_than_the_column_goes_everywhere() {
        let s = Sharder::new(&table(ShardAlgorithm::HashMod), 4).unwrap();
        s.learn_kind(ColumnKind::Integer).unwrap();
        assert_eq!(s.shard_of(&text("42")), s.shard_of(&int(42)));
        // `'42abc' = 42` and `'42.0' = 42` on an integer column.
        assert_eq!(s.shard_of(&text("42abc")), None);
        assert_eq!(s.shard_of(&text("42.0")), None);

        s.learn_kind(ColumnKind::PaddedText).unwrap();
        // `'7.0' = 7` on a string column: a number matches rows anywhere.
        assert_eq!(s.shard_of(&int(7)), None);
        assert_eq!(s.shard_of(&text("abc  ")), s.shard_of(&text("abc")));
        assert_eq!(s.shard_of(&text("  ")), s.shard_of(&text("")));
        assert_eq!(s.shard_of(&text("abc")), Some((fnv1a(b"abc") % 4) as usize));

        s.learn_kind(ColumnKind::Bytes).unwrap();
        assert_ne!(s.shard_of(&text("abc ")), None);
        assert_eq!(s.shard_of(&int(7)), None);
    }

    #[test]
    fn a_column_the_algorithm_cannot_place_is_refused_and_goes_everywhere() {
        let s = Sharder::new(&table(ShardAlgorithm::Mod), 4).unwrap();
        let shared = s.clone();
        assert!(s.learn_kind(ColumnKind::PaddedText).is_err());
        assert_eq!(shared.kind(), ColumnKind::Unusable);
        assert_eq!(shared.shard_of(&int(7)), None);
        assert_eq!(
            shared.shards_between(Some(&int(5)), Some(&int(6))),
            ShardSet::all(4)
        );
        s.learn_kind(ColumnKind::Unknown).unwrap();
        assert_eq!(shared.shard_of(&int(7)), Some(3));

        let interval = Sharder::new(
            &ShardedTable {
                unit: Some(IntervalUnit::Month),
                start: Some("2024-01-01".into()),
                ..table(ShardAlgorithm::Interval)
            },
            4,
        )
        .unwrap();
        assert!(interval.learn_kind(ColumnKind::Integer).is_err());
        assert!(interval.learn_kind(ColumnKind::Temporal).is_ok());
    }

    #[test]
    fn column_kinds_follow_type_and_collation() {
        assert_eq!(ColumnKind::of("BIGINT", None), Ok(ColumnKind::Integer));
        assert_eq!(ColumnKind::of("datetime", None), Ok(ColumnKind::Temporal));
        assert_eq!(ColumnKind::of("varbinary", None), Ok(ColumnKind::Bytes));
        assert_eq!(
            ColumnKind::of("varchar", Some("utf8mb4_bin")),
            Ok(ColumnKind::PaddedText)
        );
        assert_eq!(
            ColumnKind::of("char", Some("utf8mb4_nopad_bin")),
            Ok(ColumnKind::Bytes)
        );
        let ci = ColumnKind::of("varchar", Some("utf8mb4_general_ci")).unwrap_err();
        assert!(ci.contains("utf8mb4_general_ci"), "{ci}");
        assert!(ColumnKind::of("decimal", None).is_err());
        assert!(ColumnKind::of("double", None).is_err());
    }

    #[test]
    fn mod_places_integers_and_narrows_short_ranges() {
        let s = Sharder::new(&table(ShardAlgorithm::Mod), 4).unwrap();
        assert_eq!(s.shard_of(&int(7)), Some(3));
        assert_eq!(s.shard_of(&int(-1)), Some(3));
        assert_eq!(s.shard_of(&text("7")), Some(3));
        assert_eq!(s.shard_of(&text("7 ")), None);
        assert_eq!(
            s.shards_between(Some(&int(5)), Some(&int(6)))
                .iter()
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            s.shards_between(Some(&int(5)), Some(&int(8))),
            ShardSet::all(4)
        );
        assert_eq!(s.shards_between(Some(&int(5)), None), ShardSet::all(4));
        assert_eq!(
            s.shards_between(Some(&int(6)), Some(&int(5))),
            ShardSet::EMPTY
        );
    }

    #[test]
    fn hash_mod_is_stable() {
        let s = Sharder::new(&table(ShardAlgorithm::HashMod), 4).unwrap();
        // Fixed forever: a changed hash would move rows already placed.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(s.shard_of(&int(42)), Some((fnv1a(b"42") % 4) as usize));
        assert_eq!(s.shard_of(&text("abc")), Some((fnv1a(b"abc") % 4) as usize));
        assert_eq!(
            s.shards_between(Some(&int(1)), Some(&int(2))),
            ShardSet::all(4)
        );
    }

    #[test]
    fn range_places_values_between_boundaries() {
        let mut t = table(ShardAlgorithm::Range);
        t.boundaries = vec![100, 200, 300];
        let s = Sharder::new(&t, 4).unwrap();
        assert_eq!(s.shard_of(&int(-5)), Some(0));
        assert_eq!(s.shard_of(&int(99)), Some(0));
        assert_eq!(s.shard_of(&int(100)), Some(1));
        assert_eq!(s.shard_of(&int(299)), Some(2));
        assert_eq!(s.shard_of(&int(1_000_000)), Some(3));
        let between = s.shards_between(Some(&int(150)), Some(&int(250)));
        assert_eq!(between.iter().collect::<Vec<_>>(), vec![1, 2]);
        let below = s.shards_between(None, Some(&int(150)));
        assert_eq!(below.iter().collect::<Vec<_>>(), vec![0, 1]);
        t.boundaries = vec![100, 100, 300];
        assert!(Sharder::new(&t, 4).is_err());
        t.boundaries = vec![100];
        assert!(Sharder::new(&t, 4).is_err());
    }

    #[test]
    fn interval_counts_units_from_its_start() {
        let mut t = table(ShardAlgorithm::Interval);
        t.unit = Some(IntervalUnit::Month);
        t.start = Some("2024-01-01".into());
        let s = Sharder::new(&t, 12).unwrap();
        assert_eq!(s.shard_of(&text("2024-01-31")), Some(0));
        assert_eq!(s.shard_of(&text("2024-02-01 00:00:00")), Some(1));
        assert_eq!(s.shard_of(&text("2024-12-31 23:59:59.5")), Some(11));
        assert_eq!(s.shard_of(&text("2031-05-01")), Some(11));
        assert_eq!(s.shard_of(&text("1999-05-01")), Some(0));
        assert_eq!(s.shard_of(&text("2024-02-30")), None);
        assert_eq!(s.shard_of(&text("2024-2-3x")), None);
        assert_eq!(s.shard_of(&int(20240101)), None);
        let spring = s.shards_between(Some(&text("2024-03-15")), Some(&text("2024-05-01")));
        assert_eq!(spring.iter().collect::<Vec<_>>(), vec![2, 3, 4]);
        t.unit = Some(IntervalUnit::Day);
        let s = Sharder::new(&t, 7).unwrap();
        assert_eq!(s.shard_of(&text("2024-01-03")), Some(2));
        assert_eq!(s.shard_of(&text("2024-03-01")), Some(6));
        t.start = Some("2024-1-1".into());
        assert!(Sharder::new(&t, 7).is_err());
    }

    #[test]
    fn days_are_counted_across_leap_years() {
        let d = |y, m, day| {
            Civil {
                year: y,
                month: m,
                day,
            }
            .days()
        };
        assert_eq!(d(1970, 1, 1), 0);
        assert_eq!(d(2000, 3, 1) - d(2000, 2, 28), 2);
        assert_eq!(d(1900, 3, 1) - d(1900, 2, 28), 1);
        assert_eq!(d(2024, 1, 1), 19_723);
    }
}
