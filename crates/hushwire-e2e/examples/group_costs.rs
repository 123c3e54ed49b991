//! Measures what one group operation costs, for 10, 100 and 1,000 members and both
//! suites, with the MLS configuration the profiles use (`hushwire_e2e::internals`):
//! create (one commit adding everyone, without path update), add one (without path
//! update), remove one (with the path update MLS requires), send one 100-byte text.
//!
//! For each: the committer's client time, one member's time to process it, the bytes of
//! the MLS message and of its padded frame per recipient, and the server's total egress
//! for it under the Delivery Service rule (a commit goes to the old roster minus the
//! sender, a Welcome to each added device, a message to the roster minus the sender).
//! Frames carry an `Envelope` (~60 bytes beyond the MLS message) padded to its size
//! bucket (`hushwire_proto::codec::frame_bucket`).
//!
//! Run: `cargo run --release -p hushwire-e2e --example group_costs [SIZES...]`
//! (default sizes 10 100 1000). Prints one Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark binary

use std::time::Instant;

use hushwire_e2e::Suite;
use hushwire_e2e::internals::{group_config_with, leaf_capabilities, meta_extensions};
use hushwire_proto::wire::{GroupMetadata, MembershipPolicy};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

/// Envelope fields around the MLS message (seq, group id, sender, ids, tags).
const ENVELOPE_OVERHEAD: usize = 60;

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

fn member(suite: Suite, i: usize) -> Member {
    let provider = OpenMlsRustCrypto::default();
    let cs = suite.ciphersuite();
    let signer = SignatureKeyPair::new(cs.signature_algorithm()).unwrap();
    signer.store(provider.storage()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(format!("member{i}/1").into_bytes()).into(),
        signature_key: signer.public().into(),
    };
    Member {
        provider,
        signer,
        credential,
    }
}

fn key_package(suite: Suite, m: &Member) -> KeyPackage {
    KeyPackage::builder()
        .leaf_node_capabilities(leaf_capabilities())
        .build(
            suite.ciphersuite(),
            &m.provider,
            &m.signer,
            m.credential.clone(),
        )
        .unwrap()
        .key_package()
        .clone()
}

fn frame(mls: usize) -> usize {
    hushwire_proto::codec::frame_bucket(mls + ENVELOPE_OVERHEAD).unwrap_or(mls + ENVELOPE_OVERHEAD)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn human(bytes: usize) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else if bytes >= 1_000 {
        format!("{:.1} KB", bytes as f64 / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn row(n: usize, suite: Suite, op: &str, client_ms: f64, recv_ms: f64, per: &str, egress: usize) {
    println!(
        "| {n} | {} | {op} | {client_ms:.1} ms | {recv_ms:.1} ms | {per} | {} |",
        match suite {
            Suite::XWing => "X-Wing",
            Suite::Classic => "classic",
        },
        human(egress)
    );
}

fn run(n: usize, suite: Suite) {
    let config = group_config_with(
        suite,
        Some(
            meta_extensions(&GroupMetadata {
                title: "Benchmark".into(),
                description: String::new(),
                admins: vec!["member0".into()],
                membership: MembershipPolicy::Admins as i32,
                recovery_key: vec![7u8; 32].into(),
                replaces: Default::default(),
            })
            .unwrap(),
        ),
    );
    let creator = member(suite, 0);
    let others: Vec<Member> = (1..n).map(|i| member(suite, i)).collect();
    let kps: Vec<KeyPackage> = others.iter().map(|m| key_package(suite, m)).collect();

    // create
    let t = Instant::now();
    let mut group = MlsGroup::new(
        &creator.provider,
        &creator.signer,
        &config,
        creator.credential.clone(),
    )
    .unwrap();
    let (commit, welcome, _gi) = group
        .add_members_without_update(&creator.provider, &creator.signer, &kps)
        .unwrap();
    group.merge_pending_commit(&creator.provider).unwrap();
    let create_ms = ms(t);
    let welcome_bytes = welcome.tls_serialize_detached().unwrap();
    let _ = commit;
    // One member joins (its cost is the receiver's).
    let joiner = &others[0];
    let t = Instant::now();
    let MlsMessageBodyIn::Welcome(w) =
        MlsMessageIn::tls_deserialize_exact(welcome_bytes.as_slice())
            .unwrap()
            .extract()
    else {
        panic!("not a Welcome")
    };
    let mut peer = StagedWelcome::new_from_welcome(&joiner.provider, config.join_config(), w, None)
        .unwrap()
        .into_group(&joiner.provider)
        .unwrap();
    let join_ms = ms(t);
    let wf = frame(welcome_bytes.len());
    row(
        n,
        suite,
        "create (Welcome)",
        create_ms,
        join_ms,
        &format!("{} ({} frame)", human(welcome_bytes.len()), human(wf)),
        wf * (n - 1),
    );

    // add one
    let newcomer = member(suite, n);
    let kp = key_package(suite, &newcomer);
    let t = Instant::now();
    let (commit, welcome, _gi) = group
        .add_members_without_update(&creator.provider, &creator.signer, &[kp])
        .unwrap();
    let add_ms = ms(t);
    group.merge_pending_commit(&creator.provider).unwrap();
    let commit_bytes = commit.tls_serialize_detached().unwrap();
    let welcome_bytes = welcome.tls_serialize_detached().unwrap();
    let recv_ms = process(&mut peer, joiner, &commit_bytes);
    let (cf, wf) = (frame(commit_bytes.len()), frame(welcome_bytes.len()));
    row(
        n,
        suite,
        "add one",
        add_ms,
        recv_ms,
        &format!(
            "commit {} ({} frame), Welcome {}",
            human(commit_bytes.len()),
            human(cf),
            human(welcome_bytes.len())
        ),
        cf * (n - 1) + wf,
    );

    // remove one (the newcomer): old roster n + 1, minus the sender.
    let leaf = group
        .members()
        .find(|m| m.credential.serialized_content() == format!("member{n}/1").as_bytes())
        .unwrap()
        .index;
    let t = Instant::now();
    let (commit, _, _gi) = group
        .remove_members(&creator.provider, &creator.signer, &[leaf])
        .unwrap();
    let remove_ms = ms(t);
    group.merge_pending_commit(&creator.provider).unwrap();
    let commit_bytes = commit.tls_serialize_detached().unwrap();
    let recv_ms = process(&mut peer, joiner, &commit_bytes);
    let cf = frame(commit_bytes.len());
    row(
        n,
        suite,
        "remove one",
        remove_ms,
        recv_ms,
        &format!("{} ({} frame)", human(commit_bytes.len()), human(cf)),
        cf * n,
    );

    // send one 100-byte text (Content framing adds ~40 bytes)
    let t = Instant::now();
    let msg = group
        .create_message(&creator.provider, &creator.signer, &[b'x'; 140])
        .unwrap();
    let send_ms = ms(t);
    let msg_bytes = msg.tls_serialize_detached().unwrap();
    let recv_ms = process(&mut peer, joiner, &msg_bytes);
    let mf = frame(msg_bytes.len());
    row(
        n,
        suite,
        "send one",
        send_ms,
        recv_ms,
        &format!("{} ({} frame)", human(msg_bytes.len()), human(mf)),
        mf * (n - 1),
    );
}

/// One member processes (and merges) a message; returns the time it took.
fn process(group: &mut MlsGroup, m: &Member, bytes: &[u8]) -> f64 {
    let t = Instant::now();
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .unwrap()
        .try_into_protocol_message()
        .unwrap();
    let processed = group.process_message(&m.provider, msg).unwrap();
    if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
        group.merge_staged_commit(&m.provider, *staged).unwrap();
    }
    ms(t)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "| members | suite | operation | client time | one member processes | bytes per recipient | server egress |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        for suite in [Suite::XWing, Suite::Classic] {
            run(n, suite);
        }
    }
}
