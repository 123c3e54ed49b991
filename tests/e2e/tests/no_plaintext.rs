//! The server's files and every log line (at TRACE, client and server alike) contain no
//! plaintext: a canary string sent both ways appears nowhere but in the clients' own
//! (encrypted) stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use hushwire_tests::{TestServer, contains, history_texts, read_tree, receive, register, send};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_files_and_logs_hold_no_plaintext() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let canary_ab = "CANARY-7f3a9c-alice-to-bob";
    let canary_ba = "CANARY-51d0e2-bob-to-alice";
    send(&mut alice, "bob", canary_ab).await;
    send(&mut alice, "bob", &format!("{canary_ab} offline")).await;
    assert_eq!(receive(&mut bob).await[0].text, canary_ab);
    send(&mut bob, "alice", canary_ba).await;
    // Leave one message unreceived so the server still holds it.
    send(&mut bob, "alice", &format!("{canary_ba} pending")).await;
    alice.disconnect().await;
    bob.disconnect().await;

    // While running (WAL included) and after a clean shutdown (checkpointed).
    for (path, bytes) in read_tree(&data) {
        for canary in [canary_ab, canary_ba] {
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "{canary} in {}",
                path.display()
            );
        }
    }
    server.stop().await;
    let files = read_tree(&data);
    assert!(files.iter().any(|(p, _)| p.ends_with("hushwire.db")));
    for (path, bytes) in files {
        for canary in [canary_ab, canary_ba] {
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "{canary} in {}",
                path.display()
            );
        }
    }
    let logs = logs.0.lock().unwrap().clone();
    assert!(!logs.is_empty(), "logging was captured");
    for canary in [canary_ab, canary_ba] {
        assert!(!contains(&logs, canary.as_bytes()), "{canary} in the logs");
    }
    // The canary is really there to be found: the clients store their own history,
    // which is itself encrypted at rest (readable only through the unlocked profile).
    assert!(history_texts(&alice, "bob").iter().any(|t| t == canary_ab));
    for (path, bytes) in read_tree(&root.path().join("alice")) {
        assert!(
            !contains(&bytes, canary_ab.as_bytes()),
            "{canary_ab} in {}",
            path.display()
        );
    }
}
