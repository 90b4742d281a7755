//! One suite of the coordinator's store rules, run on every store.

use super::embedded::EmbeddedStore;
use super::etcd::EtcdStore;
use super::memory::MemoryStore;
use super::{RegisterError, Store, StoreError, Transition};
use crate::coordinator::model::{
    Branch, BranchKind, BranchStatus, GlobalStatus, GlobalTx, Intervention,
};

use GlobalStatus::*;

/// When the suite's transactions began: now, so none is past its timeout.
static BEGUN: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
});

fn tx(xid: &str) -> GlobalTx {
    GlobalTx::begun(xid.into(), *BEGUN, 60_000)
}

fn branch(xid: &str, id: u64, keys: &[&str]) -> Branch {
    Branch {
        xid: xid.into(),
        branch_id: id,
        kind: BranchKind::At,
        resource: "127.0.0.1:3306/db".into(),
        status: BranchStatus::Registered,
        lock_keys: keys.iter().map(|k| k.to_string()).collect(),
        application_data: None,
        attention: None,
        seq: 0,
    }
}

async fn suite(s: impl Store + Clone) {
    // An identity, made once and kept.
    let id = s.identity().await.unwrap();
    assert_eq!(id.len(), 16, "{id}");
    assert_eq!(s.identity().await.unwrap(), id);

    // Create, read back, refuse a duplicate.
    s.create(&tx("a")).await.unwrap();
    s.create(&tx("b")).await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), Some(tx("a")));
    assert_eq!(s.get("zz").await.unwrap(), None);
    let mut other = tx("a");
    other.timeout_ms += 1;
    assert_eq!(s.create(&other).await, Err(StoreError::Exists("a".into())));
    assert_eq!(
        s.create(&tx("a")).await,
        Ok(()),
        "the same record again (a retried write) is no conflict"
    );
    assert_eq!(s.list().await.unwrap().len(), 2);

    // Branch registration takes locks atomically; a conflict names the holder and leaves
    // nothing behind; the same XID re-enters its own locks.
    s.register_branch(&branch("a", 1, &["k2", "k1"]))
        .await
        .unwrap();
    let conflict = s
        .register_branch(&branch("b", 2, &["k0", "k1", "k3"]))
        .await;
    assert_eq!(
        conflict,
        Err(RegisterError::LockConflict {
            key: "k1".into(),
            holder: "a".into()
        })
    );
    assert_eq!(
        s.lock_holder("b", &["k0".into(), "k3".into()])
            .await
            .unwrap(),
        None
    );
    assert!(s.branches("b").await.unwrap().is_empty());
    s.register_branch(&branch("a", 3, &["k1", "k4"]))
        .await
        .unwrap();
    assert_eq!(
        s.lock_holder("b", &["k9".into(), "k4".into()])
            .await
            .unwrap(),
        Some(("k4".into(), "a".into()))
    );
    assert_eq!(
        s.lock_holder("a", &["k4".into()]).await.unwrap(),
        None,
        "own locks do not block"
    );
    let ids: Vec<u64> = s
        .branches("a")
        .await
        .unwrap()
        .iter()
        .map(|b| b.branch_id)
        .collect();
    assert_eq!(ids, vec![1, 3], "registration order");
    assert_eq!(
        s.branches("a").await.unwrap()[0].lock_keys,
        vec!["k1", "k2"],
        "sorted"
    );
    assert_eq!(
        s.register_branch(&branch("nope", 9, &["x"])).await,
        Err(RegisterError::UnknownXid("nope".into()))
    );

    // A transaction past its timeout takes no branch.
    let mut old = tx("old");
    old.begun_at_ms = 1_000;
    s.create(&old).await.unwrap();
    assert_eq!(
        s.register_branch(&branch("old", 8, &["o"])).await,
        Err(RegisterError::Expired("old".into()))
    );

    // Status: compare-and-set, only forward, families never cross.
    assert_eq!(
        s.transition("b", Committing, Committed, false)
            .await
            .unwrap(),
        Transition::Found(Begin)
    );
    assert!(matches!(
        s.transition("b", Begin, Committed, false).await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert_eq!(
        s.transition("zz", Begin, Rollbacking, false).await.unwrap(),
        Transition::NotFound
    );
    assert_eq!(
        s.transition("b", Begin, Rollbacking, false).await.unwrap(),
        Transition::Moved
    );
    assert_eq!(
        s.transition("b", Begin, Committing, false).await.unwrap(),
        Transition::Found(Rollbacking)
    );
    assert_eq!(
        s.register_branch(&branch("b", 5, &["x"])).await,
        Err(RegisterError::NotActive {
            xid: "b".into(),
            status: Rollbacking
        })
    );

    // Rollback of a branch releases its locks, except rows another branch of the same XID
    // still holds; a branch that needs a person keeps its locks.
    s.create(&tx("c")).await.unwrap();
    s.register_branch(&branch("c", 10, &["r1", "r2"]))
        .await
        .unwrap();
    s.register_branch(&branch("c", 11, &["r2", "r3"]))
        .await
        .unwrap();
    s.transition("c", Begin, Rollbacking, false).await.unwrap();
    s.branch_done("c", 11, BranchStatus::RolledBack, None)
        .await
        .unwrap();
    assert_eq!(s.lock_holder("x", &["r3".into()]).await.unwrap(), None);
    assert_eq!(
        s.lock_holder("x", &["r2".into()]).await.unwrap(),
        Some(("r2".into(), "c".into()))
    );
    s.branch_done(
        "c",
        10,
        BranchStatus::NeedsAttention,
        Some("row changed".into()),
    )
    .await
    .unwrap();
    assert_eq!(
        s.lock_holder("x", &["r1".into()]).await.unwrap(),
        Some(("r1".into(), "c".into()))
    );
    // The store counts registrations in order, whatever the branch ids.
    let seqs: Vec<(u64, u64)> = s
        .branches("c")
        .await
        .unwrap()
        .iter()
        .map(|b| (b.branch_id, b.seq))
        .collect();
    assert!(seqs.iter().all(|(_, seq)| *seq > 0), "{seqs:?}");
    let statuses: Vec<BranchStatus> = s
        .branches("c")
        .await
        .unwrap()
        .iter()
        .map(|b| b.status)
        .collect();
    assert_eq!(
        statuses,
        vec![BranchStatus::NeedsAttention, BranchStatus::RolledBack]
    );
    let why = s.branches("c").await.unwrap()[0].attention.clone();
    assert_eq!(why.as_deref(), Some("row changed"), "the reason is kept");

    // The commit decision releases every lock in the same write; finishing deletes branches.
    let before = s.writes();
    assert_eq!(
        s.transition("a", Begin, Committing, true).await.unwrap(),
        Transition::Moved
    );
    assert_eq!(
        s.writes(),
        before + 1,
        "decision and lock release are one write"
    );
    assert_eq!(
        s.lock_holder("x", &["k1".into(), "k2".into(), "k4".into()])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.finish("a", Committing, Committed).await.unwrap(),
        Transition::Moved
    );
    assert_eq!(s.writes(), before + 2);
    assert!(s.branches("a").await.unwrap().is_empty());
    assert_eq!(s.get("a").await.unwrap().map(|t| t.status), Some(Committed));
    assert_eq!(
        s.finish("a", Committing, Committed).await.unwrap(),
        Transition::Found(Committed)
    );

    // Forcing a stuck transaction to its end releases what its branches still held.
    assert_eq!(
        s.finish("c", Rollbacking, Rollbacked).await.unwrap(),
        Transition::Moved
    );
    assert_eq!(
        s.lock_holder("x", &["r1".into(), "r2".into()])
            .await
            .unwrap(),
        None
    );
    s.forget("c").await.unwrap();
    assert_eq!(s.get("c").await.unwrap(), None);

    // A branch with more rows than etcd takes in one transaction still registers all or
    // nothing, and conflicts on any of its rows.
    s.create(&tx("big")).await.unwrap();
    let many: Vec<String> = (1000..1300).map(|i| format!("big/{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    s.register_branch(&branch("big", 20, &many)).await.unwrap();
    assert_eq!(s.branches("big").await.unwrap()[0].lock_keys.len(), 300);
    assert_eq!(
        s.branches("big").await.unwrap()[0].status,
        BranchStatus::Registered
    );
    // The conflicting row sorts last: the rows taken before it are given back.
    s.create(&tx("big2")).await.unwrap();
    let mut overlapping: Vec<String> = (0..300).map(|i| format!("big/0{i:03}")).collect();
    overlapping.push("big/1299".into());
    let overlapping: Vec<&str> = overlapping.iter().map(String::as_str).collect();
    assert_eq!(
        s.register_branch(&branch("big2", 21, &overlapping)).await,
        Err(RegisterError::LockConflict {
            key: "big/1299".into(),
            holder: "big".into()
        })
    );
    assert_eq!(
        s.lock_holder("x", &["big/0000".into(), "big/0150".into()])
            .await
            .unwrap(),
        None,
        "a refused registration leaves nothing behind"
    );
    assert!(s.branches("big2").await.unwrap().is_empty());
    s.transition("big", Begin, Committing, true).await.unwrap();
    assert_eq!(
        s.lock_holder("x", &["big/1000".into(), "big/1299".into()])
            .await
            .unwrap(),
        None
    );
    s.register_branch(&branch("big2", 21, &overlapping))
        .await
        .unwrap();
    s.transition("big2", Begin, Rollbacking, false)
        .await
        .unwrap();
    s.branch_done("big2", 21, BranchStatus::RolledBack, None)
        .await
        .unwrap();
    assert_eq!(
        s.lock_holder("x", &["big/0000".into(), "big/1299".into()])
            .await
            .unwrap(),
        None,
        "a large rolled-back branch releases its rows"
    );

    // Phase 2 recorded branch by branch: each releases its own rows; the last one ends the
    // transaction. A fence for a resource this node does not own refuses the write.
    s.create(&tx("p2")).await.unwrap();
    s.register_branch(&branch("p2", 30, &["p/1", "p/2"]))
        .await
        .unwrap();
    s.register_branch(&branch("p2", 31, &["p/2", "p/3"]))
        .await
        .unwrap();
    s.transition("p2", Begin, Rollbacking, false).await.unwrap();
    let fence = crate::coordinator::Fence {
        resource: "127.0.0.1:3306/db".into(),
        node: "elsewhere".into(),
    };
    assert_eq!(
        s.finish_branches("p2", &[31], &[fence]).await,
        Err(StoreError::NotOwner("127.0.0.1:3306/db".into()))
    );
    assert_eq!(s.finish_branches("p2", &[31], &[]).await, Ok(None));
    assert_eq!(
        s.lock_holder("x", &["p/3".into(), "p/2".into()])
            .await
            .unwrap(),
        Some(("p/2".into(), "p2".into())),
        "rows of the other branch stay locked"
    );
    assert_eq!(
        s.finish_branches("p2", &[30], &[]).await,
        Ok(Some(Rollbacked))
    );
    assert_eq!(
        s.get("p2").await.unwrap().map(|t| t.status),
        Some(Rollbacked)
    );
    assert_eq!(
        s.lock_holder("x", &["p/1".into(), "p/2".into()])
            .await
            .unwrap(),
        None
    );
    assert!(s.branches("p2").await.unwrap().is_empty());

    // A person's requests: only for a decided transaction not yet final, each one write.
    s.create(&tx("i")).await.unwrap();
    s.register_branch(&branch("i", 1, &["i/1"])).await.unwrap();
    s.register_branch(&branch("i", 2, &["i/2"])).await.unwrap();
    let before = s.writes();
    let found = s.intervene("i", Intervention::ForceFinish).await.unwrap();
    assert_eq!(found, Some(tx("i")), "Begin: nothing to finish yet");
    assert_eq!(s.intervene("zz", Intervention::Retry).await.unwrap(), None);
    assert_eq!(s.writes(), before);
    s.transition("i", Begin, Rollbacking, false).await.unwrap();
    s.branch_done("i", 2, BranchStatus::NeedsAttention, Some("dirty".into()))
        .await
        .unwrap();
    let before = s.writes();
    let retried = s
        .intervene("i", Intervention::Retry)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retried.retries, retried.forced), (1, false));
    let b = s.branches("i").await.unwrap();
    assert_eq!(
        b.iter()
            .map(|b| (b.status, b.attention.clone()))
            .collect::<Vec<_>>(),
        vec![(BranchStatus::Registered, None); 2],
        "the branch that needed a person runs again"
    );
    let forced = s
        .intervene("i", Intervention::ForceFinish)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (forced.status, forced.retries, forced.forced),
        (Rollbacking, 1, true)
    );
    assert_eq!(s.get("i").await.unwrap(), Some(forced));
    assert_eq!(s.writes() - before, 2);
    assert_eq!(
        s.lock_holder("x", &["i/1".into()])
            .await
            .unwrap()
            .map(|h| h.1),
        Some("i".into()),
        "locks go with the branches, not with the request"
    );
    s.finish_branches("i", &[1, 2], &[]).await.unwrap();
    let done = s.get("i").await.unwrap().unwrap();
    assert_eq!(done.status, Rollbacked);
    let before = s.writes();
    assert_eq!(
        s.intervene("i", Intervention::Retry).await.unwrap(),
        Some(done),
        "final: nothing changes"
    );
    assert_eq!(s.writes(), before);

    // Store writes for one global transaction with B branches: begin + B + decision + final.
    let before = s.writes();
    s.create(&tx("w")).await.unwrap();
    for id in 100..103 {
        s.register_branch(&branch("w", id, &[&format!("w{id}")]))
            .await
            .unwrap();
    }
    s.transition("w", Begin, Committing, true).await.unwrap();
    s.finish("w", Committing, Committed).await.unwrap();
    assert_eq!(s.writes() - before, 3 + 3);
    // Reads and refused writes cost nothing.
    let before = s.writes();
    let _ = s.get("w").await;
    let _ = s.transition("w", Begin, Committing, false).await;
    assert_eq!(s.writes(), before);

    // A transaction created with its branches: in one write, all of it or (a row locked
    // by another transaction) nothing.
    let before = s.writes();
    let both = [branch("with", 10, &[]), branch("with", 11, &["kw"])];
    s.create_with_branches(&tx("with"), &both).await.unwrap();
    assert_eq!(s.writes() - before, 1);
    assert_eq!(s.get("with").await.unwrap(), Some(tx("with")));
    let ids: Vec<u64> = s
        .branches("with")
        .await
        .unwrap()
        .iter()
        .map(|b| b.branch_id)
        .collect();
    assert_eq!(ids, [10, 11]);
    let conflict = s
        .create_with_branches(&tx("late"), &[branch("late", 12, &["kw"])])
        .await;
    assert!(
        matches!(conflict, Err(RegisterError::LockConflict { .. })),
        "{conflict:?}"
    );
    assert_eq!(
        s.get("late").await.unwrap(),
        None,
        "nothing of it was written"
    );
}

/// Concurrent registrations of different transactions on one row: exactly one wins.
/// A commit decision on a transaction past its timeout rolls it back instead.
/// Locks a release split over several writes left behind, cut short by a crash: the holder
/// is final (or forgotten) and its branches gone. The sweep's look-up releases them, and
/// leaves a running transaction's alone.
async fn orphan_locks(s: impl super::kv::KvStore) {
    s.create(&tx("o1")).await.unwrap();
    s.create(&tx("o2")).await.unwrap();
    s.register_branch(&branch("o1", 1, &["ok1", "ok2"]))
        .await
        .unwrap();
    s.register_branch(&branch("o2", 2, &["ok3"])).await.unwrap();
    s.transition("o1", Begin, Rollbacking, false).await.unwrap();
    // The finish that says the locks were released already, when they were not.
    s.write(false, |t| {
        super::kv::finish(t, "o1", Rollbacking, Rollbacked, true)
    })
    .await
    .unwrap();
    let keys: Vec<String> = ["ok1", "ok2", "ok3"].map(String::from).to_vec();
    assert_eq!(
        s.lock_holder("x", &keys).await.unwrap(),
        Some(("ok1".into(), "o1".into()))
    );
    assert_eq!(s.release_orphan_locks().await.unwrap(), 2);
    assert_eq!(
        s.lock_holder("x", &keys).await.unwrap(),
        Some(("ok3".into(), "o2".into())),
        "a running transaction keeps its lock"
    );
    assert_eq!(s.release_orphan_locks().await.unwrap(), 0);
}

async fn late_commit(s: impl Store) {
    let mut late = tx("late");
    late.begun_at_ms -= 120_000;
    s.create(&late).await.unwrap();
    assert_eq!(
        s.decide("late", Committing).await.unwrap(),
        (Transition::Moved, TimeoutRollbacking)
    );
    s.create(&tx("ontime")).await.unwrap();
    assert_eq!(
        s.decide("ontime", Committing).await.unwrap(),
        (Transition::Moved, Committing)
    );
    assert_eq!(
        s.decide("ontime", Rollbacking).await.unwrap(),
        (Transition::Found(Committing), Rollbacking)
    );
}

/// Two processes on one etcd prefix, each with its own cache of it: what one cache has not
/// seen yet still counts. Each step comes right after the other process's write, before
/// the watch has (usually) brought it.
async fn across_caches(a: EtcdStore, b: EtcdStore) {
    for round in 0..20 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        a.create(&tx(&x)).await.unwrap();
        b.register_branch(&branch(&x, 1, &["hot"])).await.unwrap();
        b.create(&tx(&y)).await.unwrap();
        assert!(
            matches!(
                a.register_branch(&branch(&y, 2, &["hot"])).await,
                Err(RegisterError::LockConflict { holder, .. }) if holder == x
            ),
            "round {round}: a took a row b's branch holds"
        );
        // The decision releases the lock b's branch took, whether a's cache saw it or not.
        assert_eq!(
            a.decide(&x, Committing).await.unwrap(),
            (Transition::Moved, Committing)
        );
        let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        first
            .register_branch(&branch(&y, 3, &["hot"]))
            .await
            .unwrap();
        assert_eq!(
            second.lock_holder("z", &["hot".into()]).await.unwrap(),
            Some(("hot".into(), y.clone()))
        );
        assert_eq!(
            second.decide(&y, Committing).await.unwrap(),
            (Transition::Moved, Committing)
        );
        assert_eq!(first.lock_holder("z", &["hot".into()]).await.unwrap(), None);
        for (xid, s) in [(&x, &b), (&y, &a)] {
            let ids: Vec<u64> = s
                .branches(xid)
                .await
                .unwrap()
                .iter()
                .map(|b| b.branch_id)
                .collect();
            assert_eq!(
                s.finish_branches(xid, &ids, &[]).await.unwrap(),
                Some(Committed),
                "round {round}: {xid} ends when its last branches finish"
            );
        }
    }
}

/// The owners of a transaction's branches record their phase 2 at the same moment, each
/// from its own store (its own copy, on etcd): the last one sets the final status, exactly
/// one says it did, and nothing is left.
async fn finishing_together(a: impl Store + Clone, b: impl Store + Clone) {
    for round in 0..20 {
        let xid = format!("t{round}");
        a.create(&tx(&xid)).await.unwrap();
        a.register_branch(&branch(&xid, 1, &[&format!("t{round}/a")]))
            .await
            .unwrap();
        b.register_branch(&branch(&xid, 2, &[&format!("t{round}/b")]))
            .await
            .unwrap();
        let decision = if round % 2 == 0 {
            Committing
        } else {
            Rollbacking
        };
        a.decide(&xid, decision).await.unwrap();
        let (x, y) = tokio::join!(
            a.finish_branches(&xid, &[1], &[]),
            b.finish_branches(&xid, &[2], &[])
        );
        let done = if round % 2 == 0 {
            Committed
        } else {
            Rollbacked
        };
        let said: Vec<_> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
        assert_eq!(said, vec![done], "round {round}: one of them ended it");
        assert_eq!(a.get(&xid).await.unwrap().map(|t| t.status), Some(done));
        assert!(b.branches(&xid).await.unwrap().is_empty());
        assert_eq!(
            a.lock_holder("z", &[format!("t{round}/a"), format!("t{round}/b")])
                .await
                .unwrap(),
            None,
            "round {round}: every lock released"
        );
    }
}

/// The transactions not yet final come from the store's copy, which keeps no others.
async fn unfinished_from_the_copy(s: EtcdStore) {
    s.create(&tx("u1")).await.unwrap();
    s.create(&tx("u2")).await.unwrap();
    s.decide("u2", Rollbacking).await.unwrap();
    assert_eq!(
        s.finish_branches("u2", &[], &[]).await,
        Ok(Some(Rollbacked))
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let unfinished = |s: &EtcdStore| {
        s.cached_unfinished()
            .map(|l| l.into_iter().map(|t| t.xid).collect::<Vec<_>>())
    };
    while unfinished(&s) != Some(vec!["u1".to_string()]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy lists {:?}",
            unfinished(&s)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let any = super::any::AnyStore::Etcd(s);
    assert_eq!(any.unfinished().await.unwrap(), vec![tx("u1")]);
    assert_eq!(
        any.list().await.unwrap().len(),
        2,
        "the finished one is kept"
    );
}

/// Many operations at once, so they go to the store in large batches; each with enough
/// keys that a batch's size is bounded by them too.
async fn many_at_once(s: impl Store + Clone) {
    let tasks: Vec<_> = (0..300u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let xid = format!("many{i}");
                s.create(&tx(&xid)).await?;
                let keys: Vec<String> = (0..40).map(|k| format!("m{i}/{k}")).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                s.register_branch(&branch(&xid, i, &keys))
                    .await
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                s.decide(&xid, Committing).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), (Transition::Moved, Committing));
    }
}

async fn contention(s: impl Store + Clone) {
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let xid = format!("race{i}");
            s.create(&tx(&xid)).await.unwrap();
            s.register_branch(&branch(&xid, 1000 + i, &["hot", &format!("cold{i}")]))
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(RegisterError::LockConflict { key, .. }) => assert_eq!(key, "hot"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "one transaction holds the row");
}

#[tokio::test]
async fn memory_store_keeps_the_rules() {
    suite(MemoryStore::new()).await;
    orphan_locks(MemoryStore::new()).await;
    orphan_locks(MemoryStore::with_keys_per_write(64)).await;
    late_commit(MemoryStore::new()).await;
    let m = MemoryStore::new();
    finishing_together(m.clone(), m).await;
    let any = super::any::AnyStore::Memory(MemoryStore::new());
    any.create(&tx("m1")).await.unwrap();
    any.create(&tx("m2")).await.unwrap();
    any.decide("m2", Rollbacking).await.unwrap();
    any.finish_branches("m2", &[], &[]).await.unwrap();
    assert_eq!(any.unfinished().await.unwrap(), vec![tx("m1")]);
}

#[tokio::test]
async fn split_writes_keep_the_rules() {
    suite(MemoryStore::with_keys_per_write(64)).await;
}

#[tokio::test]
async fn embedded_store_keeps_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    suite(EmbeddedStore::open(&dir.path().join("sub/tandem.db")).unwrap()).await;
    late_commit(EmbeddedStore::open(&dir.path().join("late.db")).unwrap()).await;
    orphan_locks(EmbeddedStore::open(&dir.path().join("orphans.db")).unwrap()).await;
    let e = EmbeddedStore::open(&dir.path().join("together.db")).unwrap();
    finishing_together(e.clone(), e).await;
}

#[tokio::test]
async fn embedded_store_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let id = {
        let s = EmbeddedStore::open(&path).unwrap();
        s.create(&tx("d")).await.unwrap();
        s.register_branch(&branch("d", 1, &["k"])).await.unwrap();
        s.transition("d", Begin, Committing, false).await.unwrap();
        // Finished transactions are kept, but not among the unfinished ones.
        s.create(&tx("e")).await.unwrap();
        s.decide("e", Rollbacking).await.unwrap();
        assert_eq!(s.finish_branches("e", &[], &[]).await, Ok(Some(Rollbacked)));
        s.create(&tx("f")).await.unwrap();
        s.forget("f").await.unwrap();
        let unfinished: Vec<_> = s.unfinished().unwrap().into_iter().map(|t| t.xid).collect();
        assert_eq!(unfinished, vec!["d"]);
        s.identity().await.unwrap()
    };
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.identity().await.unwrap(), id, "the identity is kept");
    let other = EmbeddedStore::open(&dir.path().join("other.db")).unwrap();
    assert_ne!(
        other.identity().await.unwrap(),
        id,
        "another store has its own"
    );
    assert_eq!(
        s.get("d").await.unwrap().map(|t| t.status),
        Some(Committing)
    );
    assert_eq!(s.list().await.unwrap().len(), 2);
    let unfinished: Vec<_> = s.unfinished().unwrap().into_iter().map(|t| t.xid).collect();
    assert_eq!(unfinished, vec!["d"], "rebuilt at open");
    assert_eq!(s.branches("d").await.unwrap().len(), 1);
    assert_eq!(
        s.lock_holder("x", &["k".into()]).await.unwrap(),
        Some(("k".into(), "d".into()))
    );
}

/// A private single-member etcd on free loopback ports, stopped when dropped.
struct TestEtcd {
    child: std::process::Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestEtcd {
    fn start() -> TestEtcd {
        Self::start_on(free_port())
    }

    /// A new, empty member serving clients on `client`.
    fn start_on(client: u16) -> TestEtcd {
        let peer = free_port();
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd is installed (scripts/setup.sh installs it)");
        TestEtcd {
            child,
            endpoint,
            _dir: dir,
        }
    }

    async fn store(&self, prefix: &str) -> EtcdStore {
        let cfg = crate::config::Etcd {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.into(),
            user: None,
            password: None,
            tls: None,
            node_name: None,
            lease_ttl: crate::config::Seconds(std::time::Duration::from_secs(10)),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match EtcdStore::connect(&cfg).await {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => panic!("etcd did not start: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_keeps_the_rules() {
    let etcd = TestEtcd::start();
    suite(etcd.store("/conformance/").await).await;
    contention(etcd.store("/contention/").await).await;
    late_commit(etcd.store("/late/").await).await;
    across_caches(etcd.store("/two/").await, etcd.store("/two/").await).await;
    finishing_together(
        etcd.store("/together/").await,
        etcd.store("/together/").await,
    )
    .await;
    many_at_once(etcd.store("/many/").await).await;
    unfinished_from_the_copy(etcd.store("/unfinished/").await).await;
    orphan_locks(etcd.store("/orphans/").await).await;
}

/// The cluster behind the endpoint is replaced by an empty one, at lower revisions: a store
/// that kept a copy of the old one sees the new one's changes again (it reloads its copy),
/// instead of waiting for the new cluster to reach the old revisions.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_cluster_is_followed() {
    let old = TestEtcd::start();
    let port: u16 = old.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let s = old.store("/replaced/").await;
    for i in 0..30 {
        s.create(&tx(&format!("old{i}"))).await.unwrap();
    }
    assert!(s.cached_global("old0").is_some());
    drop(old);
    let new = TestEtcd::start_on(port);
    let other = new.store("/replaced/").await;
    other.create(&tx("new")).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.cached_global("new").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy did not follow the new cluster"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.cached_global("old0"),
        None,
        "the old cluster's records are gone"
    );
    assert_eq!(s.get("new").await.unwrap(), Some(tx("new")));
}

#[tokio::test]
async fn stores_resolve_contention() {
    contention(MemoryStore::new()).await;
    let dir = tempfile::tempdir().unwrap();
    contention(EmbeddedStore::open(&dir.path().join("tandem.db")).unwrap()).await;
}
