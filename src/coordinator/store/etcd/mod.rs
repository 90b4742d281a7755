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
//! The rules are plain synchronous functions, and etcd answers over the network. A write's
//! rule first runs on the process's [`cache`] of the store, kept current by a watch, so it
//! normally costs one round trip: its commit. When the commit finds that something read had
//! changed, the failed `Txn` answers the current values of everything read, and the rule runs
//! again on those. Reads that must be current (a status, a listing) go to etcd: a rule runs
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

mod batch;
mod cache;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions,
    TxnOp, TxnOpResponse,
};

use self::batch::{Answer, Commit, Committer};
pub use self::cache::Subscriber;
use self::cache::{prefix_end, Cache};
use super::kv::{self, Applied, KvRead, KvStore, KvTxn, Table};
use super::StoreError;
use crate::config;
use crate::coordinator::model::{Branch, GlobalTx};

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
    /// Operations run again after a conflict with another writer.
    retries: AtomicU64,
    cache: Arc<Cache>,
    committer: Committer,
    /// Dropped with the store, which stops the cache's watch.
    _closed: tokio::sync::watch::Sender<()>,
}

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
        let mut client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(backend)?;
        // Loading the cache is also the check that the cluster answers.
        let prefix = cfg.key_prefix();
        let cache = Cache::new(&prefix);
        cache.load(&mut client).await.map_err(backend)?;
        let (closed, on_close) = tokio::sync::watch::channel(());
        tokio::spawn(cache.clone().follow(client.clone(), on_close));
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                committer: Committer::start(client.clone()),
                client,
                prefix,
                writes: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                cache,
                _closed: closed,
            }),
        })
    }

    /// The etcd client, for watches and leases.
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The full key of `key` in `table`.
    pub fn key(&self, table: Table, key: &str) -> Vec<u8> {
        self.inner.key(table, key)
    }

    /// Calls `f` with every change to the store, as the watch that keeps the cache current
    /// sees it.
    pub fn subscribe(&self, f: Subscriber) {
        self.inner.cache.subscribe(f);
    }

    /// The branches of `xid` from the cache, when it has applied every change up to revision
    /// `seen` and holds them whole.
    pub fn cached_branches(&self, xid: &str, seen: i64) -> Option<Vec<Branch>> {
        let view = self
            .inner
            .cache
            .range(&self.key(Table::Branches, &kv::branch_prefix(xid)))?;
        if view.at < seen {
            return None;
        }
        view.entries
            .iter()
            .map(|(_, v, _)| serde_json::from_slice(v).ok())
            .collect()
    }

    /// A global transaction as this process last saw it, without asking etcd: may be stale,
    /// and is `None` for finished ones. Good for deciding what to look at, not for answers.
    /// The transactions not yet final, from the cache (which keeps no others), when it is
    /// loaded and every record in it reads.
    pub fn cached_unfinished(&self) -> Option<Vec<GlobalTx>> {
        let prefix = self.inner.table_prefix(Table::Globals).into_bytes();
        self.inner
            .cache
            .values_under(&prefix)?
            .iter()
            .map(|v| serde_json::from_slice(v).ok())
            .collect()
    }

    /// Operations run again so far because another writer changed what they read.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    pub fn cached_global(&self, xid: &str) -> Option<GlobalTx> {
        let (value, _) = self.inner.cache.get(&self.key(Table::Globals, xid))?;
        serde_json::from_slice(&value?).ok()
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
        snap.insert(miss, entries(resp.take_kvs()));
        Ok(())
    }

    /// Runs `f` until it has everything it reads, then commits its writes; again from fresh
    /// data when another writer changed what it read. `commit: false` only reads, from etcd.
    async fn run<R, E: From<StoreError>>(
        &self,
        f: &(dyn Fn(&mut dyn KvTxn) -> Result<R, E> + Send + Sync),
        commit: bool,
    ) -> Result<R, E> {
        let give_up = std::time::Instant::now() + UNAVAILABLE_PATIENCE;
        let mut snap = Snapshot::default();
        let mut conflicts = 0;
        // A write starts from the cache; after a conflict, and for reads, only etcd counts.
        let mut use_cache = commit;
        loop {
            let mut stm = Stm::new(self, &snap, use_cache);
            let result = f(&mut stm);
            let missed = stm.missed.borrow_mut().take();
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
            let writes_nothing = stm.writes.is_empty() && stm.conditionals.is_empty();
            if stm.from_cache.get() && (result.is_err() || writes_nothing) {
                // An outcome that writes nothing is an answer about what was read: read it
                // from etcd before giving it.
                use_cache = false;
                continue;
            }
            let value = result?;
            if !commit || writes_nothing {
                return Ok(value);
            }
            let (commit, reads) = stm.commit().map_err(E::from)?;
            let mut writes = std::mem::take(&mut stm.writes);
            let conditionals = std::mem::take(&mut stm.conditionals);
            drop(stm);
            match self.committer.commit(commit).await {
                Ok(answer) if answer.succeeded => {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    // The conditional puts' answers follow the writes'.
                    let nested = answer.responses.iter().skip(writes.len());
                    for (c, op) in conditionals.into_iter().zip(nested) {
                        if matches!(op, TxnOpResponse::Txn(t) if t.succeeded()) {
                            c.applied.set(true);
                            writes.insert(c.key, Some(c.value));
                        }
                    }
                    self.cache.wrote(answer.revision, &writes);
                    return Ok(value);
                }
                Ok(answer) => {
                    // Someone else wrote what this read. The failed transaction answered what
                    // those keys hold now: run again on that, after a short, growing pause
                    // when this keeps happening.
                    conflicts += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    use_cache = false;
                    if conflicts >= MAX_ATTEMPTS {
                        return Err(E::from(StoreError::Backend(format!(
                            "etcd: gave up after {MAX_ATTEMPTS} attempts that conflicted with other writers"
                        ))));
                    }
                    snap = Snapshot::answered(answer, reads);
                    if conflicts > 1 {
                        tokio::time::sleep(Duration::from_micros(
                            200 * u64::from(conflicts.min(20)),
                        ))
                        .await;
                    }
                }
                Err(e) if e.transient && std::time::Instant::now() < give_up => {
                    // Perhaps applied, perhaps not: the fresh run's compares tell.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    snap = Snapshot::default();
                }
                Err(e) => return Err(E::from(backend(e.message))),
            }
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

impl Snapshot {
    /// The values a failed commit answered for `reads` (its `or_else` gets, in order).
    fn answered(answer: Answer, reads: Vec<Miss>) -> Snapshot {
        let mut snap = Snapshot {
            revision: answer.revision,
            ..Snapshot::default()
        };
        for (read, op) in reads.into_iter().zip(answer.responses) {
            if let TxnOpResponse::Get(mut got) = op {
                snap.insert(read, entries(got.take_kvs()));
            }
        }
        snap
    }

    /// Keeps what etcd answered for `read`.
    fn insert(&mut self, read: Miss, kvs: Vec<Entry>) {
        match read {
            Miss::Key(k) => {
                let found = kvs.into_iter().next().map(|(_, v, rev)| (v, rev));
                self.keys.insert(k, found);
            }
            Miss::Range(p) => {
                self.ranges.insert(p, kvs);
            }
        }
    }
}

/// A key, its value and its modification revision.
type Entry = (Vec<u8>, Vec<u8>, i64);

fn entries(kvs: Vec<etcd_client::KeyValue>) -> Vec<Entry> {
    kvs.into_iter()
        .map(|kv| {
            let rev = kv.mod_revision();
            let (k, v) = kv.into_key_value();
            (k, v, rev)
        })
        .collect()
}

/// A read the snapshot could not serve: one key, or every key under a prefix.
enum Miss {
    Key(Vec<u8>),
    Range(Vec<u8>),
}

/// A range as one run read it: complete up to revision `at`; keys newer than that (this
/// process's own writes, from the cache) are named one by one.
struct RangeRead {
    prefix: Vec<u8>,
    at: i64,
    keys: Vec<(Vec<u8>, i64)>,
}

/// One run of an operation over a snapshot (and the cache): what it read (for the
/// compares), what it wrote, and what it missed.
struct Stm<'a> {
    store: &'a Inner,
    snap: &'a Snapshot,
    use_cache: bool,
    /// Whether anything read came from the cache.
    from_cache: Cell<bool>,
    used_keys: RefCell<BTreeMap<Vec<u8>, i64>>,
    used_ranges: RefCell<Vec<RangeRead>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Puts that apply only if a range holds nothing else then ([`KvTxn::put_if_alone`]):
    /// each a `Txn` nested after the writes.
    conditionals: Vec<Conditional>,
    /// Set by a read that missed (reads take `&self`).
    missed: RefCell<Option<Miss>>,
}

/// A put conditional on a range holding no key but `except`, checked by etcd as it applies
/// the commit.
struct Conditional {
    key: Vec<u8>,
    value: Vec<u8>,
    prefix: Vec<u8>,
    except: Vec<Vec<u8>>,
    applied: Applied,
}

impl Conditional {
    /// The compares: no key (`version` 0 is what etcd compares a missing key as) in each
    /// stretch of the range between the keys excepted. etcd evaluates every compare of a
    /// request before any of its writes, so the commit's own deletions are not seen.
    fn txn(&self) -> etcd_client::Txn {
        let mut except = self.except.clone();
        except.sort();
        let mut compares = Vec::with_capacity(except.len() + 1);
        let mut start = self.prefix.clone();
        for k in except {
            compares.push(Compare::version(start, CompareOp::Equal, 0).with_range(k.clone()));
            start = [k.as_slice(), &[0]].concat();
        }
        compares.push(
            Compare::version(start, CompareOp::Equal, 0).with_range(prefix_end(&self.prefix)),
        );
        etcd_client::Txn::new()
            .when(compares)
            .and_then(vec![TxnOp::put(self.key.clone(), self.value.clone(), None)])
    }
}

/// The error a read returns when the snapshot lacks its key; the run is then abandoned.
fn missing() -> StoreError {
    StoreError::Backend("etcd: key not fetched yet".into())
}

impl<'a> Stm<'a> {
    fn new(store: &'a Inner, snap: &'a Snapshot, use_cache: bool) -> Self {
        Stm {
            store,
            snap,
            use_cache,
            from_cache: Cell::new(false),
            used_keys: RefCell::new(BTreeMap::new()),
            used_ranges: RefCell::new(Vec::new()),
            writes: BTreeMap::new(),
            conditionals: Vec::new(),
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
        let mut compares = Vec::new();
        for r in self.used_ranges.borrow().iter() {
            let mut start = r.prefix.clone();
            for (k, rev) in &r.keys {
                // Every key the read saw is still there as it was (a deletion leaves no newer
                // key for the range compare to notice)…
                compares.push(Compare::mod_revision(k.clone(), CompareOp::Equal, *rev));
                if *rev > r.at {
                    // …one written after `at` is left out of the range compare…
                    compares.push(
                        Compare::mod_revision(start, CompareOp::Less, r.at + 1)
                            .with_range(k.clone()),
                    );
                    start = [k.as_slice(), &[0]].concat();
                }
            }
            // …and nothing else in the range is newer than `at` (no key added or changed).
            compares.push(
                Compare::mod_revision(start, CompareOp::Less, r.at + 1)
                    .with_range(prefix_end(&r.prefix)),
            );
        }
        compares.extend(
            self.used_keys
                .borrow()
                .iter()
                .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)),
        );
        compares
    }

    /// The commit that applies the writes if nothing read has changed, and otherwise answers
    /// what was read as it is now; with those reads, in the order answered.
    fn commit(&self) -> Result<(Commit, Vec<Miss>), StoreError> {
        let compares = self.compares();
        let mut reads: Vec<Miss> = self
            .used_ranges
            .borrow()
            .iter()
            .map(|r| Miss::Range(r.prefix.clone()))
            .collect();
        reads.extend(self.used_keys.borrow().keys().cloned().map(Miss::Key));
        let conditional_compares = self
            .conditionals
            .iter()
            .map(|c| c.except.len() + 1)
            .max()
            .unwrap_or(0);
        if compares.len() > MAX_TXN_OPS
            || self.writes.len() + self.conditionals.len() > MAX_TXN_OPS
            || reads.len() > MAX_TXN_OPS
            || conditional_compares > MAX_TXN_OPS
        {
            return Err(StoreError::TooLarge);
        }
        let ops: Vec<TxnOp> = self
            .writes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            })
            .chain(self.conditionals.iter().map(|c| TxnOp::txn(c.txn())))
            .collect();
        let gets: Vec<TxnOp> = reads
            .iter()
            .map(|r| match r {
                Miss::Key(k) => TxnOp::get(k.clone(), None),
                Miss::Range(p) => TxnOp::get(p.clone(), Some(GetOptions::new().with_prefix())),
            })
            .collect();
        let mut keys = Vec::new();
        let mut ranges = Vec::new();
        for r in &reads {
            match r {
                Miss::Key(k) => keys.push(k.clone()),
                Miss::Range(p) => ranges.push(p.clone()),
            }
        }
        // A conditional put reads its range (so it shares no batch with a writer of it) and
        // writes its key.
        ranges.extend(self.conditionals.iter().map(|c| c.prefix.clone()));
        let commit = Commit {
            compares,
            ops,
            gets,
            reads: keys,
            ranges,
            writes: self
                .writes
                .keys()
                .chain(self.conditionals.iter().map(|c| &c.key))
                .cloned()
                .collect(),
            bytes: self
                .writes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .chain(
                    self.conditionals
                        .iter()
                        .map(|c| c.key.len() + c.value.len()),
                )
                .sum(),
        };
        Ok((commit, reads))
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
        if let Some(found) = self.snap.keys.get(&full) {
            self.used_keys
                .borrow_mut()
                .insert(full, found.as_ref().map_or(0, |(_, rev)| *rev));
            return Ok(found.as_ref().map(|(v, _)| v.clone()));
        }
        if let Some((value, rev)) = self
            .use_cache
            .then(|| self.store.cache.get(&full))
            .flatten()
        {
            self.from_cache.set(true);
            self.used_keys.borrow_mut().insert(full, rev);
            return Ok(value);
        }
        Err(self.note_miss(Miss::Key(full)))
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let base = self.store.table_prefix(table);
        let full = format!("{base}{prefix}").into_bytes();
        let (at, entries) = if let Some(entries) = self.snap.ranges.get(&full) {
            (self.snap.revision, entries.clone())
        } else if let Some(view) = self
            .use_cache
            .then(|| self.store.cache.range(&full))
            .flatten()
        {
            self.from_cache.set(true);
            (view.at, view.entries)
        } else {
            return Err(self.note_miss(Miss::Range(full)));
        };
        self.used_ranges.borrow_mut().push(RangeRead {
            prefix: full.clone(),
            at,
            keys: entries
                .iter()
                .map(|(k, _, rev)| (k.clone(), *rev))
                .collect(),
        });
        let mut found: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            entries.into_iter().map(|(k, v, _)| (k, Some(v))).collect();
        for (k, v) in self.writes.range(full.clone()..) {
            if !k.starts_with(&full) {
                break;
            }
            found.insert(k.clone(), v.clone());
        }
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

    fn put_if_alone(
        &mut self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        under: Table,
        prefix: &str,
        except: &[String],
    ) -> Result<Applied, StoreError> {
        let applied = Applied::default();
        self.conditionals.push(Conditional {
            key: self.store.key(table, key),
            value,
            prefix: format!("{}{prefix}", self.store.table_prefix(under)).into_bytes(),
            except: except.iter().map(|k| self.store.key(under, k)).collect(),
            applied: applied.clone(),
        });
        Ok(applied)
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
