//! The executor of `mode: sharding`: carries a [`crate::planner::sharding`] plan out on a
//! session's shard connections.
//!
//! A scatter read is a small tree of streaming operators: one [`route::Route`] per shard,
//! a [`merge_sort::MergeSort`] over them (or one route after another when the query has no
//! ORDER BY), then [`aggregate`] combining each group's rows (one group, without GROUP BY),
//! then [`having::Having`], then [`limit::Limit`]. Rows go to the client as they come out
//! of the tree; memory holds one row per shard. Only an ORDER BY that the groups' own order
//! cannot give puts a [`sort::Sort`] before the limit, which holds the combined rows (at
//! most `max_merge_rows`).

pub mod aggregate;
pub mod compare;
pub mod having;
pub mod limit;
pub mod merge_sort;
pub mod route;
pub mod sort;
pub mod xa;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::at::branch::AtSource;
use crate::backend::{BackendError, Pool};
use crate::planner::sharding::plan::{Aggregate, Col, Scatter};
use crate::planner::sharding::{Placement, Topology, TopologyError};
use crate::wire::binary_row::{self, BinaryColumn};
use crate::wire::response::{end_of_rows, eof_packet, put_lenenc_int};
use crate::wire::{MysqlError, PacketIo};

use crate::planner::sharding::{Catalog, CatalogColumn, Column};
use aggregate::Combine;
use compare::{Order, Pad};
use having::Having;
use limit::{Limit, Verdict};
use merge_sort::{Key, MergeSort};
use route::{ColumnInfo, Header, Route, RowError};
use sort::Sort;

/// A `sharding` executor: its logical database and the pools of its shards.
pub struct Sharding {
    pub topology: Topology,
    /// One per shard, in shard order.
    pub pools: Vec<Pool>,
    /// Each shard's part in distributed commits, in shard order.
    pub xa: Vec<Arc<xa::XaResource>>,
    /// Each shard's AT state, in shard order: inside a global transaction each shard's
    /// local transaction is a branch.
    pub at: Vec<Arc<AtSource>>,
    /// Collation id → how its strings pad, learnt from a shard on first use.
    pads: Mutex<HashMap<u16, Option<Vec<u8>>>>,
}

impl Sharding {
    pub fn new(
        topology: Topology,
        pools: Vec<Pool>,
        xa: Vec<Arc<xa::XaResource>>,
        at: Vec<Arc<AtSource>>,
    ) -> Sharding {
        Sharding {
            topology,
            pools,
            xa,
            at,
            pads: Mutex::new(HashMap::new()),
        }
    }

    /// Every table (and view) of the logical database, each once, sorted, with its
    /// `TABLE_TYPE`: those of every shard.
    pub async fn table_list(&self) -> Result<Vec<(String, String)>, MysqlError> {
        let mut all = std::collections::BTreeMap::new();
        for pool in &self.pools {
            let unavailable = |e: &dyn std::fmt::Display| {
                MysqlError::backend_unavailable(pool.name(), &e.to_string())
            };
            let mut conn = pool.acquire_control().await.map_err(|e| unavailable(&e))?;
            let rows = conn
                .query_rows(
                    "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = DATABASE()",
                )
                .await
                .map_err(|e| unavailable(&e))?;
            for r in rows {
                let mut r = r.into_iter();
                if let (Some(Some(name)), Some(kind)) = (r.next(), r.next()) {
                    if name.eq_ignore_ascii_case(crate::at::undo::UNDO_TABLE) {
                        continue;
                    }
                    let name = self.topology.logical_name(&name).to_string();
                    all.insert(name, kind.unwrap_or_default());
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Reads which tables each shard holds, so single tables are found where they are.
    pub async fn learn_tables(&self) -> Result<(), StartError> {
        let mut per_shard = Vec::new();
        let mut databases = Vec::new();
        for pool in &self.pools {
            let mut conn = pool
                .acquire_control()
                .await
                .map_err(|e| StartError::Shard(pool.name().to_string(), e.to_string()))?;
            let version = conn
                .query_rows("SELECT VERSION()")
                .await
                .map_err(|e| StartError::Shard(pool.name().to_string(), e.to_string()))?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten())
                .unwrap_or_default();
            if !keeps_prepared_xa(&version) {
                return Err(StartError::Shard(
                    pool.name().to_string(),
                    format!(
                        "MariaDB {version} ends a prepared XA transaction with its connection, \
                         so a distributed commit could not survive a crash; shards need \
                         MariaDB 10.5 or later"
                    ),
                ));
            }
            let database = conn
                .query_rows("SELECT DATABASE()")
                .await
                .map_err(|e| StartError::Shard(pool.name().to_string(), e.to_string()))?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten())
                .ok_or_else(|| {
                    StartError::Shard(
                        pool.name().to_string(),
                        "its DSN names no database".to_string(),
                    )
                })?;
            databases.push(database);
            let rows = conn
                .query_rows(
                    "SELECT TABLE_NAME FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'",
                )
                .await
                .map_err(|e| StartError::Shard(pool.name().to_string(), e.to_string()))?;
            per_shard.push(
                rows.into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect(),
            );
        }
        self.topology
            .learn_tables(&per_shard)
            .map_err(StartError::Topology)?;
        let tables = self
            .catalog_tables()
            .await
            .map_err(|e| StartError::Shard(self.pools[0].name().to_string(), e.to_string()))?;
        self.topology.learn_catalog(Catalog { databases, tables });
        let unusable = self
            .learn_columns()
            .await
            .map_err(|e| StartError::Shard(self.pools[0].name().to_string(), e.to_string()))?;
        match unusable.into_iter().next() {
            Some(why) => Err(StartError::Column(why)),
            None => Ok(()),
        }
    }

    /// `information_schema`'s tables and their columns, as the first shard's server has
    /// them.
    async fn catalog_tables(&self) -> Result<HashMap<String, Vec<CatalogColumn>>, BackendError> {
        let mut conn = self.pools[0]
            .acquire_control()
            .await
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let rows = conn
            .query_rows(
                "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = 'information_schema' \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION",
            )
            .await?;
        let mut tables: HashMap<String, Vec<CatalogColumn>> = HashMap::new();
        for r in rows {
            let mut r = r.into_iter();
            if let (Some(Some(t)), Some(Some(name)), Some(charset)) = (r.next(), r.next(), r.next())
            {
                tables
                    .entry(t.to_ascii_uppercase())
                    .or_default()
                    .push(CatalogColumn { name, charset });
            }
        }
        Ok(tables)
    }

    /// Reads the column order of the sharded tables from the first shard, and what their
    /// sharding columns hold; answers why a sharding column cannot be placed by its
    /// table's algorithm, for each one that cannot (its table's statements then go to
    /// every shard, and its rows are refused).
    pub async fn learn_columns(&self) -> Result<Vec<String>, BackendError> {
        let mut conn = self.pools[0]
            .acquire_control()
            .await
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let rows = conn
            .query_rows(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLLATION_NAME \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION",
            )
            .await?;
        let mut columns: HashMap<String, Vec<Column>> = HashMap::new();
        for r in rows {
            let mut r = r.into_iter();
            if let (Some(Some(t)), Some(Some(name)), Some(Some(data_type)), Some(collation)) =
                (r.next(), r.next(), r.next(), r.next())
            {
                columns.entry(t.to_lowercase()).or_default().push(Column {
                    name,
                    data_type,
                    collation,
                });
            }
        }
        let tables: Vec<String> = self.topology.sharded_tables().map(str::to_string).collect();
        let mut unusable = Vec::new();
        for t in tables {
            let physical = match self.topology.placement(&t) {
                Placement::Sharded(rule) => rule.physical(0),
                _ => t.clone(),
            };
            let cols = columns
                .get(&physical.to_lowercase())
                .cloned()
                .unwrap_or_default();
            if let Err(why) = self.topology.learn_columns(&t, &cols) {
                tracing::warn!(table = %t, "{why}");
                unusable.push(why);
            }
        }
        Ok(unusable)
    }

    /// How strings of `collation` pad: a space's weight, or `None` for NO PAD.
    async fn pad(&self, collation: u16) -> Result<Pad, BackendError> {
        let known = self
            .pads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&collation)
            .cloned();
        let pad = match known {
            Some(p) => p,
            None => {
                let learnt = self.learn_pad(collation).await?;
                self.pads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(collation, learnt.clone());
                learnt
            }
        };
        Ok(match pad {
            Some(w) => Pad::Space(w),
            None => Pad::NoPad,
        })
    }

    async fn learn_pad(&self, collation: u16) -> Result<Option<Vec<u8>>, BackendError> {
        let pool = &self.pools[0];
        let mut conn = pool
            .acquire_control()
            .await
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        let row = conn
            .query_rows(&format!(
                "SELECT COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID = {collation}"
            ))
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        let (Some(Some(name)), Some(Some(charset))) = (row.first(), row.get(1)) else {
            return Err(BackendError::Protocol(format!(
                "unknown collation {collation}"
            )));
        };
        if name.to_lowercase().contains("_nopad_") {
            return Ok(None);
        }
        let ident = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident(name) || !ident(charset) {
            return Err(BackendError::Protocol(format!("collation name {name}")));
        }
        let raw = conn
            .query_raw(&format!(
                "SELECT WEIGHT_STRING(CONVERT(' ' USING {charset}) COLLATE {name})"
            ))
            .await?;
        Ok(raw
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }
}

/// Why a sharding executor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard '{0}': {1}")]
    Shard(String, String),
    #[error("{0}")]
    Topology(TopologyError),
    #[error("{0}")]
    Column(String),
}

/// How a scatter ended.
#[derive(Debug)]
pub enum ScatterError {
    /// The client went away.
    Client(std::io::Error),
    /// Shard `shard`'s connection failed; `forwarded` tells whether part of the answer had
    /// reached the client.
    Backend {
        shard: usize,
        error: BackendError,
        forwarded: bool,
    },
}

/// What a finished scatter tells the session.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The error code, when it ended with one.
    pub error: Option<u16>,
    pub status: Option<StatusFlags>,
}

/// How the client reads the merged rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// As the shards sent them (COM_QUERY).
    Text,
    /// Re-encoded for a prepared statement's execution (COM_STMT_EXECUTE).
    Binary,
}

/// Runs a scatter read whose statement each route's shard has been sent (as text), and
/// writes the merged answer to `client` from sequence id `seq`, in `protocol`.
pub async fn scatter<C: AsyncRead + AsyncWrite + Unpin>(
    sharding: &Sharding,
    plan: &Scatter,
    routes: &mut [Route<'_>],
    client: &mut PacketIo<C>,
    caps: CapabilityFlags,
    seq: u8,
    protocol: Protocol,
) -> Result<Outcome, ScatterError> {
    let backend = |shard: usize, forwarded: bool| {
        move |error: BackendError| ScatterError::Backend {
            shard,
            error,
            forwarded,
        }
    };
    // Headers: every shard's, before anything reaches the client.
    let mut columns: Option<Vec<Bytes>> = None;
    let mut failed: Option<Bytes> = None;
    for r in routes.iter_mut() {
        let shard = r.shard;
        match r.header().await.map_err(backend(shard, false))? {
            Header::Rows(c) => {
                if columns.is_none() {
                    columns = Some(c);
                }
            }
            Header::Err(e) => {
                if failed.is_none() {
                    failed = Some(e);
                }
            }
            Header::Ok(_) => {
                return Err(ScatterError::Backend {
                    shard,
                    error: BackendError::Protocol("a read answered without rows".into()),
                    forwarded: false,
                })
            }
        }
    }
    let fail = |e: MysqlError| Some(Bytes::from(e.encode()));
    let columns = columns.unwrap_or_default();
    let total = columns.len();
    let visible = total.saturating_sub(plan.hidden);
    let infos: Vec<Option<ColumnInfo>> = columns.iter().map(|c| ColumnInfo::parse(c)).collect();
    let at = |c: Col| match c {
        Col::Visible(i) => i,
        Col::Hidden(j) => visible + j,
    };
    let mut keys = Vec::new();
    let mut combine = Vec::new();
    let mut binary = Vec::new();
    if failed.is_none() && protocol == Protocol::Binary {
        for info in &infos[..visible.min(infos.len())] {
            let Some(info) = info else {
                failed = fail(MysqlError::not_supported("a column Tandem cannot read"));
                break;
            };
            let c = BinaryColumn {
                column_type: info.column_type,
                flags: info.flags,
            };
            if let Err(e) = c.check() {
                failed = fail(MysqlError::not_supported(&e.to_string()));
                break;
            }
            binary.push(c);
        }
    }
    // A merged row as the client reads it.
    let encode = |row: &route::Row| -> Result<Option<Vec<u8>>, MysqlError> {
        match protocol {
            Protocol::Text => Ok(None),
            Protocol::Binary => binary_row::encode((0..visible).map(|i| row.cell(i)), &binary)
                .map(Some)
                .map_err(|e| MysqlError::not_supported(&e.to_string())),
        }
    };
    if failed.is_none() {
        if total <= plan.hidden {
            failed = fail(MysqlError::not_supported(
                "a result without columns across shards",
            ));
        }
        let merge_by = if plan.group.is_empty() {
            &plan.order
        } else {
            &plan.group
        };
        for k in merge_by {
            let (v, w) = (at(k.value), at(k.weight));
            match order_of(sharding, infos.get(v).copied().flatten()).await {
                Ok(order) => keys.push(Key {
                    value: v,
                    weight: w,
                    descending: k.descending,
                    order,
                }),
                Err(e) => {
                    failed = fail(e);
                    break;
                }
            }
        }
        if let Some(aggs) = &plan.aggregates {
            // The combined row: the select list's columns, then the values Tandem
            // combines for HAVING and ORDER BY alone.
            let columns = aggs
                .iter()
                .enumerate()
                .map(|(i, a)| (i, *a))
                .chain(plan.extra.iter().map(|(c, a)| (at(*c), *a)));
            for (source, a) in columns {
                match combination(sharding, &infos, &at, source, a).await {
                    Ok(c) => combine.push((source, c)),
                    Err(e) => {
                        failed = fail(e);
                        break;
                    }
                }
            }
        }
    }
    // The combined row's column definitions, for HAVING and a held sort.
    let combined_infos: Vec<Option<ColumnInfo>> = combine
        .iter()
        .map(|(source, _)| infos.get(*source).copied().flatten())
        .collect();
    let combined_at = |c: Col| match c {
        Col::Visible(i) => i,
        Col::Hidden(k) => visible + k,
    };
    let mut having = None;
    if let (None, Some(p)) = (&failed, &plan.having) {
        match Having::new(p.clone(), visible, &combined_infos) {
            Ok(h) => having = Some(h),
            Err(e) => failed = fail(MysqlError::not_supported(&e.to_string())),
        }
    }
    let mut held = None;
    if failed.is_none() && !plan.sort.is_empty() {
        let mut keys = Vec::new();
        for k in &plan.sort {
            let value = combined_at(k.value);
            let info = combined_infos.get(value).copied().flatten();
            match order_of(sharding, info).await {
                Ok(Order::Weight { .. }) if k.weight.is_none() => {
                    failed = fail(MysqlError::not_supported(
                        "ORDER BY the MIN or MAX of a string with a GROUP BY across shards",
                    ));
                    break;
                }
                Ok(order) => keys.push(Key {
                    value,
                    weight: k.weight.map_or(value, combined_at),
                    descending: k.descending,
                    order,
                }),
                Err(e) => {
                    failed = fail(e);
                    break;
                }
            }
        }
        held = Some(Sort::new(
            keys,
            sharding.topology.max_merge_rows,
            plan.limit,
        ));
    }
    // A combined row as the client reads it.
    let emit = |row: &route::Row| -> Result<Vec<u8>, MysqlError> {
        Ok(match encode(row)? {
            Some(b) => b,
            None => row.visible(visible).to_vec(),
        })
    };
    if let Some(e) = failed {
        drain(routes).await?;
        client.write_packet(seq, &e);
        client.flush().await.map_err(ScatterError::Client)?;
        return Ok(Outcome {
            error: MysqlError::decode(&e).map(|e| e.code),
            status: None,
        });
    }

    // The column definitions the client sees: the first shard's.
    let mut seq = seq;
    let mut count = Vec::new();
    put_lenenc_int(&mut count, visible as u64);
    seq = client.write_packet(seq, &count);
    for c in &columns[..visible] {
        seq = client.write_packet(seq, c);
    }
    let deprecate_eof = caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
    let status = routes.first().map_or(StatusFlags::empty(), |r| r.status);
    if !deprecate_eof {
        seq = client.write_packet(seq, &eof_packet(status));
    }

    let mut limit = Limit::new(plan.limit);
    let mut merge = MergeSort::new(routes, keys);
    let mut ended_by: Option<Bytes> = None;
    if plan.aggregates.is_some() {
        // The merge brings each group's rows together; a group ends where the keys change.
        // Without GROUP BY there are no keys: every shard's one row is one group.
        let keys = merge.keys().to_vec();
        let mut group: Vec<route::Row> = Vec::new();
        loop {
            let next = match merge.next().await {
                Ok(r) => r,
                Err(e) => {
                    ended_by = Some(row_error(e)?);
                    break;
                }
            };
            let same = match (&next, group.last()) {
                (Some(r), Some(last)) => merge_sort::compare(r, last, &keys).is_eq(),
                _ => false,
            };
            if same {
                group.extend(next);
                continue;
            }
            if !group.is_empty() {
                let combined = aggregate::combine(&group, &combine)
                    .map_err(|e| MysqlError::not_supported(&e.0))
                    .and_then(|row| {
                        route::Row::parse(Bytes::from(row)).map_err(|_| {
                            MysqlError::not_supported("an aggregate Tandem cannot read back")
                        })
                    });
                group.clear();
                let row = match combined {
                    Ok(row) => row,
                    Err(e) => {
                        ended_by = fail(e);
                        break;
                    }
                };
                if having.as_ref().is_some_and(|h| !h.keeps(&row)) {
                    // Not a row of the answer.
                } else if let Some(held) = &mut held {
                    if let Err(e) = held.push(row) {
                        ended_by = fail(MysqlError::out_of_sort_memory(&e.to_string()));
                        break;
                    }
                } else if limit.admit() == Verdict::Pass {
                    match emit(&row) {
                        Ok(packet) => seq = client.write_packet(seq, &packet),
                        Err(e) => {
                            ended_by = fail(e);
                            break;
                        }
                    }
                    if client.should_flush() {
                        client.flush().await.map_err(ScatterError::Client)?;
                    }
                }
            }
            match next {
                Some(r) if !limit.done() => group.push(r),
                _ => break,
            }
        }
        if let (None, Some(held)) = (&ended_by, held) {
            for row in held.finish() {
                match emit(&row) {
                    Ok(packet) => seq = client.write_packet(seq, &packet),
                    Err(e) => {
                        ended_by = fail(e);
                        break;
                    }
                }
                if client.should_flush() {
                    client.flush().await.map_err(ScatterError::Client)?;
                }
            }
        }
    } else {
        while !limit.done() {
            match merge.next().await {
                Ok(Some(row)) => {
                    if limit.admit() == Verdict::Pass {
                        match encode(&row) {
                            Ok(None) => seq = client.write_packet(seq, row.visible(visible)),
                            Ok(Some(b)) => seq = client.write_packet(seq, &b),
                            Err(e) => {
                                ended_by = fail(e);
                                break;
                            }
                        }
                        if client.should_flush() {
                            client.flush().await.map_err(ScatterError::Client)?;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    ended_by = Some(row_error(e)?);
                    break;
                }
            }
        }
    }
    drop(merge);
    drain(routes).await?;
    let status = routes.first().map_or(status, |r| r.status);
    let error = match &ended_by {
        Some(e) => {
            client.write_packet(seq, e);
            MysqlError::decode(e).map(|e| e.code)
        }
        None => {
            client.write_packet(seq, &end_of_rows(caps, status));
            None
        }
    };
    client.flush().await.map_err(ScatterError::Client)?;
    Ok(Outcome {
        error,
        status: Some(status),
    })
}

/// How one column of the combined row comes from the shard rows' column `source`.
async fn combination(
    sharding: &Sharding,
    infos: &[Option<ColumnInfo>],
    at: &impl Fn(Col) -> usize,
    source: usize,
    a: Aggregate,
) -> Result<Combine, MysqlError> {
    let info = infos
        .get(source)
        .copied()
        .flatten()
        .ok_or_else(|| MysqlError::not_supported("an aggregate Tandem cannot read"))?;
    let (weight, order) = match a {
        Aggregate::Min { weight } | Aggregate::Max { weight } => {
            (at(weight), Some(order_of(sharding, Some(info)).await?))
        }
        Aggregate::Avg { sum, count } => {
            use mysql_common::constants::ColumnType;
            let (sum, count) = (at(sum), at(count));
            let exact = matches!(
                ColumnType::try_from(info.column_type),
                Ok(ColumnType::MYSQL_TYPE_NEWDECIMAL | ColumnType::MYSQL_TYPE_DECIMAL)
            );
            return match infos.get(sum).copied().flatten() {
                Some(si) if exact => Ok(Combine::Avg {
                    sum,
                    count,
                    sum_scale: si.decimals,
                    scale: info.decimals,
                }),
                _ => Err(MysqlError::not_supported(
                    "AVG of a floating-point value across shards",
                )),
            };
        }
        _ => (0, None),
    };
    Ok(Combine::of(a, &info, weight, order))
}

/// Whether a server of `version` keeps a prepared XA transaction when the connection
/// that prepared it ends (MariaDB from 10.5; MySQL from 5.7).
fn keeps_prepared_xa(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version.contains("MariaDB") {
        (major, minor) >= (10, 5)
    } else {
        (major, minor) >= (5, 7)
    }
}

/// A row that could not be read mid-answer: the shard's error packet, which ends the
/// client's answer too, or a failed connection.
fn row_error(e: merge_sort::MergeError) -> Result<Bytes, ScatterError> {
    match e.error {
        RowError::Server(p) => Ok(p),
        RowError::Backend(error) => Err(ScatterError::Backend {
            shard: e.shard,
            error,
            forwarded: true,
        }),
    }
}

async fn order_of(sharding: &Sharding, info: Option<ColumnInfo>) -> Result<Order, MysqlError> {
    let info = info.ok_or_else(|| MysqlError::not_supported("a column Tandem cannot read"))?;
    let pad = if info.charset != compare::BINARY {
        Some(sharding.pad(info.charset).await.map_err(|e| {
            MysqlError::backend_unavailable(sharding.pools[0].name(), &e.to_string())
        })?)
    } else {
        None
    };
    let mut pad = pad;
    Order::of(&info, |_| pad.take().unwrap_or(Pad::NoPad))
        .map_err(|e| MysqlError::not_supported(&e.to_string()))
}

/// Reads every route to its end.
async fn drain(routes: &mut [Route<'_>]) -> Result<(), ScatterError> {
    for r in routes.iter_mut() {
        let shard = r.shard;
        r.drain().await.map_err(|error| ScatterError::Backend {
            shard,
            error,
            forwarded: true,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keeps_prepared_xa;

    #[test]
    fn servers_that_keep_prepared_xa_transactions() {
        assert!(keeps_prepared_xa("10.11.19-MariaDB-0+deb12u1"));
        assert!(keeps_prepared_xa("10.5.2-MariaDB"));
        assert!(!keeps_prepared_xa("10.4.30-MariaDB"));
        assert!(keeps_prepared_xa("8.0.36"));
        assert!(!keeps_prepared_xa("5.6.51"));
    }
}
