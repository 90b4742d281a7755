//! Group commit for the etcd store: the commits that come while one is in flight go to etcd
//! together, as one `Txn` whose operations are their `Txn`s. etcd evaluates each one's
//! compares and applies its own branch, so each still succeeds or fails on its own; the batch
//! costs one request, one raft entry and one disk sync.
//!
//! etcd evaluates every compare of a request, nested ones included, against the state
//! before any of the request's writes, and refuses a request that writes one key twice. So
//! two operations share a batch only when neither writes a key the other reads or writes;
//! an operation that does waits for the next batch. etcd's limit of 128 operations also
//! spans the levels: the batch's count plus the largest part of any commit in it (compares,
//! writes or reads) stays within it.

use std::collections::{HashSet, VecDeque};

use etcd_client::{Client, Compare, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot};

/// etcd's limit on the operations of one request (`--max-txn-ops`): the commits of a batch
/// plus the largest part of any of them.
const MAX_TXN_OPS: usize = super::MAX_TXN_OPS;
/// Bytes of values per batch, under etcd's default request limit (1.5 MiB).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One operation's commit: apply `ops` if `compares` hold, else answer `gets`.
pub struct Commit {
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
    pub gets: Vec<TxnOp>,
    /// The keys and prefixes the compares name, and the keys written: what decides which
    /// commits can share a batch.
    pub reads: Vec<Vec<u8>>,
    pub ranges: Vec<Vec<u8>>,
    pub writes: Vec<Vec<u8>>,
    /// Size of the values written.
    pub bytes: usize,
}

impl Commit {
    /// What the commit counts against etcd's operation limit when nested in a batch.
    fn size(&self) -> usize {
        self.compares.len().max(self.ops.len()).max(self.gets.len())
    }
}

/// What etcd answered for one commit.
pub struct Answer {
    pub succeeded: bool,
    /// The revision of the request that carried it.
    pub revision: i64,
    /// The answers to `gets` when it did not succeed.
    pub responses: Vec<TxnOpResponse>,
}

/// Why a batch failed: whether the failure passes (see `transient`), and what it said.
pub struct Failed {
    pub transient: bool,
    pub message: String,
}

type Reply = oneshot::Sender<Result<Answer, Failed>>;

/// Hands commits to the batching task.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<(Commit, Reply)>,
}

impl Committer {
    /// Starts the task that sends batches; it ends when every `Committer` is dropped.
    pub fn start(client: Client) -> Committer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        Committer { queue }
    }

    pub async fn commit(&self, commit: Commit) -> Result<Answer, Failed> {
        let (reply, answer) = oneshot::channel();
        let gone = || Failed {
            transient: false,
            message: "the store is shutting down".into(),
        };
        self.queue.send((commit, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The keys a batch reads and writes so far.
#[derive(Default)]
struct Footprint {
    reads: HashSet<Vec<u8>>,
    ranges: Vec<Vec<u8>>,
    writes: HashSet<Vec<u8>>,
    bytes: usize,
    /// The largest commit's size.
    largest: usize,
}

impl Footprint {
    /// Whether `c` can join without touching what the batch reads or writes.
    fn admits(&self, c: &Commit, len: usize) -> bool {
        let written = |k: &Vec<u8>| {
            self.writes.contains(k)
                || self.reads.contains(k)
                || self.ranges.iter().any(|p| k.starts_with(p))
        };
        len + 1 + self.largest.max(c.size()) <= MAX_TXN_OPS
            && self.bytes + c.bytes <= MAX_BATCH_BYTES
            && !c.writes.iter().any(written)
            && !c.reads.iter().any(|k| self.writes.contains(k))
            && !c
                .ranges
                .iter()
                .any(|p| self.writes.iter().any(|k| k.starts_with(p)))
    }

    fn add(&mut self, c: &Commit) {
        self.reads.extend(c.reads.iter().cloned());
        self.ranges.extend(c.ranges.iter().cloned());
        self.writes.extend(c.writes.iter().cloned());
        self.bytes += c.bytes;
        self.largest = self.largest.max(c.size());
    }
}

/// Sends what waits, a batch at a time.
async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<(Commit, Reply)>) {
    let mut waiting = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(c) => waiting.push_back(c),
                None => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            waiting.push_back(c);
        }
        let mut batch = Vec::new();
        let mut footprint = Footprint::default();
        let mut later = VecDeque::new();
        for (c, reply) in waiting.drain(..) {
            if batch.is_empty() || footprint.admits(&c, batch.len()) {
                footprint.add(&c);
                batch.push((c, reply));
            } else {
                later.push_back((c, reply));
            }
        }
        waiting = later;
        send(&client, batch).await;
    }
}

fn txn(c: &Commit) -> Txn {
    Txn::new()
        .when(c.compares.clone())
        .and_then(c.ops.clone())
        .or_else(c.gets.clone())
}

/// Sends one commit on its own.
async fn send_one(client: &Client, c: &Commit) -> Result<Answer, Failed> {
    let resp = client.kv_client().txn(txn(c)).await.map_err(failed)?;
    Ok(Answer {
        succeeded: resp.succeeded(),
        revision: resp.header().map_or(0, |h| h.revision()),
        responses: resp.op_responses(),
    })
}

async fn send(client: &Client, batch: Vec<(Commit, Reply)>) {
    if batch.len() == 1 {
        for (c, reply) in batch {
            let _ = reply.send(send_one(client, &c).await);
        }
        return;
    }
    let nested: Vec<TxnOp> = batch.iter().map(|(c, _)| TxnOp::txn(txn(c))).collect();
    match client.kv_client().txn(Txn::new().and_then(nested)).await {
        Ok(resp) => {
            let revision = resp.header().map_or(0, |h| h.revision());
            for ((_, reply), op) in batch.into_iter().zip(resp.op_responses()) {
                let answer = match op {
                    TxnOpResponse::Txn(inner) => Ok(Answer {
                        succeeded: inner.succeeded(),
                        revision,
                        responses: inner.op_responses(),
                    }),
                    _ => Err(Failed {
                        transient: false,
                        message: "etcd answered a batch with something else than its Txns".into(),
                    }),
                };
                let _ = reply.send(answer);
            }
        }
        Err(e) if super::transient(&e) => {
            let message = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(Failed {
                    transient: true,
                    message: message.clone(),
                }));
            }
        }
        Err(e) => {
            // etcd refused the batch as a whole: no commit in it should fail for the others.
            tracing::warn!(error = %e, commits = batch.len(), "etcd refused a batch of commits; sending them one by one");
            for (c, reply) in batch {
                let _ = reply.send(send_one(client, &c).await);
            }
        }
    }
}

fn failed(e: etcd_client::Error) -> Failed {
    Failed {
        transient: super::transient(&e),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(reads: &[&str], ranges: &[&str], writes: &[&str]) -> Commit {
        let v = |l: &[&str]| l.iter().map(|k| k.as_bytes().to_vec()).collect();
        Commit {
            compares: Vec::new(),
            ops: Vec::new(),
            gets: Vec::new(),
            reads: v(reads),
            ranges: v(ranges),
            writes: v(writes),
            bytes: 10,
        }
    }

    #[test]
    fn commits_share_a_batch_only_when_they_do_not_touch_each_others_writes() {
        let mut f = Footprint::default();
        f.add(&commit(&["g/x", "o/r"], &["b/x/"], &["g/x", "l/1"]));
        // Another transaction's keys; reading the same owners key is fine.
        assert!(f.admits(&commit(&["g/y", "o/r"], &["b/y/"], &["g/y", "l/2"]), 1));
        // Writing what the batch reads or writes, or under a range it read: not now.
        assert!(!f.admits(&commit(&[], &[], &["o/r"]), 1));
        assert!(!f.admits(&commit(&[], &[], &["l/1"]), 1));
        assert!(!f.admits(&commit(&[], &[], &["b/x/7"]), 1));
        // Reading what the batch writes, one key or a range holding it: not now.
        assert!(!f.admits(&commit(&["l/1"], &[], &["l/3"]), 1));
        assert!(!f.admits(&commit(&[], &["l/"], &["l/3"]), 1));
        // Batch and commit sizes together stay within etcd's limit.
        let mut big = commit(&["g/z"], &[], &["g/z"]);
        big.gets = vec![TxnOp::get("g/z", None); 100];
        assert!(f.admits(&big, 27));
        assert!(!f.admits(&big, 28));
        f.add(&big);
        assert!(!f.admits(&commit(&["g/w"], &[], &["g/w"]), 28));
    }
}
