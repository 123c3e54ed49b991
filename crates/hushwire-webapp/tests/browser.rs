//! The web app end to end: an in-process server, alice's app (in-process, port 0) and
//! bob as a plain client. Real headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser/node_modules`; `scripts/test-tools.sh` installs
//! both) opens the app, sends a message and a picture, sees bob's typing, reply and
//! reaction arrive live, reacts, creates a group, edits a message, deletes one for
//! everyone, sets a disappearing-messages timer, sends a view-once picture (bob opens
//! it once) and opens bob's, accepts carol's message request and blocks (then
//! unblocks) dave, compares and verifies bob's safety number, and sees bob's account key
//! change (reset and registered anew) and accepts it; every step is checked on the other
//! client's store. Screenshots go to
//! `target/webapp-screenshots/`. Plain HTTP checks cover the token, `Host` and `Origin`
//! gates and the security headers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hushwire_client::{Client, SendFileOptions};
use hushwire_e2e::{ReceiptStatus, TimelineItem};
use hushwire_service::{Service, ServiceOptions};
use hushwire_store::Accounts as _;
use hushwire_tests::{TestServer, register};
use hushwire_webapp::WebApp;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Bound for one step (a hang guard, not an assertion).
const STEP: Duration = Duration::from_secs(120);

struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request, written by hand so every header is exactly what the test says.
async fn http(addr: SocketAddr, request_head: &str, body: &str) -> Http {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{request_head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Http {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn gates_hold(app: &WebApp) {
    let addr = app.addr();
    let port = addr.port();
    let token = app.token().expose().to_string();
    let host = format!("Host: 127.0.0.1:{port}");
    let origin = format!("Origin: http://127.0.0.1:{port}");
    let cookie = format!("Cookie: hushwire_{port}={token}");

    // Without the token: refused, with the security headers anyway.
    for path in [
        "/",
        "/app.js",
        "/api/state",
        "/api/timeline?c=bob",
        "/api/media?c=bob&id=x",
    ] {
        let r = http(addr, &format!("GET {path} HTTP/1.1\r\n{host}"), "").await;
        assert_eq!(r.status, 401, "{path}");
        assert!(
            r.header("content-security-policy")
                .unwrap()
                .contains("default-src 'none'")
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    let r = http(
        addr,
        &format!("GET /api/state HTTP/1.1\r\n{host}\r\nCookie: hushwire_{port}=00"),
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(addr, &format!("GET /?token=nope HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(r.status, 401);
    // The token once: a cookie and a redirect without it.
    let r = http(addr, &format!("GET /?token={token} HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let set = r.header("set-cookie").unwrap();
    assert!(
        set.starts_with(&format!("hushwire_{port}={token};")),
        "{set}"
    );
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"));
    // With the cookie: the page, with a strict CSP and no inline script.
    let r = http(addr, &format!("GET / HTTP/1.1\r\n{host}\r\n{cookie}"), "").await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(r.body.contains("<script src=\"/app.js\""));
    let r = http(
        addr,
        &format!("GET /api/state HTTP/1.1\r\n{host}\r\n{cookie}"),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"me\":\"alice\""), "{}", r.body);
    // DNS rebinding: the right cookie under another name.
    for bad in [
        "evil.example",
        &format!("evil.example:{port}"),
        &format!("127.0.0.1:{}", port ^ 1),
    ] {
        let r = http(
            addr,
            &format!("GET /api/state HTTP/1.1\r\nHost: {bad}\r\n{cookie}"),
            "",
        )
        .await;
        assert_eq!(r.status, 403, "{bad}");
    }
    // Cross-site: a foreign Origin, or a POST / WebSocket without one.
    let post = "POST /api/settings HTTP/1.1\r\nContent-Type: application/json";
    let r = http(
        addr,
        &format!("{post}\r\n{host}\r\n{cookie}\r\nOrigin: http://evil.example"),
        "{}",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(addr, &format!("{post}\r\n{host}\r\n{cookie}"), "{}").await;
    assert_eq!(r.status, 403);
    let r = http(
        addr,
        &format!("{post}\r\n{host}\r\n{cookie}\r\n{origin}"),
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        addr,
        &format!("GET /api/state HTTP/1.1\r\n{host}\r\n{cookie}\r\nSec-Fetch-Site: cross-site"),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let ws = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let r = http(addr, &format!("{ws}\r\n{host}\r\n{cookie}"), "").await;
    assert_eq!(r.status, 403, "a WebSocket without Origin");
    let r = http(addr, &format!("{ws}\r\n{host}\r\n{origin}"), "").await;
    assert_eq!(r.status, 401, "a WebSocket without the token");
    let r = http(
        addr,
        &format!("{ws}\r\n{host}\r\n{cookie}\r\nOrigin: http://evil.example"),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
}

fn picture(dir: &Path) -> PathBuf {
    let (w, h) = (640u32, 420u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        // A sky-to-sea gradient with a sun.
        let (dx, dy) = (x as f32 - 450.0, y as f32 - 150.0);
        if dx * dx + dy * dy < 60.0 * 60.0 {
            return image::Rgb([255, 204, 77]);
        }
        if fy > 0.62 {
            image::Rgb([
                (20.0 + 40.0 * fx) as u8,
                (90.0 + 60.0 * fy) as u8,
                (160.0 + 60.0 * fx) as u8,
            ])
        } else {
            image::Rgb([
                (250.0 - 120.0 * fy) as u8,
                (150.0 + 60.0 * fy) as u8,
                (120.0 + 150.0 * fy) as u8,
            ])
        }
    });
    let path = dir.join("sunset.png");
    img.save(&path).unwrap();
    path
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(out: &mut tokio::io::Lines<R>) -> String {
    let line = tokio::time::timeout(STEP, out.next_line())
        .await
        .expect("the browser script stalled")
        .unwrap()
        .unwrap_or_default();
    eprintln!("browser: {line}");
    line
}

async fn flush(c: &mut Client) {
    c.flush_outbox(Duration::from_secs(30), &mut |_| {})
        .await
        .unwrap();
}

/// Receives until `done` holds for the client's store.
async fn sync_until(c: &mut Client, what: &str, mut done: impl FnMut(&Client) -> bool) {
    let waited = tokio::time::timeout(STEP, async {
        while !done(c) {
            c.sync(Duration::from_secs(30), &mut |_| {}).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for: {what}");
}

/// The texts of `conversation` in `c`'s timeline (messages only).
fn texts(c: &Client, conversation: &str) -> Vec<String> {
    c.profile()
        .timeline(conversation)
        .unwrap()
        .into_iter()
        .filter_map(|i| match i {
            TimelineItem::Message(m) => Some(m.text),
            _ => None,
        })
        .collect()
}

/// What alice's running app holds, read through its service.
async fn alice_texts(service: &Service, conversation: &str) -> Vec<String> {
    let conversation = conversation.to_string();
    service
        .with(move |c| Box::pin(async move { texts(c, &conversation) }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_in_chromium() {
    let chromium =
        std::env::var("HUSHWIRE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new(&chromium).exists() && browser_dir.join("node_modules/playwright-core").exists(),
        "needs Debian's chromium and playwright-core in tests/browser/node_modules: run scripts/test-tools.sh"
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/webapp-screenshots");
    let _ = std::fs::remove_dir_all(&shots);

    let tmp = tempfile::tempdir().unwrap();
    // The key directory publishes every 100 ms, so that bob's new key (step 11) is in it
    // soon.
    let mut config = hushwire_tests::test_config(&tmp.path().join("server"));
    config.directory.publish_interval = Duration::from_millis(100);
    let server = TestServer::start_with(config).await;
    let alice = register(tmp.path(), &server, "alice").await;
    drop(alice);
    let mut bob = register(tmp.path(), &server, "bob").await;
    let mut carol = register(tmp.path(), &server, "carol").await;
    let mut dave = register(tmp.path(), &server, "dave").await;
    let service = Service::start(
        &tmp.path().join("alice"),
        ServiceOptions {
            client: hushwire_tests::options(),
            ..ServiceOptions::default()
        },
    )
    .unwrap();
    let app = hushwire_webapp::start(service.clone(), None).await.unwrap();
    assert!(app.addr().ip().is_loopback());
    assert!(
        app.url()
            .starts_with(&format!("http://127.0.0.1:{}/?token=", app.addr().port()))
    );
    gates_hold(&app).await;

    let pic = picture(tmp.path());
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir.join("app-test.mjs"))
        .current_dir(&browser_dir)
        .env("APP_URL", app.url())
        .env("CHROMIUM", &chromium)
        .env("USER_DATA_DIR", tmp.path().join("chromium-profile"))
        .env("SHOTS", &shots)
        .env("PICTURE", &pic)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();

    // 1. Alice sent a text and a picture from the browser: bob gets both.
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP sent", "{line}");
    // The text arrives as a message, the picture as an attachment (not yet downloaded).
    let mut got = Vec::new();
    let mut attachments = Vec::new();
    tokio::time::timeout(STEP, async {
        while got.is_empty() || attachments.is_empty() {
            bob.sync(Duration::from_secs(30), &mut |e| match e {
                hushwire_e2e::Event::Message(m) => got.push(m),
                hushwire_e2e::Event::Attachment(m, a) => attachments.push((m, a)),
                _ => {}
            })
            .await
            .unwrap();
        }
    })
    .await
    .expect("bob did not get the text and the picture");
    let text = got
        .iter()
        .find(|m| m.text.contains("Saturday"))
        .expect("the text");
    let text_id = text.id.clone();
    assert_eq!(attachments.len(), 1, "one picture");
    let timeline = bob.profile().timeline("alice").unwrap();
    let picture_info = timeline
        .iter()
        .find_map(|i| match i {
            hushwire_e2e::TimelineItem::Attachment(_, a) => Some(a.clone()),
            _ => None,
        })
        .expect("the picture");
    assert_eq!(picture_info.file_name, "sunset.png");
    assert_eq!(picture_info.mime, "image/png");
    assert!(!picture_info.thumbnail.is_empty());

    // 2. Bob accepts alice's message request (typing is never sent to a requester),
    // then types.
    bob.profile_mut()
        .accept("alice", hushwire_client::api::unix_ms())
        .unwrap();
    flush(&mut bob).await;
    assert!(
        bob.send_typing("alice", true, Duration::from_secs(30))
            .await
            .unwrap()
    );
    stdin.write_all(b"GO\n").await.unwrap();
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP typing-seen", "{line}");

    // 3. Bob replies quoting the text and reacts to it.
    bob.profile_mut()
        .queue_reply(
            &text_id,
            "Saturday works! Lovely picture 🌅",
            hushwire_client::api::unix_ms(),
        )
        .unwrap();
    bob.profile_mut()
        .react(&text_id, "❤️", hushwire_client::api::unix_ms())
        .unwrap();
    bob.profile_mut()
        .mark_read("alice", hushwire_client::api::unix_ms())
        .unwrap();
    flush(&mut bob).await;
    stdin.write_all(b"GO\n").await.unwrap();

    // 4. Alice created a group with bob from the browser: bob is in it.
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP group", "{line}");
    tokio::time::timeout(STEP, async {
        loop {
            let texts: Vec<String> = hushwire_tests::receive(&mut bob)
                .await
                .into_iter()
                .map(|m| m.text)
                .collect();
            if texts.iter().any(|t| t.contains("Welcome to the group")) {
                break;
            }
        }
    })
    .await
    .expect("bob did not get the group message");
    let groups: Vec<String> = bob
        .profile()
        .conversations()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.starts_with('#'))
        .collect();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let details = bob.profile().group_details(&groups[0]).unwrap();
    assert_eq!(details.title, "Weekend trip");
    stdin.write_all(b"GO\n").await.unwrap();

    // 5. Alice edited her first message and sent one more: bob has both.
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP oops-sent", "{line}");
    sync_until(&mut bob, "the edit and the oops message", |b| {
        let t = texts(b, "alice");
        t.iter().any(|t| t.contains("Oops")) && t.iter().any(|t| t.contains("Saturday at 10"))
    })
    .await;
    let edited = bob
        .profile()
        .timeline("alice")
        .unwrap()
        .into_iter()
        .find_map(|i| match i {
            TimelineItem::Message(m) if m.id == text_id => Some(m),
            _ => None,
        })
        .expect("the edited message");
    assert_eq!(edited.text, "Hi Bob! Are we still on for Saturday at 10?");
    assert!(edited.edited_at_ms.is_some());
    stdin.write_all(b"GO\n").await.unwrap();

    // 6. She deleted it for everyone, set a one-hour timer, sent a text under it and a
    // view-once picture.
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP features", "{line}");
    let view_once_id = |b: &Client| {
        b.profile()
            .timeline("alice")
            .unwrap()
            .into_iter()
            .find_map(|i| match i {
                TimelineItem::Attachment(m, _) if m.view_once && !m.outgoing => Some(m.id),
                _ => None,
            })
    };
    sync_until(
        &mut bob,
        "the delete, the timer and the view-once picture",
        |b| {
            let t = texts(b, "alice");
            !t.iter().any(|t| t.contains("Oops"))
                && t.iter().any(|t| t.contains("disappears in an hour"))
                && b.profile().timer("alice").unwrap() == 3_600_000
                && view_once_id(b).is_some()
        },
    )
    .await;
    let timed = bob
        .profile()
        .timeline("alice")
        .unwrap()
        .into_iter()
        .find_map(|i| match i {
            TimelineItem::Message(m) if m.text.contains("disappears") => Some(m),
            _ => None,
        })
        .unwrap();
    assert!(timed.expires_at_ms.is_some(), "the timer applies");
    let once = view_once_id(&bob).unwrap();
    let dir = tmp.path().join("bob-opened");
    let (_, path) = bob.open_view_once(&once, &dir).await.unwrap();
    let path = path.expect("a file");
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&pic).unwrap());
    std::fs::remove_file(&path).unwrap();
    assert!(
        bob.open_view_once(&once, &dir).await.is_err(),
        "a second open is refused"
    );
    flush(&mut bob).await;
    // Bob sends alice a view-once picture of his own.
    let bob_once = bob
        .send_file(
            "alice",
            &pic,
            &SendFileOptions {
                caption: "For your eyes only once 👀".into(),
                voice: false,
                file_name: Some("secret.png".into()),
                view_once: true,
            },
        )
        .await
        .unwrap();
    flush(&mut bob).await;
    stdin.write_all(b"GO\n").await.unwrap();

    // 7. Alice opened it once in the browser: bob learns it was viewed.
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP once-opened", "{line}");
    sync_until(&mut bob, "the viewed receipt", |b| {
        b.profile()
            .receipts("alice")
            .unwrap()
            .get(&bob_once)
            .is_some_and(|r| r.iter().any(|r| r.status == ReceiptStatus::Viewed))
    })
    .await;
    // Nothing of it stays in alice's media directory.
    let leftovers = tmp.path().join("alice/media/.view-once");
    assert!(
        !leftovers.exists() || std::fs::read_dir(&leftovers).unwrap().next().is_none(),
        "a view-once file was left on disk"
    );

    // 8. Two strangers write to alice: carol (accepted) and dave (blocked).
    let carol_id = hushwire_tests::send(
        &mut carol,
        "alice",
        "Hi Alice, it's Carol from the climbing gym",
    )
    .await;
    hushwire_tests::send(&mut dave, "alice", "Cheap followers, click here").await;
    stdin.write_all(b"GO\n").await.unwrap();
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP requests", "{line}");
    sync_until(
        &mut carol,
        "alice's delivered receipt after accepting",
        |c| {
            c.profile()
                .receipts("alice")
                .unwrap()
                .get(&carol_id)
                .is_some_and(|r| r.iter().any(|r| r.status >= ReceiptStatus::Delivered))
        },
    )
    .await;
    let blocked = service
        .with(|c| Box::pin(async move { c.profile().blocked().unwrap() }))
        .await
        .unwrap();
    assert_eq!(blocked, ["dave"]);
    let accepted = service
        .with(|c| Box::pin(async move { c.profile().is_request("carol").unwrap() }))
        .await
        .unwrap();
    assert!(!accepted, "carol is no longer a request");
    // Blocked: dave's next message never reaches alice.
    hushwire_tests::send(&mut dave, "alice", "Are you there?").await;
    stdin.write_all(b"GO\n").await.unwrap();

    // 9. Unblocked from the settings: dave's messages arrive again (and the one sent
    // while blocked never does).
    let line = next_line(&mut out).await;
    assert_eq!(line, "STEP unblocked", "{line}");
    hushwire_tests::send(&mut dave, "alice", "Sorry about the spam").await;
    tokio::time::timeout(STEP, async {
        while !alice_texts(&service, "dave")
            .await
            .iter()
            .any(|t| t.contains("Sorry about the spam"))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("dave's message after the unblock");
    assert!(
        !alice_texts(&service, "dave")
            .await
            .iter()
            .any(|t| t.contains("Are you there")),
        "a message sent while blocked arrived"
    );
    stdin.write_all(b"GO\n").await.unwrap();

    // 10. The safety number the app shows is the one bob's client computes, and alice
    // marked it verified.
    let line = next_line(&mut out).await;
    let shown = line
        .strip_prefix("STEP safety ")
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(shown, bob.profile().safety_number("alice").unwrap().digits);
    let verified = service
        .with(|c| Box::pin(async move { c.profile().safety_number("bob").unwrap().verified }))
        .await
        .unwrap();
    assert!(verified, "marked verified in alice's profile");

    // 11. bob's account is reset by the operator and registered anew. The app warns,
    // and after alice accepts the new key shows the number the new bob's client
    // computes.
    assert!(
        server
            .store
            .reset_account("bob", hushwire_client::api::unix_ms())
            .await
            .unwrap()
    );
    let again = tmp.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let mut new_bob = register(&again, &server, "bob").await;
    // Until the directory holds the new key, alice's app would report a key
    // transparency failure instead.
    tokio::time::timeout(STEP, async {
        while new_bob.fetch_account("bob").await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the directory publishes bob's new key");
    stdin.write_all(b"GO\n").await.unwrap();
    let line = next_line(&mut out).await;
    let shown = line
        .strip_prefix("STEP trusted ")
        .unwrap_or_else(|| panic!("{line}"));
    let alices = new_bob.fetch_account("alice").await.unwrap();
    new_bob.profile_mut().learn_account(&alices).unwrap();
    assert_eq!(
        shown,
        new_bob.profile().safety_number("alice").unwrap().digits
    );
    let trusted = service
        .with(|c| Box::pin(async move { c.profile().safety_number("bob").unwrap() }))
        .await
        .unwrap();
    assert_eq!(trusted.digits, shown, "alice's profile holds the new key");
    assert!(!trusted.verified, "verification belonged to the old key");
    stdin.write_all(b"GO\n").await.unwrap();

    let line = next_line(&mut out).await;
    assert_eq!(line, "DONE", "{line}");
    let status = tokio::time::timeout(STEP, node.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    for shot in [
        "01-sent.png",
        "03-reply-reaction.png",
        "05-group.png",
        "11-editing.png",
        "14-timer-view-once.png",
        "15-view-once-open.png",
        "16-request.png",
        "17-settings-blocked.png",
        "18-safety-number.png",
        "19-key-changed.png",
        "07-dark.png",
        "10-narrow-list.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot}");
    }

    app.stop().await;
    service.shutdown().await;
    drop((bob, carol, dave, new_bob));
    server.stop().await;
}
