//! The batching submitter (`src/batch.rs`): many concurrent submissions in one
//! transaction, each answered on its own; acknowledgement hints applied by the next
//! batch; the pool and batch settings read from the store URL.
//!
//! Needs `HUSHWIRE_TEST_POSTGRES_URL` (see tests/conformance.rs); unset, each test
//! prints why it is skipped and passes. One test per concern, each on its own database;
//! the counters test is the only one in this file reading the process-wide counters
//! ([`PgStats`]), and only as lower bounds.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use hushwire_store::conformance::{accepted, application, create_group, register};
use hushwire_store::{Delivery, DeviceId, Mailboxes, StoreError, Submission, SubmitOutcome};
use hushwire_store_postgres::testing::{TEST_URL_ENV, TestDatabase, admin_url};
use hushwire_store_postgres::{PgOptions, PgStats, PgStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

macro_rules! skip_unless_postgres {
    () => {
        if admin_url().is_none() {
            eprintln!("skipped: {TEST_URL_ENV} unset");
            return;
        }
    };
}

async fn test_db() -> TestDatabase {
    TestDatabase::create(&admin_url().expect("checked"), "hwb")
        .await
        .expect("create test database")
}

/// Many submissions at once, with every kind of refusal and an in-batch duplicate
/// among them: each gets its own answer, the accepted ones consecutive group seqs per
/// group and gap-free mailbox seqs per device, and they share transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_share_transactions_and_keep_their_answers() {
    skip_unless_postgres!();
    let db = test_db().await;
    let store = Arc::new(
        PgStore::connect(
            &db.url,
            PgOptions {
                pool_size: 4,
                ..PgOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let a = register(&*store, "alice").await.unwrap();
    let b = register(&*store, "bob").await.unwrap();
    let c = register(&*store, "carol").await.unwrap();
    let groups: Vec<Vec<u8>> = (0..8).map(|g| format!("g{g}").into_bytes()).collect();
    for g in &groups {
        create_group(&*store, g, &a, &[&a, &b]).await.unwrap();
    }

    let before = PgStats::now();
    const PER_GROUP: usize = 40;
    let mut subs: Vec<(Submission, &'static str)> = Vec::new();
    for i in 0..PER_GROUP {
        for g in &groups {
            let sender = if i % 2 == 0 { &a } else { &b };
            subs.push((application(sender, g, 1, &format!("m{i}")), "ok"));
        }
    }
    let twice = application(&a, &groups[0], 1, "twice");
    subs.push((twice.clone(), "dup-pair"));
    subs.push((twice, "dup-pair"));
    subs.push((application(&a, &groups[1], 7, "stale"), "stale"));
    subs.push((application(&c, &groups[2], 1, "outsider"), "not-member"));
    subs.push((application(&a, b"nowhere", 1, "lost"), "unknown-group"));
    let mut ghost = application(&a, &groups[3], 1, "ghost");
    ghost.sender = DeviceId(999_999);
    subs.push((ghost, "unknown-sender"));

    let mut set = tokio::task::JoinSet::new();
    for (k, (sub, expect)) in subs.into_iter().enumerate() {
        let store = store.clone();
        set.spawn(async move { (k, expect, sub.group_id.clone(), store.submit(sub).await) });
    }
    let mut seqs: BTreeMap<Vec<u8>, BTreeSet<u64>> = BTreeMap::new();
    let mut dup_pair = Vec::new();
    let mut ok = 0;
    while let Some(joined) = set.join_next().await {
        let (k, expect, group, result) = joined.unwrap();
        match (expect, result) {
            ("ok", Ok(SubmitOutcome::Accepted(acc))) => {
                assert!(!acc.duplicate, "#{k}");
                assert_eq!(acc.epoch, 1);
                assert_eq!(acc.deliveries.len(), 1, "#{k}: one recipient");
                assert!(
                    seqs.entry(group.to_vec())
                        .or_default()
                        .insert(acc.group_seq)
                );
                ok += 1;
            }
            ("dup-pair", Ok(SubmitOutcome::Accepted(acc))) => dup_pair.push(acc),
            ("stale", Ok(SubmitOutcome::StaleEpoch { current_epoch: 1 })) => {}
            ("not-member", Ok(SubmitOutcome::NotMember)) => {}
            ("unknown-group", Ok(SubmitOutcome::UnknownGroup)) => {}
            ("unknown-sender", Err(StoreError::Invalid(_))) => {}
            (expect, other) => panic!("#{k}: expected {expect}, got {other:?}"),
        }
    }
    assert_eq!(ok, PER_GROUP * groups.len());
    // The same message twice: one copy, both answers name its place.
    assert_eq!(dup_pair.len(), 2);
    assert_eq!(dup_pair[0].group_seq, dup_pair[1].group_seq);
    assert_eq!(
        dup_pair.iter().filter(|d| d.duplicate).count(),
        1,
        "{dup_pair:?}"
    );
    let twice_group = seqs.entry(groups[0].clone()).or_default();
    assert!(twice_group.insert(dup_pair[0].group_seq));
    // Per group: consecutive seqs after the creating commit (seq 1).
    for (g, s) in &seqs {
        let expected: BTreeSet<u64> = (2..2 + s.len() as u64).collect();
        assert_eq!(s, &expected, "group {g:?}");
        let rec = store.group(g).await.unwrap().unwrap();
        assert_eq!(rec.last_seq, 1 + s.len() as u64);
    }
    // Mailboxes: gap-free seqs, each body once.
    for (device, count) in [
        (a.id, PER_GROUP / 2 * groups.len()),
        (b.id, ok - PER_GROUP / 2 * groups.len() + 1),
    ] {
        let all = store.fetch(device, 0, usize::MAX).await.unwrap();
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        let first = seqs[0];
        assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
        // Welcomes from the creating commits are not in these counts: only application
        // messages from the other member.
        let apps = all
            .iter()
            .filter(|e| e.kind == hushwire_store::EnvelopeKind::Application)
            .count();
        assert_eq!(apps, count, "device {device:?}");
    }
    let after = PgStats::now();
    let submits = after.batched_submits - before.batched_submits;
    let batches = after.batches - before.batches;
    assert!(submits >= subs_len(), "{before:?} -> {after:?}");
    assert!(
        batches < submits,
        "submissions did not share transactions: {before:?} -> {after:?}"
    );
}

fn subs_len() -> u64 {
    (40 * 8 + 6) as u64
}

/// An acknowledgement hint is applied by the next batch (before the submission that
/// follows it is answered), entries and unreferenced bodies removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_hints_ride_with_the_next_batch() {
    skip_unless_postgres!();
    let db = test_db().await;
    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .unwrap();
    let a = register(&store, "alice").await.unwrap();
    let b = register(&store, "bob").await.unwrap();
    create_group(&store, b"g", &a, &[&a, &b]).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        let acc = accepted(
            store
                .submit(application(&a, b"g", 1, &format!("m{i}")))
                .await
                .unwrap(),
        )
        .unwrap();
        last = acc.deliveries[0].envelope.seq;
    }
    let queued = store.pending(b.id).await.unwrap();
    assert_eq!(
        queued, 5,
        "five messages (create_group drained the Welcome)"
    );
    // Hints for bob: two, coalesced to the highest.
    store.ack_hint(b.id, last - 2).await.unwrap();
    store.ack_hint(b.id, last).await.unwrap();
    // The default batcher runs one batch at a time, in order: this submission's answer
    // comes after the hints' commit.
    accepted(
        store
            .submit(application(&a, b"g", 1, "after"))
            .await
            .unwrap(),
    )
    .unwrap();
    let left = store.fetch(b.id, 0, usize::MAX).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].payload.as_ref(), b"after");
    // Every acknowledged body is gone: only "after" is left for the retention sweep.
    store.ack(b.id, u64::MAX).await.unwrap();
    assert_eq!(
        store
            .expire(hushwire_store::conformance::EXPIRES + 1)
            .await
            .unwrap(),
        0
    );
    // A closed store refuses hints and submissions.
    store.close();
    assert!(matches!(
        store.ack_hint(b.id, 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.submit(application(&a, b"g", 1, "late")).await,
        Err(StoreError::Closed)
    ));
}

/// The store URL's own parameters set the pool and batching, and are not passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_the_url() {
    let mut o = PgOptions::default();
    let rest = o
        .apply_url(
            "postgres://u@h/db?application_name=x&pool_size=3&batch_max=9&batch_window_us=250&batch_concurrency=2",
        )
        .unwrap();
    assert_eq!(rest, "postgres://u@h/db?application_name=x");
    assert_eq!(
        (
            o.pool_size,
            o.batch_max,
            o.batch_window,
            o.batch_concurrency
        ),
        (3, 9, Duration::from_micros(250), 2)
    );
    let mut o = PgOptions::default();
    assert_eq!(
        o.apply_url("postgres://u@h/db?pool_size=5").unwrap(),
        "postgres://u@h/db"
    );
    assert_eq!(o.pool_size, 5);
    for bad in [
        "pool_size=0",
        "pool_size=x",
        "batch_concurrency=65",
        "batch_max=-1",
    ] {
        let url = format!("postgres://u@h/db?{bad}");
        assert!(
            matches!(
                PgOptions::default().apply_url(&url),
                Err(StoreError::Invalid(_))
            ),
            "{bad}"
        );
    }

    skip_unless_postgres!();
    let db = test_db().await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}pool_size=2&batch_max=4&batch_concurrency=2", db.url);
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    assert!(format!("{store:?}").contains("pool_size: 2"), "{store:?}");
    let a = register(&store, "alice").await.unwrap();
    let b = register(&store, "bob").await.unwrap();
    create_group(&store, b"g", &a, &[&a, &b]).await.unwrap();
    let store = Arc::new(store);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (store, a) = (store.clone(), a.clone());
        set.spawn(async move {
            store
                .submit(application(&a, b"g", 1, &format!("m{i}")))
                .await
        });
    }
    let mut group_seqs = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        assert!(group_seqs.insert(accepted(r.unwrap().unwrap()).unwrap().group_seq));
    }
    assert_eq!(group_seqs, (2..22).collect::<BTreeSet<u64>>());
    let seqs: Vec<u64> = store
        .fetch(b.id, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    // Seq 1 was the Welcome, acknowledged by create_group.
    assert_eq!(seqs, (2..=21).collect::<Vec<u64>>());
}
