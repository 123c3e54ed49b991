//! The key directory on the embedded store: publication, proofs a client and an auditor
//! verify, replay on restart, concurrent publishers, reset accounts, a tampered log.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use akd::{AkdLabel, HistoryParams, HistoryVerificationParams};
use hushwire_directory::audit::{AuditError, check_root, empty_root, verify_step};
use hushwire_directory::{Config, DirectoryError, KeyDirectory, PublishOutcome};
use hushwire_proto::directory::{DirectoryValue, verify_root};
use hushwire_proto::wire;
use hushwire_store::{NewAccount, Store};
use hushwire_store_sqlite::{SqliteOptions, SqliteStore};
use protobuf::Message as _;

const NOW: u64 = 1_800_000_000_000;

fn key(handle: &str) -> [u8; 32] {
    let mut k = [7u8; 32];
    for (i, b) in handle.bytes().enumerate() {
        k[i % 32] ^= b;
    }
    k
}

fn new_account(handle: &str, account_key: [u8; 32]) -> NewAccount {
    NewAccount {
        handle: handle.to_owned(),
        account_key: account_key.to_vec(),
        device_key: [1u8; 32].to_vec(),
        cert_created_at_ms: NOW - 5,
        cert_signature: vec![2u8; 64],
        invite: None,
        now_ms: NOW,
    }
}

struct Env {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db"), SqliteOptions::default()).unwrap();
    Env {
        store: Arc::new(store),
        dir,
    }
}

async fn register(store: &dyn Store, handle: &str) {
    store
        .create_account(new_account(handle, key(handle)))
        .await
        .unwrap();
}

async fn open(store: &Arc<dyn Store>) -> KeyDirectory {
    KeyDirectory::open(Arc::clone(store), Duration::from_secs(30))
        .await
        .unwrap()
}

/// Verifies a lookup proof as a client does; `None` for "not published".
fn verify_lookup(response: &wire::DirectoryLookupResponse, handle: &str) -> Option<DirectoryValue> {
    let root = response.root.as_ref().unwrap();
    let lookup = response
        .lookups
        .iter()
        .find(|l| l.handle == handle)
        .unwrap();
    if lookup.proof.is_empty() {
        return None;
    }
    let proof = akd::proto::specs::types::LookupProof::parse_from_bytes(&lookup.proof).unwrap();
    let proof = akd::LookupProof::try_from(&proof).unwrap();
    let result = akd::client::lookup_verify::<Config>(
        &root.vrf_public_key,
        akd::hash::try_parse_digest(&root.root_hash).unwrap(),
        root.epoch,
        AkdLabel(handle.as_bytes().to_vec()),
        proof,
    )
    .unwrap();
    Some(DirectoryValue::decode(&result.value.0).unwrap())
}

fn account_value(handle: &str) -> DirectoryValue {
    DirectoryValue::of_account(&key(handle), None).unwrap()
}

#[tokio::test]
async fn published_keys_have_verifiable_lookup_proofs() {
    let env = env();
    register(&*env.store, "alice").await;
    register(&*env.store, "bob").await;
    let dir = open(&env.store).await;
    assert_eq!(dir.latest().epoch, 0);

    let out = dir.publish(NOW).await.unwrap();
    assert_eq!(
        out,
        PublishOutcome::Published {
            epoch: 1,
            entries: 2
        }
    );
    // Nothing new: no epoch.
    assert_eq!(
        dir.publish(NOW + 1).await.unwrap(),
        PublishOutcome::NothingPending
    );
    let root = dir.latest();
    assert_eq!(root.epoch, 1);
    verify_root(&root).unwrap();
    assert_eq!(root.vrf_public_key, dir.vrf_public_key());
    assert_eq!(root.signing_key[..], dir.signing_key());

    let answer = dir
        .lookup(&["alice".into(), "bob".into(), "carol".into()])
        .await
        .unwrap();
    assert_eq!(
        verify_lookup(&answer, "alice"),
        Some(account_value("alice"))
    );
    assert_eq!(verify_lookup(&answer, "bob"), Some(account_value("bob")));
    assert_eq!(verify_lookup(&answer, "carol"), None);

    // A proof for alice does not pass as bob's.
    let mut swapped = answer.clone();
    swapped.lookups[1].proof = swapped.lookups[0].proof.clone();
    let proof =
        akd::proto::specs::types::LookupProof::parse_from_bytes(&swapped.lookups[1].proof).unwrap();
    let root = swapped.root.as_ref().unwrap();
    assert!(
        akd::client::lookup_verify::<Config>(
            &root.vrf_public_key,
            akd::hash::try_parse_digest(&root.root_hash).unwrap(),
            root.epoch,
            AkdLabel(b"bob".to_vec()),
            akd::LookupProof::try_from(&proof).unwrap(),
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_restarted_node_replays_the_same_roots_and_audits_verify() {
    let env = env();
    register(&*env.store, "alice").await;
    let dir = open(&env.store).await;
    dir.publish(NOW).await.unwrap();
    register(&*env.store, "bob").await;
    dir.publish(NOW + 1000).await.unwrap();
    env.store
        .set_device_list("alice", 1, bytes::Bytes::from_static(b"not a device list"))
        .await
        .unwrap();
    // A stored list that does not decode keeps the account's key published.
    dir.publish(NOW + 2000).await.unwrap();
    let roots = dir.roots(0, 100);
    assert_eq!(roots.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3]);

    let again = open(&env.store).await;
    assert_eq!(again.roots(0, 100), roots);
    assert_eq!(again.vrf_public_key(), dir.vrf_public_key());

    // Every step is append-only, from the empty directory on.
    let mut previous = empty_root().await.unwrap().to_vec();
    for root in &roots {
        check_root(root, Some((dir.vrf_public_key(), &dir.signing_key()))).unwrap();
        let proof = again.audit(root.epoch).await.unwrap();
        verify_step(&previous, root, &proof).await.unwrap();
        previous = root.root_hash.to_vec();
    }
    // A step checked against the wrong previous root fails.
    let proof = again.audit(3).await.unwrap();
    assert!(matches!(
        verify_step(&roots[0].root_hash, &roots[2], &proof).await,
        Err(AuditError::Proof { epoch: 3, .. })
    ));
    // Roots under another key are refused.
    assert_eq!(
        check_root(&roots[0], Some((dir.vrf_public_key(), &[0u8; 32]))),
        Err(AuditError::KeysChanged { epoch: 1 })
    );
    assert!(matches!(
        again.audit(4).await,
        Err(DirectoryError::UnknownEpoch(4))
    ));

    // The history of alice: one key, every epoch it was (re)published.
    let history = again.history("alice").await.unwrap();
    let root = history.root.unwrap();
    let proof = akd::proto::specs::types::HistoryProof::parse_from_bytes(&history.proof).unwrap();
    let results = akd::client::key_history_verify::<Config>(
        &root.vrf_public_key,
        akd::hash::try_parse_digest(&root.root_hash).unwrap(),
        root.epoch,
        AkdLabel(b"alice".to_vec()),
        akd::HistoryProof::try_from(&proof).unwrap(),
        HistoryVerificationParams::Default {
            history_params: HistoryParams::Complete,
        },
    )
    .unwrap();
    assert!(!results.is_empty());
    for r in results {
        match DirectoryValue::decode(&r.value.0).unwrap() {
            DirectoryValue::Account { account_key, .. } => assert_eq!(account_key, key("alice")),
            DirectoryValue::Released => panic!("alice was never released"),
        }
    }
}

#[tokio::test]
async fn a_reset_handle_is_published_released_then_with_its_new_key() {
    let env = env();
    register(&*env.store, "alice").await;
    let dir = open(&env.store).await;
    dir.publish(NOW).await.unwrap();
    assert!(env.store.reset_account("alice", NOW + 1).await.unwrap());
    dir.publish(NOW + 1000).await.unwrap();
    let answer = dir.lookup(&["alice".into()]).await.unwrap();
    assert_eq!(
        verify_lookup(&answer, "alice"),
        Some(DirectoryValue::Released)
    );

    let new_key = [9u8; 32];
    env.store
        .create_account(new_account("alice", new_key))
        .await
        .unwrap();
    dir.publish(NOW + 2000).await.unwrap();
    let answer = dir.lookup(&["alice".into()]).await.unwrap();
    assert_eq!(
        verify_lookup(&answer, "alice"),
        Some(DirectoryValue::of_account(&new_key, None).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_publishing_concurrently_agree_on_one_history() {
    let env = env();
    let a = Arc::new(open(&env.store).await);
    let b = Arc::new(open(&env.store).await);
    for round in 0..6u64 {
        register(&*env.store, &format!("user{round}")).await;
        let (ra, rb) = tokio::join!(
            {
                let a = Arc::clone(&a);
                async move { a.publish(NOW + round * 10).await }
            },
            {
                let b = Arc::clone(&b);
                async move { b.publish(NOW + round * 10 + 1).await }
            }
        );
        let outcomes = [ra.unwrap(), rb.unwrap()];
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, PublishOutcome::Published { .. })),
            "{outcomes:?}"
        );
    }
    a.catch_up().await.unwrap();
    b.catch_up().await.unwrap();
    let (ra, rb) = (a.roots(0, 1000), b.roots(0, 1000));
    assert_eq!(ra, rb);
    // A fresh node replays the same log to the same roots, and everyone is published.
    let c = open(&env.store).await;
    assert_eq!(c.roots(0, 1000), ra);
    let handles: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let answer = c.lookup(&handles).await.unwrap();
    for h in &handles {
        assert_eq!(verify_lookup(&answer, h), Some(account_value(h)), "{h}");
    }
}

#[tokio::test]
async fn a_tampered_log_is_refused_on_replay() {
    let env = env();
    register(&*env.store, "alice").await;
    register(&*env.store, "bob").await;
    let dir = open(&env.store).await;
    dir.publish(NOW).await.unwrap();
    drop(dir);
    // The operator swaps bob's key inside the stored epoch.
    let db = rusqlite::Connection::open(env.dir.path().join("db")).unwrap();
    let record: Vec<u8> = db
        .query_row(
            "SELECT record FROM directory_epochs WHERE epoch = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let bob = account_value("bob").encode();
    let at = record
        .windows(bob.len())
        .position(|w| w == bob.as_slice())
        .unwrap();
    let mut tampered = record.clone();
    tampered[at + 10] ^= 1;
    db.execute(
        "UPDATE directory_epochs SET record = ?1 WHERE epoch = 1",
        [&tampered],
    )
    .unwrap();
    drop(db);
    match KeyDirectory::open(Arc::clone(&env.store), Duration::from_secs(30)).await {
        Err(DirectoryError::Corrupt { epoch: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
}
