//! The shared storage conformance suite on fresh PostgreSQL databases, plus what only
//! this backend has: several nodes (stores) on one database racing, migrations run by
//! nodes starting together, reconnection after lost connections, secret-free errors.
//!
//! Needs `HUSHWIRE_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`): every test creates its own database
//! `hw_<random>` through it and drops it at the end. Unset, each test prints
//! "skipped: HUSHWIRE_TEST_POSTGRES_URL unset" and passes.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use hushwire_store::conformance::{
    self, CS, EXPIRES, NOW, accepted, application, commit, create_group, fresh_message_id,
    register, welcome,
};
use hushwire_store::{
    Accounts, Delivery, KeyDirectory, KeyPackages, Mailboxes, NewReport, Store, StoreError,
    SubmitOutcome,
};
use hushwire_store_postgres::testing::{TEST_URL_ENV, TestDatabase, admin_url, connect_admin};
use hushwire_store_postgres::{PgOptions, PgStore, SCHEMA_VERSION};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio_postgres::NoTls;

fn skip() -> Option<String> {
    admin_url()
        .is_none()
        .then(|| format!("skipped: {TEST_URL_ENV} unset"))
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    connect_admin(url)
        .await
        .expect("connect to HUSHWIRE_TEST_POSTGRES_URL")
}

/// A fresh database for one test (dropped with the value).
async fn test_db() -> TestDatabase {
    let admin = admin_url().expect("checked by skip()");
    TestDatabase::create(&admin, "hw")
        .await
        .expect("create test database")
}

fn options() -> PgOptions {
    PgOptions {
        pool_size: 4,
        ..PgOptions::default()
    }
}

async fn fresh() -> (Arc<dyn Store>, TestDatabase) {
    let db = test_db().await;
    let store = PgStore::connect(&db.url, options())
        .await
        .expect("connect store");
    (Arc::new(store), db)
}

hushwire_store::conformance_tests!(skip_if = skip, fresh);

macro_rules! skip_unless_postgres {
    () => {
        if let Some(reason) = skip() {
            eprintln!("{reason}");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_everything() {
    skip_unless_postgres!();
    let db = test_db().await;
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let written = conformance::persistence_write(store.clone()).await.unwrap();
    drop(store);
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    conformance::persistence_verify(store, written)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_store_answers_closed() {
    skip_unless_postgres!();
    let db = test_db().await;
    let store = PgStore::connect(&db.url, options()).await.unwrap();
    let alice = register(&store, "alice").await.unwrap();
    store.close();
    store.close(); // idempotent
    assert!(matches!(
        store.pending(alice.id).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.ack(alice.id, 1).await,
        Err(StoreError::Closed)
    ));
}

/// Several nodes starting at once on an empty database: each migration applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    skip_unless_postgres!();
    let db = test_db().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            PgStore::connect(
                &url,
                PgOptions {
                    pool_size: 1,
                    ..PgOptions::default()
                },
            )
            .await
        }));
    }
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(t.await.unwrap().expect("every node starts"));
    }
    assert_eq!(stores[0].schema_version().await.unwrap(), SCHEMA_VERSION);
    let client = admin_client(&db.url).await;
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_newer_schema() {
    skip_unless_postgres!();
    let db = test_db().await;
    drop(PgStore::connect(&db.url, options()).await.unwrap());
    let client = admin_client(&db.url).await;
    client
        .execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    match PgStore::connect(&db.url, options()).await {
        Err(StoreError::Backend(m)) => assert!(m.contains("newer"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    client
        .execute(
            "DELETE FROM schema_migrations WHERE version = $1",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let store = PgStore::connect(&db.url, options()).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
}

/// Sessions run with synchronous_commit on even when the URL asks for off, and a pool
/// whose sessions have it off is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commit_is_forced_on() {
    skip_unless_postgres!();
    let db = test_db().await;
    let off_url = format!("{}?options=-c%20synchronous_commit%3Doff", db.url);
    let config = PgStore::pg_config(&off_url, &options()).unwrap();
    let (client, conn) = config.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let sync: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync, "on");
    drop(PgStore::connect(&off_url, options()).await.unwrap());

    let raw: tokio_postgres::Config = off_url.parse().unwrap();
    let manager = deadpool_postgres::Manager::new(raw, NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    match PgStore::connect_with_pool(pool).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("synchronous_commit"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The password of a URL appears in no error and no Debug output.
#[tokio::test]
async fn password_is_never_shown() {
    // Nothing listens on port 1: the connection fails without a server.
    let url = "postgres://hushwire:s3cret-pw-XYZ@127.0.0.1:1/hushwire";
    let err = PgStore::connect(
        url,
        PgOptions {
            pool_size: 1,
            connect_timeout: std::time::Duration::from_secs(2),
            wait_timeout: std::time::Duration::from_secs(2),
            ..PgOptions::default()
        },
    )
    .await
    .expect_err("nothing listens on port 1");
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, StoreError::Backend(_)), "{shown}");
    assert!(!shown.contains("s3cret-pw-XYZ"), "{shown}");
    let bad = PgStore::connect("postgres://u:s3cret-pw-XYZ@[bad", PgOptions::default())
        .await
        .expect_err("malformed");
    assert!(!format!("{bad} {bad:?}").contains("s3cret-pw-XYZ"));
    let config = PgStore::pg_config(url, &PgOptions::default()).unwrap();
    // tokio-postgres redacts the password in its own Debug.
    assert!(!format!("{config:?}").contains("s3cret-pw-XYZ"));
}

/// Killed connections (as in a database restart) fail at most the operation under
/// way; the pool reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_lost_connections() {
    skip_unless_postgres!();
    let db = test_db().await;
    let store = PgStore::connect(&db.url, options()).await.unwrap();
    let a = register(&store, "alice").await.unwrap();
    let b = register(&store, "bob").await.unwrap();
    create_group(&store, b"g", &a, &[&a, &b]).await.unwrap();
    accepted(
        store
            .submit(application(&a, b"g", 1, "before"))
            .await
            .unwrap(),
    )
    .unwrap();

    let admin = admin_client(&db.admin).await;
    for round in 0..3 {
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 1, "round {round}: no connection to kill");
        // The first use after the kill may fail (as a backend error); within a few
        // uses the pool has replaced every dead connection.
        let mut ok = false;
        for _ in 0..(options().pool_size + 2) {
            match store.pending(b.id).await {
                Ok(n) => {
                    assert_eq!(n, 1 + round);
                    ok = true;
                    break;
                }
                Err(StoreError::Backend(_)) => {}
                Err(e) => panic!("unexpected error after a lost connection: {e}"),
            }
        }
        assert!(ok, "round {round}: the store did not reconnect");
        let mut sent = false;
        for _ in 0..(options().pool_size + 2) {
            match store
                .submit(application(&a, b"g", 1, &format!("after {round}")))
                .await
            {
                Ok(o) => {
                    accepted(o).unwrap();
                    sent = true;
                    break;
                }
                Err(StoreError::Backend(_)) => {}
                Err(e) => panic!("unexpected error after a lost connection: {e}"),
            }
        }
        assert!(sent);
    }
    assert_eq!(store.pending(b.id).await.unwrap(), 4);
}

/// Two nodes on one database: concurrent commits at the same epoch, one from each, are
/// fenced (exactly one accepted per round), and so is a concurrent group creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_race_commits() {
    skip_unless_postgres!();
    let db = test_db().await;
    let n1 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let n2 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let a = register(&*n1, "alice").await.unwrap();
    let b = register(&*n2, "bob").await.unwrap();

    // Creation raced from both nodes: one creates, the other meets epoch 1.
    let (c1, c2) = tokio::join!(
        n1.submit(commit(
            &a,
            b"new",
            0,
            &[&a, &b],
            vec![welcome("w-a", &[&b])],
            None
        )),
        n2.submit(commit(
            &b,
            b"new",
            0,
            &[&a, &b],
            vec![welcome("w-b", &[&a])],
            None
        )),
    );
    let outcomes = [c1.unwrap(), c2.unwrap()];
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, SubmitOutcome::Accepted(_)))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| matches!(
            o,
            SubmitOutcome::StaleEpoch { current_epoch: 1 } | SubmitOutcome::NotMember
        )),
        "{outcomes:?}"
    );

    create_group(&*n1, b"g", &a, &[&a, &b]).await.unwrap();
    let mut epoch = 1;
    for round in 0..20u64 {
        let (r1, r2) = tokio::join!(
            n1.submit(commit(&a, b"g", epoch, &[&a, &b], vec![], None)),
            n2.submit(commit(&b, b"g", epoch, &[&a, &b], vec![], None)),
        );
        let outcomes = [r1.unwrap(), r2.unwrap()];
        let accepted: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                SubmitOutcome::Accepted(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(accepted.len(), 1, "round {round}: {outcomes:?}");
        assert_eq!(accepted[0].epoch, epoch + 1);
        assert!(
            outcomes.iter().any(|o| *o
                == SubmitOutcome::StaleEpoch {
                    current_epoch: epoch + 1
                }),
            "round {round}: {outcomes:?}"
        );
        epoch += 1;
        let seen = n2.group(b"g").await.unwrap().unwrap();
        assert_eq!(seen.epoch, epoch);
        assert_eq!(seen.last_seq, 1 + round + 1);
    }
}

/// Two nodes: submissions from both interleave into gap-free per-device seqs; the same
/// message id sent through both nodes at once is accepted once; fetch+ack of one
/// device from both nodes removes every entry exactly once and frees every body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_race_mailboxes() {
    skip_unless_postgres!();
    let db = test_db().await;
    let n1 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let n2 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let a = register(&*n1, "alice").await.unwrap();
    let b = register(&*n1, "bob").await.unwrap();
    let c = register(&*n1, "carol").await.unwrap();
    create_group(&*n1, b"g", &a, &[&a, &b, &c]).await.unwrap();
    create_group(&*n2, b"h", &b, &[&a, &b, &c]).await.unwrap();

    // 2 nodes x 2 groups x 25 messages, all to carol (and others).
    const PER_TASK: usize = 25;
    let mut tasks = Vec::new();
    for (node, sender, group) in [
        (n1.clone(), a.clone(), &b"g"[..]),
        (n2.clone(), b.clone(), &b"h"[..]),
        (n2.clone(), a.clone(), &b"g"[..]),
        (n1.clone(), b.clone(), &b"h"[..]),
    ] {
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                accepted(
                    node.submit(application(&sender, group, 1, &format!("m{i}")))
                        .await
                        .unwrap(),
                )
                .unwrap();
            }
        }));
    }
    // The same submission through both nodes at once: one copy.
    let dup = application(&a, b"g", 1, "once");
    let (d1, d2) = tokio::join!(n1.submit(dup.clone()), n2.submit(dup.clone()));
    let (d1, d2) = (
        accepted(d1.unwrap()).unwrap(),
        accepted(d2.unwrap()).unwrap(),
    );
    assert_eq!(d1.group_seq, d2.group_seq);
    assert_eq!(usize::from(d1.duplicate) + usize::from(d2.duplicate), 1);
    for t in tasks {
        t.await.unwrap();
    }
    let total = 4 * PER_TASK + 1;
    let all = n2.fetch(c.id, 0, usize::MAX).await.unwrap();
    assert_eq!(all.len(), total);
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (all[0].seq..all[0].seq + total as u64).collect::<Vec<_>>(),
        "carol's seqs have gaps or repeats"
    );
    let group_seqs: BTreeSet<(bytes::Bytes, u64)> = all
        .iter()
        .map(|e| (e.group_id.clone(), e.group_seq))
        .collect();
    assert_eq!(group_seqs.len(), total, "a group seq was handed out twice");

    // carol's two connections (one per node) fetch and acknowledge in small pages.
    let mut readers = Vec::new();
    for node in [n1.clone(), n2.clone()] {
        let device = c.id;
        readers.push(tokio::spawn(async move {
            let mut removed = 0u64;
            let mut last = 0u64;
            for _ in 0..1_000 {
                let page = node.fetch(device, last, 7).await.unwrap();
                let Some(top) = page.last().map(|e| e.seq) else {
                    break;
                };
                removed += node.ack(device, top).await.unwrap();
                last = top;
            }
            removed
        }));
    }
    let mut removed = 0;
    for r in readers {
        removed += r.await.unwrap();
    }
    assert_eq!(
        removed, total as u64,
        "an entry was removed twice or not at all"
    );
    assert_eq!(n1.pending(c.id).await.unwrap(), 0);
    // alice and bob acknowledge too: every body is unreferenced and gone, so the
    // retention sweep finds none.
    for d in [&a, &b] {
        n1.ack(d.id, u64::MAX).await.unwrap();
    }
    assert_eq!(n2.expire(EXPIRES + 1).await.unwrap(), 0);
    let next = accepted(n2.submit(application(&a, b"g", 1, "next")).await.unwrap()).unwrap();
    let carol_next = next
        .deliveries
        .iter()
        .find(|d| d.device == c.id)
        .unwrap()
        .envelope
        .seq;
    assert_eq!(carol_next, all[0].seq + total as u64);
}

/// Concurrent key package claims from two nodes hand out distinct packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_race_claims() {
    skip_unless_postgres!();
    let db = test_db().await;
    let n1 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let n2 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let a = register(&*n1, "alice").await.unwrap();
    let packages = (0..12)
        .map(|i| conformance::key_package(CS, &format!("p{i}"), false))
        .collect();
    n1.add_key_packages(a.id, packages).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { n1.clone() } else { n2.clone() };
        tasks.push(tokio::spawn(async move {
            node.claim_key_packages("alice", CS).await.unwrap()
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        for k in t.await.unwrap() {
            assert!(got.insert(k.data), "a package was handed out twice");
        }
    }
    assert_eq!(got.len(), 12);
    assert_eq!(n2.key_package_stock(a.id, CS).await.unwrap().available, 0);
    let _ = (NOW, fresh_message_id());
}

/// The cluster poller's batch question, answered in one statement, in the order asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_mail_answers_a_batch() {
    skip_unless_postgres!();
    let (store, _db) = fresh().await;
    let s = &*store;
    let a = register(s, "alice").await.unwrap();
    let b = register(s, "bob").await.unwrap();
    let c = register(s, "carol").await.unwrap();
    create_group(s, b"g", &a, &[&a, &b, &c]).await.unwrap();
    assert!(s.devices_with_mail(&[]).await.unwrap().is_empty());
    let r = accepted(s.submit(application(&a, b"g", 1, "hi")).await.unwrap()).unwrap();
    let seq_of = |d| {
        r.deliveries
            .iter()
            .find(|x| x.device == d)
            .unwrap()
            .envelope
            .seq
    };
    let (bs, cs) = (seq_of(b.id), seq_of(c.id));
    // carol before bob, as asked; alice (the sender) has nothing; cursors at the entry
    // itself mean nothing new.
    let asked = [(c.id, cs - 1), (a.id, 0), (b.id, bs - 1)];
    assert_eq!(s.devices_with_mail(&asked).await.unwrap(), vec![c.id, b.id]);
    let asked = [(c.id, cs), (b.id, bs - 1)];
    assert_eq!(s.devices_with_mail(&asked).await.unwrap(), vec![b.id]);
}

/// Reports: ids increase, paging by id, closing deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_round_trip() {
    skip_unless_postgres!();
    let (store, _db) = fresh().await;
    let s = &*store;
    let report = |n: u64| NewReport {
        reporter: "alice".into(),
        reported: format!("spammer{n}"),
        reason: format!("reason {n}"),
        evidence: vec![n as u8; 3],
        at_ms: NOW + n,
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(s.file_report(report(n)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let page = s.reports(0, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(page[1].report, report(1));
    let rest = s.reports(page[1].id, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].report, report(2));
    assert!(s.close_report(ids[1]).await.unwrap());
    assert!(!s.close_report(ids[1]).await.unwrap());
    let left = s.reports(0, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
}

/// Migration 4 queues a key directory change for every account that existed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_4_queues_existing_accounts() {
    skip_unless_postgres!();
    let db = test_db().await;
    let client = admin_client(&db.url).await;
    client
        .batch_execute(concat!(
            include_str!("../migrations/0001_initial.sql"),
            include_str!("../migrations/0002_reports.sql"),
            include_str!("../migrations/0003_devices_and_links.sql"),
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, \
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             INSERT INTO schema_migrations (version) VALUES (1), (2), (3); \
             INSERT INTO accounts VALUES ('bob', '\\x00', 0), ('alice', '\\x00', 0);",
        ))
        .await
        .unwrap();
    let store = PgStore::connect(&db.url, options()).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let changes = store.directory_changes(10).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .map(|c| c.handle.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
}

/// Two nodes registering accounts and storing device lists while a publisher on each
/// node keeps consuming the change queue: every change is published exactly once (a
/// change committed after a publisher's read is never consumed by its append), and
/// both nodes agree on the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_race_directory_changes() {
    skip_unless_postgres!();
    let db = test_db().await;
    let n1 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let n2 = Arc::new(PgStore::connect(&db.url, options()).await.unwrap());
    let (s1, s2) = tokio::join!(
        n1.directory_secret(bytes::Bytes::from_static(b"node-1")),
        n2.directory_secret(bytes::Bytes::from_static(b"node-2")),
    );
    assert_eq!(s1.unwrap(), s2.unwrap());

    const ACCOUNTS: usize = 24;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..ACCOUNTS {
        let node = if i % 2 == 0 { n1.clone() } else { n2.clone() };
        writers.push(tokio::spawn(async move {
            let handle = format!("user{i}");
            register(&*node, &handle).await.unwrap();
            assert!(
                node.set_device_list(&handle, 1, bytes::Bytes::from_static(b"list"))
                    .await
                    .unwrap()
            );
        }));
    }
    // Publishers: read the queue, append the next epoch consuming what was read.
    let mut publishers = Vec::new();
    for node in [n1.clone(), n2.clone()] {
        let done = done.clone();
        publishers.push(tokio::spawn(async move {
            let mut published = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                // As the server does: the log first, then the queue (so an epoch
                // appended in between makes this append fail).
                let last = node.directory_epochs(0, usize::MAX).await.unwrap();
                let next = last.last().map_or(1, |e| e.epoch + 1);
                let changes = node.directory_changes(1000).await.unwrap();
                if let Some(through) = changes.last().map(|c| c.seq) {
                    let epoch = hushwire_store::DirectoryEpoch {
                        epoch: next,
                        published_at_ms: NOW,
                        record: bytes::Bytes::new(),
                    };
                    if node.append_directory_epoch(epoch, through).await.unwrap() {
                        published.extend(changes.into_iter().map(|c| (c.seq, c.handle)));
                    }
                } else if finished {
                    return published;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut published = Vec::new();
    for p in publishers {
        published.extend(p.await.unwrap());
    }
    // Each change once: two per account (registration, device list).
    published.sort();
    let seqs: BTreeSet<u64> = published.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), published.len(), "a change published twice");
    assert_eq!(published.len(), 2 * ACCOUNTS);
    for i in 0..ACCOUNTS {
        let handle = format!("user{i}");
        assert_eq!(
            published.iter().filter(|(_, h)| *h == handle).count(),
            2,
            "{handle}"
        );
    }
    assert!(n1.directory_changes(10).await.unwrap().is_empty());
}
