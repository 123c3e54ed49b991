//! What linking a device costs (issue 6, "Measured"): an account with `--conversations`
//! 1:1 conversations of `--messages` messages each links a new device; prints the time
//! from the link code to the new device holding every conversation and the history, and
//! the bytes both devices moved through the link session. In-process server on a
//! loopback port, real clients, real MLS (X-Wing).
//!
//! `cargo run --release -p hushwire-tests --example link_cost -- 100 100`
// A measurement program: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hushwire_client::{Client, ClientOptions};
use hushwire_proto::link::LinkCode;
use hushwire_tests::{OP_TIMEOUT, TestServer, register};
use tokio::sync::oneshot;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: CONVERSATIONS MESSAGES"))
        .collect();
    let conversations = args.first().copied().unwrap_or(100);
    let per = args.get(1).copied().unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server")).await;
    let root = tmp.path();
    let mut alice = register(root, &server, "alice").await;
    let setup = Instant::now();
    for i in 0..conversations {
        let peer = format!("peer{i:04}");
        drop(register(root, &server, &peer).await);
        for j in 0..per {
            let text = if j % 2 == 0 {
                format!("message {j} to {peer}: a few words of ordinary chat")
            } else {
                format!("message {j}: ok")
            };
            alice.queue_text(&peer, &text).unwrap();
        }
        alice.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    }
    eprintln!(
        "set up {conversations} conversations x {per} messages in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let (tx, rx) = oneshot::channel::<(String, Instant)>();
    let tx = Mutex::new(Some(tx));
    let mut on_code = |code: &LinkCode| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send((code.encode(), Instant::now()));
        }
    };
    let mut approve = |_: &str| true;
    let mut ignore = |_| {};
    let timeout = Duration::from_secs(900);
    let existing = alice.link_device(timeout, &mut on_code, &mut approve, &mut ignore);
    let dir = root.join("alice-laptop");
    let new_side = async move {
        let (code, shown) = rx.await.unwrap();
        let joined = hushwire_client::join_by_link(
            &dir,
            &code,
            "laptop",
            ClientOptions::default().with_passphrase("test passphrase"),
            timeout,
            &mut |_| {},
        )
        .await
        .unwrap();
        (joined, shown.elapsed())
    };
    let (report, (joined, took)) = tokio::join!(existing, new_side);
    let report = report.unwrap();
    let laptop = Client::open(
        &root.join("alice-laptop"),
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap();
    let convs = laptop.profile().conversations().unwrap().len();
    // Joined (an active MLS group), not only imported from the archive.
    let joined_groups = laptop
        .profile()
        .conversations()
        .unwrap()
        .iter()
        .filter(|c| {
            laptop
                .profile()
                .groups(&c.name)
                .unwrap()
                .iter()
                .any(|g| g.state == "active" && g.members.contains(&"alice/2".to_string()))
        })
        .count();
    let json = serde_json::json!({
        "conversations": conversations,
        "messages_per_conversation": per,
        "link_seconds": took.as_secs_f64(),
        "conversations_on_new_device": convs,
        "conversations_joined_by_new_device": joined_groups,
        "history_messages": joined.history.messages,
        "archive_bytes": report.history.bytes,
        "link_bytes_sent_by_existing": report.bytes_sent,
        "link_bytes_received_by_new": joined.bytes_received,
    });
    println!("{json}");
    assert_eq!(convs, conversations);
    assert_eq!(joined_groups, conversations);
    drop(laptop);
    server.stop().await;
}
