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
//! holds no key modified after the snapshot. When something did change, the operation runs
//! again on fresh data. So every operation is one atomic etcd write, or none when it fails or
//! changes nothing.
//!
//! etcd refuses a `Txn` with more than 128 compares or 128 operations (its default
//! `--max-txn-ops`, which also bounds nested `Txn`s). An operation that would need more
//! fails with [`StoreError::TooLarge`] before anything is sent, and the store's callers split
//! it where splitting is safe: a branch with more row locks registers in steps (see
//! `register_in_steps` in the parent module), and releases go a slice at a time.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    TlsOptions, Txn, TxnOp,
};
use tokio::runtime::Handle;

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
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
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
}

impl Inner {
    fn table_prefix(&self, table: Table) -> String {
        format!("{}{}/", self.prefix, table.name())
    }

    fn key(&self, table: Table, key: &str) -> Vec<u8> {
        format!("{}{key}", self.table_prefix(table)).into_bytes()
    }

    /// Runs `f` until it commits, fails, or other writers keep changing what it reads.
    fn run<R, E: From<StoreError>>(
        &self,
        handle: &Handle,
        f: &dyn Fn(&mut dyn KvTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let give_up = std::time::Instant::now() + UNAVAILABLE_PATIENCE;
        let mut attempt = 0;
        while attempt < MAX_ATTEMPTS {
            let mut stm = Stm::new(self, handle);
            let outcome = f(&mut stm).and_then(|value| {
                if stm.writes.is_empty() {
                    return Ok(Some(value));
                }
                Ok(stm.commit().map_err(E::from)?.then_some(value))
            });
            match outcome {
                Ok(Some(value)) => {
                    if !stm.writes.is_empty() {
                        self.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Err(e) if !stm.unavailable.get() || std::time::Instant::now() > give_up => {
                    return Err(e)
                }
                // The cluster could not answer: wait a little and ask again.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
                // Someone else wrote what this read: a short, growing pause, then again.
                Ok(None) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_micros(200 * u64::from(attempt.min(20))));
                }
            }
        }
        Err(E::from(StoreError::Backend(format!(
            "etcd: gave up after {MAX_ATTEMPTS} attempts that conflicted with other writers"
        ))))
    }
}

/// What an operation read: the snapshot revision, each key's modification revision, and the
/// ranges it scanned.
#[derive(Default)]
struct ReadSet {
    revision: i64,
    keys: BTreeMap<Vec<u8>, i64>,
    ranges: Vec<Vec<u8>>,
}

/// One attempt of an operation.
struct Stm<'a> {
    store: &'a Inner,
    handle: &'a Handle,
    reads: RefCell<ReadSet>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Set when a request failed because the cluster could not answer.
    unavailable: Cell<bool>,
}

impl<'a> Stm<'a> {
    fn new(store: &'a Inner, handle: &'a Handle) -> Self {
        Stm {
            store,
            handle,
            reads: RefCell::new(ReadSet::default()),
            writes: BTreeMap::new(),
            unavailable: Cell::new(false),
        }
    }

    fn failed(&self, e: etcd_client::Error) -> StoreError {
        if transient(&e) {
            self.unavailable.set(true);
        }
        backend(e)
    }

    /// Reads at the snapshot revision (the first read fixes it).
    fn fetch(&self, key: Vec<u8>, mut opts: GetOptions) -> Result<Vec<KeyValue>, StoreError> {
        let revision = self.reads.borrow().revision;
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let mut kv = self.store.client.kv_client();
        let mut resp = self
            .handle
            .block_on(kv.get(key, Some(opts)))
            .map_err(|e| self.failed(e))?;
        if revision == 0 {
            let now = resp.header().map_or(0, |h| h.revision());
            self.reads.borrow_mut().revision = now;
        }
        Ok(resp.take_kvs())
    }

    /// The compares that make the commit conditional on what was read.
    fn compares(&self) -> Vec<Compare> {
        let reads = self.reads.borrow();
        let mut compares: Vec<Compare> = reads
            .ranges
            .iter()
            .map(|p| {
                Compare::mod_revision(p.clone(), CompareOp::Less, reads.revision + 1).with_prefix()
            })
            .collect();
        compares.extend(
            reads
                .keys
                .iter()
                .filter(|(k, _)| !reads.ranges.iter().any(|p| k.starts_with(p)))
                .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)),
        );
        compares
    }

    /// Applies the writes if nothing read has changed. False when something had.
    fn commit(&self) -> Result<bool, StoreError> {
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
        let mut kv = self.store.client.kv_client();
        let resp = self
            .handle
            .block_on(kv.txn(Txn::new().when(compares).and_then(ops)))
            .map_err(|e| self.failed(e))?;
        Ok(resp.succeeded())
    }
}

impl KvRead for Stm<'_> {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = self.store.key(table, key);
        if let Some(w) = self.writes.get(&full) {
            return Ok(w.clone());
        }
        let kvs = self.fetch(full.clone(), GetOptions::new())?;
        let found = kvs.into_iter().next();
        self.reads
            .borrow_mut()
            .keys
            .insert(full, found.as_ref().map_or(0, |kv| kv.mod_revision()));
        Ok(found.map(|kv| kv.into_key_value().1))
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let base = self.store.table_prefix(table);
        let full = format!("{base}{prefix}").into_bytes();
        let kvs = self.fetch(full.clone(), GetOptions::new().with_prefix())?;
        let mut found = BTreeMap::new();
        for kv in kvs {
            let (k, v) = kv.into_key_value();
            found.insert(k, Some(v));
        }
        for (k, v) in self.writes.range(full.clone()..) {
            if !k.starts_with(&full) {
                break;
            }
            found.insert(k.clone(), v.clone());
        }
        self.reads.borrow_mut().ranges.push(full);
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
        let (inner, handle) = (self.inner.clone(), Handle::current());
        tokio::task::spawn_blocking(move || {
            let give_up = std::time::Instant::now() + UNAVAILABLE_PATIENCE;
            loop {
                let stm = Stm::new(&inner, &handle);
                match f(&stm) {
                    Err(_) if stm.unavailable.get() && std::time::Instant::now() < give_up => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    r => return r,
                }
            }
        })
        .await
        .map_err(backend)?
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
        let (inner, handle) = (self.inner.clone(), Handle::current());
        tokio::task::spawn_blocking(move || inner.run(&handle, &f))
            .await
            .unwrap_or_else(|e| Err(E::from(backend(e))))
    }

    fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    fn keys_per_write(&self) -> Option<usize> {
        Some(MAX_TXN_OPS)
    }
}
