//! Attachments end to end: in-process server on port 0, real clients, real files.
//!
//! Round trips (an image with its preview, 50 MB, an empty file) 1:1 and in a group
//! (uploaded once); uploads and downloads interrupted by the network (a loopback proxy
//! that cuts the connection) and by a killed client (its task aborted, the profile
//! reopened as a new process would) resume where they stopped; a tampered blob is
//! detected and leaves no file; a hostile file name is saved safely; quota and size
//! limits are clear errors; the server's files hold no plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hushwire_client::{
    AttachmentInfo, Client, ClientError, ClientOptions, Event, SendFileOptions, StoredMessage,
};
use hushwire_e2e::TimelineItem;
use hushwire_tests::{OP_TIMEOUT, TestServer, contains, open, read_tree, register, test_config};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MB: usize = 1024 * 1024;

// ---------------------------------------------------------------- helpers

/// A file of `len` random bytes with `marker` written at the start, middle and end.
fn write_file(path: &Path, len: usize, marker: &[u8], seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    if len >= 3 * marker.len() {
        for pos in [0, len / 2, len - marker.len()] {
            data[pos..pos + marker.len()].copy_from_slice(marker);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Uploads `path` to `to` and sends the message.
async fn send_file(client: &mut Client, to: &str, path: &Path, options: SendFileOptions) -> String {
    let id = client.send_file(to, path, &options).await.unwrap();
    client.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    assert!(!client.profile().is_outbox_item_pending(&id).unwrap());
    id
}

/// Syncs with auto-download into `dir`; returns the attachment events.
async fn receive_files(client: &mut Client, dir: &Path) -> Vec<(StoredMessage, AttachmentInfo)> {
    client.set_auto_download(Some(dir.to_path_buf()));
    let mut got = Vec::new();
    client
        .sync(OP_TIMEOUT, &mut |e| {
            if let Event::Attachment(m, info) = e {
                got.push((m, info));
            }
        })
        .await
        .unwrap();
    got
}

/// Files in `dir` (not recursive), sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    };
    names.sort();
    names
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Waits (bounded) until `cond` holds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server's files of blob `id` (hex in the path).
fn blob_files(data_dir: &Path, blob_id: &[u8]) -> Vec<PathBuf> {
    let hex: String = blob_id.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = Vec::new();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(&hex) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Distinct blob directories under the server's data directory.
fn blob_ids_on_disk(data_dir: &Path) -> std::collections::BTreeSet<String> {
    read_tree(data_dir)
        .into_iter()
        .filter_map(|(p, _)| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .find(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

// ---------------------------------------------------------------- a cutting proxy

/// A loopback TCP proxy to the server that counts bytes both ways, can cut the
/// connection that crosses a byte budget (once), and can throttle.
#[derive(Clone)]
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    cut_up_at: Arc<AtomicU64>,
    cut_down_at: Arc<AtomicU64>,
    /// Bytes per second each direction of each connection may move (0: unlimited).
    rate: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            up: Arc::default(),
            down: Arc::default(),
            cut_up_at: Arc::new(AtomicU64::new(u64::MAX)),
            cut_down_at: Arc::new(AtomicU64::new(u64::MAX)),
            rate: Arc::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let p = p.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, p.up.clone(), p.cut_up_at.clone(), p.rate.clone());
                    let down = pump(
                        sr,
                        cw,
                        p.down.clone(),
                        p.cut_down_at.clone(),
                        p.rate.clone(),
                    );
                    // Either side ending (or a cut) ends the connection.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        proxy
    }

    /// The server's base URL with this proxy's port.
    fn url(&self, server_url: &str) -> String {
        let rest = server_url.strip_prefix("https://127.0.0.1:").unwrap();
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    rate: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let before = count.fetch_add(n as u64, Ordering::SeqCst);
        let cut = cut_at.load(Ordering::SeqCst);
        if before + n as u64 >= cut {
            // Once: later connections pass.
            cut_at.store(u64::MAX, Ordering::SeqCst);
            let keep = usize::try_from(cut.saturating_sub(before))
                .unwrap_or(0)
                .min(n);
            let _ = to.write_all(&buf[..keep]).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let r = rate.load(Ordering::Relaxed);
        if r > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64)).await;
        }
    }
}

fn server_addr(server: &TestServer) -> SocketAddr {
    let rest = server.url.strip_prefix("https://").unwrap();
    let hostport = rest.split('/').next().unwrap();
    hostport.parse().unwrap()
}

/// Registers `handle` with every connection going through `proxy`.
async fn register_via(root: &Path, server: &TestServer, proxy: &Proxy, handle: &str) -> Client {
    let dir = root.join(handle);
    hushwire_client::register(
        &dir,
        handle,
        &proxy.url(&server.url),
        Some(&server.pin),
        None,
        ClientOptions::default().with_passphrase("test passphrase"),
    )
    .await
    .unwrap();
    open(root, handle)
}

// ---------------------------------------------------------------- round trips

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_large_and_empty_files_round_trip_without_plaintext_on_the_server() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let files = root.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let inbox = root.path().join("bob-downloads");

    // An image: a preview and its dimensions travel with it.
    let photo = files.join("photo.png");
    let photo_bytes = png(800, 600);
    std::fs::write(&photo, &photo_bytes).unwrap();
    let photo_id = send_file(
        &mut alice,
        "bob",
        &photo,
        SendFileOptions {
            caption: "the view".into(),
            ..Default::default()
        },
    )
    .await;
    // 50 MB with a plaintext marker, and an empty file.
    let marker = b"PLAINTEXT-MARKER-3f9c1e-media";
    let big = files.join("big.bin");
    let big_bytes = write_file(&big, 50 * MB, marker, 1);
    let big_id = send_file(&mut alice, "bob", &big, SendFileOptions::default()).await;
    let empty = files.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let empty_id = send_file(&mut alice, "bob", &empty, SendFileOptions::default()).await;

    // No plaintext in the server's files (blob parts, database, WAL).
    for (path, bytes) in read_tree(&data) {
        assert!(!contains(&bytes, marker), "marker in {}", path.display());
        assert!(
            !contains(&bytes, &photo_bytes[100..164]),
            "image bytes in {}",
            path.display()
        );
        assert!(
            !contains(&bytes, b"the view"),
            "caption in {}",
            path.display()
        );
    }

    let got = receive_files(&mut bob, &inbox).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let (m, info) = &got[0];
    assert_eq!(m.id, photo_id);
    assert_eq!(m.text, "the view");
    assert_eq!(info.file_name, "photo.png");
    assert_eq!(info.mime, "image/png");
    assert_eq!((info.width, info.height), (800, 600));
    let thumb = image::load_from_memory(&info.thumbnail).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (96, 72));
    assert_eq!(
        info.path.as_deref(),
        Some(inbox.join("photo.png").as_path())
    );
    assert_eq!(std::fs::read(inbox.join("photo.png")).unwrap(), photo_bytes);
    assert_eq!(info.plaintext_sha256, sha256(&photo_bytes));

    let (m, info) = &got[1];
    assert_eq!(m.id, big_id);
    assert_eq!(info.size, big_bytes.len() as u64);
    assert_eq!(info.mime, "application/octet-stream");
    let saved = std::fs::read(info.path.as_ref().unwrap()).unwrap();
    assert!(saved == big_bytes, "50 MB file differs");

    let (m, info) = &got[2];
    assert_eq!(m.id, empty_id);
    assert_eq!(info.size, 0);
    assert_eq!(std::fs::read(info.path.as_ref().unwrap()).unwrap(), b"");
    assert_eq!(files_in(&inbox), ["big.bin", "empty.txt", "photo.png"]);
    // Nothing is left behind: no partial downloads, no temporary files.
    assert!(files_in(&root.path().join("bob/media/.partial")).is_empty());

    // The histories show the attachments (the sender's with its source path).
    let timeline = bob.profile().timeline("alice").unwrap();
    let attachments: Vec<&AttachmentInfo> = timeline
        .iter()
        .filter_map(|t| match t {
            TimelineItem::Attachment(_, a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(attachments.len(), 3);
    assert!(
        attachments
            .iter()
            .all(|a| a.path.is_some() && a.error.is_none())
    );
    let sent = alice.profile().timeline("bob").unwrap();
    assert!(sent.iter().any(|t| matches!(
        t,
        TimelineItem::Attachment(m, a) if m.id == big_id && a.path.as_deref() == Some(big.as_path())
    )));
    // Received once: a second sync downloads nothing again.
    assert!(receive_files(&mut bob, &inbox).await.is_empty());
    assert_eq!(files_in(&inbox).len(), 3);
    server.stop().await;
}

/// A group chat's attachment is uploaded once and every member downloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_attachment_is_uploaded_once() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let mut carol = register(root.path(), &server, "carol").await;
    alice
        .create_group("Trip", &["bob".to_string(), "carol".to_string()], None)
        .unwrap();
    alice.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    let file = root.path().join("plan.pdf");
    let bytes = write_file(&file, 3 * MB + 17, b"%PDF-1.7 trip plan", 2);
    let id = send_file(&mut alice, "#Trip", &file, SendFileOptions::default()).await;
    assert_eq!(
        blob_ids_on_disk(&data).len(),
        1,
        "one blob for the whole group"
    );

    let mut blobs = Vec::new();
    for (client, name) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let dir = root.path().join(format!("{name}-downloads"));
        let got = receive_files(client, &dir).await;
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        let (m, info) = &got[0];
        assert_eq!(m.id, id);
        assert_eq!(m.conversation, "#Trip");
        assert_eq!(std::fs::read(info.path.as_ref().unwrap()).unwrap(), bytes);
        blobs.push(info.blob_id.clone());
    }
    assert_eq!(blobs[0], blobs[1]);
    server.stop().await;
}

// ---------------------------------------------------------------- interruptions

/// The network cuts the upload and then the download halfway: both continue where they
/// stopped (the bytes moved stay well below twice the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_resume_uploads_and_downloads() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let proxy = Proxy::start(server_addr(&server)).await;
    let mut alice = register_via(root.path(), &server, &proxy, "alice").await;
    let mut bob = register_via(root.path(), &server, &proxy, "bob").await;
    // First contact (and key packages) before measuring.
    hushwire_tests::send(&mut alice, "bob", "hi").await;
    hushwire_tests::receive(&mut bob).await;

    let file = root.path().join("video.mp4");
    let bytes = write_file(&file, 24 * MB, b"video-marker", 3);
    let up0 = proxy.up.load(Ordering::SeqCst);
    proxy
        .cut_up_at
        .store(up0 + 10 * MB as u64, Ordering::SeqCst);
    let id = send_file(&mut alice, "bob", &file, SendFileOptions::default()).await;
    let uploaded = proxy.up.load(Ordering::SeqCst) - up0;
    assert_eq!(
        proxy.cut_up_at.load(Ordering::SeqCst),
        u64::MAX,
        "the cut happened"
    );
    assert!(
        uploaded < (bytes.len() + bytes.len() / 2) as u64,
        "resumed, not restarted: {uploaded} bytes for {}",
        bytes.len()
    );

    let down0 = proxy.down.load(Ordering::SeqCst);
    proxy
        .cut_down_at
        .store(down0 + 12 * MB as u64, Ordering::SeqCst);
    let dir = root.path().join("bob-downloads");
    let got = receive_files(&mut bob, &dir).await;
    assert_eq!(
        proxy.cut_down_at.load(Ordering::SeqCst),
        u64::MAX,
        "the cut happened"
    );
    let downloaded = proxy.down.load(Ordering::SeqCst) - down0;
    assert!(
        downloaded < (bytes.len() + bytes.len() / 2) as u64,
        "resumed, not restarted: {downloaded} bytes for {}",
        bytes.len()
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.id, id);
    assert_eq!(
        std::fs::read(got[0].1.path.as_ref().unwrap()).unwrap(),
        bytes
    );
    server.stop().await;
}

/// The sending and then the receiving client is killed halfway (its task aborted, its
/// profile reopened as a new process would): the upload and the download resume from
/// the state in the profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clients_resume_uploads_and_downloads() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let proxy = Proxy::start(server_addr(&server)).await;
    let alice = register_via(root.path(), &server, &proxy, "alice").await;
    let bob = register_via(root.path(), &server, &proxy, "bob").await;
    drop((alice, bob));
    let file = root.path().join("archive.tar");
    let bytes = write_file(&file, 32 * MB, b"archive-marker", 4);
    // Slow enough to stop halfway reliably: 32 MB at 40 MB/s per connection.
    proxy.rate.store(40 * MB as u64, Ordering::SeqCst);

    let up0 = proxy.up.load(Ordering::SeqCst);
    let alice_dir = root.path().join("alice");
    {
        // Killed (the future dropped mid-upload, as a killed process stops) once the
        // server confirmed some parts but not all.
        let mut alice = open(root.path(), "alice");
        let options = SendFileOptions::default();
        tokio::select! {
            r = alice.send_file("bob", &file, &options) => {
                panic!("the upload finished before it was killed: {r:?}")
            }
            () = wait_until("upload progress", || {
                hushwire_tests::open_profile(&alice_dir)
                    .unwrap()
                    .pending_uploads()
                    .unwrap()
                    .first()
                    .is_some_and(|u| u.parts_done >= 2)
            }) => {}
        }
    }
    let pending = hushwire_tests::open_profile(&alice_dir)
        .unwrap()
        .pending_uploads()
        .unwrap();
    assert_eq!(pending.len(), 1, "the upload is pending after the kill");
    assert!(
        pending[0].parts_done < 8,
        "killed halfway: {}",
        pending[0].parts_done
    );

    let mut alice = open(root.path(), "alice");
    let resumed = alice.resume_uploads().await.unwrap();
    assert_eq!(resumed.len(), 1);
    let id = resumed[0].1.as_ref().unwrap().clone();
    alice.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();
    let uploaded = proxy.up.load(Ordering::SeqCst) - up0;
    assert!(
        uploaded < (bytes.len() + bytes.len() / 2) as u64,
        "resumed, not restarted: {uploaded} bytes for {}",
        bytes.len()
    );

    // Bob: killed while downloading.
    let down0 = proxy.down.load(Ordering::SeqCst);
    let dir = root.path().join("bob-downloads");
    let partial = root.path().join("bob/media/.partial");
    {
        let mut bob = open(root.path(), "bob");
        tokio::select! {
            got = receive_files(&mut bob, &dir) => {
                panic!("the download finished before it was killed: {got:?}")
            }
            () = wait_until("download progress", || {
                files_in(&partial).iter().any(|f| {
                    std::fs::metadata(partial.join(f)).is_ok_and(|m| m.len() > 4 * MB as u64)
                })
            }) => {}
        }
    }
    assert!(files_in(&dir).is_empty(), "nothing saved yet");
    // In this process the killed download's worker thread outlives its task: it sees the
    // stream end and lets go of the partial file. (A killed process stops at once.)
    wait_until("the killed download's worker to stop", || {
        files_in(&partial)
            .iter()
            .all(|f| std::fs::File::open(partial.join(f)).is_ok_and(|file| file.try_lock().is_ok()))
    })
    .await;
    // A new process: the message was stored before the download began, so it is the
    // pending download that brings the file (a redelivered envelope is skipped).
    let mut bob = open(root.path(), "bob");
    let got = receive_files(&mut bob, &dir).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0.id, id);
    let saved = got[0]
        .1
        .path
        .as_ref()
        .unwrap_or_else(|| panic!("{:?}", got[0].1.error));
    assert_eq!(std::fs::read(saved).unwrap(), bytes);
    let downloaded = proxy.down.load(Ordering::SeqCst) - down0;
    assert!(
        downloaded < (bytes.len() + bytes.len() / 2) as u64,
        "resumed, not restarted: {downloaded} bytes for {}",
        bytes.len()
    );
    // Only the verified file has a real name.
    assert_eq!(
        files_in(&dir)
            .into_iter()
            .filter(|f| !f.starts_with(".hushwire-"))
            .collect::<Vec<_>>(),
        ["archive.tar"]
    );
    assert!(files_in(&partial).is_empty());
    server.stop().await;
}

// ---------------------------------------------------------------- hostile input

/// A byte flipped in the blob on the server's disk: the receiver reports it and leaves
/// no file that looks complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("server");
    let server = TestServer::start(&data).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let file = root.path().join("contract.pdf");
    write_file(&file, 5 * MB, b"contract", 5);
    send_file(&mut alice, "bob", &file, SendFileOptions::default()).await;
    let record = {
        // The blob id, from the sender's history.
        let t = alice.profile().timeline("bob").unwrap();
        match t.last().unwrap() {
            TimelineItem::Attachment(_, a) => a.blob_id.clone(),
            other => panic!("{other:?}"),
        }
    };
    let parts = blob_files(&data, &record);
    assert!(!parts.is_empty());
    let victim = &parts[parts.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();

    let dir = root.path().join("bob-downloads");
    let got = receive_files(&mut bob, &dir).await;
    assert_eq!(got.len(), 1);
    let info = &got[0].1;
    assert!(info.path.is_none());
    let error = info.error.as_deref().unwrap();
    assert!(
        error.contains("SHA-256") || error.contains("tampered"),
        "{error}"
    );
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
    assert!(files_in(&root.path().join("bob/media/.partial")).is_empty());
    // Recorded: the history says why, and it is not retried forever.
    let t = bob.profile().timeline("alice").unwrap();
    assert!(matches!(t.last().unwrap(), TimelineItem::Attachment(_, a) if a.error.is_some()));
    assert!(bob.profile().pending_downloads().unwrap().is_empty());
    // The server and the conversation are unaffected.
    hushwire_tests::send(&mut alice, "bob", "still here").await;
    let texts: Vec<String> = hushwire_tests::receive(&mut bob)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["still here"]);
    server.stop().await;
}

/// A sender's file name like `../../etc/passwd` is saved as a plain name inside the
/// download directory, next to (never over) an existing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_are_saved_safely() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    let file = root.path().join("x");
    std::fs::write(&file, b"root:x:0:0").unwrap();
    let dir = root.path().join("deep/down/bob-downloads");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("passwd"), b"existing").unwrap();
    for name in [
        "../../etc/passwd",
        "..\\..\\etc\\passwd",
        "/etc/passwd\u{202E}",
    ] {
        let options = SendFileOptions {
            file_name: Some(name.to_string()),
            ..Default::default()
        };
        send_file(&mut alice, "bob", &file, options).await;
    }
    let got = receive_files(&mut bob, &dir).await;
    assert_eq!(got.len(), 3);
    let saved: Vec<PathBuf> = got.iter().map(|(_, a)| a.path.clone().unwrap()).collect();
    assert_eq!(
        saved,
        [
            dir.join("passwd (2)"),
            dir.join("passwd (3)"),
            dir.join("passwd (4)")
        ]
    );
    assert_eq!(std::fs::read(dir.join("passwd")).unwrap(), b"existing");
    for p in &saved {
        assert_eq!(std::fs::read(p).unwrap(), b"root:x:0:0");
    }
    assert!(!root.path().join("deep/etc").exists());
    assert!(!root.path().join("deep/down/etc").exists());
    server.stop().await;
}

/// Over the server's blob size limit or the account's quota: clear errors, nothing
/// left pending, the server and other sends unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_size_limits_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let mut config = test_config(&root.path().join("server"));
    config.media.max_blob_bytes = 4 * MB as u64;
    config.media.quota_bytes = 6 * MB as u64;
    let server = TestServer::start_with(config).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;

    let big = root.path().join("big.bin");
    write_file(&big, 5 * MB, b"big", 6);
    let err = alice
        .send_file("bob", &big, &SendFileOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::File { reason, .. } if reason.contains("too large")),
        "{err}"
    );
    assert!(alice.profile().pending_uploads().unwrap().is_empty());

    let part = root.path().join("part.bin");
    write_file(&part, 3 * MB + 1, b"part", 7);
    send_file(&mut alice, "bob", &part, SendFileOptions::default()).await;
    let err = alice
        .send_file("bob", &part, &SendFileOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::File { reason, .. } if reason.contains("quota")),
        "{err}"
    );
    assert!(alice.profile().pending_uploads().unwrap().is_empty());

    // A file over the protocol's limit never leaves the device.
    let missing = root.path().join("nope.bin");
    let err = alice
        .send_file("bob", &missing, &SendFileOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::File { .. }), "{err}");

    // Everything else still works.
    hushwire_tests::send(&mut alice, "bob", "after the errors").await;
    let got = receive_files(&mut bob, &root.path().join("bob-downloads")).await;
    assert_eq!(got.len(), 1, "the file within the quota arrived");
    let texts: Vec<String> = bob
        .profile()
        .history("alice")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["after the errors"]);
    server.stop().await;
}

/// A message naming a blob that does not exist (or is not shared with the receiver): a
/// clear error on that message, nothing saved, the conversation unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_blob_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let mut alice = register(root.path(), &server, "alice").await;
    let mut bob = register(root.path(), &server, "bob").await;
    hushwire_tests::send(&mut alice, "bob", "hi").await;
    let group_id = alice.profile().send_group_id("bob").unwrap().unwrap();
    // A modified sender: a message whose attachment points at a blob nobody uploaded.
    let fake = hushwire_e2e::NewUpload {
        conversation: "bob".into(),
        source_path: root.path().join("nothing"),
        source_len: 100,
        ciphertext_len: hushwire_media::ciphertext_len(100),
        key: [1; 32],
        nonce_prefix: vec![2; 19],
        chunk_size: hushwire_media::CHUNK_SIZE,
        file_name: "ghost.bin".into(),
        mime: "application/octet-stream".into(),
        thumbnail: vec![],
        width: 0,
        height: 0,
        voice: false,
        caption: String::new(),
        view_once: false,
    };
    let p = alice.profile_mut();
    let id = p.create_upload(&fake, 1).unwrap();
    p.upload_blob_created(&id, &group_id, &[9; 32], 4 * MB as u32)
        .unwrap();
    p.finish_upload(&id, &[3; 32], &[4; 32], 2).unwrap();
    alice.flush_outbox(OP_TIMEOUT, &mut |_| {}).await.unwrap();

    let dir = root.path().join("bob-downloads");
    let got = receive_files(&mut bob, &dir).await;
    assert_eq!(got.len(), 1);
    let error = got[0].1.error.as_deref().unwrap();
    assert!(error.contains("not on the server"), "{error}");
    assert!(files_in(&dir).is_empty());
    assert!(files_in(&root.path().join("bob/media/.partial")).is_empty());
    assert!(bob.profile().pending_downloads().unwrap().is_empty());
    hushwire_tests::send(&mut alice, "bob", "after").await;
    assert_eq!(hushwire_tests::receive(&mut bob).await[0].text, "after");
    server.stop().await;
}

/// A file that changes between an interrupted upload and its resumption is not sent as a
/// mix of both: the upload is dropped with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_before_resuming_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server")).await;
    let proxy = Proxy::start(server_addr(&server)).await;
    let alice = register_via(root.path(), &server, &proxy, "alice").await;
    register_via(root.path(), &server, &proxy, "bob").await;
    drop(alice);
    let file = root.path().join("draft.doc");
    let mut bytes = write_file(&file, 24 * MB, b"draft", 8);
    proxy.rate.store(40 * MB as u64, Ordering::SeqCst);
    let alice_dir = root.path().join("alice");
    {
        let mut alice = open(root.path(), "alice");
        let options = SendFileOptions::default();
        tokio::select! {
            r = alice.send_file("bob", &file, &options) => {
                panic!("the upload finished before it was killed: {r:?}")
            }
            () = wait_until("upload progress", || {
                hushwire_tests::open_profile(&alice_dir)
                    .unwrap()
                    .pending_uploads()
                    .unwrap()
                    .first()
                    .is_some_and(|u| u.parts_done >= 2)
            }) => {}
        }
    }
    // Same size, other bytes in the part already uploaded.
    bytes[100] ^= 0xFF;
    std::fs::write(&file, &bytes).unwrap();
    let mut alice = open(root.path(), "alice");
    let resumed = alice.resume_uploads().await.unwrap();
    assert_eq!(resumed.len(), 1);
    let err = resumed[0].1.as_ref().unwrap_err();
    assert!(
        matches!(err, ClientError::File { reason, .. } if reason.contains("changed")),
        "{err}"
    );
    assert!(alice.profile().pending_uploads().unwrap().is_empty());
    assert_eq!(alice.profile().outbox_len().unwrap(), 0, "nothing was sent");
    server.stop().await;
}
