//! The embedded store: one redb file, each operation atomic and synced to disk before it
//! returns, so a decision acknowledged to a client survives a crash of the process.
//!
//! Writes go through one writer thread that commits the operations waiting at that moment in
//! one redb transaction (group commit): one disk sync serves many concurrent operations, and
//! each caller is answered only after that sync. Reads use redb's snapshots and never wait.
//!
//! Beside the tables of [`Table`], the file keeps the transactions not yet final in a table of
//! their own, written with them, so the coordinator's sweep reads only those and not every
//! finished transaction kept for late questions.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::kv::{self, KvRead, KvStore, KvTxn, Table};
use super::StoreError;
use crate::coordinator::model::GlobalTx;

const GLOBALS: TableDefinition<&str, &[u8]> = TableDefinition::new("globals");
const BRANCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("branches");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
const OWNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("owners");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The records of `globals` whose status is not final; rebuilt from `globals` at open.
const UNFINISHED: TableDefinition<&str, &[u8]> = TableDefinition::new("unfinished_globals");

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 256;

fn definition(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Globals => GLOBALS,
        Table::Branches => BRANCHES,
        Table::Locks => LOCKS,
        Table::Owners => OWNERS,
        Table::Nodes => NODES,
        Table::Meta => META,
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Called once the batch holding an operation committed (`None`) or failed (`Some`).
type Done = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// One queued operation: whether it must be on disk before its caller hears back, and the
/// work, which runs in the batch's transaction, says whether it failed after writing (which
/// spoils the whole batch), and how to answer its caller.
struct Job {
    durable: bool,
    run: Run,
}

/// Runs an operation in the batch's transaction: (failed after writing?, how to answer).
type Run = Box<dyn FnOnce(&mut Writer) -> (bool, Done) + Send>;

#[derive(Clone)]
pub struct EmbeddedStore {
    // Declared first so it drops first: the writer thread ends before the file is closed.
    writer: Arc<WriterThread>,
    db: Arc<Database>,
    writes: Arc<AtomicU64>,
}

/// The writer thread and its queue. Dropping the last handle closes the queue and waits for
/// the thread, so the file is free to open again at once.
struct WriterThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens the store file, creating it (and its directory) if needed, and starts its writer
    /// thread (which ends when the last handle is dropped).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| backend(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| backend(format!("{}: {e}", path.display())))?;
        // Create the tables once, so read transactions can always open them; build the table
        // of unfinished transactions afresh (a file written before it existed has none).
        let txn = db.begin_write().map_err(backend)?;
        for t in Table::ALL {
            txn.open_table(definition(t)).map_err(backend)?;
        }
        txn.delete_table(UNFINISHED).map_err(backend)?;
        {
            let globals = txn.open_table(GLOBALS).map_err(backend)?;
            let mut unfinished = txn.open_table(UNFINISHED).map_err(backend)?;
            for (key, value) in scan_table(&globals, "")? {
                if kv::is_unfinished(&value) {
                    unfinished
                        .insert(key.as_str(), value.as_slice())
                        .map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let writes = Arc::new(AtomicU64::new(0));
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = {
            let (db, writes) = (db.clone(), writes.clone());
            std::thread::Builder::new()
                .name("tandem-store".into())
                .spawn(move || writer_loop(&db, &writes, &queue))
                .map_err(backend)?
        };
        let writer = Arc::new(WriterThread {
            jobs: Some(jobs),
            thread: Some(thread),
        });
        Ok(EmbeddedStore { writer, db, writes })
    }

    /// The transactions not yet final.
    pub fn unfinished(&self) -> Result<Vec<GlobalTx>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(UNFINISHED).map_err(backend)?;
        scan_table(&t, "")?
            .into_iter()
            .map(|(key, value)| kv::decode(&key, &value))
            .collect()
    }
}

/// Commits queued operations in batches until every handle is gone.
fn writer_loop(db: &Database, writes: &AtomicU64, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|j| j.durable);
        let mut txn = db.begin_write().map_err(backend);
        if let Ok(t) = txn.as_mut() {
            let level = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            if let Err(e) = t.set_durability(level) {
                txn = Err(backend(e));
            }
        }
        let mut w = Writer { txn, changes: 0 };
        let mut answers = Vec::with_capacity(batch.len());
        let mut spoiled = false;
        let mut changed = 0u64;
        for job in batch {
            let before = w.changes;
            let (dirty, done) = (job.run)(&mut w);
            spoiled |= dirty;
            if w.changes != before {
                changed += 1;
            }
            answers.push(done);
        }
        let outcome = match w.txn {
            Err(e) => Some(e),
            Ok(txn) if spoiled => {
                let _ = txn.abort();
                Some(StoreError::Backend(
                    "a store operation failed half-way; its batch was not committed".into(),
                ))
            }
            Ok(txn) if w.changes == 0 => txn.abort().err().map(backend),
            Ok(txn) => match txn.commit() {
                Ok(()) => {
                    writes.fetch_add(changed, Ordering::Relaxed);
                    None
                }
                Err(e) => Some(backend(e)),
            },
        };
        for done in answers {
            done(outcome.clone());
        }
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

/// The batch's write transaction (or why there is none), and how many writes it holds.
struct Writer {
    txn: Result<redb::WriteTransaction, StoreError>,
    changes: u64,
}

impl Writer {
    fn txn(&self) -> Result<&redb::WriteTransaction, StoreError> {
        self.txn.as_ref().map_err(Clone::clone)
    }
}

impl KvRead for Writer {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn()?.open_table(definition(table)).map_err(backend)?;
        let v = t.get(key).map_err(backend)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.txn()?.open_table(definition(table)).map_err(backend)?;
        scan_table(&t, prefix)
    }
}

impl Writer {
    /// Keeps the table of unfinished transactions in step with a write to `globals`.
    fn follow_global(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let mut t = self.txn()?.open_table(UNFINISHED).map_err(backend)?;
        match value.filter(|v| kv::is_unfinished(v)) {
            Some(v) => t.insert(key, v).map(|_| ()),
            None => t.remove(key).map(|_| ()),
        }
        .map_err(backend)
    }
}

impl KvTxn for Writer {
    fn put(&mut self, table: Table, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        {
            let mut t = self.txn()?.open_table(definition(table)).map_err(backend)?;
            t.insert(key, value.as_slice()).map_err(backend)?;
        }
        if table == Table::Globals {
            self.follow_global(key, Some(&value))?;
        }
        self.changes += 1;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> Result<(), StoreError> {
        {
            let mut t = self.txn()?.open_table(definition(table)).map_err(backend)?;
            t.remove(key).map_err(backend)?;
        }
        if table == Table::Globals {
            self.follow_global(key, None)?;
        }
        self.changes += 1;
        Ok(())
    }
}

impl KvStore for EmbeddedStore {
    async fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&dyn KvRead) -> Result<R, StoreError> + Send + Sync + 'static,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        f(&Reader(txn))
    }

    async fn write<R, E>(
        &self,
        durable: bool,
        f: impl Fn(&mut dyn KvTxn) -> Result<R, E> + Send + Sync + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R, E>>();
        let run: Run = Box::new(move |w: &mut Writer| {
            let before = w.changes;
            let result = f(w);
            let dirty = result.is_err() && w.changes != before;
            let done: Done = Box::new(move |failure| {
                let answer = match failure {
                    None => result,
                    Some(e) => Err(E::from(e)),
                };
                let _ = tx.send(answer);
            });
            (dirty, done)
        });
        let job = Job { durable, run };
        let stopped = || E::from(StoreError::Backend("the store writer has stopped".into()));
        match &self.writer.jobs {
            Some(jobs) if jobs.send(job).is_ok() => {}
            _ => return Err(stopped()),
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
