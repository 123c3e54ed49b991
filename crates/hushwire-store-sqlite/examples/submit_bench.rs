//! Submit and ack throughput of the SQLite store with group commit.
//!
//! ```text
//! cargo run --release -p hushwire-store-sqlite --example submit_bench -- \
//!     [--messages 100000] [--callers 256] [--pairs 64] [--max-batch 512] [--ack-every 1] \
//!     [--wal-autocheckpoint 8192] [--dir PATH]
//! ```
//!
//! Setup: `pairs` 1:1 groups (two accounts, one device each). `callers` tasks submit
//! application messages concurrently (each waits for its answer before sending the
//! next), spread over the groups; then every recipient acknowledges its mailbox
//! `ack-every` entries at a time, again from `callers` tasks. Every `Ok` is durable
//! (`synchronous=FULL`). The database goes in a temporary directory unless `--dir`.

use bytes::Bytes;
use hushwire_store::conformance::{create_group, fresh_message_id, register};
use hushwire_store::{
    Delivery, DeviceRecord, Mailboxes, Store, Submission, SubmitKind, SubmitOutcome,
};
use hushwire_store_sqlite::{SqliteOptions, SqliteStore};
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The server's default retention: 30 days.
const RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Args {
    messages: u64,
    callers: usize,
    pairs: usize,
    max_batch: usize,
    ack_every: u64,
    wal_autocheckpoint: u32,
    dir: Option<std::path::PathBuf>,
}

fn parse() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        messages: 100_000,
        callers: 256,
        pairs: 64,
        max_batch: 512,
        ack_every: 1,
        wal_autocheckpoint: SqliteOptions::default().wal_autocheckpoint_pages,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--messages" => a.messages = value.parse()?,
            "--callers" => a.callers = value.parse()?,
            "--pairs" => a.pairs = value.parse()?,
            "--max-batch" => a.max_batch = value.parse()?,
            "--ack-every" => a.ack_every = value.parse()?,
            "--wal-autocheckpoint" => a.wal_autocheckpoint = value.parse()?,
            "--dir" => a.dir = Some(value.into()),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if a.callers == 0 || a.pairs == 0 || a.ack_every == 0 {
        return Err("--callers, --pairs and --ack-every must be positive".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse()?;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let path = dir.join("bench.db");
    let options = SqliteOptions {
        max_batch: args.max_batch,
        wal_autocheckpoint_pages: args.wal_autocheckpoint,
        ..Default::default()
    };
    let store = Arc::new(SqliteStore::open(&path, options)?);

    let mut pairs: Vec<(DeviceRecord, DeviceRecord, Bytes)> = Vec::new();
    for i in 0..args.pairs {
        let a = register(&*store, &format!("a{i}")).await?;
        let b = register(&*store, &format!("b{i}")).await?;
        let group = Bytes::from(format!("group-{i}"));
        create_group(&*store, &group, &a, &[&a, &b]).await?;
        pairs.push((a, b, group));
    }
    let pairs = Arc::new(pairs);
    let payload = Bytes::from(vec![0xa5u8; 200]);

    // Submits.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.callers {
        let (store, pairs, next, payload) =
            (store.clone(), pairs.clone(), next.clone(), payload.clone());
        let total = args.messages;
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<(), String>(());
                }
                let (a, b, group) = &pairs[(n % pairs.len() as u64) as usize];
                // Alternate directions within each pair.
                let sender = if (n / pairs.len() as u64).is_multiple_of(2) {
                    a
                } else {
                    b
                };
                let now_ms = unix_ms();
                let sub = Submission {
                    sender: sender.id,
                    message_id: fresh_message_id(),
                    group_id: group.clone(),
                    epoch: 1,
                    kind: SubmitKind::Application,
                    payload: payload.clone(),
                    now_ms,
                    expires_at_ms: now_ms + RETENTION_MS,
                    disappearing: false,
                    past_epoch_ok: false,
                };
                match store.submit(sub).await {
                    Ok(SubmitOutcome::Accepted(_)) => {}
                    other => return Err(format!("submit failed: {other:?}")),
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submit_secs = started.elapsed().as_secs_f64();
    println!(
        "submit: {} messages, {} callers, {} 1:1 groups, max_batch {}: {:.2} s, {:.0} msg/s",
        args.messages,
        args.callers,
        args.pairs,
        args.max_batch,
        submit_secs,
        args.messages as f64 / submit_secs
    );

    // Acks: every device acknowledges its mailbox, `ack_every` entries at a time.
    let devices: Vec<DeviceRecord> = pairs
        .iter()
        .flat_map(|(a, b, _)| [a.clone(), b.clone()])
        .collect();
    // Fetches: every device pages through its mailbox, 100 entries a call, all devices
    // at once.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in &devices {
        let (store, device) = (store.clone(), d.id);
        tasks.push(tokio::spawn(async move {
            let (mut seqs, mut calls, mut after) = (Vec::new(), 0u64, 0);
            loop {
                let page = store.fetch(device, after, 100).await?;
                calls += 1;
                match page.last() {
                    Some(last) => after = last.seq,
                    None => return Ok::<_, hushwire_store::StoreError>((device, seqs, calls)),
                }
                seqs.extend(page.iter().map(|e| e.seq));
            }
        }));
    }
    let mut work = Vec::new();
    let mut calls = 0;
    for t in tasks {
        let (device, seqs, c) = t.await??;
        calls += c;
        work.push((device, seqs));
    }
    let fetch_secs = started.elapsed().as_secs_f64();
    let fetched: usize = work.iter().map(|(_, s)| s.len()).sum();
    println!(
        "fetch: {fetched} envelopes in {calls} calls of up to 100: {fetch_secs:.2} s, {:.0} envelopes/s, {:.0} calls/s",
        fetched as f64 / fetch_secs,
        calls as f64 / fetch_secs
    );
    let work = Arc::new(work);
    let next = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.callers.min(devices.len()) {
        let (store, work, next, acks, removed) = (
            store.clone(),
            work.clone(),
            next.clone(),
            acks.clone(),
            removed.clone(),
        );
        let step = args.ack_every as usize;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((device, seqs)) = work.get(i) else {
                    return Ok::<(), hushwire_store::StoreError>(());
                };
                for chunk in seqs.chunks(step) {
                    if let Some(up_to) = chunk.last() {
                        removed.fetch_add(store.ack(*device, *up_to).await?, Ordering::Relaxed);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ack_secs = started.elapsed().as_secs_f64();
    let (acks, removed) = (
        acks.load(Ordering::Relaxed),
        removed.load(Ordering::Relaxed),
    );
    println!(
        "ack: {acks} acks of {} entries each, removing {removed} entries: {ack_secs:.2} s, {:.0} acks/s, {:.0} entries/s",
        args.ack_every,
        acks as f64 / ack_secs,
        removed as f64 / ack_secs
    );
    let left: u64 = {
        let mut n = 0;
        for d in &devices {
            n += store.pending(d.id).await?;
        }
        n
    };
    println!(
        "left in mailboxes: {left}; bodies left: {}",
        store.expire(u64::MAX).await?
    );
    let store: Arc<dyn Store> = store;
    drop(store);
    Ok(())
}
