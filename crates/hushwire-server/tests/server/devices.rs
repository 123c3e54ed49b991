//! Devices and linking: adding devices, the signed device list, removal (and the
//! connections it closes), link sessions.

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use hushwire_proto::identity;
use hushwire_proto::limits::{MAX_LINK_SLOT_BYTES, MAX_LINK_TTL_SECS};
use hushwire_proto::wire::{self, ErrorCode};
use hushwire_store::{Links, MAX_LINK_SLOTS};
use prost::Message as _;

use crate::common::*;

/// A certificate of `device` under `who`'s account key.
pub(crate) fn certificate(who: &Identity, device: &SigningKey) -> wire::DeviceCertificate {
    let key = device.verifying_key().to_bytes();
    let created = now_ms();
    let payload = identity::device_cert_payload(&who.handle, &key, created);
    wire::DeviceCertificate {
        device_key: Bytes::copy_from_slice(&key),
        created_at_ms: created,
        signature: Bytes::copy_from_slice(&who.account.sign(&payload).to_bytes()),
    }
}

fn add_request(cert: wire::DeviceCertificate) -> Vec<u8> {
    wire::AddDevice {
        certificate: Some(cert),
    }
    .encode_to_vec()
}

/// Adds a new device to `by`'s account (through `by`); returns its identity.
pub(crate) async fn add_device(c: &Client, by: &Identity) -> Identity {
    let device = SigningKey::generate(&mut rand::rngs::OsRng);
    let added: wire::DeviceAdded = c
        .signed(
            by,
            "POST",
            "/v1/devices",
            add_request(certificate(by, &device)),
        )
        .await
        .decode();
    Identity {
        handle: by.handle.clone(),
        account: by.account.clone(),
        device,
        device_id: added.device_id,
    }
}

pub(crate) fn listed(who: &Identity) -> wire::ListedDevice {
    wire::ListedDevice {
        device_id: who.device_id,
        device_key: Bytes::copy_from_slice(&who.device.verifying_key().to_bytes()),
        linked_at_ms: 5,
        sealed_name: Bytes::from_static(b"sealed"),
    }
}

/// A device list of `devices` for `handle`, signed by `signer`.
pub(crate) fn signed_list(
    handle: &str,
    version: u64,
    devices: &[&Identity],
    signer: &SigningKey,
) -> wire::SignedDeviceList {
    let list = wire::DeviceList {
        handle: handle.to_owned(),
        version,
        issued_at_ms: now_ms(),
        devices: devices.iter().map(|d| listed(d)).collect(),
    }
    .encode_to_vec();
    let signature = signer
        .sign(&identity::device_list_payload(&list))
        .to_bytes();
    wire::SignedDeviceList {
        list: list.into(),
        signature: Bytes::copy_from_slice(&signature),
    }
}

async fn put_list(c: &Client, who: &Identity, list: &wire::SignedDeviceList) -> Resp {
    c.signed(who, "PUT", "/v1/devices/list", list.encode_to_vec())
        .await
}

async fn account(c: &Client, by: &Identity, handle: &str) -> wire::AccountInfo {
    c.signed(by, "GET", &format!("/v1/accounts/{handle}"), vec![])
        .await
        .decode()
}

#[tokio::test]
async fn add_device_checks_the_certificate_and_the_key() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;

    let alice2 = add_device(&c, &alice).await;
    assert_eq!(alice2.device_id, 2);
    let info = account(&c, &bob, "alice").await;
    let ids: Vec<u32> = info.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        info.devices[1].certificate.as_ref().unwrap().device_key,
        Bytes::copy_from_slice(&alice2.device.verifying_key().to_bytes())
    );
    // The new device is a device like any other: it logs in and signs requests.
    let mut ws = c.login(&alice2).await;
    assert_eq!(ws.backlog().await, (vec![], 0));
    account(&c, &alice2, "bob").await;
    // ... and may add devices itself.
    let alice3 = add_device(&c, &alice2).await;
    assert_eq!(alice3.device_id, 3);

    // A certificate by another account key.
    let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut cert = certificate(&alice, &stranger);
    cert.signature = Bytes::copy_from_slice(
        &bob.account
            .sign(&identity::device_cert_payload(
                "alice",
                &cert.device_key,
                cert.created_at_ms,
            ))
            .to_bytes(),
    );
    let e = c
        .signed(&alice, "POST", "/v1/devices", add_request(cert))
        .await
        .expect_error(400, ErrorCode::BadRequest);
    assert!(e.message.contains("certificate"), "{e:?}");
    // A certificate for another handle.
    let other = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut cert = certificate(&alice, &other);
    cert.signature = Bytes::copy_from_slice(
        &alice
            .account
            .sign(&identity::device_cert_payload(
                "bob",
                &cert.device_key,
                cert.created_at_ms,
            ))
            .to_bytes(),
    );
    c.signed(&alice, "POST", "/v1/devices", add_request(cert))
        .await
        .expect_error(400, ErrorCode::BadRequest);
    // Not a key.
    let mut cert = certificate(&alice, &other);
    cert.device_key = Bytes::from_static(&[1; 31]);
    c.signed(&alice, "POST", "/v1/devices", add_request(cert))
        .await
        .expect_error(400, ErrorCode::BadRequest);
    // No certificate.
    c.signed(
        &alice,
        "POST",
        "/v1/devices",
        wire::AddDevice { certificate: None }.encode_to_vec(),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    // A key in use by a device of the account.
    c.signed(
        &alice,
        "POST",
        "/v1/devices",
        add_request(certificate(&alice, &alice2.device)),
    )
    .await
    .expect_error(409, ErrorCode::Conflict);
    // Unsigned.
    c.raw(
        "POST",
        "/v1/devices",
        add_request(certificate(&alice, &other)),
        &[],
    )
    .await
    .expect_error(401, ErrorCode::Unauthenticated);
    // Nothing of that was added.
    assert_eq!(account(&c, &bob, "alice").await.devices.len(), 3);
}

#[tokio::test]
async fn device_limit_counts_devices_not_removed() {
    let server = TestServer::start_with(|c| c.limits.max_devices_per_account = 2).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let alice2 = add_device(&c, &alice).await;
    let spare = SigningKey::generate(&mut rand::rngs::OsRng);
    let e = c
        .signed(
            &alice,
            "POST",
            "/v1/devices",
            add_request(certificate(&alice, &spare)),
        )
        .await
        .expect_error(403, ErrorCode::LimitExceeded);
    assert!(e.message.contains("at most 2"), "{e:?}");
    // Removing one makes room; the numbers are never reused.
    c.signed(&alice, "DELETE", "/v1/devices/2", vec![])
        .await
        .decode::<()>();
    let alice3 = add_device(&c, &alice).await;
    assert_eq!(alice3.device_id, 3);
    // A removed device's key does not come back.
    c.signed(&alice, "DELETE", "/v1/devices/3", vec![])
        .await
        .decode::<()>();
    c.signed(
        &alice,
        "POST",
        "/v1/devices",
        add_request(certificate(&alice, &alice2.device)),
    )
    .await
    .expect_error(409, ErrorCode::Conflict);
}

#[tokio::test]
async fn device_list_is_verified_versioned_and_served() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let alice2 = add_device(&c, &alice).await;

    assert_eq!(account(&c, &bob, "alice").await.device_list, None);
    let v1 = signed_list("alice", 1, &[&alice, &alice2], &alice.account);
    let r = put_list(&c, &alice, &v1).await;
    assert_eq!(r.status, 200, "{:?}", r.error());
    assert!(r.body.is_empty());
    assert_eq!(
        account(&c, &bob, "alice").await.device_list,
        Some(v1.clone())
    );
    // The batch lookup carries it too.
    let batch: wire::AccountsResponse = c
        .signed(
            &bob,
            "POST",
            "/v1/accounts",
            wire::AccountsRequest {
                handles: vec!["alice".into(), "bob".into()],
            }
            .encode_to_vec(),
        )
        .await
        .decode();
    assert_eq!(batch.accounts[0].device_list, Some(v1.clone()));
    assert_eq!(batch.accounts[1].device_list, None);

    // Stale versions.
    put_list(
        &c,
        &alice2,
        &signed_list("alice", 1, &[&alice], &alice.account),
    )
    .await
    .expect_error(409, ErrorCode::Conflict);
    // Signed by another key (bob's account key), or damaged.
    let e = put_list(
        &c,
        &alice,
        &signed_list("alice", 2, &[&alice], &bob.account),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    assert!(e.message.contains("signature"), "{e:?}");
    let mut damaged = signed_list("alice", 2, &[&alice], &alice.account);
    let mut sig = damaged.signature.to_vec();
    sig[0] ^= 1;
    damaged.signature = sig.into();
    put_list(&c, &alice, &damaged)
        .await
        .expect_error(400, ErrorCode::BadRequest);
    // A list for another handle, even signed by the caller's account key.
    let e = put_list(&c, &alice, &signed_list("bob", 2, &[&bob], &alice.account))
        .await
        .expect_error(400, ErrorCode::BadRequest);
    assert!(e.message.contains("another account"), "{e:?}");
    // Bob cannot publish alice's list (it does not verify under bob's key and names
    // alice).
    put_list(
        &c,
        &bob,
        &signed_list("alice", 2, &[&alice], &alice.account),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    // An unknown device, a device with another key, a wrong order.
    let mut ghost = Identity::new("alice");
    ghost.device_id = 9;
    let e = put_list(
        &c,
        &alice,
        &signed_list("alice", 2, &[&alice, &ghost], &alice.account),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    assert!(e.message.contains("does not exist"), "{e:?}");
    let mut impostor = Identity::new("alice");
    impostor.device_id = 2;
    put_list(
        &c,
        &alice,
        &signed_list("alice", 2, &[&alice, &impostor], &alice.account),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    put_list(
        &c,
        &alice,
        &signed_list("alice", 2, &[&alice2, &alice], &alice.account),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    // Nothing of that was stored.
    assert_eq!(account(&c, &bob, "alice").await.device_list, Some(v1));

    // A newer version may leave a device out (it is being removed); a removed device
    // cannot be listed any more.
    let v5 = signed_list("alice", 5, &[&alice2], &alice.account);
    assert_eq!(put_list(&c, &alice2, &v5).await.status, 200);
    c.signed(&alice2, "DELETE", "/v1/devices/1", vec![])
        .await
        .decode::<()>();
    put_list(
        &c,
        &alice2,
        &signed_list("alice", 6, &[&alice, &alice2], &alice.account),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    assert_eq!(account(&c, &bob, "alice").await.device_list, Some(v5));
    // Malformed bodies.
    c.signed(&alice2, "PUT", "/v1/devices/list", vec![0xff, 0xff])
        .await
        .expect_error(400, ErrorCode::BadRequest);
}

#[tokio::test]
async fn removed_device_is_disconnected_and_refused() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let alice2 = add_device(&c, &alice).await;
    let alice3 = add_device(&c, &alice).await;

    let mut ws1 = c.login(&alice).await;
    ws1.backlog().await;
    let mut ws2 = c.login(&alice2).await;
    ws2.backlog().await;
    let mut bob_ws = c.login(&bob).await;
    bob_ws.backlog().await;

    // alice/1 removes alice/2: its connection closes with 1008 "device removed".
    c.signed(&alice, "DELETE", "/v1/devices/2", vec![])
        .await
        .decode::<()>();
    let (code, reason) = ws2.expect_close().await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "device removed");
    // Its later logins and signed requests are refused.
    let mut again = c.ws_connect().await;
    let nonce = again.challenge().await;
    again.send_auth(&alice2, &nonce).await;
    let (code, reason) = again.expect_close().await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "authentication failed");
    c.signed(&alice2, "GET", "/v1/accounts/bob", vec![])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    // Others see it flagged removed (still listed, so that its old commits verify).
    let ids: Vec<(u32, bool)> = account(&c, &bob, "alice")
        .await
        .devices
        .iter()
        .map(|d| (d.device_id, d.revoked))
        .collect();
    assert_eq!(ids, vec![(1, false), (2, true), (3, false)]);
    // Removing it again, or an unknown device, is NOT_FOUND.
    c.signed(&alice, "DELETE", "/v1/devices/2", vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);
    c.signed(&alice, "DELETE", "/v1/devices/77", vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);
    c.signed(&alice, "DELETE", "/v1/devices/x", vec![])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    // Other devices are unaffected.
    ws1.ping().await;
    bob_ws.ping().await;

    // A device may remove itself.
    c.signed(&alice3, "DELETE", "/v1/devices/3", vec![])
        .await
        .decode::<()>();
    c.signed(&alice3, "GET", "/v1/accounts/bob", vec![])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    ws1.ping().await;
    account(&c, &alice, "bob").await;
}

// ------------------------------------------------------------------ link sessions

pub(crate) async fn create_link(c: &Client, who: &Identity, ttl_secs: u32) -> wire::LinkCreated {
    c.signed(
        who,
        "POST",
        "/v1/links",
        wire::LinkCreate { ttl_secs }.encode_to_vec(),
    )
    .await
    .decode()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn link_session_slots() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;

    for ttl in [0, MAX_LINK_TTL_SECS + 1] {
        c.signed(
            &alice,
            "POST",
            "/v1/links",
            wire::LinkCreate { ttl_secs: ttl }.encode_to_vec(),
        )
        .await
        .expect_error(400, ErrorCode::BadRequest);
    }
    let before = now_ms();
    let link = create_link(&c, &alice, 600).await;
    assert_eq!(link.link_id.len(), 16);
    assert!(link.expires_at_ms >= before + 600_000);
    let other = create_link(&c, &alice, 600).await;
    assert_ne!(link.link_id, other.link_id);
    let id = hex(&link.link_id);

    // Not written yet: 204 at once, and after a wait.
    let r = c
        .raw("GET", &format!("/v1/links/{id}/hello"), vec![], &[])
        .await;
    assert_eq!(r.status, 204);
    let r = c
        .raw(
            "GET",
            &format!("/v1/links/{id}/hello?wait_ms=300"),
            vec![],
            &[],
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());

    // Written (no authentication), read back, write-once.
    let r = c
        .raw(
            "PUT",
            &format!("/v1/links/{id}/hello"),
            b"sealed-1".to_vec(),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c
        .raw("GET", &format!("/v1/links/{id}/hello"), vec![], &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"sealed-1"));
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/octet-stream"
    );
    c.raw(
        "PUT",
        &format!("/v1/links/{id}/hello"),
        b"sealed-2".to_vec(),
        &[],
    )
    .await
    .expect_error(409, ErrorCode::Conflict);
    let r = c
        .raw("GET", &format!("/v1/links/{id}/hello"), vec![], &[])
        .await;
    assert_eq!(r.body, Bytes::from_static(b"sealed-1"));
    // The other session has its own slots.
    let r = c
        .raw(
            "GET",
            &format!("/v1/links/{}/hello", hex(&other.link_id)),
            vec![],
            &[],
        )
        .await;
    assert_eq!(r.status, 204);

    // A long poll returns once another task writes the slot.
    let reader = {
        let c = server.client();
        let path = format!("/v1/links/{id}/reply?wait_ms=20000");
        tokio::spawn(async move { c.raw("GET", &path, vec![], &[]).await })
    };
    let w = c
        .raw(
            "PUT",
            &format!("/v1/links/{id}/reply"),
            b"answer".to_vec(),
            &[],
        )
        .await;
    assert_eq!(w.status, 200);
    let r = tokio::time::timeout(TIMEOUT, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"answer"));

    // Slot names and ids.
    c.raw("PUT", &format!("/v1/links/{id}/Hello"), b"x".to_vec(), &[])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    c.raw(
        "PUT",
        &format!("/v1/links/{id}/{}", "a".repeat(17)),
        b"x".to_vec(),
        &[],
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    c.raw("GET", "/v1/links/abcd/hello", vec![], &[])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    // Unknown sessions.
    let unknown = hex(&[0x42; 16]);
    c.raw(
        "GET",
        &format!("/v1/links/{unknown}/hello?wait_ms=1000"),
        vec![],
        &[],
    )
    .await
    .expect_error(404, ErrorCode::NotFound);
    c.raw(
        "PUT",
        &format!("/v1/links/{unknown}/hello"),
        b"x".to_vec(),
        &[],
    )
    .await
    .expect_error(404, ErrorCode::NotFound);

    // Slot size: the limit is accepted, one byte more is TOO_LARGE.
    let r = c
        .raw(
            "PUT",
            &format!("/v1/links/{id}/big"),
            vec![7u8; MAX_LINK_SLOT_BYTES],
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c
        .raw("GET", &format!("/v1/links/{id}/big"), vec![], &[])
        .await;
    assert_eq!(r.body.len(), MAX_LINK_SLOT_BYTES);
    c.raw(
        "PUT",
        &format!("/v1/links/{id}/big2"),
        vec![7u8; MAX_LINK_SLOT_BYTES + 1],
        &[],
    )
    .await
    .expect_error(413, ErrorCode::TooLarge);
    // Other API bodies keep their own, smaller limit.
    c.signed(
        &alice,
        "POST",
        "/v1/links",
        vec![0u8; hushwire_proto::limits::MAX_API_BODY_BYTES + 1],
    )
    .await
    .expect_error(413, ErrorCode::TooLarge);

    // Only the device that opened it may end it; to others it does not exist.
    let alice2 = add_device(&c, &alice).await;
    for who in [&bob, &alice2] {
        c.signed(who, "DELETE", &format!("/v1/links/{id}"), vec![])
            .await
            .expect_error(404, ErrorCode::NotFound);
    }
    c.raw("DELETE", &format!("/v1/links/{id}"), vec![], &[])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    c.signed(&alice, "DELETE", &format!("/v1/links/{id}"), vec![])
        .await
        .decode::<()>();
    c.raw("GET", &format!("/v1/links/{id}/hello"), vec![], &[])
        .await
        .expect_error(404, ErrorCode::NotFound);
    c.signed(&alice, "DELETE", &format!("/v1/links/{id}"), vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);
}

#[tokio::test]
async fn link_session_expiry_and_slot_limit() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let owner = hushwire_store::DeviceAddr {
        handle: "alice".into(),
        device_id: alice.device_id,
    };
    // A session whose time is up (made in the store, so no test waits for a clock).
    let expired = [0x11; 16];
    server
        .store
        .create_link(expired, &owner, now_ms() - 1)
        .await
        .unwrap();
    let id = hex(&expired);
    c.raw(
        "GET",
        &format!("/v1/links/{id}/hello?wait_ms=500"),
        vec![],
        &[],
    )
    .await
    .expect_error(404, ErrorCode::NotFound);
    c.raw("PUT", &format!("/v1/links/{id}/hello"), b"x".to_vec(), &[])
        .await
        .expect_error(404, ErrorCode::NotFound);
    c.signed(&alice, "DELETE", &format!("/v1/links/{id}"), vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);

    // A session that expires while a reader waits: the reader gets 404.
    let soon = [0x12; 16];
    server
        .store
        .create_link(soon, &owner, now_ms() + 400)
        .await
        .unwrap();
    let r = c
        .raw(
            "GET",
            &format!("/v1/links/{}/hello?wait_ms=20000", hex(&soon)),
            vec![],
            &[],
        )
        .await;
    r.expect_error(404, ErrorCode::NotFound);

    // At most MAX_LINK_SLOTS slots per session.
    let full = [0x13; 16];
    server
        .store
        .create_link(full, &owner, now_ms() + 600_000)
        .await
        .unwrap();
    for i in 0..MAX_LINK_SLOTS {
        let r = server
            .store
            .put_link_slot(full, &format!("s{i}"), Bytes::from_static(b"x"), now_ms())
            .await
            .unwrap();
        assert_eq!(r, hushwire_store::PutSlot::Stored);
    }
    c.raw(
        "PUT",
        &format!("/v1/links/{}/more", hex(&full)),
        b"x".to_vec(),
        &[],
    )
    .await
    .expect_error(403, ErrorCode::LimitExceeded);
}

#[tokio::test]
async fn link_slot_requests_are_rate_limited_per_ip() {
    let server =
        TestServer::start_with(|c| c.rate_limits.link_requests_per_ip_per_minute = 3).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let link = create_link(&c, &alice, 60).await;
    let id = hex(&link.link_id);
    assert_eq!(
        c.raw("PUT", &format!("/v1/links/{id}/a"), b"x".to_vec(), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        c.raw("GET", &format!("/v1/links/{id}/a"), vec![], &[])
            .await
            .status,
        200
    );
    assert_eq!(
        c.raw("GET", &format!("/v1/links/{id}/b"), vec![], &[])
            .await
            .status,
        204
    );
    c.raw("PUT", &format!("/v1/links/{id}/c"), b"x".to_vec(), &[])
        .await
        .expect_error(429, ErrorCode::RateLimited);
    // Authenticated routes are not counted against it.
    create_link(&c, &alice, 60).await;
}

fn recover_request(handle: &str, cert: wire::DeviceCertificate) -> Vec<u8> {
    wire::RecoverDevice {
        handle: handle.to_owned(),
        certificate: Some(cert),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn recover_device_needs_a_fresh_certificate_under_the_account_key() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;

    // Signed by bob's account key, not alice's: one answer, as for a handle nobody has.
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let wrong = c
        .raw(
            "POST",
            "/v1/devices/recover",
            recover_request("alice", certificate(&bob, &key)),
            &[],
        )
        .await;
    let e = wrong.expect_error(401, ErrorCode::Unauthenticated);
    assert!(
        e.message.ends_with("authentication failed"),
        "{}",
        e.message
    );
    let ghost = c
        .raw(
            "POST",
            "/v1/devices/recover",
            recover_request("ghost", certificate(&Identity::new("ghost"), &key)),
            &[],
        )
        .await;
    assert_eq!(ghost.body, wrong.body);

    // A certificate made an hour ago (it could have leaked from an old backup restore).
    let created = now_ms() - 60 * 60 * 1000;
    let payload = identity::device_cert_payload("alice", &key.verifying_key().to_bytes(), created);
    let stale = wire::DeviceCertificate {
        device_key: Bytes::copy_from_slice(&key.verifying_key().to_bytes()),
        created_at_ms: created,
        signature: Bytes::copy_from_slice(&alice.account.sign(&payload).to_bytes()),
    };
    let resp = c
        .raw(
            "POST",
            "/v1/devices/recover",
            recover_request("alice", stale),
            &[],
        )
        .await;
    assert_eq!(
        resp.body, wrong.body,
        "a stale certificate is refused alike"
    );

    // A fresh one under alice's key adds the device, which can then act as alice.
    let cert = certificate(&alice, &key);
    let added: wire::DeviceAdded = c
        .raw(
            "POST",
            "/v1/devices/recover",
            recover_request("alice", cert.clone()),
            &[],
        )
        .await
        .decode();
    assert_eq!(added.device_id, 2);
    let restored = Identity {
        handle: "alice".into(),
        account: alice.account.clone(),
        device: key,
        device_id: added.device_id,
    };
    let info = account(&c, &restored, "alice").await;
    let ids: Vec<u32> = info.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, vec![1, 2]);

    // The same request again: the key is in use.
    c.raw(
        "POST",
        "/v1/devices/recover",
        recover_request("alice", cert),
        &[],
    )
    .await
    .expect_error(409, ErrorCode::Conflict);

    // A malformed body is a bad request, and the server goes on.
    c.raw("POST", "/v1/devices/recover", b"\xff\xff".to_vec(), &[])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    let info = account(&c, &bob, "alice").await;
    assert_eq!(info.devices.len(), 2);
}
