//! What the key directory costs: publishing N new accounts in one epoch, replaying the
//! log on a node's start, proof sizes, and a client's verification time per lookup.
//!
//! ```sh
//! cargo run --release -p hushwire-directory --example directory_costs -- 10000 100000
//! ```
//! Each N runs on a fresh embedded (SQLite) store in a temporary directory.

// An example binary: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use akd::AkdLabel;
use hushwire_directory::{Config, KeyDirectory, PublishOutcome};
use hushwire_store::{NewAccount, Store};
use hushwire_store_sqlite::{SqliteOptions, SqliteStore};
use protobuf::Message as _;

const NOW: u64 = 1_800_000_000_000;
const LOOKUPS: usize = 1000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("db"), SqliteOptions::default()).unwrap());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(64)) {
        let store = Arc::clone(&store);
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for i in chunk {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                store
                    .create_account(NewAccount {
                        handle: format!("user{i}"),
                        account_key: key.to_vec(),
                        device_key: [1u8; 32].to_vec(),
                        cert_created_at_ms: NOW,
                        cert_signature: vec![2u8; 64],
                        invite: None,
                        now_ms: NOW,
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    println!(
        "N = {n}: {n} accounts registered in {:.1?}",
        started.elapsed()
    );

    let rss0 = rss_mib();
    let dir_a = KeyDirectory::open(Arc::clone(&store), Duration::from_secs(30))
        .await
        .unwrap();
    // The first publication: one epoch holds at most the directory's per-epoch cap,
    // so large N take several epochs.
    let t = Instant::now();
    let mut epochs = 0u64;
    let mut published = 0usize;
    let mut first_epoch = 0usize;
    let mut now = NOW;
    while let PublishOutcome::Published { entries, .. } = dir_a.publish(now).await.unwrap() {
        if epochs == 0 {
            first_epoch = entries;
        }
        epochs += 1;
        published += entries;
        now += 30_000;
    }
    let publish = t.elapsed();
    println!(
        "  first publication of all {n}: {published} entries in {epochs} epoch(s), {publish:.2?}, RSS +{:.0} MiB",
        rss_mib() - rss0
    );

    // A second epoch with 1% of the accounts changed (re-queued by device lists).
    let changed = (n / 100).max(1);
    for i in 0..changed {
        store
            .set_device_list(&format!("user{i}"), 1, bytes::Bytes::from_static(b""))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let out = dir_a.publish(now).await.unwrap();
    println!(
        "  next epoch with {changed} changed entries: {:.2?} ({out:?})",
        t.elapsed()
    );
    let PublishOutcome::Published { epoch: last, .. } = out else {
        panic!("the changes were not published");
    };

    let t = Instant::now();
    let dir_b = KeyDirectory::open(Arc::clone(&store), Duration::from_secs(30))
        .await
        .unwrap();
    println!(
        "  a node's start (replay of the log, {last} epochs): {:.2?}",
        t.elapsed()
    );
    assert_eq!(dir_b.latest(), dir_a.latest());
    drop(dir_b);

    let handles: Vec<String> = (0..LOOKUPS)
        .map(|i| format!("user{}", (i * 7919) % n))
        .collect();
    let t = Instant::now();
    let answer = dir_a.lookup(&handles[..256]).await.unwrap();
    let server_lookup = t.elapsed() / 256;
    let root = answer.root.clone().unwrap();
    let sizes: Vec<usize> = answer.lookups.iter().map(|l| l.proof.len()).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    println!(
        "  lookup proof: {mean:.0} B mean ({}–{} B); server time per lookup {server_lookup:.2?}",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    let root_hash = akd::hash::try_parse_digest(&root.root_hash).unwrap();
    let t = Instant::now();
    for l in &answer.lookups {
        let proof = akd::proto::specs::types::LookupProof::parse_from_bytes(&l.proof).unwrap();
        let proof = akd::LookupProof::try_from(&proof).unwrap();
        akd::client::lookup_verify::<Config>(
            &root.vrf_public_key,
            root_hash,
            root.epoch,
            AkdLabel(l.handle.as_bytes().to_vec()),
            proof,
        )
        .unwrap();
    }
    println!(
        "  client verification per lookup (decode + VRF + Merkle path): {:.2?}",
        t.elapsed() / answer.lookups.len() as u32
    );
    let history = dir_a.history("user0").await.unwrap();
    println!(
        "  history proof of an account published twice: {} B",
        history.proof.len()
    );
    let t = Instant::now();
    let audit = dir_a.audit(last).await.unwrap();
    println!(
        "  append-only proof epoch {} → {last} ({changed} changed): {} B (built in {:.2?})",
        last - 1,
        audit.proof.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let audit1 = dir_a.audit(1).await.unwrap();
    println!(
        "  append-only proof epoch 0 → 1 (the first {} inserted): {:.1} KiB (built in {:.2?})",
        first_epoch,
        audit1.proof.len() as f64 / 1024.0,
        t.elapsed()
    );
    let roots = dir_a.roots(0, 10);
    let before = roots.iter().find(|r| r.epoch == last - 1).unwrap();
    let after = roots.iter().find(|r| r.epoch == last).unwrap();
    let t = Instant::now();
    hushwire_directory::audit::verify_step(&before.root_hash, after, &audit)
        .await
        .unwrap();
    println!(
        "  auditor's verification of epoch {last}: {:.2?}",
        t.elapsed()
    );
    println!("  RSS now {:.0} MiB", rss_mib());
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N"))
        .collect();
    for n in if sizes.is_empty() {
        vec![10_000]
    } else {
        sizes
    } {
        run(n).await;
    }
}
