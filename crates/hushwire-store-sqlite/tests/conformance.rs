//! The shared storage conformance suite on fresh SQLite databases, plus what only this
//! backend has: reopening, schema versions, group commit under concurrency.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::expect_used)]

use hushwire_store::conformance::{self, CS, EXPIRES, NOW, accepted, application, register};
use hushwire_store::{
    Accounts, Delivery, KeyDirectory, KeyPackages, Mailboxes, Store, StoreError, SubmitOutcome,
};
use hushwire_store_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore, SqliteStoreError};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).expect("open store")
}

async fn fresh() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("hushwire.db"));
    (Arc::new(store), dir)
}

hushwire_store::conformance_tests!(fresh);

/// `run_all` and `CASES` agree with the per-case tests above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes() {
    if let Err(failures) = conformance::run_all(fresh).await {
        panic!("failures: {failures:#?}");
    }
}

/// Small batches and a tiny queue: many batches, callers held back by the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_small_batches() {
    let make = || async {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteOptions {
            max_batch: 2,
            queue_capacity: 1,
            readers: 1,
            ..Default::default()
        };
        let store = SqliteStore::open(&dir.path().join("db"), options).expect("open");
        (Arc::new(store) as Arc<dyn Store>, dir)
    };
    if let Err(failures) = conformance::run_all(make).await {
        panic!("failures: {failures:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_drop_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hushwire.db");
    let store: Arc<dyn Store> = Arc::new(open(&path));
    let written = conformance::persistence_write(store.clone()).await.unwrap();
    drop(store);
    let store: Arc<dyn Store> = Arc::new(open(&path));
    conformance::persistence_verify(store, written)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_shutdown_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hushwire.db");
    let store = Arc::new(open(&path));
    let written = conformance::persistence_write(store.clone()).await.unwrap();
    store.shutdown().await;
    // Closed for business: reads and writes fail with Closed.
    assert!(matches!(
        store.pending(written.bob.id).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.ack(written.bob.id, 1).await,
        Err(StoreError::Closed)
    ));
    store.shutdown().await; // idempotent
    // The WAL was checkpointed into the main file.
    let wal = dir.path().join("hushwire.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    drop(store);
    let store: Arc<dyn Store> = Arc::new(open(&path));
    conformance::persistence_verify(store, written)
        .await
        .unwrap();
}

#[tokio::test]
async fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hushwire.db");
    drop(open(&path));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(SqliteStoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // Back at the known version it opens again, and migration is a no-op.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .unwrap();
    }
    let store = open(&path);
    register(&store, "alice").await.unwrap();
}

#[tokio::test]
async fn rejects_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for options in [
        SqliteOptions {
            max_batch: 0,
            ..Default::default()
        },
        SqliteOptions {
            readers: 0,
            ..Default::default()
        },
        SqliteOptions {
            queue_capacity: 0,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            SqliteStore::open(&path, options),
            Err(SqliteStoreError::InvalidOptions(_))
        ));
    }
}

#[tokio::test]
async fn open_reports_an_unusable_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("db");
    assert!(matches!(
        SqliteStore::open(&path, SqliteOptions::default()),
        Err(SqliteStoreError::Open { .. })
    ));
}

/// 8 tasks × 200 submits, all concurrent: every one durable (visible after reopen),
/// group seqs and the receiver's mailbox seqs contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submitters_are_durable_and_contiguous() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hushwire.db");
    let store = Arc::new(open(&path));
    let s: &dyn Store = &*store;
    let receiver = register(s, "receiver").await.unwrap();
    let mut senders = Vec::new();
    for i in 0..TASKS {
        senders.push(register(s, &format!("sender{i}")).await.unwrap());
    }
    let mut members: Vec<_> = senders.iter().collect();
    members.push(&receiver);
    conformance::create_group(s, b"g", &senders[0], &members)
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for sender in senders.clone() {
        let st = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..PER_TASK {
                let a = accepted(
                    st.submit(application(&sender, b"g", 1, &format!("{i}")))
                        .await
                        .unwrap(),
                )
                .unwrap();
                out.push(a.group_seq);
            }
            out
        }));
    }
    let mut group_seqs = BTreeSet::new();
    for t in tasks {
        for seq in t.await.unwrap() {
            assert!(group_seqs.insert(seq));
        }
    }
    let n = (TASKS * PER_TASK) as u64;
    assert_eq!(group_seqs, (2..=n + 1).collect::<BTreeSet<u64>>());
    drop(store);

    let store = open(&path);
    let got = store.fetch(receiver.id, 0, usize::MAX).await.unwrap();
    // Seq 1 (the Welcome) was acknowledged by create_group.
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert!(
        seqs == (2..=n + 1).collect::<Vec<u64>>(),
        "mailbox seqs not contiguous"
    );
    let g = store.group(b"g").await.unwrap().unwrap();
    assert_eq!(g.last_seq, n + 1);
    // Each sender also received everyone else's messages.
    for sender in &senders {
        assert_eq!(store.pending(sender.id).await.unwrap(), n - PER_TASK as u64);
    }
}

/// A failing operation in a batch rolls back alone; the others in the batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_does_not_sink_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("db")));
    let alice = register(&*store, "alice").await.unwrap();
    let bob = register(&*store, "bob").await.unwrap();
    conformance::create_group(&*store, b"g", &alice, &[&alice, &bob])
        .await
        .unwrap();
    let ghost = hushwire_store::DeviceAddr {
        handle: "ghost".into(),
        device_id: 1,
    };

    let mut tasks = Vec::new();
    for i in 0..64 {
        let st = store.clone();
        let (alice, bob, ghost) = (alice.clone(), bob.clone(), ghost.clone());
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                // Fails: unknown roster device.
                let mut c = conformance::commit(&alice, b"g", 1, &[&alice, &bob], vec![], None);
                if let hushwire_store::SubmitKind::Commit { roster, .. } = &mut c.kind {
                    roster.push(ghost);
                }
                matches!(st.submit(c).await, Err(StoreError::UnknownDevice(_)))
            } else {
                matches!(
                    st.submit(application(&alice, b"g", 1, "ok")).await,
                    Ok(SubmitOutcome::Accepted(_))
                )
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    let got = store.fetch(bob.id, 0, usize::MAX).await.unwrap();
    assert_eq!(got.len(), 48);
    // Seq 1 (the Welcome) was acknowledged by create_group.
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (2..=49).collect::<Vec<u64>>()
    );
    let g = store.group(b"g").await.unwrap().unwrap();
    assert_eq!((g.epoch, g.last_seq), (1, 49));
}

/// Key packages and expiry survive a restart, and a long retention keeps messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_key_packages_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = open(&path);
    let alice = register(&store, "alice").await.unwrap();
    let bob = register(&store, "bob").await.unwrap();
    conformance::create_group(&store, b"g", &alice, &[&alice, &bob])
        .await
        .unwrap();
    let mut short = application(&alice, b"g", 1, "short");
    short.expires_at_ms = NOW + 10;
    accepted(store.submit(short).await.unwrap()).unwrap();
    accepted(
        store
            .submit(application(&alice, b"g", 1, "long"))
            .await
            .unwrap(),
    )
    .unwrap();
    store
        .add_key_packages(bob.id, vec![conformance::key_package(CS, "k", false)])
        .await
        .unwrap();
    drop(store);

    let store = open(&path);
    assert_eq!(store.expire(NOW + 11).await.unwrap(), 1);
    let left = store.fetch(bob.id, 0, 10).await.unwrap();
    // bob's Welcome (seq 1) was acknowledged by create_group; "short" was seq 2.
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    // The expired entry's seq (2) is not reused after another restart.
    drop(store);
    let store = open(&path);
    assert_eq!(store.ack(bob.id, 3).await.unwrap(), 1);
    drop(store);
    let store = open(&path);
    let r = accepted(
        store
            .submit(application(&alice, b"g", 1, "n"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.deliveries[0].envelope.seq, 4);
    assert_eq!(store.claim_key_packages("bob", CS).await.unwrap().len(), 1);
    assert_eq!(store.expire(EXPIRES + 1).await.unwrap(), 1);
}

/// `ack_hint` returns before the ack is durable, but it is applied before any write
/// queued after it, and the seq floor it records survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_hints_apply_in_order_and_keep_seqs_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hushwire.db");
    let store = open(&path);
    let alice = register(&store, "alice").await.unwrap();
    let bob = register(&store, "bob").await.unwrap();
    conformance::create_group(&store, b"g", &alice, &[&alice, &bob])
        .await
        .unwrap();
    for text in ["one", "two", "three"] {
        accepted(
            store
                .submit(application(&alice, b"g", 1, text))
                .await
                .unwrap(),
        )
        .unwrap();
    }
    // bob's Welcome was seq 1 (acknowledged by create_group); the texts are 2..=4.
    store.ack_hint(bob.id, 3).await.unwrap();
    store.ack_hint(bob.id, 2).await.unwrap(); // an older hint changes nothing
    // A durable write queued after the hints sees them applied.
    assert_eq!(store.ack(bob.id, 0).await.unwrap(), 0);
    let left = store.fetch(bob.id, 0, 10).await.unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);

    // Emptying the mailbox by a hint, then restarting: seqs are not reused.
    store.ack_hint(bob.id, 4).await.unwrap();
    drop(store); // finishes what is queued, hints included
    let store = open(&path);
    assert_eq!(store.pending(bob.id).await.unwrap(), 0);
    let r = accepted(
        store
            .submit(application(&alice, b"g", 1, "five"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.deliveries[0].envelope.seq, 5);
    // The bodies of acknowledged messages are gone: only "five" is left to expire.
    assert_eq!(store.expire(EXPIRES + 1).await.unwrap(), 1);
}

/// A database written by schema version 1 (seq floors in `devices`, expiry indexes)
/// migrates to the current version and keeps its floors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_version_1_seq_floors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hushwire.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../migrations/0001_initial.sql"))
            .unwrap();
        conn.execute_batch(
            "INSERT INTO accounts VALUES ('alice', x'00', 0), ('bob', x'00', 0);
             INSERT INTO devices (id, handle, device_no, device_key, cert_created_at_ms,
                                  cert_signature, seq_floor)
                 VALUES (1, 'alice', 1, x'00', 0, x'00', 0), (2, 'bob', 1, x'00', 0, x'00', 41);
             INSERT INTO groups VALUES (x'67', 1, 7, 0);
             INSERT INTO group_members VALUES (x'67', 1), (x'67', 2);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = open(&path);
    let alice = store
        .device(&hushwire_store::DeviceAddr {
            handle: "alice".into(),
            device_id: 1,
        })
        .await
        .unwrap()
        .unwrap();
    let r = accepted(
        store
            .submit(application(&alice, b"g", 1, "after upgrade"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.group_seq, 8);
    assert_eq!(r.deliveries[0].envelope.seq, 42);
    // Migration 7 queued a key directory change for every existing account.
    let changes = store.directory_changes(10).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .map(|c| c.handle.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
}
