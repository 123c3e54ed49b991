//! What the CLI tests share: the built binary, a `hushwire serve` child process on a
//! loopback port, and running client commands on a profile.
// Test helpers: failing loudly is the point. Not every test file uses every helper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod infra;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_hushwire");
/// The passphrase every test profile is encrypted at rest under (`HUSHWIRE_PASSPHRASE`
/// of every spawned command).
pub const PASSPHRASE: &str = "test passphrase";

/// A `hushwire serve` child process, stopped with SIGTERM on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub pin: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// Like [`Server::start`] with further `serve` arguments.
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .env("HUSHWIRE_PASSPHRASE", PASSPHRASE)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hushwire serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut pin) = (None, None);
        while url.is_none() || pin.is_none() {
            let line = lines.next().expect("serve printed url and pin").unwrap();
            if let Some(u) = line.strip_prefix("url: ") {
                url = Some(u.to_string());
            } else if let Some(p) = line.strip_prefix("pin: ") {
                pin = Some(p.to_string());
            }
        }
        Server {
            child,
            url: url.unwrap(),
            pin: pin.unwrap(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn command(profile: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env("HUSHWIRE_PASSPHRASE", PASSPHRASE);
    c.arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("HUSHWIRE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn hushwire(profile: &Path, args: &[&str]) -> Output {
    command(profile, args).output().unwrap()
}

pub fn assert_ok(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn register(profile: &Path, handle: &str, server: &Server) {
    assert_ok(&hushwire(
        profile,
        &[
            "register",
            handle,
            "--server",
            &server.url,
            "--pin",
            &server.pin,
        ],
    ));
}
