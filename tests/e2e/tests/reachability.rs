//! Reachable under blocking: a client whose direct route to the server is rejected or
//! silently dropped by a firewall rule in its own network namespace registers and chats
//! (a text and a 5 MB file) through a volunteer relay, a real SOCKS5 proxy (microsocks)
//! and a real HTTP CONNECT proxy (tinyproxy), and falls back on its own from a blocked direct route to a relay.
//!
//! Each test makes two network namespaces joined by a veth pair (198.18.0.0/30):
//! "internet" (server, relay, proxies) and "client" (the client, behind the firewall).
//! Test threads join a namespace with setns(2) and run a tokio runtime there, so the
//! server, relay and client are the real libraries in this process; the proxies are
//! Debian's programs started with `ip netns exec`. Nothing leaves the namespaces, and
//! a guard deletes them (and kills the proxies) even when a test fails.
//!
//! These tests need root and `ip`, `nft`, `microsocks`, `tinyproxy` (.ci/run installs
//! them). Without the `ip netns` capability they fail loudly, except that when `ip`
//! itself is missing they print why and skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hushwire_client::{Client, ClientOptions, ProxyUrl, RouteBook};
use hushwire_proto::relay_link::RelayLink;
use hushwire_tests::test_config;

const SERVER_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";
const SERVER_PORT: u16 = 8443;
const RELAY_PORT: u16 = 9443;
const SOCKS_PORT: u16 = 1080;
const HTTP_PROXY_PORT: u16 = 8888;
/// A name only the "internet" namespace resolves (its /etc/netns/NAME/hosts).
const SERVER_NAME: &str = "chat.hushwire.test";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two namespaces and a veth pair; deleted on drop, with every child process.
struct Net {
    internet: String,
    client: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Net {
    /// `None` (with a message) only when `ip` is not installed.
    fn new() -> Option<Self> {
        if !have("ip") {
            eprintln!("SKIPPED: `ip` (iproute2) is not installed, so no network namespaces");
            return None;
        }
        for tool in ["nft", "microsocks", "tinyproxy"] {
            assert!(have(tool), "{tool} is missing: .ci/run installs it");
        }
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            internet: format!("hwi{id}"),
            client: format!("hwc{id}"),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let (vi, vc) = (format!("vi{id}"), format!("vc{id}"));
        run("ip", &["netns", "add", &net.internet]);
        run("ip", &["netns", "add", &net.client]);
        run(
            "ip",
            &["link", "add", &vi, "type", "veth", "peer", "name", &vc],
        );
        run("ip", &["link", "set", &vi, "netns", &net.internet]);
        run("ip", &["link", "set", &vc, "netns", &net.client]);
        for (ns, dev, ip) in [
            (&net.internet, &vi, SERVER_IP),
            (&net.client, &vc, CLIENT_IP),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev],
            );
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // Only the internet side knows the server's name.
        let etc = PathBuf::from("/etc/netns").join(&net.internet);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{SERVER_IP} {SERVER_NAME}\n"),
        )
        .unwrap();
        Some(net)
    }

    /// Blocks the client's direct route to the server: `reject` (TCP reset) or `drop`
    /// (silence), in the client's namespace.
    fn block_direct(&self, how: &str) {
        let verdict = if how == "reject" {
            "reject with tcp reset"
        } else {
            "drop"
        };
        let rules = format!(
            "table inet hwblock {{\n chain out {{\n  type filter hook output priority 0;\n  ip daddr {SERVER_IP} tcp dport {SERVER_PORT} {verdict}\n }}\n}}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.client, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft failed");
    }

    fn unblock_direct(&self) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client,
                "nft",
                "delete",
                "table",
                "inet",
                "hwblock",
            ],
        );
    }

    /// Starts a program in the internet namespace.
    fn spawn_internet(&mut self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.internet])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.children.push(cmd.spawn().unwrap());
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.internet, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.internet));
    }
}

/// Runs `f` on a new thread inside namespace `ns`, with its own tokio runtime.
fn in_ns<F, Fut, R>(ns: &str, f: F) -> std::thread::JoinHandle<R>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R>,
    R: Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns: are we root?");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

/// What the internet side runs: a server and a relay, until told to stop.
struct Internet {
    url_by_ip: String,
    pin: String,
    link: RelayLink,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Internet {
    fn start(net: &Net) -> Self {
        let data = net.path("server");
        let relay_data = net.path("relay");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = in_ns(&net.internet, move || async move {
            let mut config = test_config(&data);
            config.listen = format!("{SERVER_IP}:{SERVER_PORT}").parse().unwrap();
            let store = hushwire_server::open_sqlite(&config).await.unwrap();
            let server = hushwire_server::bind(config, store.clone()).await.unwrap();
            let relay = hushwire_relay::bind(hushwire_relay::RelayConfig {
                listen: format!("{SERVER_IP}:{RELAY_PORT}").parse().unwrap(),
                upstream_host: SERVER_IP.into(),
                upstream_port: SERVER_PORT,
                data_dir: relay_data,
                site_dir: None,
                public_host: SERVER_IP.into(),
                limits: hushwire_relay::RelayLimits::default(),
            })
            .await
            .unwrap();
            tx.send((server.url(), server.pin().to_string(), relay.link()))
                .unwrap();
            let stop = async move {
                tokio::task::spawn_blocking(move || {
                    let _ = stop_rx.recv();
                })
                .await
                .unwrap();
            };
            let (relay_stop, relay_stopped) = tokio::sync::oneshot::channel::<()>();
            let relay_task = tokio::spawn(relay.run(async move {
                let _ = relay_stopped.await;
            }));
            server.run(stop).await.unwrap();
            let _ = relay_stop.send(());
            relay_task.await.unwrap().unwrap();
            store.shutdown().await;
        });
        let (url_by_ip, pin, link) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        Internet {
            url_by_ip,
            pin,
            link,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The server URL by name (only resolvable on the internet side).
    fn url_by_name(&self) -> String {
        self.url_by_ip.replace(SERVER_IP, SERVER_NAME)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(10),
        ..hushwire_tests::options()
    }
}

/// In the client namespace: registers alice and bob (routes set up by `routes`), alice
/// sends bob a message and a file, bob receives both (the file saved intact). Returns
/// the time alice's first send took.
fn chat(
    net: &Net,
    server_url: &str,
    pin: &str,
    routes: impl Fn(&Path) + Send + 'static,
) -> Duration {
    let root = net.path("clients");
    let url = server_url.to_string();
    let pin = pin.to_string();
    in_ns(&net.client, move || async move {
        for who in ["alice", "bob"] {
            let dir = root.join(who);
            routes(&dir);
            hushwire_client::register(&dir, who, &url, Some(&pin), None, options())
                .await
                .unwrap();
        }
        let mut alice = Client::open(&root.join("alice"), options()).unwrap();
        let started = Instant::now();
        alice.queue_text("bob", "hello through the block").unwrap();
        alice
            .flush_outbox(Duration::from_secs(60), &mut |_| {})
            .await
            .unwrap();
        let took = started.elapsed();
        // A file too, over more than one upload part (4 MiB each by default).
        let file = root.join("photo-album.bin");
        let bytes: Vec<u8> = (0..5 * 1024 * 1024 + 123u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        alice
            .send_file("bob", &file, &hushwire_client::SendFileOptions::default())
            .await
            .unwrap();
        alice
            .flush_outbox(Duration::from_secs(60), &mut |_| {})
            .await
            .unwrap();
        let mut bob = Client::open(&root.join("bob"), options()).unwrap();
        let downloads = root.join("bob-downloads");
        bob.set_auto_download(Some(downloads.clone()));
        let mut texts = Vec::new();
        let mut files = Vec::new();
        bob.sync(Duration::from_secs(60), &mut |e| match e {
            hushwire_client::Event::Message(m) => texts.push(m.text),
            hushwire_client::Event::Attachment(_, info) => files.push(info),
            _ => {}
        })
        .await
        .unwrap();
        assert_eq!(texts, ["hello through the block"]);
        assert_eq!(files.len(), 1, "{files:?}");
        let saved = files[0].path.clone().unwrap_or_else(|| panic!("{files:?}"));
        assert!(saved.starts_with(&downloads));
        assert!(
            std::fs::read(&saved).unwrap() == bytes,
            "the file arrived intact"
        );
        took
    })
    .join()
    .unwrap()
}

#[test]
fn relay_link_gets_through_a_rejected_direct_route() {
    let Some(net) = Net::new() else { return };
    let internet = Internet::start(&net);
    net.block_direct("reject");
    let link = internet.link.clone();
    chat(&net, &internet.url_by_ip, &internet.pin, move |dir| {
        RouteBook::edit(dir, |_, relays, _| relays.push(link.clone())).unwrap();
    });
}

#[test]
fn socks5_proxy_gets_through_a_dropped_direct_route_with_remote_dns() {
    let Some(mut net) = Net::new() else { return };
    let internet = Internet::start(&net);
    net.spawn_internet(&["microsocks", "-i", SERVER_IP, "-p", &SOCKS_PORT.to_string()]);
    net.block_direct("drop");
    std::thread::sleep(Duration::from_millis(300));
    // The server's name resolves only on the proxy's side: DNS must go through it.
    let proxy = ProxyUrl::parse(&format!("socks5h://{SERVER_IP}:{SOCKS_PORT}")).unwrap();
    chat(&net, &internet.url_by_name(), &internet.pin, move |dir| {
        let proxy = proxy.clone();
        RouteBook::edit(dir, |p, _, _| *p = Some(proxy)).unwrap();
    });
}

#[test]
fn http_connect_proxy_gets_through_a_rejected_direct_route() {
    let Some(mut net) = Net::new() else { return };
    let internet = Internet::start(&net);
    let conf = net.path("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User root\nGroup root\nPort {HTTP_PROXY_PORT}\nListen {SERVER_IP}\nTimeout 60\nMaxClients 20\nAllow 198.18.0.0/15\nConnectPort {SERVER_PORT}\n"
        ),
    )
    .unwrap();
    net.spawn_internet(&["tinyproxy", "-d", "-c", conf.to_str().unwrap()]);
    net.block_direct("reject");
    std::thread::sleep(Duration::from_millis(300));
    let proxy = ProxyUrl::parse(&format!("http://{SERVER_IP}:{HTTP_PROXY_PORT}")).unwrap();
    chat(&net, &internet.url_by_name(), &internet.pin, move |dir| {
        let proxy = proxy.clone();
        RouteBook::edit(dir, |p, _, _| *p = Some(proxy)).unwrap();
    });
}

#[test]
fn falls_back_from_a_silently_dropped_direct_route_to_a_relay_and_remembers() {
    let Some(net) = Net::new() else { return };
    let internet = Internet::start(&net);
    let link = internet.link.clone();
    // Registered while the direct route worked, with a relay for bad days.
    let first = chat(&net, &internet.url_by_ip, &internet.pin, move |dir| {
        RouteBook::edit(dir, |_, relays, _| relays.push(link.clone())).unwrap();
    });
    eprintln!("direct: first message in {first:?}");
    let alice = net.path("clients").join("alice");
    assert_eq!(
        RouteBook::load(&alice).unwrap().last_good(),
        Some(hushwire_client::Route::Direct)
    );

    net.block_direct("drop");
    let dir = alice.clone();
    let (took, second_took) = in_ns(&net.client, move || async move {
        let mut client = Client::open(&dir, options()).unwrap();
        let started = Instant::now();
        client.queue_text("bob", "the firewall went up").unwrap();
        client
            .flush_outbox(Duration::from_secs(60), &mut |_| {})
            .await
            .unwrap();
        let took = started.elapsed();
        // A new process starts with the relay that worked: no wait for the dropped route.
        let mut client = Client::open(&dir, options()).unwrap();
        let started = Instant::now();
        client.queue_text("bob", "and again").unwrap();
        client
            .flush_outbox(Duration::from_secs(60), &mut |_| {})
            .await
            .unwrap();
        (took, started.elapsed())
    })
    .join()
    .unwrap();
    eprintln!(
        "fallback: first message with direct dropped in {took:?}, next one in {second_took:?}"
    );
    let book = RouteBook::load(&alice).unwrap();
    assert!(matches!(
        book.last_good(),
        Some(hushwire_client::Route::Relay(_))
    ));

    // The firewall comes down; once the retry time has come, direct is used again.
    net.unblock_direct();
    let routes = alice.join(hushwire_client::routes::ROUTES_FILE);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&routes).unwrap()).unwrap();
    json["retry_direct_secs"] = 0.into();
    std::fs::write(&routes, serde_json::to_vec(&json).unwrap()).unwrap();
    let dir = alice.clone();
    in_ns(&net.client, move || async move {
        let mut client = Client::open(&dir, options()).unwrap();
        client.queue_text("bob", "firewall gone").unwrap();
        client
            .flush_outbox(Duration::from_secs(60), &mut |_| {})
            .await
            .unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(
        RouteBook::load(&alice).unwrap().last_good(),
        Some(hushwire_client::Route::Direct)
    );
    drop(internet);
}
