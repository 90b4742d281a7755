//! The etcd store: coordinator state in an etcd cluster that many sidecars share.
//!
//! Key layout, under the configured prefix (which ends with `/`; every prefix below ends with
//! a separator, so no prefix matches another):
//!
//! | key | value |
//! |---|---|
//! | `{prefix}globals/{xid}` | the global transaction ([`GlobalTx`](crate::coordinator::GlobalTx), JSON) |
//! | `{prefix}branches/{xid}\0{branch id, 20 digits}` | one branch, with its lock keys |
//! | `{prefix}locks/{lock key}` | who holds the row: XID and branch ids |
//!
//! The operations are the rules of [`kv`](super::kv), run as optimistic transactions: every
//! read is made at one revision (the first read's), writes are kept aside, and the commit is
//! one etcd `Txn` that applies them only if nothing read has changed since: each key read
//! still has the modification revision it had (0 for a key that was absent), each range read
//! holds no key modified after the snapshot and still holds every key it held. When something did change, the operation runs
//! again on fresh data. So every operation is one atomic etcd write, or none when it fails or
//! changes nothing.
//!
//! The rules are plain synchronous functions, and etcd answers over the network: a rule runs
//! against a snapshot held in memory, and when it asks for a key the snapshot lacks, the run
//! is abandoned, the key fetched (at the snapshot's revision) and the rule run again from the
//! start. Rules are cheap and deterministic, so this costs microseconds, and everything stays
//! on the caller's task: no thread hand-offs per read.
//!
//! etcd refuses a `Txn` with more than 128 compares or 128 operations (its default
//! `--max-txn-ops`, which also bounds nested `Txn`s). An operation that would need more
//! fails with [`StoreError::TooLarge`] before anything is sent, and the store's callers split
//! it where splitting is safe: a branch with more row locks registers in steps (see
//! `register_in_steps` in the parent module), and releases go a slice at a time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};

use super::kv::{KvRead, KvStore, KvTxn, Table};
use super::StoreError;
use crate::config;

/// etcd's default limit on compares, and on operations, at one level of a `Txn`.
const MAX_TXN_OPS: usize = 128;
/// How often an operation is run again when other writers keep changing what it read.
const MAX_ATTEMPTS: u32 = 64;
/// How long an operation keeps trying while the cluster cannot answer (no leader, a member
/// down, a connection lost): long enough for etcd to elect a new leader.
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    writes: AtomicU64,
    /// The global transactions as the watch last saw them (key → value, mod revision), for
    /// writes to start from without a read: the commit's compare catches a stale entry, and
    /// the operation then runs again on fresh reads.
    seen: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Seen>>,
}

/// A record as a watch saw it: value and modification revision.
type Seen = (Vec<u8>, i64);

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// True when a read at an old revision failed because etcd compacted that revision.
fn compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

/// True for failures that pass: the member or connection is down, the cluster is electing a
/// leader, the request timed out. The operation is then run again; an optimistic
/// transaction that did land the first time fails its compares the second time and is
/// re-read, so running again is safe.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match e {
        Error::TransportError(_) | Error::IoError(_) => true,
        // Unknown, DeadlineExceeded, Aborted, Unavailable.
        Error::GRpcStatus(s) => matches!(s.code() as i32, 2 | 4 | 10 | 14),
        _ => false,
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers.
    pub async fn connect(cfg: &config::Etcd) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
            opts = opts.with_user(user, password);
        }
        if let Some(tls) = &cfg.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| backend(format!("{}: {e}", p.display())))
            };
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(t);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(backend)?;
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                prefix: cfg.prefix.clone(),
                writes: AtomicU64::new(0),
                seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        };
        store
            .inner
            .client
            .kv_client()
            .get(
                store.inner.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(backend)?;
        Ok(store)
    }

    /// The etcd client, for watches and leases.
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The full key of `key` in `table`.
    pub fn key(&self, table: Table, key: &str) -> Vec<u8> {
        self.inner.key(table, key)
    }

    /// Remembers what a watch saw of a global transaction's record (`None`: deleted), so
    /// later writes can skip reading it. Final statuses are not kept: nothing writes them.
    pub fn saw_global(&self, xid: &str, record: Option<(&[u8], i64)>, is_final: bool) {
        let key = self.key(Table::Globals, xid);
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        match record {
            Some((value, rev)) if !is_final => {
                let newer = seen.get(&key).is_none_or(|(_, r)| *r < rev);
                if newer {
                    seen.insert(key, (value.to_vec(), rev));
                }
            }
            _ => {
                seen.remove(&key);
            }
        }
    }
}

impl Inner {
    fn table_prefix(&self, table: Table) -> String {
        format!("{}{}/", self.prefix, table.name())
    }

    fn key(&self, table: Table, key: &str) -> Vec<u8> {
        format!("{}{key}", self.table_prefix(table)).into_bytes()
    }

    /// Fetches what the last run missed into `snap`, at the snapshot's revision.
    async fn fetch(&self, snap: &mut Snapshot, miss: Miss) -> Result<(), etcd_client::Error> {
        let (key, opts) = match &miss {
            Miss::Key(k) => (k.clone(), GetOptions::new()),
            Miss::Range(p) => (p.clone(), GetOptions::new().with_prefix()),
        };
        let opts = if snap.revision > 0 {
            opts.with_revision(snap.revision)
        } else {
            opts
        };
        let mut resp = self.client.kv_client().get(key, Some(opts)).await?;
        if snap.revision == 0 {
            snap.revision = resp.header().map_or(0, |h| h.revision());
        }
        let kvs: Vec<Entry> = resp
            .take_kvs()
            .into_iter()
            .map(|kv| {
                let rev = kv.mod_revision();
                let (k, v) = kv.into_key_value();
                (k, v, rev)
            })
            .collect();
        match miss {
            Miss::Key(k) => {
                let found = kvs.into_iter().next().map(|(_, v, rev)| (v, rev));
                snap.keys.insert(k, found);
            }
            Miss::Range(p) => {
                snap.ranges.insert(p, kvs);
            }
        }
        Ok(())
    }

    /// Runs `f` until it has everything it reads, then commits its writes; again from fresh
    /// data when another writer changed what it read. `commit: false` only reads.
    async fn run<R, E: From<StoreError>>(
        &self,
        f: &(dyn Fn(&mut dyn KvTxn) -> Result<R, E> + Send + Sync),
        commit: bool,
    ) -> Result<R, E> {
        let give_up = std::time::Instant::now() + UNAVAILABLE_PATIENCE;
        let mut snap = Snapshot::default();
        let mut conflicts = 0;
        // Writes may start from what the watch saw; after a conflict, from fresh reads only.
        let mut use_seen = commit;
        loop {
            let mut stm = Stm::new(self, &snap);
            let result = f(&mut stm);
            let missed = stm.missed.borrow_mut().take();
            if let Some(Miss::Key(k)) = missed.as_ref().filter(|_| use_seen) {
                let seen = self
                    .seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(k)
                    .cloned();
                if let Some(entry) = seen {
                    drop(stm);
                    snap.keys.insert(k.clone(), Some(entry));
                    continue;
                }
            }
            if let Some(miss) = missed {
                drop(stm);
                match self.fetch(&mut snap, miss).await {
                    Ok(()) => {}
                    // The snapshot's revision was compacted away meanwhile: start afresh.
                    Err(e) if compacted(&e) => snap = Snapshot::default(),
                    Err(e) if transient(&e) && std::time::Instant::now() < give_up => {
                        // The cluster could not answer: wait a little and ask again.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(E::from(backend(e))),
                }
                continue;
            }
            let value = result?;
            if !commit || stm.writes.is_empty() {
                return Ok(value);
            }
            let txn = stm.commit_txn().map_err(E::from)?;
            drop(stm);
            match self.client.kv_client().txn(txn).await {
                Ok(resp) if resp.succeeded() => {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(_) => {
                    // Someone else wrote what this read: a short, growing pause, then again.
                    conflicts += 1;
                    use_seen = false;
                    if conflicts >= MAX_ATTEMPTS {
                        return Err(E::from(StoreError::Backend(format!(
                            "etcd: gave up after {MAX_ATTEMPTS} attempts that conflicted with other writers"
                        ))));
                    }
                    tokio::time::sleep(Duration::from_micros(200 * u64::from(conflicts.min(20))))
                        .await;
                }
                Err(e) if transient(&e) && std::time::Instant::now() < give_up => {
                    // Perhaps applied, perhaps not: the fresh run's compares tell.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(E::from(backend(e))),
            }
            snap = Snapshot::default();
        }
    }
}

/// What one operation has fetched so far, all at one revision.
#[derive(Default)]
struct Snapshot {
    revision: i64,
    /// Value and modification revision of each key fetched; `None` when absent.
    keys: BTreeMap<Vec<u8>, Option<(Vec<u8>, i64)>>,
    /// Each range fetched: key, value and modification revision of every entry.
    ranges: BTreeMap<Vec<u8>, Vec<Entry>>,
}

/// A key, its value and its modification revision.
type Entry = (Vec<u8>, Vec<u8>, i64);

/// What a run needed and the snapshot lacked.
enum Miss {
    Key(Vec<u8>),
    Range(Vec<u8>),
}

/// One run of an operation over a snapshot: what it read (for the compares), what it
/// wrote, and what it missed.
struct Stm<'a> {
    store: &'a Inner,
    snap: &'a Snapshot,
    used_keys: RefCell<BTreeMap<Vec<u8>, i64>>,
    used_ranges: RefCell<Vec<Vec<u8>>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Set by a read that missed (reads take `&self`).
    missed: RefCell<Option<Miss>>,
}

/// The error a read returns when the snapshot lacks its key; the run is then abandoned.
fn missing() -> StoreError {
    StoreError::Backend("etcd: key not fetched yet".into())
}

impl<'a> Stm<'a> {
    fn new(store: &'a Inner, snap: &'a Snapshot) -> Self {
        Stm {
            store,
            snap,
            used_keys: RefCell::new(BTreeMap::new()),
            used_ranges: RefCell::new(Vec::new()),
            writes: BTreeMap::new(),
            missed: RefCell::new(None),
        }
    }

    fn note_miss(&self, miss: Miss) -> StoreError {
        let mut m = self.missed.borrow_mut();
        if m.is_none() {
            *m = Some(miss);
        }
        missing()
    }

    /// The compares that make the commit conditional on what was read.
    fn compares(&self) -> Vec<Compare> {
        let ranges = self.used_ranges.borrow();
        let mut compares = Vec::new();
        for p in ranges.iter() {
            // Nothing in the range is newer than the snapshot (no key added or changed)…
            compares.push(
                Compare::mod_revision(p.clone(), CompareOp::Less, self.snap.revision + 1)
                    .with_prefix(),
            );
            // …and every key it held is still there (a deletion leaves no newer key).
            for (k, _, rev) in self.snap.ranges.get(p).into_iter().flatten() {
                compares.push(Compare::mod_revision(k.clone(), CompareOp::Equal, *rev));
            }
        }
        compares.extend(
            self.used_keys
                .borrow()
                .iter()
                .filter(|(k, _)| !ranges.iter().any(|p| k.starts_with(p)))
                .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)),
        );
        compares
    }

    /// The transaction that applies the writes if nothing read has changed.
    fn commit_txn(&self) -> Result<Txn, StoreError> {
        let compares = self.compares();
        if compares.len() > MAX_TXN_OPS || self.writes.len() > MAX_TXN_OPS {
            return Err(StoreError::TooLarge);
        }
        let ops: Vec<TxnOp> = self
            .writes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            })
            .collect();
        Ok(Txn::new().when(compares).and_then(ops))
    }
}

impl KvRead for Stm<'_> {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = self.store.key(table, key);
        if let Some(w) = self.writes.get(&full) {
            return Ok(w.clone());
        }
        if let Some((_, entries)) = self.snap.ranges.iter().find(|(p, _)| full.starts_with(p)) {
            let found = entries.iter().find(|(k, _, _)| *k == full);
            self.used_keys
                .borrow_mut()
                .insert(full.clone(), found.map_or(0, |(_, _, rev)| *rev));
            return Ok(found.map(|(_, v, _)| v.clone()));
        }
        let Some(found) = self.snap.keys.get(&full) else {
            return Err(self.note_miss(Miss::Key(full)));
        };
        self.used_keys
            .borrow_mut()
            .insert(full, found.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(found.as_ref().map(|(v, _)| v.clone()))
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let base = self.store.table_prefix(table);
        let full = format!("{base}{prefix}").into_bytes();
        let Some(entries) = self.snap.ranges.get(&full) else {
            return Err(self.note_miss(Miss::Range(full)));
        };
        let mut found: BTreeMap<Vec<u8>, Option<Vec<u8>>> = entries
            .iter()
            .map(|(k, v, _)| (k.clone(), Some(v.clone())))
            .collect();
        for (k, v) in self.writes.range(full.clone()..) {
            if !k.starts_with(&full) {
                break;
            }
            found.insert(k.clone(), v.clone());
        }
        self.used_ranges.borrow_mut().push(full);
        found
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .map(|(k, v)| {
                let key = k
                    .get(base.len()..)
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        reason: "not a key of this store".into(),
                    })?;
                Ok((key.to_string(), v))
            })
            .collect()
    }
}

impl KvTxn for Stm<'_> {
    fn put(&mut self, table: Table, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.writes.insert(self.store.key(table, key), Some(value));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> Result<(), StoreError> {
        self.writes.insert(self.store.key(table, key), None);
        Ok(())
    }
}

impl KvStore for EtcdStore {
    async fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&dyn KvRead) -> Result<R, StoreError> + Send + Sync + 'static,
    ) -> Result<R, StoreError> {
        let read = move |t: &mut dyn KvTxn| f(t);
        self.inner.run(&read, false).await
    }

    /// etcd writes are durable when they are answered; `durable` changes nothing.
    async fn write<R, E>(
        &self,
        _durable: bool,
        f: impl Fn(&mut dyn KvTxn) -> Result<R, E> + Send + Sync + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.inner.run(&f, true).await
    }

    fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    fn keys_per_write(&self) -> Option<usize> {
        Some(MAX_TXN_OPS)
    }
}
