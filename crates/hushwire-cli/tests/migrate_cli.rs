//! `hushwire admin migrate` through the built binary: an embedded data directory (made
//! by `admin invite`) into a fresh PostgreSQL database, JSON report, redacted password,
//! resumed re-run, and a non-zero exit on a verification difference.
//!
//! Needs `HUSHWIRE_TEST_POSTGRES_URL` and `psql`; prints "skipped: … unset" otherwise.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hushwire");
/// The passphrase the test profiles are encrypted at rest under.
const PASSPHRASE: &str = "test passphrase";
const ENV: &str = "HUSHWIRE_TEST_POSTGRES_URL";

/// Runs `c` to completion (killed after `limit`): exit code, stdout, stderr.
fn run(mut c: Command, limit: Duration) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = c.spawn().expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

fn psql(url: &str, sql: &str) {
    let mut c = Command::new("psql");
    c.args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]);
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, Some(0), "psql {sql}: {out}{err}");
}

/// `url` with its database replaced by `db` and the password `password` set.
fn database_url(url: &str, db: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let authority = rest.split(['/', '?']).next().unwrap();
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.split(':').next().unwrap(), h),
        None => ("postgres", authority),
    };
    format!("{scheme}://{user}:{password}@{host}/{db}")
}

struct FreshDb {
    admin: String,
    name: String,
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let mut c = Command::new("psql");
        c.args([
            &self.admin,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ]);
        let _ = run(c, Duration::from_secs(60));
    }
}

fn hushwire(args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN);
    c.env("HUSHWIRE_PASSPHRASE", PASSPHRASE);
    c.args(args).env_remove("HUSHWIRE_MIGRATE_TO");
    run(c, Duration::from_secs(120))
}

#[test]
fn admin_migrate_moves_verifies_and_redacts() {
    let Some(admin) = std::env::var(ENV).ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: {ENV} unset");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("hwmigcli_{}_{nanos}", std::process::id());
    psql(&admin, &format!("CREATE DATABASE {name}"));
    let db = FreshDb {
        admin: admin.clone(),
        name: name.clone(),
    };
    // The test server trusts loopback: the password is never checked, only shown.
    let url = database_url(&admin, &db.name, "s3cr3t-pw");

    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    for _ in 0..3 {
        let (code, out, err) = hushwire(&["admin", "invite", "--data", data_arg]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    let media = tempfile::tempdir().unwrap();

    let (code, out, err) = hushwire(&[
        "admin",
        "migrate",
        "--from",
        data_arg,
        "--to",
        &url,
        "--media-to",
        media.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        !out.contains("s3cr3t") && !err.contains("s3cr3t"),
        "{out}{err}"
    );
    assert!(err.contains("migrate: invites"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["ok"], true);
    assert_eq!(report["resumed"], false);
    assert!(report["target"].as_str().unwrap().contains(":***@"));
    let invites = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "invites")
        .unwrap();
    assert_eq!(invites["source_rows"], 3);
    assert_eq!(invites["target_rows"], 3);
    assert_eq!(report["media"]["source_parts"], 0);

    // Again: resumed, nothing to copy, still verified; the human table.
    let (code, out, err) = hushwire(&["admin", "migrate", "--from", data_arg, "--to", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("(resumed)") && out.contains("result: OK"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"));

    // A row the source does not have: the verification fails, non-zero exit.
    psql(
        &url,
        "INSERT INTO invites (code, expires_at_ms) VALUES ('extra', 1)",
    );
    let (code, out, err) = hushwire(&["admin", "migrate", "--from", data_arg, "--to", &url]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("MISMATCH") && out.contains("result: FAILED"),
        "{out}"
    );

    // Not a PostgreSQL URL: refused before anything is opened.
    let (code, _, err) = hushwire(&["admin", "migrate", "--from", data_arg, "--to", "mysql://x"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("postgres://"), "{err}");
}

/// `hushwire admin migrate --json` into `url`: the parsed report.
fn migrate_json(data: &str, url: &str) -> serde_json::Value {
    let (code, out, err) = hushwire(&["admin", "migrate", "--from", data, "--to", url, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str(&out).expect("JSON report")
}

fn fresh_db(admin: &str, tag: &str) -> (FreshDb, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("hwmigcli_{tag}_{}_{nanos}", std::process::id());
    psql(admin, &format!("CREATE DATABASE {name}"));
    let url = database_url(admin, &name, "unused");
    (
        FreshDb {
            admin: admin.to_owned(),
            name,
        },
        url,
    )
}

#[test]
fn a_migration_killed_midway_resumes_to_the_same_result() {
    let Some(admin) = std::env::var(ENV).ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: {ENV} unset");
        return;
    };
    // An embedded database (schema made by the server itself) with 60,000 invites:
    // 60 batches, so the kill lands in the middle.
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let (code, out, err) = hushwire(&["admin", "invite", "--data", data_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    {
        let mut conn = rusqlite::Connection::open(data.path().join("hushwire.db")).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO invites (code, expires_at_ms, used_at_ms) VALUES (?1, ?2, ?3)",
                )
                .unwrap();
            for i in 0..60_000i64 {
                let used = (i % 3 == 0).then_some(i);
                st.execute(rusqlite::params![format!("code-{i:06}"), i, used])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let (_db, url) = fresh_db(&admin, "kill");

    let mut child = Command::new(BIN)
        .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
        .args(["admin", "migrate", "--from", data_arg, "--to", &url])
        .env_remove("HUSHWIRE_MIGRATE_TO")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("migrate: invites") && !line.ends_with("done") {
                let _ = tx.send(line);
            }
        }
    });
    // SIGKILL as soon as the first batch of invites is committed.
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a progress line for invites");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before the end ({line})");
    let _ = reader.join();
    // Stopped midway: some batches committed, not all.
    let mut c = Command::new("psql");
    c.args([&url, "-tA", "-c", "SELECT count(*) FROM invites"]);
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let copied: u64 = out.trim().parse().unwrap();
    assert!(
        (1_000..60_001).contains(&copied) && copied.is_multiple_of(1_000),
        "{copied} invites copied before the kill"
    );

    let resumed = migrate_json(data_arg, &url);
    assert_eq!(resumed["ok"], true, "{resumed:#}");
    assert_eq!(resumed["resumed"], true);
    let (_clean_db, clean_url) = fresh_db(&admin, "clean");
    let clean = migrate_json(data_arg, &clean_url);
    assert_eq!(clean["ok"], true);
    assert_eq!(resumed["tables"], clean["tables"]);
    let invites = resumed["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "invites")
        .unwrap()
        .clone();
    assert_eq!(invites["target_rows"], 60_001);
}
