//! The storage conformance suite: one set of cases, written against `Arc<dyn Store>`,
//! that every backend runs. It assumes nothing about the backend beyond the traits.
//!
//! Every case takes a fresh, empty store and returns `Err(Failure)` naming the broken
//! rule. Three ways to run it:
//! - [`conformance_tests!`](crate::conformance_tests) in a backend's integration tests
//!   expands to one `#[tokio::test]` per case (the usual way);
//! - [`run_all`] runs every case of [`CASES`] and collects the failures;
//! - each case is a public `async fn` and may be called on its own.
//!
//! Persistence needs the backend to close and reopen its store, so it is split in two:
//! [`persistence_write`] fills a store and returns what it wrote, then the backend
//! reopens and calls [`persistence_verify`].
//!
//! Cases use a fixed clock ([`NOW`]) and fixed handles; they create everything they
//! need through the traits.

use crate::{
    Accepted, AccountRecord, AddDevice, DeviceAddr, DeviceId, DeviceRecord, Envelope, EnvelopeKind,
    LinkSlot, MAX_LINK_SLOTS, NewAccount, NewDevice, NewKeyPackage, PutSlot, RelayAudience, Store,
    StoreError, StoredDeviceList, Submission, SubmitKind, SubmitOutcome, WelcomeOut,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server clock every case uses.
pub const NOW: u64 = 1_700_000_000_000;
/// Default retention end of submitted messages (30 days after [`NOW`]).
pub const EXPIRES: u64 = NOW + 30 * 24 * 3600 * 1000;
/// The ciphersuite most cases use.
pub const CS: u16 = 1;

/// A broken rule, with the source line of the failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(format!("unexpected store error: {e}"))
    }
}

/// What a case returns.
pub type CaseResult = Result<(), Failure>;
/// A boxed case future.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;
/// A case as a plain function pointer.
pub type CaseFn = fn(Arc<dyn Store>) -> CaseFuture;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure(format!("line {}: {}", line!(), format!($($arg)+))));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(Failure(format!(
                "line {}: `{}` == `{}` failed\n  left: {:?}\n right: {:?}",
                line!(),
                stringify!($left),
                stringify!($right),
                l,
                r
            )));
        }
    }};
}

/// The one list of conformance cases: calls `$cb!` with every case name (after any
/// leading arguments). [`CASES`] and [`conformance_tests!`](crate::conformance_tests)
/// both come from it, so a new case is added in one place.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($cb:ident $(, $($arg:tt)*)?) => {
        $crate::__conformance_cases! { @call $cb [$($($arg)*)?];
            accounts_create_and_lookup,
            accounts_handle_taken,
            accounts_invites,
            accounts_devices,
            accounts_device_list,
            accounts_add_device_within,
            accounts_revoked_devices,
            key_packages_claim_once,
            key_packages_last_resort,
            key_packages_ciphersuites,
            key_packages_devices_and_revocation,
            key_packages_concurrent_claims,
            delivery_group_creation,
            delivery_unknown_group,
            delivery_stale_epoch,
            delivery_concurrent_commits,
            delivery_not_member,
            delivery_external_commit_by_account_device,
            delivery_unknown_roster_device,
            delivery_idempotent,
            delivery_fanout,
            delivery_commit_fanout_old_and_new,
            delivery_revoked_receives_nothing,
            delivery_body_stored_once,
            delivery_concurrent_submitters,
            mailbox_seq_contiguous,
            mailbox_fetch_paging,
            mailbox_ack,
            mailbox_ack_deletes_unreferenced_bodies,
            mailbox_expiry,
            blobs_create_and_readers,
            blobs_parts_and_completion,
            blobs_quota,
            blobs_fetches,
            blobs_sweep,
            controls_block_stops_messages_and_welcomes,
            controls_relay_audience,
            controls_retract,
            controls_purge_disappearing,
            controls_reports,
            links_slots_write_once,
            links_slot_limit,
            links_expiry_and_purge,
            links_owner_and_delete,
            directory_secret_write_once,
            directory_changes_recorded,
            directory_append_epochs,
            directory_epochs_paging,
            directory_concurrent_append,
            directory_publisher_lease,
            directory_publisher_race,
            directory_accounts_batch,
            accounts_reset,
            accounts_reset_races,
        }
    };
    (@call cases [$($arg:tt)*]; $($name:ident),* $(,)?) => {
        cases! { $($name),* }
    };
    (@call conformance_tests [$($arg:tt)*]; $($name:ident),* $(,)?) => {
        $crate::conformance_tests! { @cases $($arg)*; $($name),* }
    };
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name, in the order [`run_all`] runs them.
        pub const CASES: &[(&str, CaseFn)] = &[
            $((stringify!($name), |s| Box::pin($name(s)))),*
        ];
    };
}

crate::__conformance_cases! { cases }

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an expression
/// evaluating to an async factory `FnMut() -> impl Future<Output = (Arc<dyn Store>, G)>`
/// that gives a fresh empty store; `G` (for example a temporary directory) is kept
/// alive until the case ends. The calling crate needs `tokio` with `macros` and
/// `rt-multi-thread`.
///
/// `conformance_tests!(skip_if = $skip, $make)` first evaluates `$skip()`, an
/// `Option<String>`: with `Some(reason)` each test prints the reason and passes without
/// running (for backends that need an external server named by an environment
/// variable).
#[macro_export]
macro_rules! conformance_tests {
    (skip_if = $skip:expr, $make:expr) => {
        $crate::__conformance_cases! { conformance_tests, $skip, $make }
    };
    ($make:expr) => {
        $crate::conformance_tests!(
            skip_if = || ::core::option::Option::<::std::string::String>::None,
            $make
        );
    };
    (@cases $skip:expr, $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let ::core::option::Option::Some(reason) = ($skip)() {
                    eprintln!("conformance case {}: {}", stringify!($case), reason);
                    return;
                }
                let result = $crate::conformance::run_case(
                    $crate::conformance::$case,
                    $make,
                ).await;
                if let Err(failure) = result {
                    panic!("conformance case {} failed: {}", stringify!($case), failure);
                }
            }
        )*
    };
}

/// Runs one case on a fresh store from `make`, keeping the factory's guard alive until
/// the case has finished.
pub async fn run_case<C, CF, F, Fut, G>(case: C, mut make: F) -> CaseResult
where
    C: FnOnce(Arc<dyn Store>) -> CF,
    CF: Future<Output = CaseResult>,
    F: FnMut() -> Fut,
    Fut: Future<Output = (Arc<dyn Store>, G)>,
{
    let (store, guard) = make().await;
    let result = case(store).await;
    drop(guard);
    result
}

/// Runs every case of [`CASES`], each on a fresh store, and returns the failures by
/// case name.
pub async fn run_all<F, Fut, G>(mut make: F) -> Result<(), Vec<(&'static str, Failure)>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Arc<dyn Store>, G)>,
{
    let mut failures = Vec::new();
    for (name, case) in CASES {
        let (store, guard) = make().await;
        if let Err(f) = case(store).await {
            failures.push((*name, f));
        }
        drop(guard);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1);

/// A message id never used before in this process.
pub fn fresh_message_id() -> [u8; 16] {
    let n = NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed);
    let mut id = [0x5a; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// `handle/device_id`.
pub fn addr(handle: &str, device_id: u32) -> DeviceAddr {
    DeviceAddr {
        handle: handle.to_owned(),
        device_id,
    }
}

/// The registration of `handle` the cases use (keys derived from the handle).
pub fn new_account(handle: &str) -> NewAccount {
    NewAccount {
        handle: handle.to_owned(),
        account_key: format!("account-key:{handle}").into_bytes(),
        device_key: format!("device-key:{handle}/1").into_bytes(),
        cert_created_at_ms: NOW - 5,
        cert_signature: format!("cert-sig:{handle}/1").into_bytes(),
        invite: None,
        now_ms: NOW,
    }
}

/// Registers `handle` and returns its first device.
pub async fn register(store: &dyn Store, handle: &str) -> Result<DeviceRecord, Failure> {
    Ok(store.create_account(new_account(handle)).await?)
}

/// Adds a device to `handle`.
pub async fn link_device(store: &dyn Store, handle: &str) -> Result<DeviceRecord, Failure> {
    let dev = store
        .add_device(
            handle,
            NewDevice {
                device_key: format!("device-key:{handle}/linked").into_bytes(),
                cert_created_at_ms: NOW - 1,
                cert_signature: format!("cert-sig:{handle}/linked").into_bytes(),
            },
        )
        .await?;
    dev.ok_or_else(|| Failure(format!("add_device({handle}) found no account")))
}

/// A one-time (or last-resort) KeyPackage with recognisable bytes.
pub fn key_package(ciphersuite: u16, tag: &str, last_resort: bool) -> NewKeyPackage {
    NewKeyPackage {
        ciphersuite,
        data: Bytes::from(format!("kp:{tag}")),
        last_resort,
    }
}

/// An application message.
pub fn application(sender: &DeviceRecord, group: &[u8], epoch: u64, body: &str) -> Submission {
    Submission {
        sender: sender.id,
        message_id: fresh_message_id(),
        group_id: Bytes::copy_from_slice(group),
        epoch,
        kind: SubmitKind::Application,
        payload: Bytes::from(body.to_owned()),
        now_ms: NOW,
        expires_at_ms: EXPIRES,
        disappearing: false,
        past_epoch_ok: false,
    }
}

/// A commit with its post-commit roster, Welcomes and GroupInfo.
pub fn commit(
    sender: &DeviceRecord,
    group: &[u8],
    epoch: u64,
    roster: &[&DeviceRecord],
    welcomes: Vec<WelcomeOut>,
    group_info: Option<&str>,
) -> Submission {
    Submission {
        sender: sender.id,
        message_id: fresh_message_id(),
        group_id: Bytes::copy_from_slice(group),
        epoch,
        kind: SubmitKind::Commit {
            roster: roster.iter().map(|d| d.addr.clone()).collect(),
            welcomes,
            group_info: group_info.map(|g| Bytes::from(g.to_owned())),
        },
        payload: Bytes::from(format!("commit:{epoch}")),
        now_ms: NOW,
        expires_at_ms: EXPIRES,
        disappearing: false,
        past_epoch_ok: false,
    }
}

/// A Welcome for `to`.
pub fn welcome(body: &str, to: &[&DeviceRecord]) -> WelcomeOut {
    WelcomeOut {
        payload: Bytes::from(body.to_owned()),
        recipients: to.iter().map(|d| d.addr.clone()).collect(),
    }
}

/// The outcome as [`Accepted`], or a failure naming what came instead.
pub fn accepted(outcome: SubmitOutcome) -> Result<Accepted, Failure> {
    match outcome {
        SubmitOutcome::Accepted(a) => Ok(a),
        other => Err(Failure(format!("expected Accepted, got {other:?}"))),
    }
}

/// Creates group `group` from `creator` with `members` (creator included), welcomes
/// the others, and acknowledges every mailbox entry so cases start from empty
/// mailboxes. The creating commit reaches nobody: each other member gets exactly one
/// entry, its Welcome. The group ends at epoch 1.
pub async fn create_group(
    store: &dyn Store,
    group: &[u8],
    creator: &DeviceRecord,
    members: &[&DeviceRecord],
) -> Result<(), Failure> {
    let others: Vec<&DeviceRecord> = members
        .iter()
        .copied()
        .filter(|m| m.id != creator.id)
        .collect();
    let welcomes = if others.is_empty() {
        Vec::new()
    } else {
        vec![welcome("welcome", &others)]
    };
    let a = accepted(
        store
            .submit(commit(creator, group, 0, members, welcomes, Some("gi:1")))
            .await?,
    )?;
    ensure_eq!(a.epoch, 1);
    ensure_eq!(a.deliveries.len(), others.len());
    ensure!(
        a.deliveries
            .iter()
            .all(|d| d.envelope.kind == EnvelopeKind::Welcome && d.device != creator.id),
        "group creation delivered more than Welcomes: {:?}",
        a.deliveries
    );
    for m in members {
        drain(store, m.id).await?;
    }
    Ok(())
}

/// Fetches everything waiting for `device`.
pub async fn fetch_all(store: &dyn Store, device: DeviceId) -> Result<Vec<Envelope>, Failure> {
    Ok(store.fetch(device, 0, usize::MAX).await?)
}

/// Acknowledges everything waiting for `device`.
pub async fn drain(store: &dyn Store, device: DeviceId) -> Result<(), Failure> {
    store.ack(device, u64::MAX).await?;
    ensure_eq!(store.pending(device).await?, 0);
    Ok(())
}

fn payload_str(env: &Envelope) -> String {
    String::from_utf8_lossy(&env.payload).into_owned()
}

// ---------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------

/// An account is created with device 1 and can be read back by handle and by address.
pub async fn accounts_create_and_lookup(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let req = new_account("alice");
    let dev = s.create_account(req.clone()).await?;
    ensure_eq!(dev.addr, addr("alice", 1));
    ensure_eq!(dev.device_key, req.device_key);
    ensure_eq!(dev.cert_created_at_ms, req.cert_created_at_ms);
    ensure_eq!(dev.cert_signature, req.cert_signature);
    ensure!(!dev.revoked, "new device is revoked");

    let bob = register(s, "bob").await?;
    ensure!(bob.id != dev.id, "two devices share id {:?}", bob.id);
    ensure_eq!(bob.addr, addr("bob", 1));

    let acc = s.account("alice").await?;
    ensure_eq!(
        acc,
        Some(AccountRecord {
            handle: "alice".into(),
            account_key: req.account_key.clone(),
            created_at_ms: NOW,
            devices: vec![dev.clone()],
            device_list: None,
        })
    );
    ensure_eq!(s.device(&addr("alice", 1)).await?, Some(dev.clone()));
    ensure_eq!(s.device(&addr("alice", 2)).await?, None);
    ensure_eq!(s.device(&addr("carol", 1)).await?, None);
    ensure_eq!(s.account("carol").await?, None);
    Ok(())
}

/// A second registration of a handle fails and leaves the first intact.
pub async fn accounts_handle_taken(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let first = register(s, "alice").await?;
    let mut again = new_account("alice");
    again.account_key = b"another key".to_vec();
    match s.create_account(again).await {
        Err(StoreError::HandleTaken) => {}
        other => return Err(Failure(format!("expected HandleTaken, got {other:?}"))),
    }
    let acc = s
        .account("alice")
        .await?
        .ok_or_else(|| Failure("alice vanished".into()))?;
    ensure_eq!(acc.account_key, new_account("alice").account_key);
    ensure_eq!(acc.devices, vec![first]);
    Ok(())
}

/// Invites are single-use, expire, are checked before the handle, and are only consumed
/// by a registration that succeeds.
pub async fn accounts_invites(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    s.create_invite("good", NOW + 1000).await?;
    s.create_invite("expired", NOW - 1).await?;
    match s.create_invite("good", NOW + 5000).await {
        Err(StoreError::Invalid(_)) => {}
        other => {
            return Err(Failure(format!(
                "duplicate invite: expected Invalid, got {other:?}"
            )));
        }
    }

    let with_invite = |handle: &str, code: &str| {
        let mut n = new_account(handle);
        n.invite = Some(code.to_owned());
        n
    };
    let expect_invalid = |r: Result<DeviceRecord, StoreError>, what: &str| match r {
        Err(StoreError::InviteInvalid) => Ok(()),
        other => Err(Failure(format!(
            "{what}: expected InviteInvalid, got {other:?}"
        ))),
    };

    expect_invalid(s.create_account(with_invite("u1", "nope")).await, "unknown")?;
    expect_invalid(
        s.create_account(with_invite("u2", "expired")).await,
        "expired",
    )?;
    ensure_eq!(s.account("u1").await?, None);
    ensure_eq!(s.account("u2").await?, None);

    // Without a valid invite nothing says whether a handle is taken: on an invite-only
    // server, strangers cannot list its users by trying handles.
    register(s, "taken").await?;
    expect_invalid(
        s.create_account(with_invite("taken", "nope")).await,
        "taken handle, unknown invite",
    )?;
    expect_invalid(
        s.create_account(with_invite("taken", "expired")).await,
        "taken handle, expired invite",
    )?;

    // A registration that fails for another reason does not consume the invite.
    match s.create_account(with_invite("taken", "good")).await {
        Err(StoreError::HandleTaken) => {}
        other => return Err(Failure(format!("expected HandleTaken, got {other:?}"))),
    }

    let dev = s.create_account(with_invite("u3", "good")).await?;
    ensure_eq!(dev.addr, addr("u3", 1));
    expect_invalid(s.create_account(with_invite("u4", "good")).await, "reused")?;
    ensure_eq!(s.account("u4").await?, None);
    Ok(())
}

/// Further devices get the next numbers; revocation flags them and is reported once.
pub async fn accounts_devices(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let d1 = register(s, "alice").await?;
    let d2 = link_device(s, "alice").await?;
    let d3 = link_device(s, "alice").await?;
    ensure_eq!(d2.addr, addr("alice", 2));
    ensure_eq!(d3.addr, addr("alice", 3));
    ensure!(
        d1.id != d2.id && d2.id != d3.id && d1.id != d3.id,
        "device ids collide"
    );
    ensure_eq!(
        s.add_device(
            "nobody",
            NewDevice {
                device_key: vec![1],
                cert_created_at_ms: NOW,
                cert_signature: vec![2]
            }
        )
        .await?,
        None
    );

    ensure!(
        s.revoke_device(&d2.addr).await?,
        "first revocation reported false"
    );
    ensure!(
        !s.revoke_device(&d2.addr).await?,
        "second revocation reported true"
    );
    ensure!(
        !s.revoke_device(&addr("alice", 9)).await?,
        "revoked an unknown device"
    );

    let got2 = s
        .device(&d2.addr)
        .await?
        .ok_or_else(|| Failure("revoked device no longer found".into()))?;
    ensure!(got2.revoked, "device not flagged revoked");
    ensure_eq!(got2.id, d2.id);

    let acc = s
        .account("alice")
        .await?
        .ok_or_else(|| Failure("alice missing".into()))?;
    let numbers: Vec<(u32, bool)> = acc
        .devices
        .iter()
        .map(|d| (d.addr.device_id, d.revoked))
        .collect();
    ensure_eq!(numbers, vec![(1, false), (2, true), (3, false)]);

    // Numbers are never reused, even after a revocation.
    let d4 = link_device(s, "alice").await?;
    ensure_eq!(d4.addr, addr("alice", 4));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Key packages
// ---------------------------------------------------------------------------------------

/// One-time packages are handed out once each, then nothing is left.
pub async fn key_packages_claim_once(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let d = register(s, "alice").await?;
    let n = s
        .add_key_packages(
            d.id,
            vec![
                key_package(CS, "a", false),
                key_package(CS, "b", false),
                key_package(CS, "c", false),
            ],
        )
        .await?;
    ensure_eq!(n, 3);
    ensure_eq!(s.key_package_stock(d.id, CS).await?.available, 3);
    ensure!(
        !s.key_package_stock(d.id, CS).await?.has_last_resort,
        "phantom last resort"
    );

    let mut seen = BTreeSet::new();
    for left in [2u32, 1, 0] {
        let claimed = s.claim_key_packages("alice", CS).await?;
        ensure_eq!(claimed.len(), 1);
        ensure_eq!(claimed[0].device_id, 1);
        ensure!(
            seen.insert(claimed[0].data.clone()),
            "package handed out twice"
        );
        ensure_eq!(s.key_package_stock(d.id, CS).await?.available, left);
    }
    let expected: BTreeSet<Bytes> = ["kp:a", "kp:b", "kp:c"]
        .into_iter()
        .map(Bytes::from)
        .collect();
    ensure_eq!(seen, expected);
    ensure_eq!(s.claim_key_packages("alice", CS).await?, vec![]);
    ensure_eq!(s.claim_key_packages("nobody", CS).await?, vec![]);
    Ok(())
}

/// The last-resort package is handed out (and kept) only once one-time packages are
/// gone; a new one replaces the old.
pub async fn key_packages_last_resort(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let d = register(s, "alice").await?;
    s.add_key_packages(
        d.id,
        vec![key_package(CS, "lr1", true), key_package(CS, "one", false)],
    )
    .await?;
    let stock = s.key_package_stock(d.id, CS).await?;
    ensure_eq!((stock.available, stock.has_last_resort), (1, true));

    let claim = |expect: &'static str| {
        let s = store.clone();
        async move {
            let c = s.claim_key_packages("alice", CS).await?;
            ensure_eq!(c.len(), 1);
            ensure_eq!(c[0].data, Bytes::from(expect));
            Ok::<(), Failure>(())
        }
    };
    claim("kp:one").await?;
    claim("kp:lr1").await?;
    claim("kp:lr1").await?;
    let stock = s.key_package_stock(d.id, CS).await?;
    ensure_eq!((stock.available, stock.has_last_resort), (0, true));

    s.add_key_packages(d.id, vec![key_package(CS, "lr2", true)])
        .await?;
    claim("kp:lr2").await?;
    claim("kp:lr2").await?;
    let stock = s.key_package_stock(d.id, CS).await?;
    ensure_eq!((stock.available, stock.has_last_resort), (0, true));

    s.add_key_packages(d.id, vec![key_package(CS, "two", false)])
        .await?;
    claim("kp:two").await?;
    claim("kp:lr2").await?;
    Ok(())
}

/// Packages of one ciphersuite are never handed out for another.
pub async fn key_packages_ciphersuites(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let d = register(s, "alice").await?;
    s.add_key_packages(
        d.id,
        vec![
            key_package(1, "cs1-a", false),
            key_package(2, "cs2-a", false),
            key_package(2, "cs2-b", false),
            key_package(2, "cs2-lr", true),
        ],
    )
    .await?;
    let st1 = s.key_package_stock(d.id, 1).await?;
    let st2 = s.key_package_stock(d.id, 2).await?;
    let st3 = s.key_package_stock(d.id, 3).await?;
    ensure_eq!((st1.available, st1.has_last_resort), (1, false));
    ensure_eq!((st2.available, st2.has_last_resort), (2, true));
    ensure_eq!((st3.available, st3.has_last_resort), (0, false));

    ensure_eq!(s.claim_key_packages("alice", 3).await?, vec![]);
    let c = s.claim_key_packages("alice", 1).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].data, Bytes::from("kp:cs1-a"));
    ensure_eq!(s.claim_key_packages("alice", 1).await?, vec![]);
    for _ in 0..2 {
        let c = s.claim_key_packages("alice", 2).await?;
        ensure_eq!(c.len(), 1);
        ensure!(
            c[0].data.starts_with(b"kp:cs2-") && c[0].data != "kp:cs2-lr",
            "wrong package"
        );
    }
    let c = s.claim_key_packages("alice", 2).await?;
    ensure_eq!(c[0].data, Bytes::from("kp:cs2-lr"));
    Ok(())
}

/// A claim hands out one package per non-revoked device, ordered by device number;
/// devices with nothing are left out.
pub async fn key_packages_devices_and_revocation(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let d1 = register(s, "alice").await?;
    let d2 = link_device(s, "alice").await?;
    let d3 = link_device(s, "alice").await?;
    let _d4 = link_device(s, "alice").await?; // never uploads
    s.add_key_packages(d3.id, vec![key_package(CS, "d3", false)])
        .await?;
    s.add_key_packages(d1.id, vec![key_package(CS, "d1", false)])
        .await?;
    s.add_key_packages(d2.id, vec![key_package(CS, "d2-lr", true)])
        .await?;

    let c = s.claim_key_packages("alice", CS).await?;
    let got: Vec<(u32, Bytes)> = c.into_iter().map(|k| (k.device_id, k.data)).collect();
    ensure_eq!(
        got,
        vec![
            (1, Bytes::from("kp:d1")),
            (2, Bytes::from("kp:d2-lr")),
            (3, Bytes::from("kp:d3")),
        ]
    );

    s.add_key_packages(d1.id, vec![key_package(CS, "d1-b", false)])
        .await?;
    s.add_key_packages(d3.id, vec![key_package(CS, "d3-b", false)])
        .await?;
    ensure!(s.revoke_device(&d3.addr).await?, "revocation failed");
    let c = s.claim_key_packages("alice", CS).await?;
    let got: Vec<u32> = c.into_iter().map(|k| k.device_id).collect();
    ensure_eq!(got, vec![1, 2]);
    Ok(())
}

/// Concurrent claims never hand one one-time package out twice, and fall back to the
/// last-resort package only once the one-time packages are all gone.
pub async fn key_packages_concurrent_claims(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let packages: Vec<NewKeyPackage> = (0..20)
        .map(|i| key_package(CS, &format!("a{i}"), false))
        .collect();
    s.add_key_packages(a.id, packages).await?;
    let mut packages: Vec<NewKeyPackage> = (0..5)
        .map(|i| key_package(CS, &format!("b{i}"), false))
        .collect();
    packages.push(key_package(CS, "b-lr", true));
    s.add_key_packages(b.id, packages).await?;

    let mut tasks = Vec::new();
    for i in 0..30 {
        let st = store.clone();
        let handle = if i % 2 == 0 { "alice" } else { "bob" };
        tasks.push(tokio::spawn(async move {
            (handle, st.claim_key_packages(handle, CS).await)
        }));
    }
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    for t in tasks {
        let (handle, r) = t
            .await
            .map_err(|e| Failure(format!("claim task failed: {e}")))?;
        let r = r?;
        ensure!(r.len() <= 1, "one device, several packages: {r:?}");
        let target = if handle == "alice" {
            &mut alice
        } else {
            &mut bob
        };
        target.extend(r.into_iter().map(|k| k.data));
    }
    // 15 claims on alice's 20 one-time packages: all distinct.
    ensure_eq!(alice.len(), 15);
    ensure_eq!(alice.iter().collect::<BTreeSet<_>>().len(), 15);
    // 15 claims on bob's 5 one-time packages + last resort.
    ensure_eq!(bob.len(), 15);
    let lr = bob.iter().filter(|d| **d == "kp:b-lr").count();
    ensure_eq!(lr, 10);
    let one_time: BTreeSet<&Bytes> = bob.iter().filter(|d| **d != "kp:b-lr").collect();
    ensure_eq!(one_time.len(), 5);
    ensure_eq!(s.key_package_stock(a.id, CS).await?.available, 5);
    let st = s.key_package_stock(b.id, CS).await?;
    ensure_eq!((st.available, st.has_last_resort), (0, true));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------

/// A commit at epoch 0 to an unknown group creates it; its old roster is the sender
/// alone, so the commit itself reaches nobody and each Welcome goes to its recipients.
pub async fn delivery_group_creation(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    let carol = register(s, "carol").await?;
    let sub = commit(
        &alice,
        b"g1",
        0,
        &[&alice, &bob, &carol],
        vec![welcome("w-bob", &[&bob]), welcome("w-carol", &[&carol])],
        Some("gi:1"),
    );
    let message_id = sub.message_id;
    let a = accepted(s.submit(sub).await?)?;
    ensure_eq!((a.group_seq, a.epoch, a.duplicate), (1, 1, false));

    let g = s
        .group(b"g1")
        .await?
        .ok_or_else(|| Failure("group not created".into()))?;
    ensure_eq!(g.epoch, 1);
    ensure_eq!(g.last_seq, 1);
    ensure_eq!(
        g.roster,
        vec![addr("alice", 1), addr("bob", 1), addr("carol", 1)]
    );
    let gi = s
        .group_info(b"g1")
        .await?
        .ok_or_else(|| Failure("group info not stored".into()))?;
    ensure_eq!((gi.epoch, gi.data), (1, Bytes::from("gi:1")));

    ensure_eq!(s.pending(alice.id).await?, 0);
    // Added devices get only their Welcome, never the commit.
    for (dev, w) in [(&bob, "w-bob"), (&carol, "w-carol")] {
        let got = fetch_all(s, dev.id).await?;
        ensure_eq!(got.len(), 1);
        let wl = &got[0];
        ensure_eq!(
            (wl.seq, wl.kind, wl.group_seq),
            (1, EnvelopeKind::Welcome, 0)
        );
        ensure_eq!(wl.message_id, message_id);
        ensure_eq!(wl.sender, alice.addr);
        ensure_eq!(wl.group_id, Bytes::from_static(b"g1"));
        ensure_eq!(wl.server_time_ms, NOW);
        ensure_eq!(payload_str(wl), w);
    }
    ensure_eq!(a.deliveries.len(), 2);
    ensure!(
        a.deliveries
            .iter()
            .all(|d| d.envelope.kind == EnvelopeKind::Welcome),
        "the creating commit was delivered: {:?}",
        a.deliveries
    );

    // The deliveries returned are exactly the entries created.
    let mut from_result: Vec<(DeviceId, Envelope)> = a
        .deliveries
        .into_iter()
        .map(|d| (d.device, d.envelope))
        .collect();
    from_result.sort_by_key(|(d, e)| (*d, e.seq));
    let mut fetched = Vec::new();
    for dev in [&alice, &bob, &carol] {
        for e in fetch_all(s, dev.id).await? {
            fetched.push((dev.id, e));
        }
    }
    fetched.sort_by_key(|(d, e)| (*d, e.seq));
    ensure_eq!(from_result, fetched);

    // A group created by a commit with only its creator.
    let solo = accepted(
        s.submit(commit(&alice, b"solo", 0, &[&alice], vec![], None))
            .await?,
    )?;
    ensure_eq!((solo.group_seq, solo.epoch), (1, 1));
    ensure!(
        solo.deliveries.is_empty(),
        "solo commit delivered to someone"
    );
    ensure_eq!(s.group_info(b"solo").await?, None);
    Ok(())
}

/// Anything but a creating commit to an unknown group is refused.
pub async fn delivery_unknown_group(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    ensure_eq!(
        s.submit(application(&alice, b"nope", 0, "hi")).await?,
        SubmitOutcome::UnknownGroup
    );
    let mut proposal = application(&alice, b"nope", 0, "p");
    proposal.kind = SubmitKind::Proposal;
    ensure_eq!(s.submit(proposal).await?, SubmitOutcome::UnknownGroup);
    ensure_eq!(
        s.submit(commit(&alice, b"nope", 3, &[&alice, &bob], vec![], None))
            .await?,
        SubmitOutcome::UnknownGroup
    );
    ensure_eq!(s.group(b"nope").await?, None);
    ensure_eq!(s.group_info(b"nope").await?, None);
    ensure_eq!(s.pending(bob.id).await?, 0);
    Ok(())
}

/// A commit for another epoch is refused with the current epoch and changes nothing.
pub async fn delivery_stale_epoch(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    create_group(s, b"g", &alice, &[&alice, &bob]).await?;
    let before = s.group(b"g").await?;

    for epoch in [0, 2, 7] {
        ensure_eq!(
            s.submit(commit(
                &bob,
                b"g",
                epoch,
                &[&alice, &bob],
                vec![],
                Some("stale")
            ))
            .await?,
            SubmitOutcome::StaleEpoch { current_epoch: 1 }
        );
    }
    ensure_eq!(s.group(b"g").await?, before);
    ensure_eq!(s.pending(alice.id).await?, 0);
    ensure_eq!(s.group_info(b"g").await?.map(|g| g.epoch), Some(1));

    let a = accepted(
        s.submit(commit(&bob, b"g", 1, &[&alice, &bob], vec![], None))
            .await?,
    )?;
    ensure_eq!((a.group_seq, a.epoch), (2, 2));
    // Without a new GroupInfo, the stored one stays (named by its epoch).
    ensure_eq!(s.group_info(b"g").await?.map(|g| g.epoch), Some(1));
    ensure_eq!(
        s.submit(commit(&alice, b"g", 1, &[&alice, &bob], vec![], None))
            .await?,
        SubmitOutcome::StaleEpoch { current_epoch: 2 }
    );
    // Application messages are fenced too: a device added by the last commit could not
    // read one from an earlier epoch.
    ensure_eq!(
        s.submit(application(&alice, b"g", 0, "old epoch app"))
            .await?,
        SubmitOutcome::StaleEpoch { current_epoch: 2 }
    );
    let app = accepted(
        s.submit(application(&alice, b"g", 2, "current epoch app"))
            .await?,
    )?;
    ensure_eq!((app.group_seq, app.epoch), (3, 2));
    // ...unless the sender's group diverged and it says so.
    let mut past = application(&alice, b"g", 1, "diverged app");
    past.past_epoch_ok = true;
    let app = accepted(s.submit(past).await?)?;
    ensure_eq!((app.group_seq, app.epoch), (4, 2));
    Ok(())
}

/// Of several concurrent commits at the same epoch, exactly one wins.
pub async fn delivery_concurrent_commits(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a, &[&a, &b, &c]).await?;

    let mut tasks = Vec::new();
    for i in 0..12 {
        let sender = [&a, &b, &c][i % 3].clone();
        let roster = [a.clone(), b.clone(), c.clone()];
        let st = store.clone();
        tasks.push(tokio::spawn(async move {
            let roster: Vec<&DeviceRecord> = roster.iter().collect();
            st.submit(commit(&sender, b"g", 1, &roster, vec![], Some("gi")))
                .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))??
        {
            SubmitOutcome::Accepted(acc) => {
                winners += 1;
                ensure_eq!((acc.group_seq, acc.epoch, acc.duplicate), (2, 2, false));
            }
            SubmitOutcome::StaleEpoch { current_epoch } => ensure_eq!(current_epoch, 2),
            other => return Err(Failure(format!("unexpected outcome {other:?}"))),
        }
    }
    ensure_eq!(winners, 1);
    let g = s
        .group(b"g")
        .await?
        .ok_or_else(|| Failure("group gone".into()))?;
    ensure_eq!((g.epoch, g.last_seq), (2, 2));
    // The winner's commit reached the two others only.
    let total = s.pending(a.id).await? + s.pending(b.id).await? + s.pending(c.id).await?;
    ensure_eq!(total, 2);
    Ok(())
}

/// A device outside the roster can post nothing.
pub async fn delivery_not_member(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    let mallory = register(s, "mallory").await?;
    create_group(s, b"g", &alice, &[&alice, &bob]).await?;
    let before = s.group(b"g").await?;
    ensure_eq!(
        s.submit(application(&mallory, b"g", 1, "hi")).await?,
        SubmitOutcome::NotMember
    );
    ensure_eq!(
        s.submit(commit(
            &mallory,
            b"g",
            1,
            &[&alice, &bob, &mallory],
            vec![],
            None
        ))
        .await?,
        SubmitOutcome::NotMember
    );
    // Even at a stale epoch, membership is checked first.
    ensure_eq!(
        s.submit(commit(&mallory, b"g", 0, &[&mallory], vec![], None))
            .await?,
        SubmitOutcome::NotMember
    );
    ensure_eq!(s.group(b"g").await?, before);
    ensure_eq!(s.pending(alice.id).await?, 0);
    ensure_eq!(s.pending(bob.id).await?, 0);
    Ok(())
}

/// Another device of a member account (restored from a backup) may join by a commit (an
/// External Commit); it may post nothing else until it is in the roster, and a device of
/// an account without members may not commit at all.
pub async fn delivery_external_commit_by_account_device(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    let mallory = register(s, "mallory").await?;
    create_group(s, b"g", &alice, &[&alice, &bob]).await?;
    let alice2 = link_device(s, "alice").await?;
    ensure_eq!(
        s.submit(application(&alice2, b"g", 1, "too early")).await?,
        SubmitOutcome::NotMember
    );
    ensure_eq!(
        s.submit(commit(
            &mallory,
            b"g",
            1,
            &[&alice, &bob, &mallory],
            vec![],
            None
        ))
        .await?,
        SubmitOutcome::NotMember
    );
    let joined = s
        .submit(commit(
            &alice2,
            b"g",
            1,
            &[&alice, &alice2, &bob],
            vec![],
            None,
        ))
        .await?;
    match joined {
        SubmitOutcome::Accepted(acc) => ensure_eq!((acc.epoch, acc.duplicate), (2, false)),
        other => return Err(Failure(format!("expected Accepted, got {other:?}"))),
    }
    let g = s
        .group(b"g")
        .await?
        .ok_or_else(|| Failure("group gone".into()))?;
    ensure!(g.roster.contains(&alice2.addr), "alice/2 is in the roster");
    // Now a member, it may post, and the others get its commit and message.
    ensure!(
        matches!(
            s.submit(application(&alice2, b"g", 2, "hello")).await?,
            SubmitOutcome::Accepted(_)
        ),
        "alice/2 posts once in the roster"
    );
    ensure_eq!(s.pending(bob.id).await?, 2);
    Ok(())
}

/// A commit naming an unknown device (roster or Welcome) fails and changes nothing,
/// not even the idempotency record.
pub async fn delivery_unknown_roster_device(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    let ghost = DeviceRecord {
        id: DeviceId(u64::MAX / 2),
        addr: addr("ghost", 1),
        device_key: vec![],
        cert_created_at_ms: 0,
        cert_signature: vec![],
        revoked: false,
    };
    let ghost2 = DeviceRecord {
        addr: addr("bob", 2),
        ..ghost.clone()
    };

    // Creating commit: the group is not created.
    match s
        .submit(commit(
            &alice,
            b"new",
            0,
            &[&alice, &ghost],
            vec![],
            Some("gi"),
        ))
        .await
    {
        Err(StoreError::UnknownDevice(a)) => ensure_eq!(a, addr("ghost", 1)),
        other => return Err(Failure(format!("expected UnknownDevice, got {other:?}"))),
    }
    ensure_eq!(s.group(b"new").await?, None);
    ensure_eq!(s.group_info(b"new").await?, None);

    create_group(s, b"g", &alice, &[&alice, &bob]).await?;
    let before = s.group(b"g").await?;
    let gi_before = s.group_info(b"g").await?;
    let bad = commit(
        &alice,
        b"g",
        1,
        &[&alice, &bob, &ghost2],
        vec![],
        Some("gi:2"),
    );
    let retry_id = bad.message_id;
    match s.submit(bad).await {
        Err(StoreError::UnknownDevice(a)) => ensure_eq!(a, addr("bob", 2)),
        other => return Err(Failure(format!("expected UnknownDevice, got {other:?}"))),
    }
    let bad_welcome = commit(
        &alice,
        b"g",
        1,
        &[&alice, &bob],
        vec![welcome("w", &[&ghost])],
        Some("gi:2"),
    );
    match s.submit(bad_welcome).await {
        Err(StoreError::UnknownDevice(a)) => ensure_eq!(a, addr("ghost", 1)),
        other => return Err(Failure(format!("expected UnknownDevice, got {other:?}"))),
    }
    ensure_eq!(s.group(b"g").await?, before);
    ensure_eq!(s.group_info(b"g").await?, gi_before);
    ensure_eq!(s.pending(bob.id).await?, 0);

    // The failed message id was not recorded: a corrected retry is a new message.
    let mut retry = commit(&alice, b"g", 1, &[&alice, &bob], vec![], Some("gi:2"));
    retry.message_id = retry_id;
    let a = accepted(s.submit(retry).await?)?;
    ensure_eq!((a.group_seq, a.epoch, a.duplicate), (2, 2, false));
    ensure_eq!(s.pending(bob.id).await?, 1);
    Ok(())
}

/// Re-submitting an accepted message id returns the original result and changes
/// nothing; ids are scoped per sender.
pub async fn delivery_idempotent(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    create_group(s, b"g", &alice, &[&alice, &bob]).await?;

    let msg = application(&alice, b"g", 1, "once");
    let first = accepted(s.submit(msg.clone()).await?)?;
    ensure_eq!(
        (first.group_seq, first.epoch, first.duplicate),
        (2, 1, false)
    );
    ensure_eq!(first.deliveries.len(), 1);

    let again = accepted(s.submit(msg.clone()).await?)?;
    ensure_eq!(
        again,
        Accepted {
            group_seq: 2,
            epoch: 1,
            duplicate: true,
            deliveries: vec![]
        }
    );
    ensure_eq!(s.pending(bob.id).await?, 1);
    ensure_eq!(s.group(b"g").await?.map(|g| g.last_seq), Some(2));

    // A duplicate is recognised even when its payload differs or the group moved on.
    let cm = commit(&bob, b"g", 1, &[&alice, &bob], vec![], None);
    let c1 = accepted(s.submit(cm.clone()).await?)?;
    ensure_eq!((c1.group_seq, c1.epoch), (3, 2));
    let mut changed = msg.clone();
    changed.payload = Bytes::from_static(b"different");
    let again = accepted(s.submit(changed).await?)?;
    ensure_eq!(
        (again.group_seq, again.epoch, again.duplicate),
        (2, 1, true)
    );
    // A re-sent commit whose epoch is now stale is still a duplicate, not stale.
    let c2 = accepted(s.submit(cm).await?)?;
    ensure_eq!((c2.group_seq, c2.epoch, c2.duplicate), (3, 2, true));
    ensure!(c2.deliveries.is_empty(), "duplicate delivered again");
    ensure_eq!(
        s.group(b"g").await?.map(|g| (g.epoch, g.last_seq)),
        Some((2, 3))
    );
    ensure_eq!(s.pending(alice.id).await?, 1);
    ensure_eq!(s.pending(bob.id).await?, 1);

    // The same id from another sender is another message.
    let mut from_bob = application(&bob, b"g", 2, "bob's");
    from_bob.message_id = msg.message_id;
    let b1 = accepted(s.submit(from_bob).await?)?;
    ensure_eq!((b1.group_seq, b1.duplicate), (4, false));
    Ok(())
}

/// Application messages and proposals go to the roster minus the sender, with
/// consecutive group seqs.
pub async fn delivery_fanout(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a1 = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    let outsider = register(s, "dave").await?;
    create_group(s, b"g", &a1, &[&a1, &a2, &b, &c]).await?;

    let msg = application(&a1, b"g", 1, "hello");
    let r = accepted(s.submit(msg.clone()).await?)?;
    ensure_eq!((r.group_seq, r.epoch), (2, 1));
    let mut recipients: Vec<DeviceId> = r.deliveries.iter().map(|d| d.device).collect();
    recipients.sort();
    let mut expected = vec![a2.id, b.id, c.id];
    expected.sort();
    ensure_eq!(recipients, expected);
    for dev in [&a2, &b, &c] {
        let got = fetch_all(s, dev.id).await?;
        ensure_eq!(got.len(), 1);
        let e = &got[0];
        // Seq 1 (the Welcome) was acknowledged by create_group.
        ensure_eq!(
            (e.seq, e.group_seq, e.kind),
            (2, 2, EnvelopeKind::Application)
        );
        ensure_eq!(e.message_id, msg.message_id);
        ensure_eq!(e.sender, a1.addr);
        ensure_eq!(e.server_time_ms, NOW);
        ensure_eq!(payload_str(e), "hello");
    }
    ensure_eq!(s.pending(a1.id).await?, 0);
    ensure_eq!(s.pending(outsider.id).await?, 0);

    let mut p = application(&b, b"g", 1, "proposal");
    p.kind = SubmitKind::Proposal;
    let r = accepted(s.submit(p).await?)?;
    ensure_eq!(r.group_seq, 3);
    for dev in [&a1, &a2, &c] {
        let got = fetch_all(s, dev.id).await?;
        let last = got
            .last()
            .ok_or_else(|| Failure("nothing delivered".into()))?;
        ensure_eq!((last.kind, last.group_seq), (EnvelopeKind::Proposal, 3));
        ensure_eq!(last.sender, b.addr);
    }
    ensure_eq!(s.pending(b.id).await?, 1);
    let r = accepted(s.submit(application(&c, b"g", 1, "x")).await?)?;
    ensure_eq!(r.group_seq, 4);
    ensure_eq!(s.group(b"g").await?.map(|g| g.last_seq), Some(4));
    Ok(())
}

/// A commit goes to the old roster minus the sender (a removed member learns of its
/// removal); an added device gets only its Welcome. Afterwards only the new roster
/// receives.
pub async fn delivery_commit_fanout_old_and_new(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    let d = register(s, "dave").await?;
    create_group(s, b"g", &a, &[&a, &b, &c]).await?;

    // Remove carol, add dave.
    let r = accepted(
        s.submit(commit(
            &a,
            b"g",
            1,
            &[&a, &b, &d],
            vec![welcome("w-dave", &[&d])],
            Some("gi:2"),
        ))
        .await?,
    )?;
    ensure_eq!((r.group_seq, r.epoch), (2, 2));
    let g = s
        .group(b"g")
        .await?
        .ok_or_else(|| Failure("group gone".into()))?;
    ensure_eq!(
        g.roster,
        vec![addr("alice", 1), addr("bob", 1), addr("dave", 1)]
    );
    ensure_eq!(s.group_info(b"g").await?.map(|g| g.epoch), Some(2));

    let kinds = |v: Vec<Envelope>| v.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    ensure_eq!(kinds(fetch_all(s, a.id).await?), vec![]);
    ensure_eq!(kinds(fetch_all(s, b.id).await?), vec![EnvelopeKind::Commit]);
    ensure_eq!(kinds(fetch_all(s, c.id).await?), vec![EnvelopeKind::Commit]);
    let got = fetch_all(s, d.id).await?;
    ensure_eq!(kinds(got.clone()), vec![EnvelopeKind::Welcome]);
    ensure_eq!(
        (got[0].group_seq, payload_str(&got[0])),
        (0, "w-dave".into())
    );
    let mut delivered: Vec<(DeviceId, EnvelopeKind)> = r
        .deliveries
        .iter()
        .map(|x| (x.device, x.envelope.kind))
        .collect();
    delivered.sort_by_key(|(dev, _)| *dev);
    let mut expected = vec![
        (b.id, EnvelopeKind::Commit),
        (c.id, EnvelopeKind::Commit),
        (d.id, EnvelopeKind::Welcome),
    ];
    expected.sort_by_key(|(dev, _)| *dev);
    ensure_eq!(delivered, expected);

    // Carol is out, dave is in.
    accepted(s.submit(application(&b, b"g", 2, "after")).await?)?;
    ensure_eq!(s.pending(c.id).await?, 1);
    ensure_eq!(s.pending(d.id).await?, 2);
    ensure_eq!(s.pending(a.id).await?, 1);
    ensure_eq!(
        s.submit(application(&c, b"g", 2, "let me in")).await?,
        SubmitOutcome::NotMember
    );
    Ok(())
}

/// A revoked device stays in the roster but receives nothing and loses its mailbox.
pub async fn delivery_revoked_receives_nothing(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b1 = register(s, "bob").await?;
    let b2 = link_device(s, "bob").await?;
    create_group(s, b"g", &a, &[&a, &b1, &b2]).await?;
    accepted(s.submit(application(&a, b"g", 1, "before")).await?)?;
    ensure_eq!(s.pending(b2.id).await?, 1);

    ensure!(s.revoke_device(&b2.addr).await?, "revocation failed");
    ensure_eq!(s.pending(b2.id).await?, 0);
    let r = accepted(s.submit(application(&a, b"g", 1, "after")).await?)?;
    ensure_eq!(
        r.deliveries.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![b1.id]
    );
    ensure_eq!(s.pending(b1.id).await?, 2);
    ensure_eq!(s.pending(b2.id).await?, 0);
    // A commit keeping the revoked device in the roster is accepted; it gets nothing.
    let r = accepted(
        s.submit(commit(&a, b"g", 1, &[&a, &b1, &b2], vec![], None))
            .await?,
    )?;
    ensure_eq!(
        r.deliveries.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![b1.id]
    );
    ensure_eq!(s.pending(b2.id).await?, 0);
    Ok(())
}

/// One body per message, whatever the number of recipients: observable through
/// [`crate::Mailboxes::expire`], which counts bodies.
pub async fn delivery_body_stored_once(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    let d = register(s, "dave").await?;
    create_group(s, b"g", &a, &[&a, &b, &c, &d]).await?;
    // Everything so far is acknowledged, so no body is left.
    ensure_eq!(s.expire(EXPIRES + 1).await?, 0);

    accepted(s.submit(application(&a, b"g", 1, "to three")).await?)?;
    // Two of three acknowledge: the third still reads the full body.
    s.ack(b.id, u64::MAX).await?;
    s.ack(c.id, u64::MAX).await?;
    let got = fetch_all(s, d.id).await?;
    ensure_eq!(got.len(), 1);
    ensure_eq!(payload_str(&got[0]), "to three");

    // A commit with two Welcomes, each to two devices: three more bodies.
    let e = register(s, "erin").await?;
    let f = register(s, "frank").await?;
    accepted(
        s.submit(commit(
            &a,
            b"g",
            1,
            &[&a, &b, &c, &d, &e, &f],
            vec![welcome("w1", &[&e, &f]), welcome("w2", &[&e, &f])],
            None,
        ))
        .await?,
    )?;
    // The commit went to the old roster (bob, carol, dave); erin and frank hold only
    // w1 and w2.
    ensure_eq!(s.pending(b.id).await?, 1);
    ensure_eq!(s.pending(c.id).await?, 1);
    ensure_eq!(s.pending(d.id).await?, 2);
    for dev in [&e, &f] {
        ensure_eq!(
            fetch_all(s, dev.id)
                .await?
                .iter()
                .map(|x| (x.kind, payload_str(x)))
                .collect::<Vec<_>>(),
            vec![
                (EnvelopeKind::Welcome, "w1".to_owned()),
                (EnvelopeKind::Welcome, "w2".to_owned())
            ]
        );
    }
    ensure_eq!(s.expire(EXPIRES + 1).await?, 4);
    for dev in [&a, &b, &c, &d, &e, &f] {
        ensure_eq!(s.pending(dev.id).await?, 0);
    }
    Ok(())
}

/// Many concurrent submitters: every message accepted once, group seqs distinct and
/// contiguous, the receiver's mailbox contiguous.
pub async fn delivery_concurrent_submitters(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let receiver = register(s, "receiver").await?;
    let mut senders = Vec::new();
    for i in 0..4 {
        senders.push(register(s, &format!("sender{i}")).await?);
    }
    let mut members: Vec<&DeviceRecord> = senders.iter().collect();
    members.push(&receiver);
    create_group(s, b"g", &senders[0], &members).await?;

    let mut tasks = Vec::new();
    for sender in senders.clone() {
        let st = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let out = st
                    .submit(application(
                        &sender,
                        b"g",
                        1,
                        &format!("{}:{i}", sender.addr),
                    ))
                    .await;
                seqs.push(out);
            }
            seqs
        }));
    }
    let mut group_seqs = BTreeSet::new();
    for t in tasks {
        for out in t.await.map_err(|e| Failure(format!("task failed: {e}")))? {
            let a = accepted(out?)?;
            ensure!(
                group_seqs.insert(a.group_seq),
                "group seq {} twice",
                a.group_seq
            );
        }
    }
    ensure_eq!(group_seqs, (2..=101).collect::<BTreeSet<u64>>());
    let got = fetch_all(s, receiver.id).await?;
    // Seq 1 (the Welcome) was acknowledged by create_group.
    ensure_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (2..=101).collect::<Vec<u64>>()
    );
    // Each sender's own messages arrive in the order it sent them.
    let mut per_sender: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &got {
        let body = payload_str(e);
        let (who, i) = body
            .rsplit_once(':')
            .ok_or_else(|| Failure("bad payload".into()))?;
        let i: u64 = i.parse().map_err(|_| Failure("bad payload".into()))?;
        per_sender.entry(who.to_owned()).or_default().push(i);
    }
    for (who, order) in per_sender {
        ensure_eq!(
            (who.as_str(), order),
            (who.as_str(), (0..25).collect::<Vec<u64>>())
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mailboxes
// ---------------------------------------------------------------------------------------

/// A device's seqs start at 1, are contiguous across groups and senders, and continue
/// after acknowledgements.
pub async fn mailbox_seq_contiguous(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g1", &a, &[&a, &c]).await?;
    create_group(s, b"g2", &b, &[&b, &c]).await?;
    // create_group acknowledged carol's two Welcomes (seqs 1..=2); the creating
    // commits never reached her.
    accepted(s.submit(application(&a, b"g1", 1, "1")).await?)?;
    accepted(s.submit(application(&b, b"g2", 1, "2")).await?)?;
    accepted(s.submit(application(&a, b"g1", 1, "3")).await?)?;
    let got = fetch_all(s, c.id).await?;
    ensure_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    ensure_eq!(
        got.iter().map(payload_str).collect::<Vec<_>>(),
        vec!["1", "2", "3"]
    );
    ensure_eq!(s.ack(c.id, 5).await?, 3);
    let r = accepted(s.submit(application(&b, b"g2", 1, "4")).await?)?;
    ensure_eq!(r.deliveries.len(), 1);
    ensure_eq!(r.deliveries[0].envelope.seq, 6);
    ensure_eq!(
        fetch_all(s, c.id)
            .await?
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![6]
    );
    // Seqs are per device: alice's mailbox has its own numbering.
    let r = accepted(s.submit(application(&c, b"g1", 1, "to alice")).await?)?;
    ensure_eq!(r.deliveries[0].device, a.id);
    ensure_eq!(r.deliveries[0].envelope.seq, 1);
    Ok(())
}

/// Fetch honours `after_seq` and `limit` and returns entries in seq order.
pub async fn mailbox_fetch_paging(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    create_group(s, b"g", &a, &[&a, &b]).await?;
    for i in 0..10 {
        accepted(s.submit(application(&a, b"g", 1, &format!("m{i}"))).await?)?;
    }
    // bob's seq 1 (the Welcome) was acknowledged by create_group.
    let seqs = |v: &[Envelope]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let all = s.fetch(b.id, 0, 100).await?;
    ensure_eq!(seqs(&all), (2..=11).collect::<Vec<u64>>());
    ensure_eq!(payload_str(&all[0]), "m0");
    ensure_eq!(seqs(&s.fetch(b.id, 0, 3).await?), vec![2, 3, 4]);
    ensure_eq!(seqs(&s.fetch(b.id, 5, 3).await?), vec![6, 7, 8]);
    ensure_eq!(seqs(&s.fetch(b.id, 9, 100).await?), vec![10, 11]);
    ensure_eq!(seqs(&s.fetch(b.id, 11, 100).await?), Vec::<u64>::new());
    ensure_eq!(seqs(&s.fetch(b.id, 0, 0).await?), Vec::<u64>::new());
    ensure_eq!(
        seqs(&s.fetch(DeviceId(u64::MAX / 2), 0, 10).await?),
        Vec::<u64>::new()
    );
    // Fetch does not consume.
    ensure_eq!(s.pending(b.id).await?, 10);
    ensure_eq!(all, s.fetch(b.id, 0, 100).await?);
    Ok(())
}

/// Ack is cumulative, reports what it removed and is idempotent.
pub async fn mailbox_ack(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    create_group(s, b"g", &a, &[&a, &b]).await?;
    for i in 0..6 {
        accepted(s.submit(application(&a, b"g", 1, &format!("m{i}"))).await?)?;
    }
    // bob holds seqs 2..=7 (his Welcome, seq 1, was acknowledged by create_group).
    ensure_eq!(s.pending(b.id).await?, 6);
    ensure_eq!(s.ack(b.id, 1).await?, 0);
    ensure_eq!(s.ack(b.id, 4).await?, 3);
    ensure_eq!(s.pending(b.id).await?, 3);
    ensure_eq!(s.ack(b.id, 4).await?, 0);
    ensure_eq!(s.ack(b.id, 3).await?, 0);
    let left = fetch_all(s, b.id).await?;
    ensure_eq!(
        left.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    ensure_eq!(
        left.iter().map(payload_str).collect::<Vec<_>>(),
        vec!["m3", "m4", "m5"]
    );
    // Acknowledging beyond the last entry removes everything, not future entries.
    ensure_eq!(s.ack(b.id, 1000).await?, 3);
    ensure_eq!(s.pending(b.id).await?, 0);
    let r = accepted(s.submit(application(&a, b"g", 1, "later")).await?)?;
    ensure_eq!(r.deliveries[0].envelope.seq, 8);
    ensure_eq!(s.pending(b.id).await?, 1);
    // Another device's ack touches only its own mailbox.
    ensure_eq!(s.ack(a.id, u64::MAX).await?, 0);
    ensure_eq!(s.ack(DeviceId(u64::MAX / 2), 10).await?, 0);
    ensure_eq!(s.pending(b.id).await?, 1);
    Ok(())
}

/// A body is deleted once every mailbox that referred to it has acknowledged it.
pub async fn mailbox_ack_deletes_unreferenced_bodies(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a, &[&a, &b, &c]).await?;
    accepted(s.submit(application(&a, b"g", 1, "m1")).await?)?;
    accepted(s.submit(application(&a, b"g", 1, "m2")).await?)?;
    // Both bodies are still referenced by carol after bob acknowledges.
    s.ack(b.id, u64::MAX).await?;
    // carol acknowledges only the first.
    let first = fetch_all(s, c.id).await?;
    ensure_eq!(first.len(), 2);
    s.ack(c.id, first[0].seq).await?;
    // Only m2 is left as a body: expiring everything removes exactly one.
    ensure_eq!(s.expire(EXPIRES + 1).await?, 1);
    ensure_eq!(s.pending(c.id).await?, 0);
    ensure_eq!(s.expire(EXPIRES + 1).await?, 0);
    Ok(())
}

/// Entries, bodies and idempotency records go when their retention ends; seqs are not
/// reused.
pub async fn mailbox_expiry(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    create_group(s, b"g", &a, &[&a, &b]).await?;

    let mut short = application(&a, b"g", 1, "short");
    short.expires_at_ms = NOW + 10;
    let mut long = application(&a, b"g", 1, "long");
    long.expires_at_ms = NOW + 100;
    let short_id = short.message_id;
    accepted(s.submit(short.clone()).await?)?;
    accepted(s.submit(long.clone()).await?)?;
    ensure_eq!(s.pending(b.id).await?, 2);

    ensure_eq!(s.expire(NOW + 5).await?, 0);
    ensure_eq!(s.pending(b.id).await?, 2);
    ensure_eq!(s.expire(NOW + 50).await?, 1);
    let left = fetch_all(s, b.id).await?;
    ensure_eq!(left.len(), 1);
    ensure_eq!(payload_str(&left[0]), "long");
    // bob's Welcome was seq 1, "short" seq 2.
    ensure_eq!(left[0].seq, 3);

    // The idempotency record of the expired message is gone: the id is new again.
    let mut again = application(&a, b"g", 1, "short again");
    again.message_id = short_id;
    let r = accepted(s.submit(again).await?)?;
    ensure_eq!((r.duplicate, r.group_seq), (false, 4));
    ensure_eq!(r.deliveries[0].envelope.seq, 4);
    // The long one's record is kept.
    let dup = accepted(s.submit(long).await?)?;
    ensure_eq!((dup.duplicate, dup.group_seq), (true, 3));

    ensure_eq!(s.expire(EXPIRES + 1).await?, 2);
    ensure_eq!(s.pending(b.id).await?, 0);
    let r = accepted(s.submit(application(&a, b"g", 1, "next")).await?)?;
    ensure_eq!(r.deliveries[0].envelope.seq, 5);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------

/// What [`persistence_write`] left in the store.
#[derive(Debug, Clone)]
pub struct Written {
    /// alice/1.
    pub alice: DeviceRecord,
    /// bob/1.
    pub bob: DeviceRecord,
    /// bob's mailbox (seqs 2..=4 after acknowledging his Welcome, seq 1); alice's is
    /// empty after acknowledging seq 1.
    pub bob_mailbox: Vec<Envelope>,
    /// An accepted application message, to re-submit as a duplicate.
    pub sent: Submission,
    /// Its outcome.
    pub sent_outcome: Accepted,
    /// The key directory change seq consumed by the stored epoch 1 (every change
    /// written so far: the queue is empty at reopen).
    pub directory_consumed: u64,
}

/// Fills a fresh store with accounts, an invite, key packages, a group and mailboxes.
/// Reopen the store, then call [`persistence_verify`].
pub async fn persistence_write(store: Arc<dyn Store>) -> Result<Written, Failure> {
    let s = &*store;
    let alice = register(s, "alice").await?;
    let bob = register(s, "bob").await?;
    s.create_invite("kept", NOW + 1000).await?;
    s.add_key_packages(
        bob.id,
        vec![
            key_package(CS, "bob-1", false),
            key_package(CS, "bob-lr", true),
        ],
    )
    .await?;
    accepted(
        s.submit(commit(
            &alice,
            b"g",
            0,
            &[&alice, &bob],
            vec![welcome("w", &[&bob])],
            Some("gi:1"),
        ))
        .await?,
    )?;
    // bob got only the Welcome (seq 1), not the creating commit.
    ensure_eq!(
        fetch_all(s, bob.id)
            .await?
            .iter()
            .map(|e| (e.seq, e.kind))
            .collect::<Vec<_>>(),
        vec![(1, EnvelopeKind::Welcome)]
    );
    ensure_eq!(s.ack(bob.id, 1).await?, 1);
    // alice's mailbox is emptied by an ack before the store is reopened.
    accepted(s.submit(application(&bob, b"g", 1, "from bob")).await?)?;
    ensure_eq!(s.ack(alice.id, 1).await?, 1);
    let mut sent = None;
    for i in 0..3 {
        let m = application(&alice, b"g", 1, &format!("p{i}"));
        let a = accepted(s.submit(m.clone()).await?)?;
        sent = Some((m, a));
    }
    let (sent, sent_outcome) = sent.ok_or_else(|| Failure("nothing sent".into()))?;
    let bob_mailbox = fetch_all(s, bob.id).await?;
    ensure_eq!(
        bob_mailbox.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    // The key directory: its secret, epoch 1 consuming both registrations.
    ensure_eq!(
        s.directory_secret(Bytes::from_static(b"persisted-secret"))
            .await?,
        Bytes::from_static(b"persisted-secret")
    );
    let changes = s.directory_changes(10).await?;
    ensure_eq!(change_handles(&changes), vec!["alice", "bob"]);
    let directory_consumed = changes.last().map_or(0, |c| c.seq);
    ensure!(
        s.append_directory_epoch(directory_epoch(1), directory_consumed)
            .await?,
        "epoch 1 refused"
    );
    ensure_eq!(s.directory_changes(10).await?, vec![]);
    Ok(Written {
        alice,
        bob,
        bob_mailbox,
        sent,
        sent_outcome,
        directory_consumed,
    })
}

/// Checks, on the reopened store, everything [`persistence_write`] wrote, and that
/// counters continue where they were.
pub async fn persistence_verify(store: Arc<dyn Store>, w: Written) -> CaseResult {
    let s = &*store;
    ensure_eq!(s.device(&w.alice.addr).await?, Some(w.alice.clone()));
    ensure_eq!(
        s.account("bob").await?.map(|a| a.devices),
        Some(vec![w.bob.clone()])
    );
    ensure_eq!(fetch_all(s, w.bob.id).await?, w.bob_mailbox);
    let g = s
        .group(b"g")
        .await?
        .ok_or_else(|| Failure("group lost".into()))?;
    ensure_eq!((g.epoch, g.last_seq), (1, 5));
    ensure_eq!(g.roster, vec![w.alice.addr.clone(), w.bob.addr.clone()]);
    ensure_eq!(
        s.group_info(b"g").await?.map(|g| (g.epoch, g.data)),
        Some((1, Bytes::from("gi:1")))
    );
    let st = s.key_package_stock(w.bob.id, CS).await?;
    ensure_eq!((st.available, st.has_last_resort), (1, true));

    // Idempotency survives.
    let dup = accepted(s.submit(w.sent.clone()).await?)?;
    ensure_eq!(
        (dup.group_seq, dup.epoch, dup.duplicate),
        (w.sent_outcome.group_seq, 1, true)
    );
    // Counters continue: group seq 6, bob's next seq 5.
    let r = accepted(
        s.submit(application(&w.alice, b"g", 1, "after reopen"))
            .await?,
    )?;
    ensure_eq!(r.group_seq, 6);
    ensure_eq!(r.deliveries[0].envelope.seq, 5);
    // alice's mailbox was empty at reopen: her acknowledged seq 1 is not reused.
    ensure_eq!(s.pending(w.alice.id).await?, 0);
    let r = accepted(s.submit(application(&w.bob, b"g", 1, "to alice")).await?)?;
    ensure_eq!((r.group_seq, r.deliveries[0].envelope.seq), (7, 2));
    // Epoch fencing survives.
    ensure_eq!(
        s.submit(commit(&w.bob, b"g", 0, &[&w.alice, &w.bob], vec![], None))
            .await?,
        SubmitOutcome::StaleEpoch { current_epoch: 1 }
    );
    // The invite is still usable once.
    let mut n = new_account("carol");
    n.invite = Some("kept".into());
    s.create_account(n).await?;
    // The key directory: the secret stays, the log continues, change seqs are not
    // reused.
    ensure_eq!(
        s.directory_secret(Bytes::from_static(b"other")).await?,
        Bytes::from_static(b"persisted-secret")
    );
    ensure_eq!(s.directory_epochs(0, 10).await?, vec![directory_epoch(1)]);
    let changes = s.directory_changes(10).await?;
    ensure_eq!(change_handles(&changes), vec!["carol"]);
    ensure!(
        changes[0].seq > w.directory_consumed,
        "change seq {} reused (consumed through {})",
        changes[0].seq,
        w.directory_consumed
    );
    ensure!(
        !s.append_directory_epoch(directory_epoch(1), 0).await?,
        "epoch 1 stored twice"
    );
    ensure!(
        s.append_directory_epoch(directory_epoch(2), 0).await?,
        "epoch 2 refused"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Controls: blocks, retraction, disappearing messages, ephemeral audience
// ---------------------------------------------------------------------------------------

/// A block stops the blocked account's application messages and Welcomes to the
/// blocker's devices, not its commits; unblocking restores delivery.
pub async fn controls_block_stops_messages_and_welcomes(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a, &[&a, &b, &c]).await?;
    ensure!(
        matches!(
            s.set_block("bob", "bob", true, NOW).await,
            Err(StoreError::Invalid(_))
        ),
        "blocking oneself must be refused"
    );
    ensure!(
        s.set_block("bob", "alice", true, NOW).await?,
        "block not recorded"
    );
    ensure!(
        !s.set_block("bob", "alice", true, NOW).await?,
        "second block changed something"
    );
    ensure_eq!(s.blocked_by("bob").await?, vec!["alice".to_string()]);
    ensure_eq!(s.blocked_by("carol").await?, Vec::<String>::new());

    let r = accepted(
        s.submit(application(&a, b"g", 1, "hidden from bob"))
            .await?,
    )?;
    ensure_eq!(
        r.deliveries.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![c.id]
    );
    ensure_eq!(s.pending(b.id).await?, 0);
    // bob still hears carol, and alice hears bob.
    accepted(s.submit(application(&c, b"g", 1, "carol")).await?)?;
    accepted(s.submit(application(&b, b"g", 1, "bob")).await?)?;
    ensure_eq!(s.pending(b.id).await?, 1);
    ensure_eq!(s.pending(a.id).await?, 2);
    // Commits still reach bob (the group stays consistent).
    let r = accepted(
        s.submit(commit(&a, b"g", 1, &[&a, &b, &c], vec![], None))
            .await?,
    )?;
    ensure!(
        r.deliveries.iter().any(|d| d.device == b.id),
        "a blocked account's commit must still reach the blocker"
    );
    // A Welcome from alice into a new group is not queued for bob.
    let r = accepted(
        s.submit(commit(
            &a,
            b"g2",
            0,
            &[&a, &b, &c],
            vec![welcome("w2", &[&b, &c])],
            None,
        ))
        .await?,
    )?;
    ensure_eq!(
        r.deliveries.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![c.id]
    );
    // Unblocked: delivered again.
    ensure!(
        s.set_block("bob", "alice", false, NOW).await?,
        "unblock not recorded"
    );
    ensure_eq!(s.blocked_by("bob").await?, Vec::<String>::new());
    let r = accepted(s.submit(application(&a, b"g", 2, "seen by bob")).await?)?;
    ensure!(
        r.deliveries.iter().any(|d| d.device == b.id),
        "unblocked account's message did not reach bob"
    );
    Ok(())
}

/// The audience of an ephemeral signal: the other roster devices, without revoked ones
/// and without the accounts that blocked the sender.
pub async fn controls_relay_audience(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    let d = register(s, "dave").await?;
    let c2 = link_device(s, "carol").await?;
    create_group(s, b"g", &a, &[&a, &b, &c, &c2]).await?;
    let mut expected = vec![b.id, c.id, c2.id];
    expected.sort();
    ensure_eq!(
        s.relay_audience(a.id, b"g").await?,
        RelayAudience::Devices(expected)
    );
    s.set_block("bob", "alice", true, NOW).await?;
    s.revoke_device(&c2.addr).await?;
    ensure_eq!(
        s.relay_audience(a.id, b"g").await?,
        RelayAudience::Devices(vec![c.id])
    );
    ensure_eq!(
        s.relay_audience(d.id, b"g").await?,
        RelayAudience::NotMember
    );
    ensure_eq!(
        s.relay_audience(a.id, b"nope").await?,
        RelayAudience::UnknownGroup
    );
    Ok(())
}

/// Retraction removes the still-queued copies of the account's own message (from any of
/// its devices), never another account's; seqs are not reused; the id stays a duplicate.
pub async fn controls_retract(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a, &[&a, &a2, &b, &c]).await?;
    let m = application(&a, b"g", 1, "regret");
    accepted(s.submit(m.clone()).await?)?;
    let keep = application(&a, b"g", 1, "keep");
    accepted(s.submit(keep.clone()).await?)?;
    // bob fetched and acknowledged everything; carol and alice/2 did not.
    drain(s, b.id).await?;
    // Another account cannot retract it.
    ensure_eq!(s.retract(b.id, b"g", m.message_id).await?, 0);
    ensure_eq!(s.retract(c.id, b"g", m.message_id).await?, 0);
    ensure_eq!(s.pending(c.id).await?, 2);
    // Unknown ids and groups remove nothing.
    ensure_eq!(s.retract(a.id, b"g", fresh_message_id()).await?, 0);
    ensure_eq!(s.retract(a.id, b"nope", m.message_id).await?, 0);
    // alice's other device may (carol's copy and alice/2's own copy).
    ensure_eq!(s.retract(a2.id, b"g", m.message_id).await?, 2);
    let left = fetch_all(s, c.id).await?;
    ensure_eq!(
        left.iter().map(payload_str).collect::<Vec<_>>(),
        vec!["keep"]
    );
    ensure_eq!(s.retract(a.id, b"g", m.message_id).await?, 0);
    // Re-submitting is still a duplicate: nothing is queued again.
    let dup = accepted(s.submit(m).await?)?;
    ensure!(
        dup.duplicate && dup.deliveries.is_empty(),
        "retracted id resent: {dup:?}"
    );
    // Retracting the last entry of a mailbox does not let its seq be reused.
    let last = accepted(s.submit(application(&a, b"g", 1, "last")).await?)?;
    let carol_seq = last
        .deliveries
        .iter()
        .find(|d| d.device == c.id)
        .map(|d| d.envelope.seq)
        .ok_or_else(|| Failure("no delivery to carol".into()))?;
    s.ack(c.id, carol_seq - 1).await?;
    let last_id = last.deliveries[0].envelope.message_id;
    ensure_eq!(s.retract(a.id, b"g", last_id).await?, 3);
    ensure_eq!(s.pending(c.id).await?, 0);
    let next = accepted(s.submit(application(&a, b"g", 1, "next")).await?)?;
    let next_seq = next
        .deliveries
        .iter()
        .find(|d| d.device == c.id)
        .map(|d| d.envelope.seq)
        .ok_or_else(|| Failure("no delivery to carol".into()))?;
    ensure_eq!(next_seq, carol_seq + 1);
    // The body was dropped with its last reference: only "keep" and "next" remain.
    ensure_eq!(s.expire(EXPIRES + 1).await?, 2);
    Ok(())
}

/// Disappearing submissions go at their expiry, queued copies and body; others stay.
pub async fn controls_purge_disappearing(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a, &[&a, &b, &c]).await?;
    let mut short = application(&a, b"g", 1, "poof");
    short.expires_at_ms = NOW + 5_000;
    short.disappearing = true;
    let mut later = application(&a, b"g", 1, "poof later");
    later.expires_at_ms = NOW + 60_000;
    later.disappearing = true;
    accepted(s.submit(short).await?)?;
    accepted(s.submit(later).await?)?;
    accepted(s.submit(application(&a, b"g", 1, "stays")).await?)?;
    // bob fetches and acknowledges everything at once; carol nothing.
    drain(s, b.id).await?;
    ensure_eq!(s.purge_disappearing(NOW + 1_000).await?, 0);
    ensure_eq!(s.pending(c.id).await?, 3);
    ensure_eq!(s.purge_disappearing(NOW + 5_001).await?, 1);
    ensure_eq!(
        fetch_all(s, c.id)
            .await?
            .iter()
            .map(payload_str)
            .collect::<Vec<_>>(),
        vec!["poof later", "stays"]
    );
    // Purging again finds nothing more before its time.
    ensure_eq!(s.purge_disappearing(NOW + 5_002).await?, 0);
    ensure_eq!(s.purge_disappearing(NOW + 60_001).await?, 1);
    let left = fetch_all(s, c.id).await?;
    ensure_eq!(
        left.iter().map(payload_str).collect::<Vec<_>>(),
        vec!["stays"]
    );
    // Seqs are not reused.
    let r = accepted(s.submit(application(&a, b"g", 1, "after")).await?)?;
    let seq = r
        .deliveries
        .iter()
        .find(|d| d.device == c.id)
        .map(|d| d.envelope.seq)
        .ok_or_else(|| Failure("no delivery to carol".into()))?;
    ensure!(seq > left[0].seq, "seq {seq} reused");
    // Only the non-disappearing bodies are left.
    ensure_eq!(s.expire(EXPIRES + 1).await?, 2);
    Ok(())
}

/// Reports are stored whole, listed in filing order from a cursor, and closed once.
pub async fn controls_reports(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    ensure!(
        s.reports(0, 10).await?.is_empty(),
        "reports before any was filed"
    );
    let report =
        |reporter: &str, reported: &str, reason: &str, evidence: &[u8], at: u64| crate::NewReport {
            reporter: reporter.into(),
            reported: reported.into(),
            reason: reason.into(),
            evidence: evidence.to_vec(),
            at_ms: at,
        };
    let first = report("alice", "mallory", "spam", b"\x00evidence\xff", NOW);
    let second = report("bob", "mallory", "", b"", NOW + 1);
    let third = report("carol", "eve", "threats", &[7u8; 70_000], NOW + 2);
    let a = s.file_report(first.clone()).await?;
    let b = s.file_report(second.clone()).await?;
    let c = s.file_report(third.clone()).await?;
    ensure!(a < b && b < c, "ids must increase: {a}, {b}, {c}");
    let all = s.reports(0, 10).await?;
    ensure_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a, b, c]);
    ensure!(
        all[0].report == first && all[1].report == second && all[2].report == third,
        "a report came back changed"
    );
    // Paging: a cursor and a limit.
    let page = s.reports(a, 1).await?;
    ensure_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b]);
    ensure!(s.close_report(b).await?, "closing an open report");
    ensure!(!s.close_report(b).await?, "closing it twice");
    ensure!(
        !s.close_report(c + 1000).await?,
        "closing an unknown report"
    );
    ensure_eq!(
        s.reports(0, 10)
            .await?
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![a, c]
    );
    // Ids are not reused after a close.
    let d = s.file_report(second).await?;
    ensure!(d > c, "id {d} reused");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Blobs (media metadata)
// ---------------------------------------------------------------------------------------

use crate::{
    BlobId, BlobPart, BlobReader, BlobRecord, BlobSweep, CreateBlobOutcome, NewBlob, PartOutcome,
};

/// A blob id made of one repeated byte.
pub fn blob_id(n: u8) -> BlobId {
    BlobId([n; 32])
}

/// A blob of `size` bytes in `part_size`-byte parts for `group`, created by `uploader`
/// at [`NOW`], expiring at [`EXPIRES`], under a quota of 1 GiB.
pub fn new_blob(
    id: BlobId,
    uploader: &DeviceRecord,
    group: &[u8],
    size: u64,
    part_size: u32,
) -> NewBlob {
    NewBlob {
        id,
        uploader: uploader.id,
        group_id: Bytes::copy_from_slice(group),
        size,
        part_size,
        quota_bytes: 1 << 30,
        now_ms: NOW,
        expires_at_ms: EXPIRES,
    }
}

/// A part record whose hash is derived from `tag`.
pub fn blob_part(index: u32, len: u32, tag: u8) -> BlobPart {
    BlobPart {
        index,
        len,
        sha256: [tag; 32],
    }
}

/// The outcome as the created record, or a failure naming what came instead.
pub fn created(outcome: CreateBlobOutcome) -> Result<BlobRecord, Failure> {
    match outcome {
        CreateBlobOutcome::Created(b) => Ok(b),
        other => Err(Failure(format!("expected Created, got {other:?}"))),
    }
}

/// Records every part of `blob` (tag 1) at `now_ms`.
pub async fn store_all_parts(s: &dyn Store, blob: &BlobRecord, now_ms: u64) -> CaseResult {
    for index in 0..blob.part_count() {
        let len = blob
            .part_len(index)
            .ok_or_else(|| Failure(format!("no part {index}")))?;
        let out = s
            .record_blob_part(&blob.id, blob_part(index, len, 1), now_ms)
            .await?;
        ensure!(
            matches!(out, PartOutcome::Stored(_)),
            "part {index}: {out:?}"
        );
    }
    Ok(())
}

/// Creation checks the roster; readers are the roster at creation plus the uploading
/// account's devices; nobody else may read the blob.
pub async fn blobs_create_and_readers(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a1 = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a1, &[&a1, &b]).await?;

    // Not in the roster, or no such group: NotMember, nothing created.
    ensure_eq!(
        s.create_blob(new_blob(blob_id(1), &c, b"g", 10, 4)).await?,
        CreateBlobOutcome::NotMember
    );
    ensure_eq!(
        s.create_blob(new_blob(blob_id(1), &a2, b"g", 10, 4))
            .await?,
        CreateBlobOutcome::NotMember
    );
    ensure_eq!(
        s.create_blob(new_blob(blob_id(1), &a1, b"nope", 10, 4))
            .await?,
        CreateBlobOutcome::NotMember
    );
    ensure_eq!(s.blob(&blob_id(1)).await?, None);

    let blob = created(
        s.create_blob(new_blob(blob_id(1), &a1, b"g", 10, 4))
            .await?,
    )?;
    ensure_eq!(blob.id, blob_id(1));
    ensure_eq!(blob.uploader, a1.addr);
    ensure_eq!(blob.account(), "alice");
    ensure_eq!(blob.group_id, Bytes::from_static(b"g"));
    ensure_eq!((blob.size, blob.part_size, blob.part_count()), (10, 4, 3));
    ensure_eq!((blob.parts_stored, blob.stored_bytes), (0, 0));
    ensure_eq!((blob.completed_at_ms, blob.fetched_at_ms), (None, None));
    ensure_eq!((blob.created_at_ms, blob.expires_at_ms), (NOW, EXPIRES));
    ensure_eq!(s.blob(&blob_id(1)).await?, Some(blob.clone()));
    ensure_eq!(s.blob_parts(&blob_id(1)).await?, vec![]);
    // The same id again is refused.
    ensure!(
        matches!(
            s.create_blob(new_blob(blob_id(1), &b, b"g", 1, 4)).await,
            Err(StoreError::Invalid(_))
        ),
        "a second blob with the same id was accepted"
    );
    ensure!(
        matches!(
            s.create_blob(new_blob(blob_id(2), &b, b"g", 1, 0)).await,
            Err(StoreError::Invalid(_))
        ),
        "part size 0 was accepted"
    );

    let readers = |devs: &[(&DeviceRecord, Option<u64>)]| -> Vec<BlobReader> {
        devs.iter()
            .map(|(d, f)| BlobReader {
                device: d.addr.clone(),
                fetched_at_ms: *f,
            })
            .collect()
    };
    ensure_eq!(
        s.blob_readers(&blob_id(1)).await?,
        readers(&[(&a1, None), (&a2, None), (&b, None)])
    );
    for d in [&a1, &a2, &b] {
        ensure_eq!(
            s.readable_blob(&blob_id(1), d.id).await?,
            Some(blob.clone())
        );
    }
    ensure_eq!(s.readable_blob(&blob_id(1), c.id).await?, None);
    ensure_eq!(s.readable_blob(&blob_id(9), b.id).await?, None);

    // The roster at creation counts: carol added later is no reader of this blob, but
    // of a new one.
    accepted(
        s.submit(commit(
            &a1,
            b"g",
            1,
            &[&a1, &b, &c],
            vec![welcome("w", &[&c])],
            None,
        ))
        .await?,
    )?;
    ensure_eq!(s.readable_blob(&blob_id(1), c.id).await?, None);
    created(s.create_blob(new_blob(blob_id(3), &c, b"g", 10, 4)).await?)?;
    ensure!(
        s.readable_blob(&blob_id(3), b.id).await?.is_some(),
        "bob cannot read carol's blob"
    );
    // alice/2 is not in the roster, but a device of a reader's account (alice/1): it may
    // read what alice/1 may (a linked device's history).
    ensure!(
        s.readable_blob(&blob_id(3), a2.id).await?.is_some(),
        "another device of a reader's account cannot read"
    );
    // So may a device linked to bob's account after blob 1 was made, until it is revoked;
    // a device of an account that is no reader may not.
    let b2 = s
        .add_device("bob", keyed_device("bob-later"))
        .await?
        .ok_or_else(|| Failure("bob has no account".into()))?;
    ensure!(
        s.readable_blob(&blob_id(1), b2.id).await?.is_some(),
        "bob's later device cannot read a blob bob's first device may"
    );
    ensure!(s.revoke_device(&b2.addr).await?, "bob/2 not revoked");
    ensure_eq!(s.readable_blob(&blob_id(1), b2.id).await?, None);
    let d = register(s, "dave").await?;
    ensure_eq!(s.readable_blob(&blob_id(1), d.id).await?, None);
    Ok(())
}

/// Parts: recorded once, re-recorded identically without change, refused with other
/// bytes or a wrong index or length; the last one completes the blob.
pub async fn blobs_parts_and_completion(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    create_group(s, b"g", &a, &[&a]).await?;
    let id = blob_id(1);
    created(s.create_blob(new_blob(id, &a, b"g", 10, 4)).await?)?;

    let b = match s.record_blob_part(&id, blob_part(1, 4, 1), NOW + 1).await? {
        PartOutcome::Stored(b) => b,
        other => return Err(Failure(format!("expected Stored, got {other:?}"))),
    };
    ensure_eq!(
        (b.parts_stored, b.stored_bytes, b.completed_at_ms),
        (1, 4, None)
    );
    ensure!(
        matches!(
            s.record_blob_part(&id, blob_part(1, 4, 1), NOW + 2).await?,
            PartOutcome::AlreadyStored(ref b) if b.parts_stored == 1
        ),
        "identical part not recognised"
    );
    ensure_eq!(
        s.record_blob_part(&id, blob_part(1, 4, 2), NOW + 2).await?,
        PartOutcome::Conflict
    );
    for bad in [blob_part(3, 2, 1), blob_part(2, 4, 1), blob_part(0, 3, 1)] {
        ensure!(
            matches!(
                s.record_blob_part(&id, bad, NOW + 2).await,
                Err(StoreError::Invalid(_))
            ),
            "bad part {bad:?} accepted"
        );
    }
    ensure_eq!(
        s.record_blob_part(&blob_id(7), blob_part(0, 4, 1), NOW)
            .await?,
        PartOutcome::UnknownBlob
    );
    ensure!(
        matches!(
            s.record_blob_part(&id, blob_part(2, 2, 1), NOW + 3).await?,
            PartOutcome::Stored(_)
        ),
        "last part not stored"
    );
    let b = match s.record_blob_part(&id, blob_part(0, 4, 5), NOW + 4).await? {
        PartOutcome::Stored(b) => b,
        other => return Err(Failure(format!("expected Stored, got {other:?}"))),
    };
    ensure_eq!((b.parts_stored, b.stored_bytes), (3, 10));
    ensure_eq!(b.completed_at_ms, Some(NOW + 4));
    ensure!(b.complete(), "blob not complete");
    ensure_eq!(
        s.blob_parts(&id).await?,
        vec![blob_part(0, 4, 5), blob_part(1, 4, 1), blob_part(2, 2, 1)]
    );

    // A blob of size 0 has no parts and is complete at once; with no reader besides
    // the uploader it counts as fetched too.
    let empty = created(s.create_blob(new_blob(blob_id(2), &a, b"g", 0, 4)).await?)?;
    ensure_eq!(
        (
            empty.part_count(),
            empty.completed_at_ms,
            empty.fetched_at_ms
        ),
        (0, Some(NOW), Some(NOW))
    );
    ensure!(
        matches!(
            s.record_blob_part(&blob_id(2), blob_part(0, 0, 1), NOW)
                .await,
            Err(StoreError::Invalid(_))
        ),
        "a part of an empty blob was accepted"
    );
    Ok(())
}

/// The quota counts the account's unexpired blobs that are not being deleted, at
/// creation, per account.
pub async fn blobs_quota(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a1 = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let b = register(s, "bob").await?;
    create_group(s, b"g", &a1, &[&a1, &a2, &b]).await?;
    let with_quota = |id: u8, d: &DeviceRecord, size: u64, expires: u64| {
        let mut n = new_blob(blob_id(id), d, b"g", size, 4);
        n.quota_bytes = 100;
        n.expires_at_ms = expires;
        n
    };
    created(s.create_blob(with_quota(1, &a1, 60, EXPIRES)).await?)?;
    // The account's other device shares the quota.
    ensure_eq!(
        s.create_blob(with_quota(2, &a2, 50, EXPIRES)).await?,
        CreateBlobOutcome::QuotaExceeded {
            used: 60,
            quota: 100
        }
    );
    ensure_eq!(s.blob(&blob_id(2)).await?, None);
    created(s.create_blob(with_quota(3, &a2, 30, NOW + 10)).await?)?;
    created(s.create_blob(with_quota(4, &a1, 10, EXPIRES)).await?)?;
    ensure_eq!(s.blob_usage("alice", NOW).await?, 100);
    ensure_eq!(
        s.create_blob(with_quota(5, &a1, 1, EXPIRES)).await?,
        CreateBlobOutcome::QuotaExceeded {
            used: 100,
            quota: 100
        }
    );
    // Bob's quota is his own.
    created(s.create_blob(with_quota(6, &b, 100, EXPIRES)).await?)?;
    ensure_eq!(s.blob_usage("bob", NOW).await?, 100);
    // An expired blob no longer counts, even before the sweeper deleted it.
    ensure_eq!(s.blob_usage("alice", NOW + 10).await?, 70);
    let mut later = with_quota(7, &a1, 30, EXPIRES);
    later.now_ms = NOW + 10;
    created(s.create_blob(later).await?)?;
    // A deletion releases the quota at once.
    ensure!(
        s.begin_blob_deletion(&blob_id(1), NOW + 11).await?,
        "deletion not begun"
    );
    ensure!(
        !s.begin_blob_deletion(&blob_id(1), NOW + 11).await?,
        "deletion begun twice"
    );
    ensure!(
        !s.begin_blob_deletion(&blob_id(99), NOW + 11).await?,
        "unknown blob deleted"
    );
    ensure_eq!(s.blob_usage("alice", NOW + 11).await?, 40);
    ensure_eq!(s.blob_usage("nobody", NOW).await?, 0);
    Ok(())
}

/// Fetches are recorded for readers of complete blobs; the blob is fetched once every
/// reader but the uploading device (revoked ones left out) has fetched it.
pub async fn blobs_fetches(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a1 = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let b1 = register(s, "bob").await?;
    let b2 = link_device(s, "bob").await?;
    let c = register(s, "carol").await?;
    create_group(s, b"g", &a1, &[&a1, &b1, &b2]).await?;
    let id = blob_id(1);
    let blob = created(s.create_blob(new_blob(id, &a1, b"g", 10, 4)).await?)?;
    // Not before it is complete.
    ensure!(
        !s.record_blob_fetch(&id, b1.id, NOW).await?,
        "fetch of an incomplete blob recorded"
    );
    store_all_parts(s, &blob, NOW + 1).await?;
    ensure!(
        !s.record_blob_fetch(&id, c.id, NOW + 2).await?,
        "a stranger's fetch recorded"
    );
    ensure!(
        !s.record_blob_fetch(&blob_id(5), b1.id, NOW + 2).await?,
        "fetch of an unknown blob"
    );
    ensure!(
        s.record_blob_fetch(&id, b1.id, NOW + 2).await?,
        "bob/1's fetch refused"
    );
    // The uploading device's own fetch is not needed, but recorded.
    ensure!(
        s.record_blob_fetch(&id, a1.id, NOW + 3).await?,
        "alice/1's fetch refused"
    );
    ensure!(
        s.record_blob_fetch(&id, a2.id, NOW + 4).await?,
        "alice/2's fetch refused"
    );
    ensure_eq!(s.blob(&id).await?.and_then(|b| b.fetched_at_ms), None);
    ensure!(
        s.record_blob_fetch(&id, b2.id, NOW + 5).await?,
        "bob/2's fetch refused"
    );
    ensure_eq!(
        s.blob(&id).await?.and_then(|b| b.fetched_at_ms),
        Some(NOW + 5)
    );
    // A second fetch changes nothing.
    ensure!(
        s.record_blob_fetch(&id, b2.id, NOW + 9).await?,
        "repeat fetch refused"
    );
    let readers = s.blob_readers(&id).await?;
    ensure_eq!(
        readers.iter().map(|r| r.fetched_at_ms).collect::<Vec<_>>(),
        vec![Some(NOW + 3), Some(NOW + 4), Some(NOW + 2), Some(NOW + 5)]
    );

    // A reader revoked after creation does not hold the blob back.
    let id2 = blob_id(2);
    let blob2 = created(s.create_blob(new_blob(id2, &a1, b"g", 4, 4)).await?)?;
    ensure!(s.revoke_device(&a2.addr).await?, "revocation failed");
    store_all_parts(s, &blob2, NOW + 6).await?;
    ensure!(
        s.record_blob_fetch(&id2, b1.id, NOW + 7).await?,
        "bob/1's fetch refused"
    );
    ensure_eq!(s.blob(&id2).await?.and_then(|b| b.fetched_at_ms), None);
    ensure!(
        s.record_blob_fetch(&id2, b2.id, NOW + 8).await?,
        "bob/2's fetch refused"
    );
    ensure_eq!(
        s.blob(&id2).await?.and_then(|b| b.fetched_at_ms),
        Some(NOW + 8)
    );
    Ok(())
}

/// The sweep puts due blobs (expired, abandoned incomplete, fetched past the grace) in
/// the deleting state, hands them out until purged, and leaves the rest alone.
pub async fn blobs_sweep(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let b = register(s, "bob").await?;
    create_group(s, b"g", &a, &[&a, &b]).await?;
    let rules = |now_ms: u64| BlobSweep {
        now_ms,
        grace_after_fetch_ms: 100,
        abandoned_after_ms: 1000,
    };
    // 1: complete, fetched at NOW+10. 2: complete, never fetched, expires at NOW+5000.
    // 3: incomplete since NOW. 4: complete and unfetched, long retention.
    let b1 = created(s.create_blob(new_blob(blob_id(1), &a, b"g", 8, 4)).await?)?;
    store_all_parts(s, &b1, NOW + 1).await?;
    ensure!(
        s.record_blob_fetch(&blob_id(1), b.id, NOW + 10).await?,
        "fetch refused"
    );
    let mut n2 = new_blob(blob_id(2), &a, b"g", 8, 4);
    n2.expires_at_ms = NOW + 5000;
    let b2 = created(s.create_blob(n2).await?)?;
    store_all_parts(s, &b2, NOW + 1).await?;
    let b3 = created(s.create_blob(new_blob(blob_id(3), &a, b"g", 8, 4)).await?)?;
    s.record_blob_part(&b3.id, blob_part(0, 4, 1), NOW + 1)
        .await?;
    let b4 = created(s.create_blob(new_blob(blob_id(4), &a, b"g", 8, 4)).await?)?;
    store_all_parts(s, &b4, NOW + 1).await?;

    ensure_eq!(s.sweep_blobs(rules(NOW + 109), 10).await?, vec![]);
    ensure_eq!(s.sweep_blobs(rules(NOW + 110), 10).await?, vec![blob_id(1)]);
    // Deleting: invisible, and handed out again until purged.
    ensure_eq!(s.blob(&blob_id(1)).await?, None);
    ensure_eq!(s.readable_blob(&blob_id(1), b.id).await?, None);
    ensure_eq!(s.blob_parts(&blob_id(1)).await?, vec![]);
    ensure_eq!(s.blob_readers(&blob_id(1)).await?, vec![]);
    ensure!(
        !s.record_blob_fetch(&blob_id(1), b.id, NOW + 111).await?,
        "fetch of a deleting blob"
    );
    ensure_eq!(
        s.record_blob_part(&blob_id(1), blob_part(0, 4, 1), NOW + 111)
            .await?,
        PartOutcome::UnknownBlob
    );
    ensure_eq!(
        s.known_blobs(&[blob_id(1), blob_id(9)]).await?,
        vec![blob_id(1)]
    );
    ensure_eq!(s.sweep_blobs(rules(NOW + 111), 10).await?, vec![blob_id(1)]);
    ensure_eq!(s.purge_blobs(&[blob_id(1), blob_id(4)]).await?, 1);
    ensure_eq!(
        s.known_blobs(&[blob_id(1), blob_id(4)]).await?,
        vec![blob_id(4)]
    );
    ensure!(
        s.blob(&blob_id(4)).await?.is_some(),
        "purge removed a live blob"
    );
    ensure_eq!(s.sweep_blobs(rules(NOW + 999), 10).await?, vec![]);
    // Abandoned incomplete upload.
    ensure_eq!(
        s.sweep_blobs(rules(NOW + 1000), 10).await?,
        vec![blob_id(3)]
    );
    ensure_eq!(s.purge_blobs(&[blob_id(3)]).await?, 1);
    // Retention.
    ensure_eq!(s.sweep_blobs(rules(NOW + 4999), 10).await?, vec![]);
    ensure_eq!(
        s.sweep_blobs(rules(NOW + 5000), 10).await?,
        vec![blob_id(2)]
    );
    ensure_eq!(s.purge_blobs(&[blob_id(2)]).await?, 1);
    ensure_eq!(s.blob_usage("alice", NOW + 5000).await?, 8);
    // The limit bounds what one call hands out; the rest follows.
    for n in 10..15u8 {
        let mut nb = new_blob(blob_id(n), &a, b"g", 4, 4);
        nb.expires_at_ms = NOW + 6000;
        created(s.create_blob(nb).await?)?;
    }
    let first = s.sweep_blobs(rules(NOW + 6000), 3).await?;
    ensure_eq!(first.len(), 3);
    ensure_eq!(s.purge_blobs(&first).await?, 3);
    let rest = s.sweep_blobs(rules(NOW + 6000), 3).await?;
    ensure_eq!(rest.len(), 2);
    ensure_eq!(s.purge_blobs(&rest).await?, 2);
    ensure_eq!(s.sweep_blobs(rules(NOW + 6000), 3).await?, vec![]);
    ensure!(s.blob(&blob_id(4)).await?.is_some(), "blob 4 went early");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Device lists
// ---------------------------------------------------------------------------------------

/// A signed device list is stored only when its version grows; it is served with the
/// account and never replaced by an older or equal version.
pub async fn accounts_device_list(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    register(s, "alice").await?;
    register(s, "bob").await?;
    let list = |v: u64, tag: &str| Bytes::from(format!("signed-list:{tag}:{v}"));
    let stored = |v: u64, tag: &str| {
        Some(StoredDeviceList {
            version: v,
            data: list(v, tag),
        })
    };
    let get = |h: &'static str| async move {
        Ok::<_, Failure>(
            s.account(h)
                .await?
                .ok_or_else(|| Failure(format!("{h} missing")))?
                .device_list,
        )
    };
    ensure_eq!(get("alice").await?, None);
    ensure!(
        s.set_device_list("alice", 2, list(2, "a")).await?,
        "first list refused"
    );
    ensure_eq!(get("alice").await?, stored(2, "a"));
    ensure!(
        !s.set_device_list("alice", 2, list(2, "b")).await?,
        "equal version accepted"
    );
    ensure!(
        !s.set_device_list("alice", 1, list(1, "b")).await?,
        "older version accepted"
    );
    ensure_eq!(get("alice").await?, stored(2, "a"));
    ensure!(
        s.set_device_list("alice", 7, list(7, "c")).await?,
        "newer version refused"
    );
    ensure_eq!(get("alice").await?, stored(7, "c"));
    // Accounts are independent.
    ensure_eq!(get("bob").await?, None);
    ensure!(
        s.set_device_list("bob", 1, list(1, "bob")).await?,
        "bob's list refused"
    );
    ensure_eq!(get("bob").await?, stored(1, "bob"));
    ensure_eq!(get("alice").await?, stored(7, "c"));
    match s.set_device_list("nobody", 1, list(1, "x")).await {
        Err(StoreError::Invalid(_)) => {}
        other => {
            return Err(Failure(format!(
                "unknown handle: expected Invalid, got {other:?}"
            )));
        }
    }
    // Concurrent writers of versions 8..=15: the highest one stays.
    let mut tasks = Vec::new();
    for v in 8..=15u64 {
        let st = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            st.set_device_list("alice", v, Bytes::from(format!("signed-list:race:{v}")))
                .await
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| Failure(format!("task failed: {e}")))??;
    }
    ensure_eq!(get("alice").await?, stored(15, "race"));
    Ok(())
}

/// A device with key `key`.
fn keyed_device(key: &str) -> NewDevice {
    NewDevice {
        device_key: key.as_bytes().to_vec(),
        cert_created_at_ms: NOW,
        cert_signature: format!("cert-sig:{key}").into_bytes(),
    }
}

/// `add_device_within` refuses a key the account has or had and holds the limit of
/// non-revoked devices, also when additions race.
pub async fn accounts_add_device_within(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    register(s, "alice").await?;
    let added = |o: AddDevice| match o {
        AddDevice::Added(d) => Ok(d),
        other => Err(Failure(format!("expected Added, got {other:?}"))),
    };
    let a2 = added(s.add_device_within("alice", keyed_device("k2"), 3).await?)?;
    ensure_eq!(a2.addr, addr("alice", 2));
    ensure_eq!(a2.device_key, b"k2".to_vec());
    ensure_eq!(
        s.add_device_within("alice", keyed_device("k2"), 3).await?,
        AddDevice::KeyInUse
    );
    ensure_eq!(
        s.add_device_within("alice", keyed_device("device-key:alice/1"), 3)
            .await?,
        AddDevice::KeyInUse
    );
    ensure_eq!(
        s.add_device_within("nobody", keyed_device("k9"), 3).await?,
        AddDevice::UnknownAccount
    );
    let a3 = added(s.add_device_within("alice", keyed_device("k3"), 3).await?)?;
    ensure_eq!(
        s.add_device_within("alice", keyed_device("k4"), 3).await?,
        AddDevice::TooManyDevices
    );
    // Revoking makes room; the revoked key stays taken.
    ensure!(s.revoke_device(&a3.addr).await?, "revocation failed");
    ensure_eq!(
        s.add_device_within("alice", keyed_device("k3"), 3).await?,
        AddDevice::KeyInUse
    );
    let a4 = added(s.add_device_within("alice", keyed_device("k4"), 3).await?)?;
    ensure_eq!(a4.addr, addr("alice", 4));
    // Racing additions: the limit holds.
    register(s, "bob").await?;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let st = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            st.add_device_within("bob", keyed_device(&format!("bob-{n}")), 4)
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))??
        {
            AddDevice::Added(_) => won += 1,
            AddDevice::TooManyDevices => {}
            other => return Err(Failure(format!("racing addition: {other:?}"))),
        }
    }
    ensure_eq!(won, 3);
    let bob = s
        .account("bob")
        .await?
        .ok_or_else(|| Failure("bob missing".into()))?;
    ensure_eq!(bob.devices.len(), 4);
    // Racing plain additions get distinct numbers.
    register(s, "carol").await?;
    let mut tasks = Vec::new();
    for n in 0..6 {
        let st = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            st.add_device("carol", keyed_device(&format!("carol-{n}")))
                .await
        }));
    }
    let mut numbers = BTreeSet::new();
    for t in tasks {
        let d = t
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))??
            .ok_or_else(|| Failure("carol vanished".into()))?;
        numbers.insert(d.addr.device_id);
    }
    ensure_eq!(numbers, (2..=7).collect::<BTreeSet<u32>>());
    Ok(())
}

/// `revoked_devices` names exactly the revoked devices among those asked about.
pub async fn accounts_revoked_devices(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a1 = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let b1 = register(s, "bob").await?;
    ensure_eq!(s.revoked_devices(&[a1.id, a2.id, b1.id]).await?, vec![]);
    ensure!(s.revoke_device(&a2.addr).await?, "revocation failed");
    ensure!(s.revoke_device(&b1.addr).await?, "revocation failed");
    ensure_eq!(
        s.revoked_devices(&[b1.id, a1.id, DeviceId(u64::MAX / 2), a2.id])
            .await?,
        vec![b1.id, a2.id]
    );
    ensure_eq!(s.revoked_devices(&[]).await?, vec![]);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Link sessions
// ---------------------------------------------------------------------------------------

/// A link session id for `n`.
pub fn link_id(n: u8) -> [u8; 16] {
    let mut id = [0x1c; 16];
    id[15] = n;
    id
}

/// Slots are write-once per session and name; sessions are independent; unknown ones
/// are unknown.
pub async fn links_slots_write_once(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let (l1, l2) = (link_id(1), link_id(2));
    s.create_link(l1, &a.addr, NOW + 1000).await?;
    s.create_link(l2, &a.addr, NOW + 1000).await?;
    match s.create_link(l1, &a.addr, NOW + 5000).await {
        Err(StoreError::Invalid(_)) => {}
        other => {
            return Err(Failure(format!(
                "reused link id: expected Invalid, got {other:?}"
            )));
        }
    }
    ensure_eq!(s.link_slot(l1, "hello", NOW).await?, LinkSlot::NotYet);
    ensure_eq!(
        s.put_link_slot(l1, "hello", Bytes::from_static(b"one"), NOW)
            .await?,
        PutSlot::Stored
    );
    ensure_eq!(
        s.put_link_slot(l1, "hello", Bytes::from_static(b"two"), NOW + 1)
            .await?,
        PutSlot::AlreadyWritten
    );
    ensure_eq!(
        s.link_slot(l1, "hello", NOW + 2).await?,
        LinkSlot::Bytes(Bytes::from_static(b"one"))
    );
    // The same name in another session is another slot; empty bytes are bytes.
    ensure_eq!(s.link_slot(l2, "hello", NOW).await?, LinkSlot::NotYet);
    ensure_eq!(
        s.put_link_slot(l2, "hello", Bytes::new(), NOW).await?,
        PutSlot::Stored
    );
    ensure_eq!(
        s.link_slot(l2, "hello", NOW).await?,
        LinkSlot::Bytes(Bytes::new())
    );
    // A large slot survives intact.
    let big = Bytes::from(
        (0..300_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    ensure_eq!(
        s.put_link_slot(l1, "big", big.clone(), NOW).await?,
        PutSlot::Stored
    );
    ensure_eq!(s.link_slot(l1, "big", NOW).await?, LinkSlot::Bytes(big));
    let ghost = link_id(9);
    ensure_eq!(
        s.put_link_slot(ghost, "hello", Bytes::from_static(b"x"), NOW)
            .await?,
        PutSlot::UnknownOrExpired
    );
    ensure_eq!(
        s.link_slot(ghost, "hello", NOW).await?,
        LinkSlot::UnknownOrExpired
    );
    // Concurrent writers of one slot: exactly one wins, and its bytes stay.
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let st = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let r = st
                .put_link_slot(l2, "race", Bytes::from(vec![n; 4]), NOW)
                .await;
            (n, r)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (n, r) = t.await.map_err(|e| Failure(format!("task failed: {e}")))?;
        match r? {
            PutSlot::Stored => winners.push(n),
            PutSlot::AlreadyWritten => {}
            other => return Err(Failure(format!("racing write: {other:?}"))),
        }
    }
    ensure_eq!(winners.len(), 1);
    ensure_eq!(
        s.link_slot(l2, "race", NOW).await?,
        LinkSlot::Bytes(Bytes::from(vec![winners[0]; 4]))
    );
    Ok(())
}

/// A session holds at most [`MAX_LINK_SLOTS`] slots; rewriting one of them is still
/// `AlreadyWritten`.
pub async fn links_slot_limit(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let l = link_id(3);
    s.create_link(l, &a.addr, NOW + 1000).await?;
    for i in 0..MAX_LINK_SLOTS {
        ensure_eq!(
            s.put_link_slot(l, &format!("s{i}"), Bytes::from_static(b"x"), NOW)
                .await?,
            PutSlot::Stored
        );
    }
    ensure_eq!(
        s.put_link_slot(l, "onemore", Bytes::from_static(b"x"), NOW)
            .await?,
        PutSlot::TooManySlots
    );
    ensure_eq!(
        s.put_link_slot(l, "s0", Bytes::from_static(b"y"), NOW)
            .await?,
        PutSlot::AlreadyWritten
    );
    ensure_eq!(s.link_slot(l, "onemore", NOW).await?, LinkSlot::NotYet);
    ensure_eq!(
        s.link_slot(l, "s0", NOW).await?,
        LinkSlot::Bytes(Bytes::from_static(b"x"))
    );
    Ok(())
}

/// A session is live strictly before its expiry, unknown from then on, and purged with
/// its slots; live sessions survive the purge.
pub async fn links_expiry_and_purge(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let (short, long) = (link_id(4), link_id(5));
    s.create_link(short, &a.addr, NOW + 100).await?;
    s.create_link(long, &a.addr, NOW + 10_000).await?;
    ensure_eq!(
        s.put_link_slot(short, "a", Bytes::from_static(b"1"), NOW + 99)
            .await?,
        PutSlot::Stored
    );
    ensure_eq!(
        s.put_link_slot(long, "a", Bytes::from_static(b"2"), NOW)
            .await?,
        PutSlot::Stored
    );
    ensure_eq!(s.link_owner(short, NOW + 99).await?, Some(a.addr.clone()));
    ensure_eq!(
        s.link_slot(short, "a", NOW + 99).await?,
        LinkSlot::Bytes(Bytes::from_static(b"1"))
    );
    // Expired, not purged yet: unknown.
    ensure_eq!(
        s.link_slot(short, "a", NOW + 100).await?,
        LinkSlot::UnknownOrExpired
    );
    ensure_eq!(
        s.link_slot(short, "b", NOW + 100).await?,
        LinkSlot::UnknownOrExpired
    );
    ensure_eq!(
        s.put_link_slot(short, "b", Bytes::from_static(b"x"), NOW + 100)
            .await?,
        PutSlot::UnknownOrExpired
    );
    ensure_eq!(s.link_owner(short, NOW + 100).await?, None);
    ensure_eq!(s.purge_expired_links(NOW + 99).await?, 0);
    ensure_eq!(s.purge_expired_links(NOW + 100).await?, 1);
    ensure_eq!(s.purge_expired_links(NOW + 100).await?, 0);
    ensure!(
        !s.delete_link(short).await?,
        "a purged session was still there"
    );
    // The id is free again once purged.
    s.create_link(short, &a.addr, NOW + 500).await?;
    ensure_eq!(s.link_slot(short, "a", NOW + 200).await?, LinkSlot::NotYet);
    ensure_eq!(
        s.link_slot(long, "a", NOW + 200).await?,
        LinkSlot::Bytes(Bytes::from_static(b"2"))
    );
    Ok(())
}

/// The owner is the device that opened the session; deleting ends it with its slots.
pub async fn links_owner_and_delete(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let (l1, l2) = (link_id(6), link_id(7));
    s.create_link(l1, &a.addr, NOW + 1000).await?;
    s.create_link(l2, &a2.addr, NOW + 1000).await?;
    ensure_eq!(s.link_owner(l1, NOW).await?, Some(a.addr.clone()));
    ensure_eq!(s.link_owner(l2, NOW).await?, Some(a2.addr.clone()));
    ensure_eq!(s.link_owner(link_id(8), NOW).await?, None);
    ensure_eq!(
        s.put_link_slot(l1, "a", Bytes::from_static(b"1"), NOW)
            .await?,
        PutSlot::Stored
    );
    ensure!(s.delete_link(l1).await?, "delete reported false");
    ensure!(!s.delete_link(l1).await?, "second delete reported true");
    ensure_eq!(s.link_owner(l1, NOW).await?, None);
    ensure_eq!(s.link_slot(l1, "a", NOW).await?, LinkSlot::UnknownOrExpired);
    // A new session under the same id starts empty.
    s.create_link(l1, &a2.addr, NOW + 1000).await?;
    ensure_eq!(s.link_slot(l1, "a", NOW).await?, LinkSlot::NotYet);
    ensure_eq!(s.link_owner(l1, NOW).await?, Some(a2.addr.clone()));
    ensure_eq!(s.link_owner(l2, NOW).await?, Some(a2.addr));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Key directory and account reset
// ---------------------------------------------------------------------------------------

use crate::{
    DirectoryAccount, DirectoryChange, DirectoryEpoch, DirectoryLease, MAX_DIRECTORY_ACCOUNTS,
    is_reset_tombstone,
};

/// Epoch `n` with a recognisable record.
pub fn directory_epoch(n: u64) -> DirectoryEpoch {
    DirectoryEpoch {
        epoch: n,
        published_at_ms: NOW + n,
        record: Bytes::from(format!("epoch-record:{n}")),
    }
}

/// The handles of `changes`, in order.
pub fn change_handles(changes: &[DirectoryChange]) -> Vec<String> {
    changes.iter().map(|c| c.handle.clone()).collect()
}

/// Every pending directory change.
async fn all_changes(s: &dyn Store) -> Result<Vec<DirectoryChange>, Failure> {
    Ok(s.directory_changes(usize::MAX).await?)
}

/// The secret is written once: of concurrent first callers one candidate wins and
/// everyone gets it; later candidates are ignored.
pub async fn directory_secret_write_once(store: Arc<dyn Store>) -> CaseResult {
    let mut tasks = Vec::new();
    for n in 0..6u8 {
        let st = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            // Binary, with a zero byte and a high byte.
            st.directory_secret(Bytes::from(vec![0, 0xff, n, 7])).await
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        got.insert(
            t.await
                .map_err(|e| Failure(format!("task failed: {e}")))??,
        );
    }
    ensure_eq!(got.len(), 1);
    let secret = got
        .into_iter()
        .next()
        .ok_or_else(|| Failure("no secret".into()))?;
    ensure!(
        secret.len() == 4 && secret[..2] == [0, 0xff] && secret[2] < 6 && secret[3] == 7,
        "the secret is none of the candidates: {secret:?}"
    );
    ensure_eq!(
        store
            .directory_secret(Bytes::from_static(b"another candidate"))
            .await?,
        secret
    );
    Ok(())
}

/// Account creation, a stored device list and a reset each queue a change for the
/// handle, in order; failed or no-op operations, and other account operations, queue
/// none.
pub async fn directory_changes_recorded(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    ensure_eq!(s.directory_changes(10).await?, vec![]);
    register(s, "alice").await?;
    ensure_eq!(change_handles(&all_changes(s).await?), vec!["alice"]);
    // A taken handle and an invalid invite change nothing.
    ensure!(
        matches!(
            s.create_account(new_account("alice")).await,
            Err(StoreError::HandleTaken)
        ),
        "handle taken expected"
    );
    let mut bad = new_account("bob");
    bad.invite = Some("no-such-invite".into());
    ensure!(
        matches!(s.create_account(bad).await, Err(StoreError::InviteInvalid)),
        "invalid invite expected"
    );
    ensure_eq!(change_handles(&all_changes(s).await?), vec!["alice"]);
    register(s, "bob").await?;
    let list = |v: u64| Bytes::from(format!("signed-list:{v}"));
    ensure!(
        s.set_device_list("alice", 2, list(2)).await?,
        "list refused"
    );
    // Not stored: no change.
    ensure!(
        !s.set_device_list("alice", 2, list(2)).await?,
        "equal version stored"
    );
    ensure!(
        !s.set_device_list("alice", 1, list(1)).await?,
        "older version stored"
    );
    ensure!(
        s.set_device_list("nobody", 1, list(1)).await.is_err(),
        "list of an unknown account stored"
    );
    ensure_eq!(
        change_handles(&all_changes(s).await?),
        vec!["alice", "bob", "alice"]
    );
    // Devices come and go through the (signed) device list, not on their own.
    let a2 = link_device(s, "alice").await?;
    ensure!(s.revoke_device(&a2.addr).await?, "revocation failed");
    s.set_block("alice", "bob", true, NOW).await?;
    ensure_eq!(
        change_handles(&all_changes(s).await?),
        vec!["alice", "bob", "alice"]
    );
    ensure!(s.reset_account("bob", NOW).await?, "reset refused");
    ensure!(
        !s.reset_account("nobody", NOW).await?,
        "reset of an unknown account"
    );
    ensure!(
        s.set_device_list("alice", 3, list(3)).await?,
        "list refused"
    );
    let changes = all_changes(s).await?;
    ensure_eq!(
        change_handles(&changes),
        vec!["alice", "bob", "alice", "bob", "alice"]
    );
    ensure!(
        changes.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs must increase: {changes:?}"
    );
    // The limit.
    ensure_eq!(s.directory_changes(2).await?, changes[..2].to_vec());
    ensure_eq!(s.directory_changes(0).await?, vec![]);
    Ok(())
}

/// Epochs are appended only as the next number; an append consumes exactly the changes
/// up to the seq given, and a refused append changes nothing.
pub async fn directory_append_epochs(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    register(s, "alice").await?;
    register(s, "bob").await?;
    ensure_eq!(s.directory_epochs(0, 10).await?, vec![]);
    // 0 is never the next number; 2 is a gap while none is stored.
    ensure!(
        !s.append_directory_epoch(directory_epoch(0), u64::MAX)
            .await?,
        "epoch 0 accepted"
    );
    ensure!(
        !s.append_directory_epoch(directory_epoch(2), u64::MAX)
            .await?,
        "epoch 2 accepted first"
    );
    let seen = all_changes(s).await?;
    ensure_eq!(change_handles(&seen), vec!["alice", "bob"]);
    let through = seen[1].seq;
    // A change committed after the publisher read the queue.
    register(s, "carol").await?;
    ensure!(
        s.append_directory_epoch(directory_epoch(1), through)
            .await?,
        "epoch 1 refused"
    );
    let left = all_changes(s).await?;
    ensure_eq!(change_handles(&left), vec!["carol"]);
    // A duplicate consumes nothing.
    ensure!(
        !s.append_directory_epoch(directory_epoch(1), u64::MAX)
            .await?,
        "epoch 1 accepted twice"
    );
    ensure_eq!(all_changes(s).await?, left);
    // An epoch may consume nothing.
    ensure!(
        s.append_directory_epoch(directory_epoch(2), 0).await?,
        "epoch 2 refused"
    );
    ensure_eq!(all_changes(s).await?, left);
    let mut other = directory_epoch(2);
    other.record = Bytes::from_static(b"another record");
    ensure!(
        !s.append_directory_epoch(other, u64::MAX).await?,
        "epoch 2 accepted twice"
    );
    // A gap (4 when 2 is the last).
    ensure!(
        !s.append_directory_epoch(directory_epoch(4), u64::MAX)
            .await?,
        "epoch 4 accepted after 2"
    );
    ensure_eq!(all_changes(s).await?, left);
    ensure_eq!(
        s.directory_epochs(0, 10).await?,
        vec![directory_epoch(1), directory_epoch(2)]
    );
    // Records are opaque bytes of any size.
    let big = DirectoryEpoch {
        epoch: 3,
        published_at_ms: NOW + 3,
        record: Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
    };
    ensure!(
        s.append_directory_epoch(big.clone(), left[0].seq).await?,
        "epoch 3 refused"
    );
    ensure_eq!(all_changes(s).await?, vec![]);
    ensure_eq!(s.directory_epochs(2, 10).await?, vec![big]);
    Ok(())
}

/// `directory_epochs` pages by number and limit.
pub async fn directory_epochs_paging(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    for n in 1..=5 {
        ensure!(
            s.append_directory_epoch(directory_epoch(n), 0).await?,
            "epoch {n} refused"
        );
    }
    let numbers = |v: Vec<DirectoryEpoch>| v.into_iter().map(|e| e.epoch).collect::<Vec<_>>();
    ensure_eq!(
        s.directory_epochs(0, usize::MAX).await?,
        (1..=5).map(directory_epoch).collect::<Vec<_>>()
    );
    ensure_eq!(numbers(s.directory_epochs(0, 2).await?), vec![1, 2]);
    ensure_eq!(numbers(s.directory_epochs(2, 2).await?), vec![3, 4]);
    ensure_eq!(numbers(s.directory_epochs(4, 10).await?), vec![5]);
    ensure_eq!(numbers(s.directory_epochs(5, 10).await?), vec![]);
    ensure_eq!(numbers(s.directory_epochs(0, 0).await?), vec![]);
    ensure_eq!(numbers(s.directory_epochs(u64::MAX, 10).await?), vec![]);
    Ok(())
}

/// Nodes racing to append the same epoch number: exactly one succeeds, and its record
/// is the one stored.
pub async fn directory_concurrent_append(store: Arc<dyn Store>) -> CaseResult {
    for round in 1..=4u64 {
        let mut tasks = Vec::new();
        for node in 0..4u8 {
            let st = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let epoch = DirectoryEpoch {
                    epoch: round,
                    published_at_ms: NOW + round,
                    record: Bytes::from(format!("round {round} from node {node}")),
                };
                st.append_directory_epoch(epoch.clone(), 0)
                    .await
                    .map(|won| (won, epoch))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (won, epoch) = t
                .await
                .map_err(|e| Failure(format!("task failed: {e}")))??;
            if won {
                winners.push(epoch);
            }
        }
        ensure_eq!(winners.len(), 1);
        ensure_eq!(store.directory_epochs(round - 1, 10).await?, winners);
    }
    Ok(())
}

/// The lease `holder`/`until_ms`.
fn lease(holder: &str, until_ms: u64) -> DirectoryLease {
    DirectoryLease {
        holder: holder.to_owned(),
        until_ms,
    }
}

/// The publisher lease: the first claim takes it; others are refused until it runs out
/// (`until <= now`), its holder renews it at any time, and a holder claiming with an
/// end in the past gives it up at once.
pub async fn directory_publisher_lease(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let claim = |h: &'static str, now: u64, until: u64| s.claim_directory_publisher(h, now, until);
    ensure_eq!(claim("a", NOW, NOW + 100).await?, lease("a", NOW + 100));
    // Held: the other node sees who holds it and until when.
    ensure_eq!(
        claim("b", NOW + 50, NOW + 150).await?,
        lease("a", NOW + 100)
    );
    ensure_eq!(
        claim("b", NOW + 99, NOW + 199).await?,
        lease("a", NOW + 100)
    );
    // A renewal, before and after the end.
    ensure_eq!(
        claim("a", NOW + 60, NOW + 160).await?,
        lease("a", NOW + 160)
    );
    ensure_eq!(
        claim("a", NOW + 500, NOW + 600).await?,
        lease("a", NOW + 600)
    );
    // Ran out: taken over exactly at its end.
    ensure_eq!(
        claim("b", NOW + 600, NOW + 700).await?,
        lease("b", NOW + 700)
    );
    ensure_eq!(
        claim("a", NOW + 650, NOW + 750).await?,
        lease("b", NOW + 700)
    );
    // Given up (an end not after now): the next claim gets it at once.
    ensure_eq!(
        claim("b", NOW + 660, NOW + 660).await?,
        lease("b", NOW + 660)
    );
    ensure_eq!(
        claim("a", NOW + 661, NOW + 761).await?,
        lease("a", NOW + 761)
    );
    // Holders are compared exactly.
    ensure_eq!(
        claim("A", NOW + 700, NOW + 800).await?,
        lease("a", NOW + 761)
    );
    Ok(())
}

/// Nodes claiming a free lease together: exactly one gets it and every claimant is
/// told the same holder.
pub async fn directory_publisher_race(store: Arc<dyn Store>) -> CaseResult {
    for round in 0..4u64 {
        // Each round starts after the previous lease ran out.
        let now = NOW + round * 1_000;
        let mut tasks = Vec::new();
        for node in 0..6u8 {
            let st = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                st.claim_directory_publisher(&format!("node-{node}"), now, now + 500)
                    .await
            }));
        }
        let mut seen = BTreeSet::new();
        for t in tasks {
            let got = t
                .await
                .map_err(|e| Failure(format!("task failed: {e}")))??;
            ensure_eq!(got.until_ms, now + 500);
            seen.insert(got.holder);
        }
        ensure_eq!(seen.len(), 1);
    }
    Ok(())
}

/// `directory_accounts` answers for many handles at once what `account` answers for
/// one: the account key and the stored device list, leaving out handles without an
/// account (never registered, or reset); more than the cap is refused.
pub async fn directory_accounts_batch(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    ensure_eq!(s.directory_accounts(&[]).await?, vec![]);
    let handles: Vec<String> = (0..300).map(|i| format!("user{i:03}")).collect();
    for h in &handles {
        register(s, h).await?;
    }
    let list = Bytes::from_static(b"signed-list:4");
    ensure!(
        s.set_device_list("user007", 4, list.clone()).await?,
        "list refused"
    );
    ensure!(s.reset_account("user009", NOW).await?, "reset refused");
    let mut asked = handles.clone();
    asked.push("nobody".into());
    let mut got = s.directory_accounts(&asked).await?;
    got.sort_by(|a, b| a.handle.cmp(&b.handle));
    ensure_eq!(got.len(), 299);
    ensure!(
        !got.iter()
            .any(|a| a.handle == "user009" || a.handle == "nobody"),
        "a handle without an account answered"
    );
    for a in &got {
        let one = s
            .account(&a.handle)
            .await?
            .ok_or_else(|| Failure(format!("{} vanished", a.handle)))?;
        ensure_eq!(
            a,
            &DirectoryAccount {
                handle: one.handle.clone(),
                account_key: one.account_key.clone(),
                device_list: one.device_list.clone(),
            }
        );
    }
    ensure_eq!(
        got.iter()
            .find(|a| a.handle == "user007")
            .map(|a| a.device_list.clone()),
        Some(Some(StoredDeviceList {
            version: 4,
            data: list
        }))
    );
    let too_many: Vec<String> = (0..=MAX_DIRECTORY_ACCOUNTS)
        .map(|i| format!("h{i}"))
        .collect();
    ensure!(
        matches!(
            s.directory_accounts(&too_many).await,
            Err(StoreError::Invalid(_))
        ),
        "more than the cap accepted"
    );
    Ok(())
}

/// `reset_account` releases the handle: the account is gone, its devices revoked (no
/// mail, no key packages, reported revoked), its blocks, link sessions and quota gone;
/// group rosters keep the old devices without naming the handle, the other members
/// still get their messages, and the handle can be registered again from device 1.
pub async fn accounts_reset(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    let a1 = register(s, "alice").await?;
    let a2 = link_device(s, "alice").await?;
    let a3 = s
        .add_device("alice", keyed_device("alice-3"))
        .await?
        .ok_or_else(|| Failure("alice vanished".into()))?;
    ensure!(s.revoke_device(&a3.addr).await?, "revocation failed");
    let b = register(s, "bob").await?;
    let c = register(s, "carol").await?;
    ensure!(
        s.set_device_list("alice", 1, Bytes::from_static(b"alice-list"))
            .await?,
        "list refused"
    );
    s.add_key_packages(
        a1.id,
        vec![key_package(CS, "a1", false), key_package(CS, "a1-lr", true)],
    )
    .await?;
    create_group(s, b"g", &b, &[&a1, &a2, &b, &c]).await?;
    accepted(s.submit(application(&b, b"g", 1, "before")).await?)?;
    ensure_eq!(s.pending(a1.id).await?, 1);
    ensure_eq!(s.pending(a2.id).await?, 1);
    s.set_block("carol", "alice", true, NOW).await?;
    s.set_block("alice", "bob", true, NOW).await?;
    s.create_link(link_id(1), &a1.addr, NOW + 1000).await?;
    created(
        s.create_blob(new_blob(blob_id(1), &a1, b"g", 10, 4))
            .await?,
    )?;
    ensure_eq!(s.blob_usage("alice", NOW).await?, 10);
    let report = |reporter: &str, reported: &str| crate::NewReport {
        reporter: reporter.into(),
        reported: reported.into(),
        reason: "r".into(),
        evidence: Vec::new(),
        at_ms: NOW,
    };
    s.file_report(report("bob", "alice")).await?;
    s.file_report(report("alice", "carol")).await?;
    let changes_before = all_changes(s).await?.len();

    ensure!(s.reset_account("alice", NOW + 1).await?, "reset refused");
    ensure!(
        !s.reset_account("alice", NOW + 1).await?,
        "reset twice: the account should be gone"
    );
    ensure!(
        !s.reset_account("nobody", NOW).await?,
        "reset of an unknown account"
    );

    // The account and its devices are gone from the handle.
    ensure_eq!(s.account("alice").await?, None);
    ensure_eq!(s.device(&a1.addr).await?, None);
    ensure_eq!(s.device(&a2.addr).await?, None);
    ensure_eq!(
        s.revoked_devices(&[a1.id, b.id, a2.id, a3.id]).await?,
        vec![a1.id, a2.id, a3.id]
    );
    for d in [&a1, &a2] {
        ensure_eq!(s.pending(d.id).await?, 0);
        ensure_eq!(fetch_all(s, d.id).await?, vec![]);
    }
    let stock = s.key_package_stock(a1.id, CS).await?;
    ensure_eq!((stock.available, stock.has_last_resort), (0, false));
    ensure_eq!(s.claim_key_packages("alice", CS).await?, vec![]);
    // Blocks by and of the handle, its link sessions and its quota are gone.
    ensure_eq!(s.blocked_by("carol").await?, Vec::<String>::new());
    ensure_eq!(s.blocked_by("alice").await?, Vec::<String>::new());
    ensure_eq!(s.link_owner(link_id(1), NOW).await?, None);
    ensure_eq!(s.blob_usage("alice", NOW).await?, 0);
    // Reports by and about the old account no longer name the handle.
    let reports = s.reports(0, 10).await?;
    ensure_eq!(reports.len(), 2);
    ensure!(
        is_reset_tombstone(&reports[0].report.reported)
            && reports[0].report.reporter == "bob"
            && is_reset_tombstone(&reports[1].report.reporter)
            && reports[1].report.reported == "carol",
        "reports: {reports:?}"
    );
    // A directory change for the handle.
    let changes = all_changes(s).await?;
    ensure_eq!(changes.len(), changes_before + 1);
    ensure_eq!(changes.last().map(|c| c.handle.as_str()), Some("alice"));

    // The group keeps the old devices (not under the handle); the others still get
    // messages, the old devices nothing.
    let g = s
        .group(b"g")
        .await?
        .ok_or_else(|| Failure("group lost".into()))?;
    ensure_eq!(g.roster.len(), 4);
    ensure!(
        g.roster.contains(&b.addr)
            && g.roster.contains(&c.addr)
            && g.roster.iter().all(|m| m.handle != "alice"),
        "roster after reset: {:?}",
        g.roster
    );
    let r = accepted(s.submit(application(&b, b"g", 1, "after")).await?)?;
    ensure_eq!(
        r.deliveries.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![c.id]
    );
    ensure_eq!(s.pending(c.id).await?, 2);
    ensure_eq!(s.pending(a1.id).await?, 0);
    ensure_eq!(s.pending(a2.id).await?, 0);

    // The handle is registered again, with new keys, from device 1.
    let mut n = new_account("alice");
    n.account_key = b"new-account-key".to_vec();
    n.device_key = b"new-device-key".to_vec();
    n.now_ms = NOW + 2;
    let new1 = s.create_account(n).await?;
    ensure_eq!(new1.addr, addr("alice", 1));
    ensure!(
        new1.id != a1.id && new1.id != a2.id && new1.id != a3.id,
        "device id reused: {:?}",
        new1.id
    );
    let account = s
        .account("alice")
        .await?
        .ok_or_else(|| Failure("new alice missing".into()))?;
    ensure_eq!(account.account_key, b"new-account-key".to_vec());
    ensure_eq!(account.created_at_ms, NOW + 2);
    ensure_eq!(account.devices, vec![new1.clone()]);
    ensure_eq!(account.device_list, None);
    ensure_eq!(s.device(&addr("alice", 1)).await?, Some(new1.clone()));
    // The new key is not refused as in use by the old devices.
    let new2 = s
        .add_device_within("alice", keyed_device("alice-3"), 5)
        .await?;
    ensure!(
        matches!(&new2, AddDevice::Added(d) if d.addr == addr("alice", 2)),
        "second device of the new account: {new2:?}"
    );
    ensure_eq!(s.blocked_by("alice").await?, Vec::<String>::new());
    ensure_eq!(s.revoked_devices(&[new1.id]).await?, vec![]);
    // The old roster does not reach the new account.
    accepted(s.submit(application(&c, b"g", 1, "from carol")).await?)?;
    ensure_eq!(s.pending(new1.id).await?, 0);
    ensure_eq!(s.pending(b.id).await?, 1);
    // A commit removes the old devices; another adds the new account's device.
    let r = accepted(
        s.submit(commit(&b, b"g", 1, &[&b, &c], vec![], None))
            .await?,
    )?;
    ensure_eq!(
        r.deliveries.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![c.id]
    );
    let r = accepted(
        s.submit(commit(
            &b,
            b"g",
            2,
            &[&b, &c, &new1],
            vec![welcome("w-new", &[&new1])],
            None,
        ))
        .await?,
    )?;
    ensure_eq!(r.epoch, 3);
    ensure_eq!(s.pending(new1.id).await?, 1);
    let g = s
        .group(b"g")
        .await?
        .ok_or_else(|| Failure("group lost".into()))?;
    ensure_eq!(
        g.roster.into_iter().collect::<BTreeSet<_>>(),
        [b.addr.clone(), c.addr.clone(), new1.addr.clone()]
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    // The new account may be reset too.
    ensure!(s.reset_account("alice", NOW + 1).await?, "second reset");
    ensure_eq!(s.account("alice").await?, None);
    ensure_eq!(s.revoked_devices(&[new1.id]).await?, vec![new1.id]);
    ensure_eq!(s.pending(new1.id).await?, 0);
    Ok(())
}

/// A reset racing a device addition or a registration of the same handle: the outcome
/// is one of the serial orders (a device added first is reset with the account; one
/// added after is refused; a registration after the reset holds the handle).
pub async fn accounts_reset_races(store: Arc<dyn Store>) -> CaseResult {
    let s = &*store;
    for round in 0..4 {
        let handle = format!("dev_race{round}");
        register(s, &handle).await?;
        let (st1, st2) = (Arc::clone(&store), Arc::clone(&store));
        let (h1, h2) = (handle.clone(), handle.clone());
        let reset = tokio::spawn(async move { st1.reset_account(&h1, NOW).await });
        let add =
            tokio::spawn(
                async move { st2.add_device(&h2, keyed_device(&format!("{h2}-k2"))).await },
            );
        let reset = reset
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))??;
        let added = add
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))??;
        ensure!(reset, "{handle}: reset refused");
        ensure_eq!(s.account(&handle).await?, None);
        if let Some(d) = added {
            ensure_eq!(d.addr, addr(&handle, 2));
            ensure_eq!(s.revoked_devices(&[d.id]).await?, vec![d.id]);
            ensure_eq!(s.device(&d.addr).await?, None);
        }
        let again = register(s, &handle).await?;
        ensure_eq!(again.addr, addr(&handle, 1));
    }
    for round in 0..4 {
        let handle = format!("reg_race{round}");
        register(s, &handle).await?;
        let (st1, st2) = (Arc::clone(&store), Arc::clone(&store));
        let (h1, h2) = (handle.clone(), handle.clone());
        let reset = tokio::spawn(async move { st1.reset_account(&h1, NOW).await });
        let create = tokio::spawn(async move {
            let mut n = new_account(&h2);
            n.account_key = b"newer-account-key".to_vec();
            st2.create_account(n).await
        });
        let reset = reset
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))??;
        let created = create
            .await
            .map_err(|e| Failure(format!("task failed: {e}")))?;
        ensure!(reset, "{handle}: reset refused");
        match created {
            Ok(d) => {
                ensure_eq!(d.addr, addr(&handle, 1));
                let account = s
                    .account(&handle)
                    .await?
                    .ok_or_else(|| Failure(format!("{handle}: new account missing")))?;
                ensure_eq!(account.account_key, b"newer-account-key".to_vec());
                ensure_eq!(account.devices, vec![d]);
            }
            Err(StoreError::HandleTaken) => {
                ensure_eq!(s.account(&handle).await?, None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
