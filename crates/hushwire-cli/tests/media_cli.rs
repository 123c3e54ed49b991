//! Files through the built `hushwire` binary: `send --file`, `receive --json
//! --download-dir`, `history --json`, and processes killed (SIGKILL) halfway through an
//! upload and a download that the next command resumes.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{BIN, Server, assert_ok, command, hushwire, register};

/// The `"type": "message"` lines of a `--json` output.
fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))
        })
        .filter(|v| v["type"] == "message")
        .collect()
}

fn write_random(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    // A cheap deterministic pattern that compresses badly (an LCG), with a marker.
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed);
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let marker = b"CLI-PLAINTEXT-MARKER";
    if len > marker.len() {
        data[..marker.len()].copy_from_slice(marker);
    }
    std::fs::write(path, &data).unwrap();
    data
}

fn png(path: &Path) -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 200, |x, y| image::Rgb([x as u8, y as u8, 77]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    std::fs::write(path, out.get_ref()).unwrap();
    out.into_inner()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls `cond` every 5 ms for at most 60 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill9(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

#[test]
fn send_file_receive_and_history() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("server"));
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);

    let photo = root.path().join("holiday photo.png");
    let photo_bytes = png(&photo);
    let o = hushwire(
        &alice,
        &[
            "send",
            "bob",
            "--file",
            photo.to_str().unwrap(),
            "--caption",
            "look",
        ],
    );
    assert_ok(&o);
    let photo_id = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let note = root.path().join("note.ogg");
    let note_bytes = write_random(&note, 40_000, 1);
    assert_ok(&hushwire(
        &alice,
        &["send", "bob", "--file", note.to_str().unwrap(), "--voice"],
    ));
    let empty = root.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_ok(&hushwire(
        &alice,
        &["send", "bob", "--file", empty.to_str().unwrap()],
    ));
    // Text still works as before.
    assert_ok(&hushwire(&alice, &["send", "bob", "plain text"]));

    let downloads = root.path().join("dl");
    let o = hushwire(
        &bob,
        &[
            "receive",
            "--json",
            "--download-dir",
            downloads.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let a = &lines[0]["attachment"];
    assert_eq!(lines[0]["id"], photo_id);
    assert_eq!(lines[0]["text"], "look");
    assert_eq!(a["name"], "holiday photo.png");
    assert_eq!(a["mime"], "image/png");
    assert_eq!(a["size"], photo_bytes.len() as u64);
    assert_eq!(a["sha256"], sha256_hex(&photo_bytes));
    assert_eq!(a["width"], 320);
    assert_eq!(a["height"], 200);
    assert!(a["thumbnail"].as_str().is_some_and(|t| !t.is_empty()));
    let path = PathBuf::from(a["path"].as_str().unwrap());
    assert_eq!(path, downloads.join("holiday photo.png"));
    assert_eq!(std::fs::read(&path).unwrap(), photo_bytes);
    let v = &lines[1]["attachment"];
    assert_eq!(v["voice"], true);
    assert_eq!(v["mime"], "audio/ogg");
    assert_eq!(
        std::fs::read(v["path"].as_str().unwrap()).unwrap(),
        note_bytes
    );
    assert_eq!(lines[2]["attachment"]["size"], 0);
    assert_eq!(lines[3]["text"], "plain text");
    assert!(lines[3].get("attachment").is_none());

    // The histories show the attachments, with their paths.
    let o = hushwire(&bob, &["history", "alice", "--json"]);
    assert_ok(&o);
    let h = json_lines(&o);
    assert_eq!(h[0]["attachment"]["path"], a["path"]);
    let o = hushwire(&alice, &["history", "bob", "--json"]);
    assert_ok(&o);
    let h = json_lines(&o);
    assert_eq!(
        h[0]["attachment"]["path"].as_str().unwrap(),
        std::path::absolute(&photo).unwrap().to_str().unwrap()
    );

    // Bad input: a missing file is a user error (exit 1); --caption needs --file.
    let o = hushwire(&alice, &["send", "bob", "--file", "/nonexistent/file"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/file"));
    let o = hushwire(&alice, &["send", "bob", "hi", "--caption", "x"]);
    assert_eq!(o.status.code(), Some(1));
}

/// `send --file` killed by SIGKILL halfway: `sync` finishes the upload and sends it;
/// `receive` killed halfway through the download: the next `receive` finishes it.
#[test]
fn killed_send_and_receive_resume() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("server"));
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);
    assert_ok(&hushwire(&alice, &["send", "bob", "hello"]));
    assert_eq!(json_lines(&hushwire(&bob, &["receive", "--json"])).len(), 1);

    let file = root.path().join("movie.mkv");
    let bytes = write_random(&file, 200 * 1024 * 1024, 2);
    let mut child = command(&alice, &["send", "bob", "--file", file.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_until("upload progress", || {
        hushwire_client::open_profile(
            &alice,
            &hushwire_client::Unlock::passphrase(common::PASSPHRASE),
        )
        .ok()
        .and_then(|p| p.pending_uploads().ok())
        .and_then(|u| u.first().map(|u| u.parts_done >= 2))
        .unwrap_or(false)
    });
    kill9(&mut child);
    let pending = hushwire_client::open_profile(
        &alice,
        &hushwire_client::Unlock::passphrase(common::PASSPHRASE),
    )
    .unwrap()
    .pending_uploads()
    .unwrap();
    assert_eq!(pending.len(), 1, "killed before the upload finished");
    assert!(
        pending[0].parts_done < 45,
        "killed halfway: {}",
        pending[0].parts_done
    );
    // The next command resumes the upload and sends the message.
    assert_ok(&hushwire(&alice, &["sync"]));
    assert!(
        hushwire_client::open_profile(
            &alice,
            &hushwire_client::Unlock::passphrase(common::PASSPHRASE)
        )
        .unwrap()
        .pending_uploads()
        .unwrap()
        .is_empty()
    );

    let downloads = root.path().join("dl");
    let partial = bob.join("media/.partial");
    let mut child = command(
        &bob,
        &[
            "receive",
            "--json",
            "--download-dir",
            downloads.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    wait_until("download progress", || {
        std::fs::read_dir(&partial).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 20 * 1024 * 1024))
        })
    });
    kill9(&mut child);
    let visible: Vec<String> = std::fs::read_dir(&downloads)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(visible.is_empty(), "nothing looks complete: {visible:?}");

    let o = hushwire(
        &bob,
        &[
            "receive",
            "--json",
            "--download-dir",
            downloads.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let a = &lines[0]["attachment"];
    assert_eq!(a["sha256"], sha256_hex(&bytes));
    let saved = std::fs::read(a["path"].as_str().unwrap()).unwrap();
    assert!(saved == bytes, "the resumed download differs");
    // Only the saved file is left: the killed run's partial download and hidden
    // temporary file were taken over and removed by the next one.
    assert!(std::fs::read_dir(&partial).unwrap().next().is_none());
    let left: Vec<String> = std::fs::read_dir(&downloads)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["movie.mkv"]);
}

/// `send --file --view-once`, `view ID` (the file exists only while it is shown), then
/// `report` and the operator's `admin reports`.
#[test]
fn view_once_file_then_report() {
    let root = tempfile::tempdir().unwrap();
    let server_dir = root.path().join("server");
    let server = Server::start(&server_dir);
    let (alice, bob) = (root.path().join("alice"), root.path().join("bob"));
    register(&alice, "alice", &server);
    register(&bob, "bob", &server);

    assert_ok(&hushwire(&alice, &["send", "bob", "hello from alice"]));
    let photo = root.path().join("once.png");
    png(&photo);
    let o = hushwire(
        &alice,
        &[
            "send",
            "bob",
            "--file",
            photo.to_str().unwrap(),
            "--view-once",
        ],
    );
    assert_ok(&o);
    let id = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();

    let o = hushwire(&bob, &["receive", "--json"]);
    assert_ok(&o);
    let got = json_lines(&o);
    let once = got
        .iter()
        .find(|v| v["id"] == id.as_str())
        .expect("received");
    assert_eq!(once["view_once"], true);
    assert!(
        once["attachment"]["path"].is_null(),
        "not downloaded: {once}"
    );
    assert!(
        once["attachment"]["thumbnail"].is_null(),
        "no preview: {once}"
    );

    let o = hushwire(&bob, &["view", &id, "--json", "--keep", "0"]);
    assert_ok(&o);
    let shown: Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let file = PathBuf::from(shown["file"].as_str().expect("a file was shown"));
    assert!(file.starts_with(&bob), "{}", file.display());
    assert!(!file.exists(), "the shown file is deleted afterwards");
    let o = hushwire(&bob, &["view", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("viewed already"));

    let o = hushwire(
        &bob,
        &["report", "alice", "--reason", "unwanted", "--messages", "3"],
    );
    assert_ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("blocked"));
    let o = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
        .args(["admin", "reports", "--json", "--data"])
        .arg(&server_dir)
        .output()
        .unwrap();
    assert_ok(&o);
    let reports: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["reporter"], "bob");
    assert_eq!(reports[0]["reported"], "alice");
    assert_eq!(reports[0]["reason"], "unwanted");
    assert_eq!(reports[0]["messages"][0]["text"], "hello from alice");
    let report_id = reports[0]["id"].as_u64().unwrap().to_string();
    let o = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", common::PASSPHRASE)
        .args(["admin", "reports", "--close", &report_id, "--data"])
        .arg(&server_dir)
        .output()
        .unwrap();
    assert_ok(&o);
}
