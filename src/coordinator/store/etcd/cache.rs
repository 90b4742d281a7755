//! A copy of the store's keys in this process, kept current by one etcd watch.
//!
//! Every operation of the etcd store is an optimistic transaction: it reads, then commits
//! only if nothing it read has changed (see the parent module). So a read need not come from
//! etcd: any value with its modification revision will do, because the commit compares that
//! revision and refuses the write when the value was stale. The cache serves those reads
//! from memory, so an operation is normally one round trip, its commit.
//!
//! What the cache may get wrong, and why that is safe:
//! - A key's value may be stale, or the cache may call a key absent that exists (it drops
//!   finished global transactions to stay small): a write built on it fails its compare and
//!   runs again on fresh reads. An operation that ends without writing (an error, a status
//!   found) is run again on fresh reads before it answers: its answer is what it read.
//! - Range reads (a transaction's branches) must not miss a key: a range compare only sees
//!   keys changed *after* the revision it names. So ranges are served only from tables the
//!   cache holds whole, at `revision`, up to which every watch event has been applied.
//!
//! This process's own writes go into the cache as soon as etcd answers them, before the watch
//! brings them back, so an operation sees what the one before it on the same sidecar wrote.
//! They can be newer than `revision`; a range read then names them one by one (see
//! [`RangeView`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use crate::coordinator::store::kv::{self, Table};

/// How the watch reports a change to whoever subscribed: table, key within the table, the
/// new value (`None`: deleted), and its revision; the cache has applied it already.
pub type Subscriber = Arc<dyn Fn(Table, &str, Option<&[u8]>, i64) + Send + Sync>;

/// A change as the watch brought it: table, key within the table, value, revision.
type Change = (Table, String, Option<Vec<u8>>, i64);

/// Keys fetched per request while loading.
const LOAD_PAGE: i64 = 1000;

pub struct Cache {
    prefix: Vec<u8>,
    state: Mutex<State>,
    subscribers: Mutex<Vec<Subscriber>>,
}

#[derive(Default)]
struct State {
    /// 0 while the cache is not loaded (or reloading): then nothing is served from it.
    revision: i64,
    /// Full key → value (`None`: deleted by this process at a revision newer than
    /// `revision`, kept so an older event cannot bring the key back) and mod revision.
    entries: BTreeMap<Vec<u8>, Slot>,
    /// Keys deleted by this process and not yet passed by the watch.
    tombstones: Vec<(i64, Vec<u8>)>,
    /// The newest revision this process wrote at: etcd answered it, so an etcd that is
    /// below it now is not the cluster the copy came from, however far the watch got.
    written: i64,
}

struct Slot {
    value: Option<Vec<u8>>,
    rev: i64,
}

/// A range read from the cache: the live keys with their mod revisions, and the revision up
/// to which the range is complete. Keys newer than `at` are this process's own writes.
pub struct RangeView {
    pub at: i64,
    pub entries: Vec<(Vec<u8>, Vec<u8>, i64)>,
}

impl Cache {
    pub fn new(prefix: &str) -> Arc<Cache> {
        Arc::new(Cache {
            prefix: prefix.as_bytes().to_vec(),
            state: Mutex::new(State::default()),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` for every change the watch brings from now on.
    pub fn subscribe(&self, f: Subscriber) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    /// A key's value (`None`: absent) and mod revision (0 when absent); `None` when the cache
    /// is not loaded.
    pub fn get(&self, key: &[u8]) -> Option<(Option<Vec<u8>>, i64)> {
        let state = self.state();
        if state.revision == 0 {
            return None;
        }
        Some(match state.entries.get(key) {
            Some(Slot {
                value: Some(v),
                rev,
            }) => (Some(v.clone()), *rev),
            _ => (None, 0),
        })
    }

    /// Every live key under `prefix`, when the cache holds that table whole.
    pub fn range(&self, prefix: &[u8]) -> Option<RangeView> {
        let table = self.table_of(prefix)?;
        if !holds_whole(table) {
            return None;
        }
        let state = self.state();
        if state.revision == 0 {
            return None;
        }
        let entries = state
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k.clone(), v.clone(), s.rev)))
            .collect();
        Some(RangeView {
            at: state.revision,
            entries,
        })
    }

    /// Every value the cache holds under `prefix`, when it is loaded.
    pub fn values_under(&self, prefix: &[u8]) -> Option<Vec<Vec<u8>>> {
        let state = self.state();
        if state.revision == 0 {
            return None;
        }
        Some(
            state
                .entries
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, slot)| slot.value.clone())
                .collect(),
        )
    }

    /// Records this process's own committed writes (all at revision `rev`).
    pub fn wrote(&self, rev: i64, writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        let mut state = self.state();
        if state.revision == 0 {
            return;
        }
        state.written = state.written.max(rev);
        for (key, value) in writes {
            let keep = value.as_deref().filter(|v| self.keeps(key, v));
            state.set(key, keep.map(<[u8]>::to_vec), rev);
        }
    }

    fn table_of(&self, key: &[u8]) -> Option<Table> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        Table::ALL.into_iter().find(|t| {
            rest.starts_with(t.name().as_bytes()) && rest.get(t.name().len()) == Some(&b'/')
        })
    }

    /// Whether a value is worth keeping: finished global transactions are not (nothing
    /// writes them again; they only wait to be forgotten).
    fn keeps(&self, key: &[u8], value: &[u8]) -> bool {
        self.table_of(key) != Some(Table::Globals) || kv::is_unfinished(value)
    }

    /// Loads every key under the prefix, page by page, at one revision; returns it.
    pub async fn load(&self, client: &mut Client) -> Result<i64, etcd_client::Error> {
        let end = prefix_end(&self.prefix);
        let mut from = self.prefix.clone();
        let mut revision = 0;
        let mut entries = BTreeMap::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LOAD_PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = client.get(from.clone(), Some(opts)).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            for kv in resp.take_kvs() {
                let rev = kv.mod_revision();
                let (k, v) = kv.into_key_value();
                from = k.clone();
                from.push(0);
                if self.keeps(&k, &v) {
                    entries.insert(
                        k,
                        Slot {
                            value: Some(v),
                            rev,
                        },
                    );
                }
            }
            if !more {
                break;
            }
        }
        let mut state = self.state();
        *state = State {
            revision: revision.max(1),
            entries,
            tombstones: Vec::new(),
            written: 0,
        };
        Ok(revision)
    }

    /// Applies one watch response's events; the cache is then complete up to the newest.
    fn apply(&self, events: &[etcd_client::Event]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut state = self.state();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let rev = kv.mod_revision();
            let value = (event.event_type() == EventType::Put).then(|| kv.value());
            let keep = value.filter(|v| self.keeps(kv.key(), v));
            state.set(kv.key(), keep.map(<[u8]>::to_vec), rev);
            state.revision = state.revision.max(rev);
            if let Some(table) = self.table_of(kv.key()) {
                let key = &kv.key()[self.prefix.len() + table.name().len() + 1..];
                if let Ok(key) = std::str::from_utf8(key) {
                    changes.push((table, key.to_string(), value.map(<[u8]>::to_vec), rev));
                }
            }
        }
        let through = state.revision;
        state.forget_tombstones(through);
        changes
    }

    fn notify(&self, changes: Vec<Change>) {
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (table, key, value, rev) in &changes {
            for s in &subscribers {
                s(*table, key, value.as_deref(), *rev);
            }
        }
    }

    /// Keeps the loaded cache current until `closed` ends: follows the watch from the
    /// revision after the last one applied, also when the stream breaks; loads again when
    /// etcd compacted the revisions the watch would need, or when etcd is at an older
    /// revision than the cache has seen, through the watch or its own writes (the cluster
    /// behind the endpoints was replaced or restored from a backup: a watch from a revision
    /// it has not reached would wait, silently, until it does). A resumed watch served by a member that lags behind reloads too: a wasted
    /// read, nothing worse, since writes never trust the copy without their compares.
    pub async fn follow(self: Arc<Self>, mut client: Client, mut closed: watch::Receiver<()>) {
        let mut loaded = true;
        loop {
            let step = async {
                if !loaded {
                    self.load(&mut client).await?;
                    loaded = true;
                }
                let (applied, known) = {
                    let state = self.state();
                    (state.revision, state.revision.max(state.written))
                };
                let from = applied + 1;
                let opts = WatchOptions::new()
                    .with_range(prefix_end(&self.prefix))
                    .with_start_revision(from);
                let mut stream = client.watch(self.prefix.clone(), Some(opts)).await?;
                while let Some(resp) = stream.message().await? {
                    if resp.compact_revision() > 0 {
                        tracing::warn!(
                            "etcd compacted revisions the watch needed; reloading the cache"
                        );
                        self.state().revision = 0;
                        loaded = false;
                        break;
                    }
                    let current = resp.header().map_or(known, |h| h.revision());
                    if current < known {
                        tracing::warn!(
                            current,
                            known,
                            "etcd is at an older revision than this sidecar's copy of it; reloading the copy"
                        );
                        self.state().revision = 0;
                        loaded = false;
                        break;
                    }
                    let changes = self.apply(resp.events());
                    self.notify(changes);
                }
                Ok::<(), etcd_client::Error>(())
            };
            tokio::select! {
                r = step => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "etcd watch broke; resuming");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ = closed.changed() => return,
            }
        }
    }
}

impl State {
    /// Sets a key (`None`: deleted) unless the cache already holds a newer state of it.
    fn set(&mut self, key: &[u8], value: Option<Vec<u8>>, rev: i64) {
        if self.entries.get(key).is_some_and(|s| s.rev >= rev) {
            return;
        }
        if value.is_none() && rev <= self.revision {
            self.entries.remove(key);
            return;
        }
        if value.is_none() {
            self.tombstones.push((rev, key.to_vec()));
        }
        self.entries.insert(key.to_vec(), Slot { value, rev });
    }

    /// Drops the tombstones the watch has passed: no older event can come for them now.
    fn forget_tombstones(&mut self, through: i64) {
        let entries = &mut self.entries;
        self.tombstones.retain(|(rev, key)| {
            if *rev > through {
                return true;
            }
            if entries
                .get(key)
                .is_some_and(|s| s.value.is_none() && s.rev == *rev)
            {
                entries.remove(key);
            }
            false
        });
    }
}

/// Whether the cache holds every key of `table` (so ranges of it can be served): all but
/// `globals`, which drops finished transactions.
fn holds_whole(table: Table) -> bool {
    table != Table::Globals
}

/// The first key after every key that starts with `prefix` (which ends with `/`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::GlobalTx;

    fn writes(list: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn loaded(revision: i64) -> Arc<Cache> {
        let cache = Cache::new("/t/");
        cache.state().revision = revision;
        cache
    }

    #[test]
    fn nothing_is_served_before_the_load() {
        let cache = Cache::new("/t/");
        assert!(cache.get(b"/t/locks/a").is_none());
        assert!(cache.range(b"/t/branches/x\0").is_none());
        cache.wrote(5, &writes(&[("/t/locks/a", Some("1"))]));
        cache.state().revision = 5;
        assert_eq!(cache.get(b"/t/locks/a"), Some((None, 0)));
    }

    #[test]
    fn own_writes_are_seen_and_older_states_do_not_replace_them() {
        let cache = loaded(10);
        cache.wrote(
            12,
            &writes(&[("/t/locks/a", Some("x")), ("/t/locks/b", None)]),
        );
        assert_eq!(cache.get(b"/t/locks/a"), Some((Some(b"x".to_vec()), 12)));
        // An event older than the own write (the watch lags) changes nothing…
        cache.state().set(b"/t/locks/a", Some(b"old".to_vec()), 11);
        cache.state().set(b"/t/locks/b", Some(b"old".to_vec()), 11);
        assert_eq!(cache.get(b"/t/locks/a"), Some((Some(b"x".to_vec()), 12)));
        assert_eq!(cache.get(b"/t/locks/b"), Some((None, 0)));
        // …and once the watch passes the delete, its tombstone goes.
        let mut state = cache.state();
        state.revision = 12;
        state.forget_tombstones(12);
        assert!(!state.entries.contains_key(b"/t/locks/b".as_slice()));
    }

    #[test]
    fn ranges_come_only_from_tables_held_whole() {
        let cache = loaded(7);
        cache.wrote(
            8,
            &writes(&[
                ("/t/branches/x\x001", Some("b1")),
                ("/t/branches/xy\x001", Some("other")),
                ("/t/branches/x\x002", None),
            ]),
        );
        let view = cache
            .range(b"/t/branches/x\0")
            .expect("branches are held whole");
        assert_eq!(view.at, 7);
        assert_eq!(
            view.entries,
            vec![(b"/t/branches/x\x001".to_vec(), b"b1".to_vec(), 8)]
        );
        assert!(cache.range(b"/t/globals/").is_none());
    }

    #[test]
    fn finished_transactions_are_not_kept() {
        let cache = loaded(3);
        let tx = |status| {
            let tx = GlobalTx {
                status,
                ..GlobalTx::begun("x".into(), 1, 1)
            };
            serde_json::to_string(&tx).unwrap()
        };
        let begin = tx(crate::coordinator::model::GlobalStatus::Begin);
        let done = tx(crate::coordinator::model::GlobalStatus::Committed);
        cache.wrote(4, &writes(&[("/t/globals/x", Some(begin.as_str()))]));
        assert!(cache.get(b"/t/globals/x").is_some_and(|(v, _)| v.is_some()));
        cache.wrote(5, &writes(&[("/t/globals/x", Some(done.as_str()))]));
        assert_eq!(cache.get(b"/t/globals/x"), Some((None, 0)));
    }

    #[test]
    fn prefix_end_follows_every_key_of_the_prefix() {
        assert_eq!(prefix_end(b"/t/"), b"/t0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
