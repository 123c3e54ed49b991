//! Debian's testssl.sh against a running `hushwire serve`: TLS 1.3 is offered, TLS 1.2
//! only with forward-secret AEAD suites (kept so the handshake looks like a default
//! nginx's, see hushwire-decoy), and nothing older. `scripts/test-tools.sh` installs
//! testssl.sh; CI runs it.
// A test: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Server;

/// testssl.sh's flat JSON: one object per finding.
fn findings(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("testssl JSON");
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or_default().to_string(),
                f["finding"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn finding<'a>(all: &'a [(String, String)], id: &str) -> &'a str {
    all.iter()
        .find(|(i, _)| i == id)
        .map(|(_, f)| f.as_str())
        .unwrap_or_else(|| panic!("no {id} finding in {all:?}"))
}

#[test]
fn testssl_finds_only_tls13_and_aead_tls12() {
    let Some(testssl) = ["testssl", "testssl.sh"]
        .into_iter()
        .find(|t| Command::new(t).arg("--version").output().is_ok())
    else {
        panic!("testssl.sh is not installed: run scripts/test-tools.sh");
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let authority = server
        .url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .expect("https URL")
        .to_string();
    let json = dir.path().join("testssl.json");
    let out = Command::new(testssl)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--openssl-timeout",
            "10",
            "--protocols",
            "--cipher-per-proto",
            "--jsonfile",
        ])
        .arg(&json)
        .arg(&authority)
        .output()
        .expect("run testssl.sh");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "testssl.sh wrote no JSON ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let all = findings(&text);

    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(&all, old).starts_with("not offered"),
            "{old}: {}",
            finding(&all, old)
        );
    }
    assert!(
        finding(&all, "TLS1_3").starts_with("offered"),
        "TLS 1.3: {}",
        finding(&all, "TLS1_3")
    );

    // Every suite offered, per protocol: testssl names them cipher-<proto>_<hexcode>.
    let suites: Vec<&(String, String)> = all
        .iter()
        .filter(|(id, _)| id.starts_with("cipher-"))
        .collect();
    let tls13: Vec<_> = suites
        .iter()
        .filter(|(id, _)| id.starts_with("cipher-tls1_3_"))
        .collect();
    assert!(!tls13.is_empty(), "no TLS 1.3 suite listed: {all:?}");
    for (id, f) in &suites {
        assert!(
            id.starts_with("cipher-tls1_3_") || id.starts_with("cipher-tls1_2_"),
            "a suite of an older protocol is offered: {id} {f}"
        );
        if id.starts_with("cipher-tls1_2_") {
            assert!(
                f.contains("ECDHE") && (f.contains("GCM") || f.contains("CHACHA20")),
                "a TLS 1.2 suite without forward secrecy or AEAD: {f}"
            );
        }
    }
    eprintln!(
        "testssl.sh: {} suites offered ({} TLS 1.3), no protocol below TLS 1.2",
        suites.len(),
        tls13.len()
    );
}
