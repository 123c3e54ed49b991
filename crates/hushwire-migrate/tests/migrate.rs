//! Migration of an embedded (SQLite) server into PostgreSQL, checked through the store
//! traits on the target.
//!
//! Needs `HUSHWIRE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`):
//! every test creates its own database `hwmig_<random>` and drops it at the end. Unset,
//! the tests needing it print "skipped: HUSHWIRE_TEST_POSTGRES_URL unset" and pass.

// Test code: failures are panics.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use bytes::Bytes;
use futures_util::future::join_all;
use hushwire_blobstore::{BlobStore, ObjectBlobStore};
use hushwire_directory::audit::{check_root, verify_step};
use hushwire_directory::{KeyDirectory, PublishOutcome};
use hushwire_migrate::{MediaCopy, MigrateError, MigrateOptions, migrate};
use hushwire_store::{
    Accepted, Accounts, BlobId, BlobPart, Blobs, Controls, Delivery, DeviceId, DeviceRecord,
    Envelope, KeyPackages, Links, Mailboxes, NewAccount, NewBlob, NewDevice, NewKeyPackage,
    NewReport, Store, Submission, SubmitKind, SubmitOutcome, WelcomeOut,
};
use hushwire_store_postgres::{PgOptions, PgStore, testing};
use hushwire_store_sqlite::{SqliteOptions, SqliteStore};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const NOW: u64 = 1_700_000_000_000;
const EXPIRES: u64 = NOW + 30 * 24 * 3600 * 1000;
const CS: u16 = 1;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn message_id() -> [u8; 16] {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0x5a; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

async fn register(
    store: &dyn Store,
    handle: &str,
) -> Result<DeviceRecord, hushwire_store::StoreError> {
    store
        .create_account(NewAccount {
            handle: handle.to_owned(),
            account_key: format!("account-key:{handle}").into_bytes(),
            device_key: format!("device-key:{handle}/1").into_bytes(),
            cert_created_at_ms: NOW - 5,
            cert_signature: format!("cert-sig:{handle}/1").into_bytes(),
            invite: None,
            now_ms: NOW,
        })
        .await
}

async fn link_device(store: &dyn Store, handle: &str) -> DeviceRecord {
    store
        .add_device(
            handle,
            NewDevice {
                device_key: format!("device-key:{handle}/linked").into_bytes(),
                cert_created_at_ms: NOW - 1,
                cert_signature: format!("cert-sig:{handle}/linked").into_bytes(),
            },
        )
        .await
        .unwrap()
        .unwrap()
}

fn application(sender: &DeviceRecord, group: &[u8], epoch: u64, body: &str) -> Submission {
    Submission {
        sender: sender.id,
        message_id: message_id(),
        group_id: Bytes::copy_from_slice(group),
        epoch,
        kind: SubmitKind::Application,
        payload: Bytes::from(body.to_owned()),
        now_ms: NOW,
        expires_at_ms: EXPIRES,
        disappearing: false,
        past_epoch_ok: false,
    }
}

fn commit(
    sender: &DeviceRecord,
    group: &[u8],
    epoch: u64,
    roster: &[&DeviceRecord],
    welcomes: Vec<WelcomeOut>,
    group_info: Option<&str>,
) -> Submission {
    Submission {
        kind: SubmitKind::Commit {
            roster: roster.iter().map(|d| d.addr.clone()).collect(),
            welcomes,
            group_info: group_info.map(|g| Bytes::from(g.to_owned())),
        },
        payload: Bytes::from(format!("commit:{epoch}")),
        ..application(sender, group, epoch, "")
    }
}

fn welcome(body: &str, to: &[&DeviceRecord]) -> WelcomeOut {
    WelcomeOut {
        payload: Bytes::from(body.to_owned()),
        recipients: to.iter().map(|d| d.addr.clone()).collect(),
    }
}

fn accepted(outcome: SubmitOutcome) -> Result<Accepted, String> {
    match outcome {
        SubmitOutcome::Accepted(a) => Ok(a),
        other => Err(format!("expected Accepted, got {other:?}")),
    }
}

fn admin_url() -> Option<String> {
    let url = testing::admin_url();
    if url.is_none() {
        eprintln!("skipped: {} unset", testing::TEST_URL_ENV);
    }
    url
}

/// A fresh database for one test (dropped with the value).
type TestDb = testing::TestDatabase;

async fn test_db(admin: &str) -> TestDb {
    TestDb::create(admin, "hwmig")
        .await
        .expect("create test database")
}

/// What the fixture put in the embedded store, for checks on the target.
struct Fixture {
    devices: Vec<DeviceRecord>,
    /// Every device's queued entries, as the embedded store served them.
    queued: Vec<(DeviceId, Vec<Envelope>)>,
    /// The highest seq handed out per device (acknowledged ones included).
    last_seq: HashMap<DeviceId, u64>,
    linked: DeviceRecord,
    revoked: DeviceRecord,
    blob: BlobId,
    blob_bytes: Vec<u8>,
    report_id: u64,
}

async fn submit(store: &dyn Store, sub: Submission, last_seq: &mut HashMap<DeviceId, u64>) {
    let a = accepted(store.submit(sub).await.expect("submit")).expect("accepted");
    for d in a.deliveries {
        let e = last_seq.entry(d.device).or_default();
        *e = (*e).max(d.envelope.seq);
    }
}

/// An embedded server's database in `dir` with `accounts` accounts: one group of up
/// to 100 members with messages (one disappearing), a 1:1 group per pair of accounts
/// with a Welcome and a message each, some mailboxes acknowledged, key packages, an
/// invite, a linked and a revoked device, a blob with three parts (bytes in
/// `dir/blobs`), a blob being deleted, a block and a report. The store is shut down.
async fn build_fixture(dir: &Path, accounts: usize) -> Fixture {
    let store = SqliteStore::open(&dir.join("hushwire.db"), SqliteOptions::default())
        .expect("open embedded store");
    let s: &dyn Store = &store;
    let mut last_seq = HashMap::new();

    let mut devices = Vec::new();
    let handles: Vec<String> = (0..accounts).map(|i| format!("user{i:04}")).collect();
    for chunk in handles.chunks(100) {
        let regs = join_all(chunk.iter().map(|h| register(s, h))).await;
        devices.extend(regs.into_iter().map(|r| r.expect("register")));
    }
    let linked = link_device(s, "user0000").await;
    let revoked = link_device(s, "user0001").await;
    // Multi-device: a device list and a link session with a slot.
    assert!(
        s.set_device_list("user0000", 3, Bytes::from_static(b"signed-list:3"))
            .await
            .unwrap()
    );
    s.create_link([0x1c; 16], &linked.addr, EXPIRES)
        .await
        .unwrap();
    s.put_link_slot([0x1c; 16], "hello", Bytes::from_static(b"sealed"), NOW)
        .await
        .unwrap();
    s.create_invite("invite-one", EXPIRES).await.unwrap();
    s.create_invite("invite-two", NOW + 1).await.unwrap();
    for d in devices.iter().take(20) {
        let mut kps: Vec<NewKeyPackage> = (0..3)
            .map(|k| NewKeyPackage {
                ciphersuite: CS,
                data: Bytes::from(format!("kp:{}:{k}", d.id.0)),
                last_resort: false,
            })
            .collect();
        kps.push(NewKeyPackage {
            ciphersuite: CS,
            data: Bytes::from(format!("kp:{}:lr", d.id.0)),
            last_resort: true,
        });
        s.add_key_packages(d.id, kps).await.unwrap();
    }

    // The big group: 100 members (or all), then three messages.
    let members: Vec<&DeviceRecord> = devices.iter().take(100).collect();
    let others: Vec<&DeviceRecord> = members[1..].to_vec();
    let mut big = members.clone();
    big.push(&revoked);
    submit(
        s,
        commit(
            members[0],
            b"g-big",
            0,
            &big,
            vec![welcome("welcome:big", &others)],
            Some("gi:big:1"),
        ),
        &mut last_seq,
    )
    .await;
    for k in 0..3 {
        let mut sub = application(members[1], b"g-big", 1, &format!("big:{k}"));
        if k == 2 {
            sub.disappearing = true;
            sub.expires_at_ms = NOW + 60_000;
        }
        submit(s, sub, &mut last_seq).await;
    }
    assert!(s.revoke_device(&revoked.addr).await.unwrap());

    // 1:1 groups, a Welcome and a message each.
    let pairs: Vec<(usize, usize)> = (0..accounts / 2).map(|p| (2 * p, 2 * p + 1)).collect();
    for chunk in pairs.chunks(50) {
        let outcomes = join_all(chunk.iter().map(|&(a, b)| {
            let (da, db) = (&devices[a], &devices[b]);
            async move {
                let g = format!("pair-{a}");
                let c = s
                    .submit(commit(
                        da,
                        g.as_bytes(),
                        0,
                        &[da, db],
                        vec![welcome(&format!("welcome:{g}"), &[db])],
                        None,
                    ))
                    .await;
                let m = s
                    .submit(application(db, g.as_bytes(), 1, &format!("hi from {b}")))
                    .await;
                (c, m)
            }
        }))
        .await;
        for (c, m) in outcomes {
            for o in [c, m] {
                let a = accepted(o.expect("submit")).expect("accepted");
                for d in a.deliveries {
                    let e = last_seq.entry(d.device).or_default();
                    *e = (*e).max(d.envelope.seq);
                }
            }
        }
    }

    // Some devices read everything: their floor carries the seq counter.
    for d in devices.iter().skip(100).take(50) {
        let max = last_seq.get(&d.id).copied().unwrap_or(0);
        s.ack(d.id, max).await.unwrap();
    }
    // One reads part of its mailbox.
    s.ack(devices[3].id, 1).await.unwrap();

    // Media: a blob of three parts, fetched by one reader; another being deleted.
    let blobs = ObjectBlobStore::local(dir).unwrap();
    let blob = BlobId([7u8; 32]);
    let blob_bytes: Vec<u8> = (0..10u8).collect();
    let created = s
        .create_blob(NewBlob {
            id: blob,
            uploader: devices[0].id,
            group_id: Bytes::from_static(b"g-big"),
            size: 10,
            part_size: 4,
            quota_bytes: 1 << 30,
            now_ms: NOW,
            expires_at_ms: EXPIRES,
        })
        .await
        .unwrap();
    assert!(matches!(
        created,
        hushwire_store::CreateBlobOutcome::Created(_)
    ));
    for (index, chunk) in blob_bytes.chunks(4).enumerate() {
        let index = u32::try_from(index).unwrap();
        blobs
            .put_part(&blob.0, index, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
        s.record_blob_part(
            &blob,
            BlobPart {
                index,
                len: u32::try_from(chunk.len()).unwrap(),
                sha256: Sha256::digest(chunk).into(),
            },
            NOW,
        )
        .await
        .unwrap();
    }
    assert!(
        s.record_blob_fetch(&blob, devices[1].id, NOW)
            .await
            .unwrap()
    );
    let doomed = BlobId([9u8; 32]);
    s.create_blob(NewBlob {
        id: doomed,
        uploader: devices[0].id,
        group_id: Bytes::from_static(b"g-big"),
        size: 3,
        part_size: 4,
        quota_bytes: 1 << 30,
        now_ms: NOW,
        expires_at_ms: EXPIRES,
    })
    .await
    .unwrap();
    assert!(s.begin_blob_deletion(&doomed, NOW).await.unwrap());

    assert!(
        s.set_block("user0002", "user0003", true, NOW)
            .await
            .unwrap()
    );
    let report_id = s
        .file_report(NewReport {
            reporter: "user0004".into(),
            reported: "user0005".into(),
            reason: "spam".into(),
            evidence: b"evidence".to_vec(),
            at_ms: NOW,
        })
        .await
        .unwrap();

    let mut queued = Vec::new();
    for d in devices.iter().chain([&linked]) {
        queued.push((d.id, s.fetch(d.id, 0, 10_000).await.unwrap()));
    }
    store.shutdown().await;
    drop(store);
    Fixture {
        devices,
        queued,
        last_seq,
        linked,
        revoked,
        blob,
        blob_bytes,
        report_id,
    }
}

fn media(data: &Path, to: &Path) -> MediaCopy {
    MediaCopy {
        from: Arc::new(ObjectBlobStore::local(data).unwrap()),
        to: Arc::new(ObjectBlobStore::local(to).unwrap()),
    }
}

async fn pg_store(url: &str) -> PgStore {
    PgStore::connect(
        url,
        PgOptions {
            pool_size: 4,
            ..PgOptions::default()
        },
    )
    .await
    .expect("open target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_move_and_every_message_is_delivered() {
    let Some(admin) = admin_url() else { return };
    let db = test_db(&admin).await;
    let data = tempfile::tempdir().unwrap();
    let media_to = tempfile::tempdir().unwrap();
    let fx = build_fixture(data.path(), 1_000).await;

    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let options = MigrateOptions {
        progress: Some(Arc::new({
            let lines = lines.clone();
            move |p: &hushwire_migrate::ProgressEvent<'_>| {
                lines
                    .lock()
                    .unwrap()
                    .push(format!("{} {}/{} {}", p.table, p.copied, p.total, p.done));
            }
        })),
        ..MigrateOptions::default()
    };
    let report = migrate(
        data.path(),
        &db.url,
        Some(media(data.path(), media_to.path())),
        &options,
    )
    .await
    .expect("migrate");
    assert!(report.ok, "{report:#?}");
    assert!(!report.resumed);
    let rows = |t: &str| {
        report
            .tables
            .iter()
            .find(|c| c.table == t)
            .map(|c| c.target_rows)
            .unwrap()
    };
    assert_eq!(rows("accounts"), 1_000);
    assert_eq!(rows("devices"), 1_002);
    assert_eq!(rows("mailbox_seqs"), 1_002);
    assert_eq!(rows("blob_parts"), 3);
    assert_eq!(rows("blocks"), 1);
    assert_eq!(rows("reports"), 1);
    assert_eq!(rows("invites"), 2);
    assert_eq!(rows("device_lists"), 1);
    assert_eq!(rows("links"), 1);
    assert_eq!(rows("link_slots"), 1);
    assert_eq!(rows("groups"), 501);
    for c in &report.tables {
        assert_eq!(c.source_rows, c.target_rows, "{}", c.table);
        assert_eq!(c.source_checksum, c.target_checksum, "{}", c.table);
    }
    let m = report.media.clone().unwrap();
    assert_eq!((m.source_parts, m.verified_parts, m.failures), (3, 3, 0));
    assert_eq!(m.skipped_deleting, 0, "the blob being deleted has no parts");
    // Progress: the accounts went in one batch of 1,000 and a closing empty one.
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.contains(&"accounts 1000/1000 false".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"accounts 1000/1000 true".to_owned()),
        "{lines:?}"
    );

    // The target, through the store traits.
    let pg = pg_store(&db.url).await;
    let mut entries = 0;
    for (device, envs) in &fx.queued {
        let got = pg.fetch(*device, 0, 10_000).await.unwrap();
        assert_eq!(&got, envs, "device {device:?}");
        assert_eq!(pg.pending(*device).await.unwrap(), envs.len() as u64);
        entries += envs.len();
    }
    assert!(entries > 1_000, "{entries} queued entries");
    let account = pg.account("user0000").await.unwrap().unwrap();
    assert_eq!(account.devices.len(), 2);
    assert_eq!(
        account.device_list,
        Some(hushwire_store::StoredDeviceList {
            version: 3,
            data: Bytes::from_static(b"signed-list:3"),
        })
    );
    assert_eq!(
        pg.link_slot([0x1c; 16], "hello", NOW).await.unwrap(),
        hushwire_store::LinkSlot::Bytes(Bytes::from_static(b"sealed"))
    );
    assert_eq!(
        pg.link_owner([0x1c; 16], NOW).await.unwrap(),
        Some(fx.linked.addr.clone())
    );
    assert!(account.devices.contains(&fx.linked));
    let revoked = pg.device(&fx.revoked.addr).await.unwrap().unwrap();
    assert!(revoked.revoked);
    let big = pg.group(b"g-big").await.unwrap().unwrap();
    assert_eq!((big.epoch, big.last_seq, big.roster.len()), (1, 4, 101));
    let gi = pg.group_info(b"g-big").await.unwrap().unwrap();
    assert_eq!((gi.epoch, &gi.data[..]), (1, &b"gi:big:1"[..]));
    let stock = pg.key_package_stock(fx.devices[10].id, CS).await.unwrap();
    assert_eq!((stock.available, stock.has_last_resort), (3, true));
    assert_eq!(pg.blocked_by("user0002").await.unwrap(), vec!["user0003"]);
    let reports = pg.reports(0, 10).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].id, fx.report_id);
    let parts = pg.blob_parts(&fx.blob).await.unwrap();
    assert_eq!(parts.len(), 3);
    let readers = pg.blob_readers(&fx.blob).await.unwrap();
    assert!(readers.iter().any(|r| r.fetched_at_ms == Some(NOW)));
    // The media bytes are in the new store.
    let to = ObjectBlobStore::local(media_to.path()).unwrap();
    let mut bytes = Vec::new();
    for p in &parts {
        let mut st = to.read_part(&fx.blob.0, p.index, 0).await.unwrap();
        while let Some(c) = futures_util::TryStreamExt::try_next(&mut st).await.unwrap() {
            bytes.extend_from_slice(&c);
        }
    }
    assert_eq!(bytes, fx.blob_bytes);

    // New messages continue every device's seq after the last one handed out, also
    // where the mailbox was read empty (the floor) or partly.
    let a = accepted(
        pg.submit(application(&fx.devices[0], b"g-big", 1, "after"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(a.group_seq, 5);
    assert_eq!(a.deliveries.len(), 99);
    let mut last_seq = fx.last_seq.clone();
    for d in &a.deliveries {
        assert_eq!(d.envelope.seq, last_seq[&d.device] + 1, "{:?}", d.device);
        last_seq.insert(d.device, d.envelope.seq);
    }
    for i in [100usize, 101, 3] {
        let g = format!("pair-{}", i - i % 2);
        let from = &fx.devices[i ^ 1];
        let a = accepted(
            pg.submit(application(from, g.as_bytes(), 1, "later"))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(a.deliveries.len(), 1);
        let d = &a.deliveries[0];
        assert_eq!(d.device, fx.devices[i].id);
        assert_eq!(d.envelope.seq, last_seq[&d.device] + 1);
    }
    // New ids continue after the source's.
    let newbie = register(&pg, "newbie").await.unwrap();
    let max_old = fx
        .devices
        .iter()
        .map(|d| d.id.0)
        .max()
        .unwrap()
        .max(fx.revoked.id.0);
    assert!(newbie.id.0 > max_old);
    let rid = pg
        .file_report(NewReport {
            reporter: "newbie".into(),
            reported: "user0000".into(),
            reason: "x".into(),
            evidence: Vec::new(),
            at_ms: NOW,
        })
        .await
        .unwrap();
    assert!(rid > fx.report_id);
    // The disappearing message is still one on the target: the purge takes it.
    let before = pg.fetch(fx.devices[0].id, 0, 10_000).await.unwrap();
    assert!(before.iter().any(|e| &e.payload[..] == b"big:2"));
    assert!(pg.purge_disappearing(NOW + 60_001).await.unwrap() > 0);
    let after = pg.fetch(fx.devices[0].id, 0, 10_000).await.unwrap();
    assert!(!after.iter().any(|e| &e.payload[..] == b"big:2"));
    assert_eq!(after.len() + 1, before.len());
    pg.close();
}

/// An account whose account key is 32 bytes (the key directory publishes it).
async fn register_keyed(store: &dyn Store, handle: &str, key: u8) -> DeviceRecord {
    store
        .create_account(NewAccount {
            handle: handle.to_owned(),
            account_key: vec![key; 32],
            device_key: vec![key; 32],
            cert_created_at_ms: NOW - 5,
            cert_signature: vec![key; 64],
            invite: None,
            now_ms: NOW,
        })
        .await
        .expect("register")
}

/// The key directory moves with its secret, its epoch log and its unpublished changes:
/// the nodes on the target serve the roots clients already hold, under the keys they
/// pinned, and the next epoch extends them append-only with the accounts registered
/// since the last publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_directory_moves_and_clients_see_no_change() {
    let Some(admin) = admin_url() else { return };
    let db = test_db(&admin).await;
    let data = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(3600);

    let sqlite = Arc::new(
        SqliteStore::open(&data.path().join("hushwire.db"), SqliteOptions::default())
            .expect("open embedded store"),
    );
    for i in 0..5u8 {
        register_keyed(&*sqlite, &format!("early{i}"), i + 1).await;
    }
    let directory = KeyDirectory::open(sqlite.clone(), interval).await.unwrap();
    assert_eq!(
        directory.publish(NOW).await.unwrap(),
        PublishOutcome::Published {
            epoch: 1,
            entries: 5
        }
    );
    register_keyed(&*sqlite, "early5", 6).await;
    assert_eq!(
        directory.publish(NOW + 1).await.unwrap(),
        PublishOutcome::Published {
            epoch: 2,
            entries: 1
        }
    );
    // Registered after the last publication: still pending when the server stops.
    for i in 0..3u8 {
        register_keyed(&*sqlite, &format!("late{i}"), 20 + i).await;
    }
    let roots = directory.roots(0, 100);
    assert_eq!(roots.len(), 2);
    let (vrf, signing) = (directory.vrf_public_key().to_vec(), directory.signing_key());
    drop(directory);
    sqlite.shutdown().await;
    drop(sqlite);

    let report = migrate(data.path(), &db.url, None, &MigrateOptions::default())
        .await
        .expect("migrate");
    assert!(report.ok, "{report:#?}");
    assert!(
        !report.notes.iter().any(|n| n.contains("not migrated")),
        "{:?}",
        report.notes
    );
    let rows = |t: &str| {
        let c = report.tables.iter().find(|c| c.table == t).unwrap();
        assert_eq!(c.source_checksum, c.target_checksum, "{t}");
        c.target_rows
    };
    assert_eq!(rows("directory_secret"), 1);
    assert_eq!(rows("directory_epochs"), 2);
    assert_eq!(rows("directory_changes"), 3);

    let pg = Arc::new(pg_store(&db.url).await);
    let directory = KeyDirectory::open(pg.clone(), interval).await.unwrap();
    // The keys clients pinned, and the roots they hold.
    assert_eq!(directory.vrf_public_key(), &vrf[..]);
    assert_eq!(directory.signing_key(), signing);
    assert_eq!(directory.roots(0, 100), roots);
    // The accounts registered before the stop are published next, and the new epoch
    // passes a client's checks against what it held before the move.
    assert_eq!(
        directory.publish(NOW + 2).await.unwrap(),
        PublishOutcome::Published {
            epoch: 3,
            entries: 3
        }
    );
    let latest = directory.latest();
    check_root(&latest, Some((&vrf, &signing))).expect("the pinned keys sign the new root");
    let audit = directory.audit(3).await.unwrap();
    verify_step(&roots[1].root_hash, &latest, &audit)
        .await
        .expect("epoch 3 extends the migrated epoch 2 append-only");
    // New changes continue after the source's seqs (none is skipped or consumed twice).
    register_keyed(&*pg, "newbie", 40).await;
    assert_eq!(
        directory.publish(NOW + 3).await.unwrap(),
        PublishOutcome::Published {
            epoch: 4,
            entries: 1
        }
    );
    drop(directory);
    pg.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_migration_resumes_without_duplicates() {
    let Some(admin) = admin_url() else { return };
    let db = test_db(&admin).await;
    let data = tempfile::tempdir().unwrap();
    let media_to = tempfile::tempdir().unwrap();
    build_fixture(data.path(), 200).await;

    let small = |stop| MigrateOptions {
        batch_rows: 40,
        stop_after_batches: Some(stop),
        ..MigrateOptions::default()
    };
    let first = migrate(data.path(), &db.url, None, &small(3)).await;
    assert!(matches!(first, Err(MigrateError::Stopped(3))), "{first:?}");
    // Stopped again, further on; then in the middle of the media.
    let second = migrate(data.path(), &db.url, None, &small(10)).await;
    assert!(
        matches!(second, Err(MigrateError::Stopped(10))),
        "{second:?}"
    );
    let report = migrate(
        data.path(),
        &db.url,
        Some(media(data.path(), media_to.path())),
        &MigrateOptions {
            batch_rows: 40,
            ..MigrateOptions::default()
        },
    )
    .await
    .expect("resumed migration");
    assert!(report.resumed);
    assert!(report.ok, "{report:#?}");
    for c in &report.tables {
        assert_eq!(c.source_rows, c.target_rows, "{}", c.table);
        assert_eq!(c.source_checksum, c.target_checksum, "{}", c.table);
    }

    // A clean run into a fresh database gives the same checksums.
    let db2 = test_db(&admin).await;
    let clean = migrate(data.path(), &db2.url, None, &MigrateOptions::default())
        .await
        .unwrap();
    assert!(clean.ok);
    assert_eq!(clean.tables, report.tables);

    // Running again after success changes nothing and still verifies.
    let again = migrate(data.path(), &db.url, None, &MigrateOptions::default())
        .await
        .unwrap();
    assert!(again.ok && again.resumed);
    assert_eq!(again.tables, report.tables);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_other_data_is_refused() {
    let Some(admin) = admin_url() else { return };
    let data = tempfile::tempdir().unwrap();
    build_fixture(data.path(), 4).await;

    // A database a PostgreSQL node already serves.
    let db = test_db(&admin).await;
    let pg = pg_store(&db.url).await;
    register(&pg, "someone").await.unwrap();
    pg.close();
    let refused = migrate(data.path(), &db.url, None, &MigrateOptions::default()).await;
    assert!(
        matches!(&refused, Err(MigrateError::TargetNotEmpty { table }) if table == "accounts"),
        "{refused:?}"
    );

    // A database holding another source's migration.
    let db = test_db(&admin).await;
    let other = tempfile::tempdir().unwrap();
    build_fixture(other.path(), 4).await;
    migrate(other.path(), &db.url, None, &MigrateOptions::default())
        .await
        .unwrap();
    let refused = migrate(data.path(), &db.url, None, &MigrateOptions::default()).await;
    assert!(
        matches!(refused, Err(MigrateError::OtherSource { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_running_server_s_database_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&data.path().join("hushwire.db"), SqliteOptions::default()).unwrap();
    register(&store, "alice").await.unwrap();
    // The URL is never reached: the source is checked first.
    let refused = migrate(
        data.path(),
        "postgres://nobody@127.0.0.1:1/none",
        None,
        &MigrateOptions::default(),
    )
    .await;
    assert!(
        matches!(refused, Err(MigrateError::SourceInUse(_))),
        "{refused:?}"
    );
    store.shutdown().await;
    drop(store);
    // Stopped: the source opens (and the unreachable target is what fails now).
    let after = migrate(
        data.path(),
        "postgres://nobody@127.0.0.1:1/none",
        None,
        &MigrateOptions::default(),
    )
    .await;
    assert!(matches!(after, Err(MigrateError::Postgres(_))), "{after:?}");
    // The source is untouched and a server opens it again.
    let store =
        SqliteStore::open(&data.path().join("hushwire.db"), SqliteOptions::default()).unwrap();
    assert!(store.account("alice").await.unwrap().is_some());
    store.shutdown().await;
    let missing = tempfile::tempdir().unwrap();
    let none = migrate(
        missing.path(),
        "postgres://x@127.0.0.1:1/y",
        None,
        &MigrateOptions::default(),
    )
    .await;
    assert!(
        matches!(none, Err(MigrateError::SourceMissing(_))),
        "{none:?}"
    );
}

async fn read_all(store: &dyn BlobStore, blob: &BlobId, parts: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for index in 0..parts {
        let mut st = store.read_part(&blob.0, index, 0).await.unwrap();
        while let Some(c) = futures_util::TryStreamExt::try_next(&mut st).await.unwrap() {
            bytes.extend_from_slice(&c);
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_goes_to_s3_verified() {
    let Some(admin) = admin_url() else { return };
    let moto = match hushwire_blobstore::moto::MotoServer::start() {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let bucket = moto.create_bucket().unwrap();
    let db = test_db(&admin).await;
    let data = tempfile::tempdir().unwrap();
    let fx = build_fixture(data.path(), 4).await;
    let s3: Arc<dyn BlobStore> =
        Arc::new(ObjectBlobStore::s3(&format!("s3://{bucket}/moved"), &moto.settings()).unwrap());
    let copy = MediaCopy {
        from: Arc::new(ObjectBlobStore::local(data.path()).unwrap()),
        to: s3.clone(),
    };
    let report = migrate(data.path(), &db.url, Some(copy), &MigrateOptions::default())
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    let m = report.media.unwrap();
    assert_eq!((m.verified_parts, m.failures, m.bytes_this_run), (3, 0, 10));
    assert_eq!(read_all(s3.as_ref(), &fx.blob, 3).await, fx.blob_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_media_part_fails_the_verification() {
    let Some(admin) = admin_url() else { return };
    let db = test_db(&admin).await;
    let data = tempfile::tempdir().unwrap();
    let media_to = tempfile::tempdir().unwrap();
    let fx = build_fixture(data.path(), 4).await;
    // Part 1 rots on disk: same length, other bytes.
    let part = data.path().join("blobs").join(hex_id(&fx.blob)).join("1");
    assert!(part.is_file(), "{}", part.display());
    std::fs::write(&part, [0xee; 4]).unwrap();
    let report = migrate(
        data.path(),
        &db.url,
        Some(media(data.path(), media_to.path())),
        &MigrateOptions::default(),
    )
    .await
    .unwrap();
    assert!(!report.ok);
    assert!(report.tables.iter().all(|t| t.ok));
    let m = report.media.unwrap();
    assert_eq!((m.verified_parts, m.failures), (2, 1));
    assert!(
        m.failed[0].ends_with("/1: source bytes do not match the recorded length/SHA-256"),
        "{:?}",
        m.failed
    );
}

fn hex_id(id: &BlobId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_s_database_is_read_with_its_wal() {
    let Some(admin) = admin_url() else { return };
    let db = test_db(&admin).await;
    let live = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&live.path().join("hushwire.db"), SqliteOptions::default()).unwrap();
    for h in ["alice", "bob", "carol"] {
        register(&store, h).await.unwrap();
    }
    // A crash image: the files as a killed server leaves them, the last writes only in
    // the WAL.
    let crashed = tempfile::tempdir().unwrap();
    let wal = live.path().join("hushwire.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "writes are in the WAL"
    );
    for f in ["hushwire.db", "hushwire.db-wal"] {
        std::fs::copy(live.path().join(f), crashed.path().join(f)).unwrap();
    }
    store.shutdown().await;
    let report = migrate(crashed.path(), &db.url, None, &MigrateOptions::default())
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    let accounts = report
        .tables
        .iter()
        .find(|t| t.table == "accounts")
        .unwrap();
    assert_eq!(accounts.target_rows, 3);
}
