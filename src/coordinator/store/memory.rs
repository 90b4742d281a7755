//! An in-memory store: the same rules as the embedded store, nothing on disk. For tests, and
//! for runs that need no durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::kv::{KvRead, KvStore, KvTxn, Table};
use super::StoreError;

type Tables = HashMap<Table, BTreeMap<String, Vec<u8>>>;

#[derive(Clone, Default)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
    writes: Arc<AtomicU64>,
    keys_per_write: Option<usize>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that, like etcd, refuses writes changing more than `n` keys: to exercise the
    /// split paths without etcd.
    pub fn with_keys_per_write(n: usize) -> Self {
        MemoryStore {
            keys_per_write: Some(n),
            ..Self::default()
        }
    }
}

struct Snapshot<'a>(&'a Tables);

impl KvRead for Snapshot<'_> {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .0
            .get(&table)
            .map(|t| {
                t.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Writes are kept aside until commit, so a failed operation changes nothing.
struct Overlay<'a> {
    base: Snapshot<'a>,
    changes: BTreeMap<(Table, String), Option<Vec<u8>>>,
}

impl KvRead for Overlay<'_> {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.changes.get(&(table, key.to_string())) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(table, key),
        }
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut merged: BTreeMap<String, Vec<u8>> =
            self.base.scan(table, prefix)?.into_iter().collect();
        for ((t, k), v) in self.changes.range((table, prefix.to_string())..) {
            if *t != table || !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

impl KvTxn for Overlay<'_> {
    fn put(&mut self, table: Table, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.changes.insert((table, key.to_string()), Some(value));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> Result<(), StoreError> {
        self.changes.insert((table, key.to_string()), None);
        Ok(())
    }
}

fn lock(m: &Mutex<Tables>) -> std::sync::MutexGuard<'_, Tables> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KvStore for MemoryStore {
    async fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&dyn KvRead) -> Result<R, StoreError> + Send + Sync + 'static,
    ) -> Result<R, StoreError> {
        let tables = lock(&self.tables);
        f(&Snapshot(&tables))
    }

    async fn write<R, E>(
        &self,
        _durable: bool,
        f: impl Fn(&mut dyn KvTxn) -> Result<R, E> + Send + Sync + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let mut tables = lock(&self.tables);
        let (result, changes) = {
            let mut txn = Overlay {
                base: Snapshot(&tables),
                changes: BTreeMap::new(),
            };
            let r = f(&mut txn);
            (r, txn.changes)
        };
        let value = result?;
        if self.keys_per_write.is_some_and(|n| changes.len() > n) {
            return Err(E::from(StoreError::TooLarge));
        }
        if !changes.is_empty() {
            for ((table, key), v) in changes {
                let t = tables.entry(table).or_default();
                match v {
                    Some(v) => t.insert(key, v),
                    None => t.remove(&key),
                };
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(value)
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn keys_per_write(&self) -> Option<usize> {
        self.keys_per_write
    }
}
