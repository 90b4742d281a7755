//! The planner of `mode: sharding`: which shards a statement goes to, and how their answers
//! merge into the one a single database holding every row would give.
//!
//! The schema of the logical database is a [`Topology`]: sharded tables spread over the
//! shards by one column ([`algorithm`]), broadcast tables copied on every shard, and single
//! tables living on one. [`plan`] reads a statement (parsed with sqlparser, cut with
//! [`crate::sql::lex`]) and returns a [`plan::Plan`]: one shard that runs the client's text
//! unchanged, or a scatter to several with the merge that puts their answers together, or
//! a refusal naming what cannot be answered exactly. The executor in `crate::exec::sharding`
//! carries plans out.

pub mod algorithm;
mod catalog;
pub mod condition;
mod grouped;
pub mod keygen;
pub mod plan;
pub mod point;
pub mod show;
mod split;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::config::Executor;

use algorithm::{ColumnKind, Sharder};

/// A column of a table, as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `DATA_TYPE`: `int`, `varchar`, …
    pub data_type: String,
    /// `COLLATION_NAME`, for strings.
    pub collation: Option<String>,
}

/// Most shards one executor may have (a shard set is one machine word pair).
pub const MAX_SHARDS: usize = 128;

/// A set of shard numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShardSet(u128);

impl ShardSet {
    pub const EMPTY: ShardSet = ShardSet(0);

    /// Shards `0..n`.
    pub fn all(n: usize) -> ShardSet {
        if n >= MAX_SHARDS {
            ShardSet(u128::MAX)
        } else {
            ShardSet((1u128 << n) - 1)
        }
    }

    pub fn one(i: usize) -> ShardSet {
        ShardSet(1u128 << i)
    }

    pub fn insert(&mut self, i: usize) {
        self.0 |= 1u128 << i;
    }

    pub fn remove(&mut self, i: usize) {
        self.0 &= !(1u128 << i);
    }

    pub fn contains(self, i: usize) -> bool {
        self.0 & (1u128 << i) != 0
    }

    pub fn union(self, o: ShardSet) -> ShardSet {
        ShardSet(self.0 | o.0)
    }

    pub fn intersect(self, o: ShardSet) -> ShardSet {
        ShardSet(self.0 & o.0)
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The shard, when the set holds exactly one.
    pub fn single(self) -> Option<usize> {
        (self.len() == 1).then(|| self.0.trailing_zeros() as usize)
    }

    pub fn first(self) -> Option<usize> {
        (!self.is_empty()).then(|| self.0.trailing_zeros() as usize)
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_SHARDS).filter(move |&i| self.contains(i))
    }
}

/// A sharded table's rule: its column and how values place rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRule {
    /// As configured.
    pub name: String,
    /// The sharding column, lower case.
    pub column: String,
    pub sharder: Sharder,
    /// The table whose placement it shares (itself when it names no `binding`), lower case:
    /// tables of one group hold the rows of one sharding value on the same shard.
    pub group: String,
    /// The column Tandem fills with a snowflake id when an INSERT leaves it out, lower case.
    pub generated: Option<String>,
    /// Physical tables per shard ([`split`]): the sharder places rows among
    /// `shards × tables` slots, slot s being table `s % tables` of shard `s / tables`.
    pub tables: usize,
}

impl TableRule {
    /// Whether the table is split into several physical tables inside each shard.
    pub fn split(&self) -> bool {
        self.tables > 1
    }

    /// The shard of a slot (what the sharder places a row in).
    pub fn shard_of_slot(&self, slot: usize) -> usize {
        slot / self.tables
    }

    /// The shards that hold these slots.
    pub fn shards_of_slots(&self, slots: ShardSet) -> ShardSet {
        if !self.split() {
            return slots;
        }
        let mut shards = ShardSet::EMPTY;
        for slot in slots.iter() {
            shards.insert(self.shard_of_slot(slot));
        }
        shards
    }

    /// The physical table of a slot: `<table>_<k>` (the table itself when not split).
    pub fn physical(&self, slot: usize) -> String {
        if self.split() {
            format!("{}_{}", self.name, slot % self.tables)
        } else {
            self.name.clone()
        }
    }
}

/// Where a table's rows live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Sharded(Arc<TableRule>),
    /// A full copy on every shard.
    Broadcast,
    /// One shard holds the whole table.
    Single(usize),
    /// No shard has it (yet): a statement on it is answered by the first shard, which
    /// says it does not exist, or creates it.
    Unknown,
}

/// The logical database of a `sharding` executor.
#[derive(Debug)]
pub struct Topology {
    /// The name clients see.
    pub database: String,
    /// The shards' data source names; a shard's number is its place here.
    pub shards: Vec<String>,
    sharded: HashMap<String, Arc<TableRule>>,
    broadcast: HashSet<String>,
    /// Single tables found on the shards (lower case name → shard).
    singles: RwLock<HashMap<String, usize>>,
    /// Where each sharded table's sharding column stands among its columns (0-based), for
    /// an INSERT without a column list; read from the first shard.
    key_positions: RwLock<HashMap<String, usize>>,
    /// Split tables (lower case) with an ENUM or SET column, learnt with their columns: a
    /// UNION of their physical tables would read those columns as strings.
    enumerated: RwLock<HashSet<String>>,
    /// What `information_schema` reads of the logical database need, read from the shards.
    catalog: RwLock<Arc<Catalog>>,
    /// Most rows a merge may hold at once.
    pub max_merge_rows: u64,
    /// Ids for generated columns.
    pub snowflake: keygen::Snowflake,
}

/// What the shards' servers say about `information_schema`, for answering its queries
/// for the logical database ([`catalog`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Each shard's own database (its `DATABASE()`), in shard order.
    pub databases: Vec<String>,
    /// `information_schema`'s tables (upper case) and their columns, in order, as the
    /// first shard's server has them.
    pub tables: HashMap<String, Vec<CatalogColumn>>,
}

/// A column of an `information_schema` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    /// `CHARACTER_SET_NAME`, for a string column.
    pub charset: Option<String>,
}

/// A sharding executor's configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TopologyError {
    /// The field, relative to the executor (`sharded_tables[1].binding`).
    pub field: String,
    pub message: String,
}

fn topology_error(field: impl Into<String>, message: impl Into<String>) -> TopologyError {
    TopologyError {
        field: field.into(),
        message: message.into(),
    }
}

impl Topology {
    pub fn new(e: &Executor) -> Result<Topology, TopologyError> {
        let database = e
            .database
            .clone()
            .ok_or_else(|| topology_error("database", "required for mode: sharding"))?;
        if database.is_empty() {
            return Err(topology_error("database", "must not be empty"));
        }
        if e.shards.is_empty() {
            return Err(topology_error(
                "shards",
                "mode: sharding needs at least one shard",
            ));
        }
        if e.shards.len() > MAX_SHARDS {
            return Err(topology_error(
                "shards",
                format!("at most {MAX_SHARDS} shards, not {}", e.shards.len()),
            ));
        }
        for (i, s) in e.shards.iter().enumerate() {
            if e.shards[..i].contains(s) {
                return Err(topology_error(
                    format!("shards[{i}]"),
                    format!("'{s}' is named twice"),
                ));
            }
        }
        let n = e.shards.len();
        let mut sharded: HashMap<String, Arc<TableRule>> = HashMap::new();
        for (i, t) in e.sharded_tables.iter().enumerate() {
            let at = |f: &str| format!("sharded_tables[{i}].{f}");
            let key = t.table.to_lowercase();
            if t.table.is_empty() || t.column.is_empty() {
                return Err(topology_error(at("table"), "table and column are required"));
            }
            if sharded.contains_key(&key) {
                return Err(topology_error(
                    at("table"),
                    format!("'{}' is listed twice", t.table),
                ));
            }
            let tables = t.tables.unwrap_or(1) as usize;
            if tables == 0 {
                return Err(topology_error(at("tables"), "must be at least 1"));
            }
            if n * tables > MAX_SHARDS {
                return Err(topology_error(
                    at("tables"),
                    format!(
                        "shards × tables must be at most {MAX_SHARDS}, not {}",
                        n * tables
                    ),
                ));
            }
            let sharder = Sharder::new(t, n * tables).map_err(|e| {
                let message = if tables > 1 {
                    format!(
                        "{} ({n} shards × tables: {tables}, each slot counted as a shard)",
                        e.message
                    )
                } else {
                    e.message
                };
                topology_error(at(e.field), message)
            })?;
            if let Some(g) = &t.key_generator {
                if g.column.eq_ignore_ascii_case(&t.column) {
                    return Err(topology_error(
                        at("key_generator.column"),
                        "the sharding column cannot be generated: its value places the row",
                    ));
                }
            }
            sharded.insert(
                key.clone(),
                Arc::new(TableRule {
                    name: t.table.clone(),
                    column: t.column.to_lowercase(),
                    sharder,
                    group: key,
                    generated: t.key_generator.as_ref().map(|g| g.column.to_lowercase()),
                    tables,
                }),
            );
        }
        // Bindings: each names a sharded table with the same rule; groups follow chains.
        for (i, t) in e.sharded_tables.iter().enumerate() {
            let Some(b) = &t.binding else { continue };
            let at = format!("sharded_tables[{i}].binding");
            let target = sharded.get(&b.to_lowercase()).cloned().ok_or_else(|| {
                topology_error(&at, format!("'{b}' is not one of the sharded tables"))
            })?;
            let key = t.table.to_lowercase();
            if target.group == key || target.name.eq_ignore_ascii_case(&t.table) {
                return Err(topology_error(&at, "a table cannot bind to itself"));
            }
            let own = &sharded[&key];
            if own.sharder != target.sharder {
                return Err(topology_error(
                    &at,
                    format!(
                        "'{}' must shard with the same algorithm and parameters as '{b}' to share its placement",
                        t.table
                    ),
                ));
            }
        }
        let root = |mut name: String| {
            let mut seen = 0;
            while let Some(b) = e
                .sharded_tables
                .iter()
                .find(|t| t.table.eq_ignore_ascii_case(&name))
                .and_then(|t| t.binding.clone())
            {
                seen += 1;
                if seen > e.sharded_tables.len() {
                    return Err(topology_error(
                        "sharded_tables",
                        format!("bindings of '{name}' go round in a circle"),
                    ));
                }
                name = b;
            }
            Ok(name.to_lowercase())
        };
        for (key, rule) in sharded.iter_mut() {
            let group = root(key.clone())?;
            Arc::make_mut(rule).group = group;
        }
        let mut broadcast = HashSet::new();
        for (i, t) in e.broadcast_tables.iter().enumerate() {
            let key = t.to_lowercase();
            if sharded.contains_key(&key) {
                return Err(topology_error(
                    format!("broadcast_tables[{i}]"),
                    format!("'{t}' is also a sharded table"),
                ));
            }
            if !broadcast.insert(key) {
                return Err(topology_error(
                    format!("broadcast_tables[{i}]"),
                    format!("'{t}' is listed twice"),
                ));
            }
        }
        // A configured table must not be named as a split table's physical one.
        for (name, rule) in &sharded {
            if !rule.split() {
                continue;
            }
            for other in sharded.keys().chain(broadcast.iter()) {
                let physical = other
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('_'))
                    .and_then(|k| k.parse::<usize>().ok().filter(|n| n.to_string() == k));
                if physical.is_some_and(|k| k < rule.tables) {
                    return Err(topology_error(
                        "sharded_tables",
                        format!(
                            "'{other}' is the name of one of the physical tables of '{}' (tables: {})",
                            rule.name, rule.tables
                        ),
                    ));
                }
            }
        }
        if e.max_merge_rows == Some(0) {
            return Err(topology_error("max_merge_rows", "must be at least 1"));
        }
        let worker = e.worker_id.unwrap_or(0);
        if worker > keygen::MAX_WORKER {
            return Err(topology_error(
                "worker_id",
                format!("must be at most {}", keygen::MAX_WORKER),
            ));
        }
        Ok(Topology {
            database,
            shards: e.shards.clone(),
            sharded,
            broadcast,
            singles: RwLock::new(HashMap::new()),
            key_positions: RwLock::new(HashMap::new()),
            enumerated: RwLock::new(HashSet::new()),
            catalog: RwLock::new(Arc::new(Catalog::default())),
            max_merge_rows: e.max_merge_rows(),
            snowflake: keygen::Snowflake::new(worker),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn all(&self) -> ShardSet {
        ShardSet::all(self.shards.len())
    }

    /// Where table `name` lives.
    pub fn placement(&self, name: &str) -> Placement {
        // Names are mostly written in lower case already: no copy then (a statement's hot
        // path asks this).
        let key: std::borrow::Cow<'_, str> = if name
            .bytes()
            .any(|b| !b.is_ascii_lowercase() && !b.is_ascii_digit() && b != b'_')
        {
            name.to_lowercase().into()
        } else {
            name.into()
        };
        let key = key.as_ref();
        if let Some(rule) = self.sharded.get(key) {
            return Placement::Sharded(rule.clone());
        }
        if self.broadcast.contains(key) {
            return Placement::Broadcast;
        }
        let singles = self.singles.read().unwrap_or_else(|e| e.into_inner());
        match singles.get(key) {
            Some(&shard) => Placement::Single(shard),
            None => Placement::Unknown,
        }
    }

    /// Whether `name` is configured (sharded or broadcast): such a table is expected on
    /// every shard.
    pub fn configured(&self, name: &str) -> bool {
        let key = name.to_lowercase();
        self.sharded.contains_key(&key) || self.broadcast.contains(&key)
    }

    /// Whether split table `name` has an ENUM or SET column.
    pub fn enumerated(&self, name: &str) -> bool {
        let enumerated = self.enumerated.read().unwrap_or_else(|e| e.into_inner());
        enumerated.contains(&name.to_lowercase())
    }

    /// The split table (`tables` > 1) whose physical table `name` (`<table>_<k>`) is.
    pub fn split_of(&self, name: &str) -> Option<&Arc<TableRule>> {
        let (base, digits) = name.rsplit_once('_')?;
        let rule = self.sharded.get(&base.to_lowercase())?;
        let k: usize = digits.parse().ok()?;
        (rule.split() && k < rule.tables && k.to_string() == digits).then_some(rule)
    }

    /// The name a client knows a table by: a split table's physical tables are the table.
    pub fn logical_name<'a>(&'a self, name: &'a str) -> &'a str {
        match self.split_of(name) {
            Some(rule) => &rule.name,
            None => name,
        }
    }

    /// The tables each shard holds, as read from the shards: every table that is neither
    /// sharded nor broadcast must be on one shard only.
    pub fn learn_tables(&self, per_shard: &[Vec<String>]) -> Result<(), TopologyError> {
        let mut singles = HashMap::new();
        for (shard, tables) in per_shard.iter().enumerate() {
            for t in tables {
                if self.configured(t)
                    || self.split_of(t).is_some()
                    || t.eq_ignore_ascii_case(crate::at::undo::UNDO_TABLE)
                {
                    continue;
                }
                if let Some(other) = singles.insert(t.to_lowercase(), shard) {
                    if other != shard {
                        return Err(topology_error(
                            "broadcast_tables",
                            format!(
                                "table '{t}' is on shards '{}' and '{}' but is neither sharded nor broadcast",
                                self.shards[other], self.shards[shard]
                            ),
                        ));
                    }
                }
            }
        }
        *self.singles.write().unwrap_or_else(|e| e.into_inner()) = singles;
        Ok(())
    }

    /// The columns of sharded table `table` in their order (as a shard has them); answers
    /// why its sharding column cannot be placed by its algorithm, if it cannot.
    pub fn learn_columns(&self, table: &str, columns: &[Column]) -> Result<(), String> {
        let Some(rule) = self.sharded.get(&table.to_lowercase()) else {
            return Ok(());
        };
        {
            let mut enumerated = self.enumerated.write().unwrap_or_else(|e| e.into_inner());
            let key = rule.name.to_lowercase();
            if columns.iter().any(|c| {
                c.data_type.eq_ignore_ascii_case("enum") || c.data_type.eq_ignore_ascii_case("set")
            }) {
                enumerated.insert(key);
            } else {
                enumerated.remove(&key);
            }
        }
        let mut positions = self
            .key_positions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(i) = columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(&rule.column))
        else {
            positions.remove(&rule.name.to_lowercase());
            rule.sharder.learn_kind(ColumnKind::Unknown).ok();
            return Ok(());
        };
        positions.insert(rule.name.to_lowercase(), i);
        let c = &columns[i];
        ColumnKind::of(&c.data_type, c.collation.as_deref())
            .and_then(|kind| rule.sharder.learn_kind(kind))
            .map_err(|why| {
                rule.sharder.learn_kind(ColumnKind::Unusable).ok();
                let collation = c
                    .collation
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default();
                format!(
                    "sharded table {}: its sharding column {} ({}{collation}) cannot place rows: {why}",
                    rule.name, c.name, c.data_type
                )
            })
    }

    /// Where the sharding column of `table` stands among its columns, when known.
    pub fn key_position(&self, table: &str) -> Option<usize> {
        let positions = self.key_positions.read().unwrap_or_else(|e| e.into_inner());
        positions.get(&table.to_lowercase()).copied()
    }

    /// The tables split inside each shard (as configured), with their physical tables per
    /// shard, in name order.
    pub fn split_tables(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .sharded
            .values()
            .filter(|r| r.split())
            .map(|r| (r.name.clone(), r.tables))
            .collect();
        out.sort();
        out
    }

    /// The sharded tables' names, as configured.
    pub fn sharded_tables(&self) -> impl Iterator<Item = &str> {
        self.sharded.values().map(|r| r.name.as_str())
    }

    /// What the shards' servers say about `information_schema`.
    pub fn learn_catalog(&self, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The single tables of each shard (lower case), in shard order.
    pub fn singles_by_shard(&self) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new(); self.shards.len()];
        let singles = self.singles.read().unwrap_or_else(|e| e.into_inner());
        for (name, &shard) in singles.iter() {
            if let Some(list) = out.get_mut(shard) {
                list.push(name.clone());
            }
        }
        for list in &mut out {
            list.sort();
        }
        out
    }

    /// A single table was created on `shard` (or dropped: `None`).
    pub fn single_table(&self, name: &str, shard: Option<usize>) {
        let mut singles = self.singles.write().unwrap_or_else(|e| e.into_inner());
        match shard {
            Some(s) => singles.insert(name.to_lowercase(), s),
            None => singles.remove(&name.to_lowercase()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(yaml: &str) -> Executor {
        serde_norway::from_str(yaml).unwrap()
    }

    const SHOP: &str = "
name: shop
mode: sharding
database: shop
shards: [s0, s1, s2, s3]
sharded_tables:
  - { table: t_order, column: user_id, algorithm: mod }
  - { table: t_order_item, column: user_id, algorithm: mod, binding: t_order }
  - { table: t_event, column: at, algorithm: interval, unit: month, start: '2024-01-01' }
broadcast_tables: [t_country]
";

    #[test]
    fn a_topology_places_tables() {
        let t = Topology::new(&executor(SHOP)).unwrap();
        let Placement::Sharded(item) = t.placement("T_ORDER_ITEM") else {
            panic!("t_order_item is sharded");
        };
        assert_eq!(
            (item.column.as_str(), item.group.as_str()),
            ("user_id", "t_order")
        );
        assert_eq!(t.placement("t_country"), Placement::Broadcast);
        assert_eq!(t.placement("t_user"), Placement::Unknown);
        t.learn_tables(&[
            vec!["t_user".into(), "t_order".into()],
            vec!["t_order".into()],
        ])
        .unwrap();
        assert_eq!(t.placement("t_user"), Placement::Single(0));
        let twice = t.learn_tables(&[vec!["t_user".into()], vec!["t_user".into()]]);
        assert!(twice
            .unwrap_err()
            .message
            .contains("'t_user' is on shards 's0' and 's1'"));
    }

    #[test]
    fn a_topology_that_cannot_work_is_refused() {
        let bad =
            |from: &str, to: &str| Topology::new(&executor(&SHOP.replace(from, to))).unwrap_err();
        assert_eq!(bad("database: shop\n", "").field, "database");
        assert_eq!(bad("[s0, s1, s2, s3]", "[s0, s1, s0]").field, "shards[2]");
        let e = bad("algorithm: mod, binding", "algorithm: hash_mod, binding");
        assert_eq!(e.field, "sharded_tables[1].binding");
        let e = bad("binding: t_order", "binding: t_nothing");
        assert!(e.message.contains("not one of the sharded tables"), "{e}");
        let e = bad("[t_country]", "[t_order]");
        assert_eq!(e.field, "broadcast_tables[0]");
        let e = bad("unit: month, ", "");
        assert_eq!(e.field, "sharded_tables[2].unit");
        let e = bad(
            "algorithm: mod }",
            "algorithm: mod, key_generator: { column: user_id, type: snowflake } }",
        );
        assert_eq!(e.field, "sharded_tables[0].key_generator.column");
        let e = bad("algorithm: mod }", "algorithm: mod, tables: 0 }");
        assert_eq!(e.field, "sharded_tables[0].tables");
        let e = bad("algorithm: mod }", "algorithm: mod, tables: 40 }");
        assert!(e.message.contains("at most 128, not 160"), "{e}");
        let e = bad("binding: t_order", "binding: t_order, tables: 2");
        assert_eq!(e.field, "sharded_tables[1].binding");
        let e = bad(
            "algorithm: mod }",
            "algorithm: range, boundaries: [10, 20, 30], tables: 2 }",
        );
        assert!(e.message.contains("need 7 boundaries"), "{e}");
    }

    #[test]
    fn shard_sets() {
        let mut s = ShardSet::EMPTY;
        s.insert(3);
        assert_eq!(s.single(), Some(3));
        s.insert(0);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(s.intersect(ShardSet::one(3)), ShardSet::one(3));
        assert_eq!(ShardSet::all(128).len(), 128);
        assert_eq!(ShardSet::all(4).len(), 4);
    }
}
