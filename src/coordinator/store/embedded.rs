//! The embedded store: one redb file, each operation one ACID transaction synced to disk
//! before it returns, so a decision acknowledged to a client survives a crash of the process.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::kv::{KvRead, KvStore, KvTxn, Table};
use super::StoreError;

const GLOBALS: TableDefinition<&str, &[u8]> = TableDefinition::new("globals");
const BRANCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("branches");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");

fn definition(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Globals => GLOBALS,
        Table::Branches => BRANCHES,
        Table::Locks => LOCKS,
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Opens the store file, creating it (and its directory) if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| backend(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| backend(format!("{}: {e}", path.display())))?;
        // Create the tables once, so read transactions can always open them.
        let txn = db.begin_write().map_err(backend)?;
        for t in Table::ALL {
            txn.open_table(definition(t)).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            writes: Arc::new(AtomicU64::new(0)),
        })
    }
}

fn scan_table(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.range(prefix..).map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

struct Reader(redb::ReadTransaction);

impl KvRead for Reader {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.open_table(definition(table)).map_err(backend)?;
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.0.open_table(definition(table)).map_err(backend)?;
        scan_table(&t, prefix)
    }
}

struct Writer {
    txn: redb::WriteTransaction,
    changed: bool,
}

impl KvRead for Writer {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn.open_table(definition(table)).map_err(backend)?;
        let v = t.get(key).map_err(backend)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.txn.open_table(definition(table)).map_err(backend)?;
        scan_table(&t, prefix)
    }
}

impl KvTxn for Writer {
    fn put(&mut self, table: Table, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(definition(table)).map_err(backend)?;
        t.insert(key, value.as_slice()).map_err(backend)?;
        self.changed = true;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(definition(table)).map_err(backend)?;
        t.remove(key).map_err(backend)?;
        self.changed = true;
        Ok(())
    }
}

impl KvStore for EmbeddedStore {
    fn read<R>(
        &self,
        f: impl FnOnce(&dyn KvRead) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        f(&Reader(txn))
    }

    fn write<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut dyn KvTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut w = Writer {
            txn,
            changed: false,
        };
        match f(&mut w) {
            Ok(v) => {
                if w.changed {
                    w.txn.commit().map_err(backend)?;
                    self.writes.fetch_add(1, Ordering::Relaxed);
                } else {
                    w.txn.abort().map_err(backend)?;
                }
                Ok(v)
            }
            Err(e) => {
                // Dropping an uncommitted transaction discards it; abort says so explicitly.
                let _ = w.txn.abort();
                Err(e)
            }
        }
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
