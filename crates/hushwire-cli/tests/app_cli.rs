//! `hushwire app` through the built binary: it prints the tokenized loopback URL on
//! stdout, serves the page only with the token, refuses a non-loopback `--listen` and an
//! unregistered profile with a clear error. (The app itself, in Chromium:
//! `cargo test -p hushwire-webapp --test browser`.)

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{Server, command, hushwire, register};

/// One HTTP/1.1 GET; returns the status code and the whole response.
fn get(port: u16, path: &str, extra: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw)
}

#[test]
fn app_prints_its_url_and_serves_with_the_token_only() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let alice = tmp.path().join("alice");
    register(&alice, "alice", &server);

    let mut child = command(&alice, &["app", "--listen", "127.0.0.1:0", "--no-open"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("the URL");
    let rest = url.strip_prefix("http://127.0.0.1:").expect(&url);
    let (port, token) = rest.split_once("/?token=").expect(&url);
    let port: u16 = port.parse().unwrap();
    assert_eq!(token.len(), 64, "{url}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");

    assert_eq!(get(port, "/", "").0, 401, "no token, no page");
    assert_eq!(get(port, "/?token=00", "").0, 401, "a wrong token");
    let (status, raw) = get(port, &format!("/?token={token}"), "");
    assert_eq!(status, 303, "{raw}");
    let cookie = format!("Cookie: hushwire_{port}={token}\r\n");
    let (status, raw) = get(port, "/", &cookie);
    assert_eq!(status, 200);
    assert!(raw.contains("<script src=\"/app.js\""), "the embedded page");
    let (status, raw) = get(port, "/api/state", &cookie);
    assert_eq!(status, 200);
    assert!(raw.contains("\"me\":\"alice\""), "{raw}");

    child.kill().unwrap();
    child.wait().unwrap();

    // Only loopback.
    let o = hushwire(&alice, &["app", "--listen", "0.0.0.0:0", "--no-open"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("loopback"), "{err}");
    // An unregistered profile.
    let o = hushwire(&tmp.path().join("nobody"), &["app", "--no-open"]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "no URL printed");
}
