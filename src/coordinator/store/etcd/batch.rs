//! Group commit for the etcd store: the commits that come while one is in flight go to etcd
//! together, as one `Txn` whose operations are their `Txn`s. etcd evaluates each one's
//! compares and applies its own branch, so each still succeeds or fails on its own; the batch
//! costs one request, one raft entry and one disk sync.
//!
//! etcd evaluates every compare of a request, nested ones included, against the state
//! before any of the request's writes, and refuses a request that writes one key twice. So
//! two operations share a batch only when neither writes a key the other reads or writes;
//! an operation that does waits for the next batch.

use std::collections::{HashSet, VecDeque};

use etcd_client::{Client, Compare, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot};

/// etcd's limit on the operations of one `Txn` level: here, commits per batch.
const MAX_BATCH: usize = 128;
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
}

impl Footprint {
    /// Whether `c` can join without touching what the batch reads or writes.
    fn admits(&self, c: &Commit, len: usize) -> bool {
        let written = |k: &Vec<u8>| {
            self.writes.contains(k)
                || self.reads.contains(k)
                || self.ranges.iter().any(|p| k.starts_with(p))
        };
        len < MAX_BATCH
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

async fn send(client: &Client, mut batch: Vec<(Commit, Reply)>) {
    let mut kv = client.kv_client();
    let txn = |c: Commit| Txn::new().when(c.compares).and_then(c.ops).or_else(c.gets);
    if batch.len() == 1 {
        let Some((c, reply)) = batch.pop() else {
            return;
        };
        let answer = kv.txn(txn(c)).await.map_err(failed).map(|resp| Answer {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
            responses: resp.op_responses(),
        });
        let _ = reply.send(answer);
        return;
    }
    let (commits, replies): (Vec<Commit>, Vec<Reply>) = batch.into_iter().unzip();
    let nested: Vec<TxnOp> = commits.into_iter().map(|c| TxnOp::txn(txn(c))).collect();
    match kv.txn(Txn::new().and_then(nested)).await {
        Ok(resp) => {
            let revision = resp.header().map_or(0, |h| h.revision());
            for (reply, op) in replies.into_iter().zip(resp.op_responses()) {
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
        Err(e) => {
            let f = failed(e);
            for reply in replies {
                let _ = reply.send(Err(Failed {
                    transient: f.transient,
                    message: f.message.clone(),
                }));
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
        // A full batch takes no more.
        assert!(!f.admits(&commit(&["g/z"], &[], &["g/z"]), MAX_BATCH));
    }
}
