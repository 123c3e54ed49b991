//! Several server URLs of one deployment: registration stores them all, and a client
//! whose server does not answer continues on another node (and starts there next
//! time). Servers run in-process on 127.0.0.1; "nodes" are servers sharing one store,
//! data directory (certificate, secret path) and so one pin.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use hushwire_client::{
    Client, ClientError, ClientOptions, Event, Route, RouteBook, ServerNode, register,
    register_servers,
};
use hushwire_server::ServerConfig;

/// Bound on every step (a hang guard, not a timing assertion).
const T: Duration = Duration::from_secs(30);

struct Node {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(T, task).await.unwrap().unwrap();
        }
    }
}

/// `n` nodes of one deployment: one store and one data directory, each on its own
/// 127.0.0.1 port. Returns the nodes and the pin.
async fn deployment(dir: &Path, n: usize) -> (Vec<Node>, String) {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("server"),
        ..ServerConfig::default()
    };
    let store = hushwire_server::open_embedded(&config).await.unwrap();
    let mut nodes = Vec::new();
    let mut pin = String::new();
    for _ in 0..n {
        let running = hushwire_server::bind(config.clone(), store.clone())
            .await
            .unwrap();
        let (url, node_pin) = (running.url(), running.pin().to_string());
        assert!(
            pin.is_empty() || pin == node_pin,
            "nodes share the certificate"
        );
        pin = node_pin;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            running
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        nodes.push(Node {
            url,
            stop: Some(stop),
            task: Some(task),
        });
    }
    (nodes, pin)
}

/// `url` with its port replaced by a closed one on 127.0.0.1 (nothing listens there).
fn dead_url(url: &str) -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut u = url::Url::parse(url).unwrap();
    u.set_port(Some(port)).unwrap();
    u.as_str().trim_end_matches('/').to_string()
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

async fn receive_all(client: &mut Client) -> Vec<Event> {
    let mut events = Vec::new();
    tokio::time::timeout(T, client.sync(T, &mut |e| events.push(e)))
        .await
        .unwrap()
        .unwrap();
    events
}

async fn send(client: &mut Client, to: &str, text: &str) {
    client.queue_text(to, text).unwrap();
    tokio::time::timeout(T, client.flush_outbox(T, &mut |_| {}))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_with_a_dead_first_url_uses_the_next_and_stores_both() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, pin) = deployment(root.path(), 1).await;
    let live = nodes[0].url.clone();
    let dead = dead_url(&live);
    let dir = root.path().join("alice");

    let r = tokio::time::timeout(
        T,
        register_servers(
            &dir,
            "alice",
            &[dead.clone(), live.clone()],
            Some(&pin),
            None,
            ClientOptions::default().with_passphrase("test passphrase"),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(r.key_package_error.is_none());
    // Both are stored: the first as the profile's server, the other in its routes.
    assert_eq!(r.identity.server_url, dead);
    let book = RouteBook::load(&dir).unwrap();
    let live_node = ServerNode::parse(&live).unwrap();
    assert_eq!(
        book.servers().map(|n| n.address()).collect::<Vec<_>>(),
        [live_node.address()]
    );
    // The live one answered and is remembered, so it goes first next time.
    assert_eq!(book.last_good(), Some(Route::Server(live_node.clone())));
    assert_eq!(book.attempt_order()[0], Route::Server(live_node));

    // A later command (a new process: the profile is reopened) works.
    let mut alice = Client::open(
        &dir,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap();
    receive_all(&mut alice).await;
    alice.close().await;

    // URLs of one deployment must share the secret path.
    let other_dir = root.path().join("bob");
    let err = register_servers(
        &other_dir,
        "bob",
        &[live.clone(), format!("{dead}/other")],
        Some(&pin),
        None,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err:?}");
    nodes[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_hands_its_clients_to_another() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, pin) = deployment(root.path(), 2).await;
    let urls = [nodes[0].url.clone(), nodes[1].url.clone()];
    let mut clients = Vec::new();
    for handle in ["alice", "bob"] {
        let dir = root.path().join(handle);
        tokio::time::timeout(
            T,
            register_servers(
                &dir,
                handle,
                &urls,
                Some(&pin),
                None,
                ClientOptions::default().with_passphrase("test passphrase"),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        clients.push(
            Client::open(
                &dir,
                ClientOptions::default().with_passphrase("test passphrase"),
            )
            .unwrap(),
        );
    }
    let [mut alice, mut bob] = <[Client; 2]>::try_from(clients).ok().unwrap();
    send(&mut alice, "bob", "before").await;
    assert_eq!(texts(&receive_all(&mut bob).await), ["before"]);
    assert_eq!(
        RouteBook::load(&root.path().join("bob"))
            .unwrap()
            .last_good(),
        Some(Route::Direct)
    );

    // The first node dies; both clients carry on through the second.
    nodes[0].stop().await;
    alice.disconnect().await;
    bob.disconnect().await;
    send(&mut alice, "bob", "after").await;
    assert_eq!(texts(&receive_all(&mut bob).await), ["after"]);
    let second = Route::Server(ServerNode::parse(&urls[1]).unwrap());
    for handle in ["alice", "bob"] {
        let book = RouteBook::load(&root.path().join(handle)).unwrap();
        assert_eq!(book.last_good(), Some(second.clone()), "{handle}");
        assert_eq!(book.attempt_order()[0], second, "{handle}");
    }
    alice.close().await;
    bob.close().await;
    nodes[1].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_url_profiles_keep_working() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, pin) = deployment(root.path(), 1).await;
    let dir = root.path().join("carol");
    register(
        &dir,
        "carol",
        &nodes[0].url,
        Some(&pin),
        None,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .await
    .unwrap();
    // No `servers` entry is written for a single server (older clients read the file).
    let routes = std::fs::read_to_string(dir.join("routes.json")).unwrap_or_default();
    assert!(!routes.contains("servers"), "{routes}");
    let book = RouteBook::load(&dir).unwrap();
    assert_eq!(book.routes(), [Route::Direct]);
    let mut carol = Client::open(
        &dir,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .unwrap();
    receive_all(&mut carol).await;
    assert_eq!(
        RouteBook::load(&dir).unwrap().last_good(),
        Some(Route::Direct)
    );
    carol.close().await;
    nodes[0].stop().await;
}
