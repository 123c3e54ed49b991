use std::time::Duration;

use hushwire_proto::identity::REQUEST_AUTH_HEADER;
use hushwire_proto::wire::{self, ErrorCode};
use hushwire_server::RegistrationPolicy;
use hushwire_store::{Accounts, DeviceAddr};
use prost::Message;

use crate::common::*;

#[tokio::test]
async fn register_open_policy() {
    let server = TestServer::start().await;
    let c = server.client();
    let mut alice = Identity::new("alice");
    let r = c.register(&mut alice).await;
    assert_eq!(r.status, 200);
    assert_eq!(alice.device_id, 1, "first device gets id 1");

    // Taken.
    c.register(&mut Identity::new("alice"))
        .await
        .expect_error(409, ErrorCode::HandleTaken);
    // Invalid handle.
    c.register(&mut Identity::new("Bob!"))
        .await
        .expect_error(400, ErrorCode::InvalidHandle);
    c.register(&mut Identity::new("ab"))
        .await
        .expect_error(400, ErrorCode::InvalidHandle);

    // Device certificate signed by another key.
    let carol = Identity::new("carol");
    let mut req = carol.register_request("");
    let other = Identity::new("carol");
    req.account_key = other.register_request("").account_key;
    let e = c
        .raw("POST", "/v1/register", req.encode_to_vec(), &[])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    assert!(e.message.contains("signature"), "{}", e.message);

    // Garbage and oversized bodies.
    c.raw("POST", "/v1/register", vec![0xff, 0xff, 0xff], &[])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    c.raw("POST", "/v1/register", vec![0u8; 300 * 1024], &[])
        .await
        .expect_error(413, ErrorCode::TooLarge);

    // Unknown routes answer with an ApiError too.
    c.raw("GET", "/v1/nope", vec![], &[])
        .await
        .expect_error(404, ErrorCode::NotFound);
}

#[tokio::test]
async fn register_invite_policy() {
    let server = TestServer::start_with(|c| c.registration = RegistrationPolicy::Invite).await;
    let c = server.client();
    c.register(&mut Identity::new("alice"))
        .await
        .expect_error(403, ErrorCode::InviteRequired);
    c.register_with_invite(&mut Identity::new("alice"), "not-a-code")
        .await
        .expect_error(403, ErrorCode::InviteRequired);

    let code = hushwire_server::create_invite(server.store.as_ref(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(code.len(), 20);
    let mut alice = Identity::new("alice");
    assert_eq!(c.register_with_invite(&mut alice, &code).await.status, 200);
    // Single use.
    c.register_with_invite(&mut Identity::new("bob"), &code)
        .await
        .expect_error(403, ErrorCode::InviteRequired);
    // A stranger trying handles learns nothing: a taken one answers as a free one does.
    c.register_with_invite(&mut Identity::new("alice"), "not-a-code")
        .await
        .expect_error(403, ErrorCode::InviteRequired);
    c.register_with_invite(&mut Identity::new("alice"), &code)
        .await
        .expect_error(403, ErrorCode::InviteRequired);
    // With a valid invite a taken handle is said, and the invite stays usable.
    let second = hushwire_server::create_invite(server.store.as_ref(), Duration::from_secs(3600))
        .await
        .unwrap();
    c.register_with_invite(&mut Identity::new("alice"), &second)
        .await
        .expect_error(409, ErrorCode::HandleTaken);
    let mut carol = Identity::new("carol");
    assert_eq!(
        c.register_with_invite(&mut carol, &second).await.status,
        200
    );
}

#[tokio::test]
async fn registrations_are_rate_limited_per_ip() {
    let server =
        TestServer::start_with(|c| c.rate_limits.registrations_per_ip_per_minute = 2).await;
    let c = server.client();
    let user1 = c.new_user("user1").await;
    c.new_user("user2").await;
    c.register(&mut Identity::new("user3"))
        .await
        .expect_error(429, ErrorCode::RateLimited);
    // Others are unaffected: a newcomer from another address registers, and a user
    // registered from the limited address logs in and is served.
    let mut elsewhere = server.client();
    elsewhere.source = Some("127.0.0.2".parse().unwrap());
    elsewhere.new_user("user4").await;
    let mut ws = c.login(&user1).await;
    ws.backlog().await;
    ws.ping().await;
}

#[tokio::test]
async fn signed_requests() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let path = "/v1/accounts/alice";
    // What signatures cover: the path as the server receives it, prefix included.
    let full = format!("{}{}", c.prefix, path);

    // Good.
    let info: wire::AccountInfo = c.signed(&alice, "GET", path, vec![]).await.decode();
    assert_eq!(info.handle, "alice");
    assert_eq!(info.devices.len(), 1);
    assert_eq!(info.devices[0].device_id, 1);

    // Missing header.
    c.raw("GET", path, vec![], &[])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    // Malformed header.
    c.raw(
        "GET",
        path,
        vec![],
        &[(REQUEST_AUTH_HEADER, "alice.1.x.y".into())],
    )
    .await
    .expect_error(401, ErrorCode::Unauthenticated);
    // Signed by a key that is not the device's.
    let mut mallory = Identity::new("alice");
    mallory.device_id = 1;
    c.signed(&mallory, "GET", path, vec![])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    // Signature over another path.
    let h = alice.auth_header("GET", "/v1/accounts/bob", &[], now_ms());
    c.raw("GET", path, vec![], &[(REQUEST_AUTH_HEADER, h)])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    // Stale and future timestamps.
    for skew in [-(6 * 60 * 1000i64), 6 * 60 * 1000] {
        let t = (now_ms() as i64 + skew) as u64;
        let h = alice.auth_header("GET", &full, &[], t);
        c.raw("GET", path, vec![], &[(REQUEST_AUTH_HEADER, h)])
            .await
            .expect_error(401, ErrorCode::Unauthenticated);
    }
    // Replay.
    let h = alice.auth_header("GET", &full, &[], now_ms());
    assert_eq!(
        c.raw("GET", path, vec![], &[(REQUEST_AUTH_HEADER, h.clone())])
            .await
            .status,
        200
    );
    let e = c
        .raw("GET", path, vec![], &[(REQUEST_AUTH_HEADER, h)])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    assert!(e.message.contains("replayed"));
    // Unknown device.
    let mut ghost = Identity::new("ghost");
    ghost.device_id = 1;
    c.signed(&ghost, "GET", path, vec![])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
    // Unknown account, authenticated.
    c.signed(&alice, "GET", "/v1/accounts/nobody", vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);

    // Revoked device.
    let addr = DeviceAddr {
        handle: "alice".into(),
        device_id: 1,
    };
    assert!(server.store.revoke_device(&addr).await.unwrap());
    c.signed(&alice, "GET", path, vec![])
        .await
        .expect_error(401, ErrorCode::Unauthenticated);
}

#[tokio::test]
async fn path_prefix_is_part_of_every_route_and_signature() {
    let server = TestServer::start_with(|c| c.path_prefix = "/abc123".into()).await;
    assert!(server.url.ends_with("/abc123"));
    let c = server.client();
    let alice = c.new_user("alice").await;
    let info: wire::AccountInfo = c
        .signed(&alice, "GET", "/v1/accounts/alice", vec![])
        .await
        .decode();
    assert_eq!(info.handle, "alice");
    // Without the prefix, the API does not exist: the decoy site answers, as nginx would.
    let mut bare = server.client();
    bare.prefix = String::new();
    let resp = bare.raw("POST", "/v1/register", vec![], &[]).await;
    assert_eq!(resp.status, 404);
    assert!(
        std::str::from_utf8(&resp.body)
            .unwrap()
            .contains("<center>nginx</center>")
    );
    let resp = bare.raw("GET", "/", vec![], &[]).await;
    assert_eq!(resp.status, 200);
    // A wrong prefix of the right length is just another unknown path.
    bare.prefix = "/abc124".into();
    assert_eq!(bare.raw("GET", "/v1/ws", vec![], &[]).await.status, 404);
}

#[tokio::test]
async fn a_prefix_is_generated_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let mut first = TestServer::start_config(config.clone()).await;
    assert!(first.prefix.len() > 16, "{}", first.prefix);
    assert!(first.url.ends_with(&first.prefix));
    first.stop().await;
    let mut second = TestServer::start_config(config).await;
    assert_eq!(second.prefix, first.prefix);
    second.stop().await;
}

fn upload(packages: &[(bytes::Bytes, bool)]) -> Vec<u8> {
    wire::UploadKeyPackages {
        key_packages: packages
            .iter()
            .map(|(kp, last)| wire::KeyPackageUpload {
                key_package: kp.clone(),
                last_resort: *last,
            })
            .collect(),
    }
    .encode_to_vec()
}

fn claim(handle: &str, suite: u32) -> Vec<u8> {
    wire::ClaimKeyPackages {
        handle: handle.into(),
        ciphersuite: suite,
    }
    .encode_to_vec()
}

#[tokio::test]
async fn key_packages_upload_claim_count() {
    let server = TestServer::start().await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;

    let body = upload(&[
        (key_package(1, 1), false),
        (key_package(1, 2), false),
        (key_package(0x4f, 3), false),
        (key_package(1, 9), true),
    ]);
    let r: wire::UploadKeyPackagesResponse = c
        .signed(&alice, "PUT", "/v1/keypackages", body)
        .await
        .decode();
    assert_eq!(r.stored, 4);

    let n = count(&c, &alice, 1).await;
    assert_eq!((n.available, n.has_last_resort), (2, true));
    let n = count(&c, &alice, 0x4f).await;
    assert_eq!((n.available, n.has_last_resort), (1, false));

    // Two one-time packages, then the last-resort one, which is kept.
    let mut tags = Vec::new();
    for _ in 0..4 {
        let got: wire::ClaimedKeyPackages = c
            .signed(&bob, "POST", "/v1/keypackages/claim", claim("alice", 1))
            .await
            .decode();
        assert_eq!(got.key_packages.len(), 1);
        assert_eq!(got.key_packages[0].device_id, 1);
        tags.push(got.key_packages[0].key_package[8]);
    }
    tags[..2].sort();
    assert_eq!(tags, vec![1, 2, 9, 9]);
    let n = count(&c, &alice, 1).await;
    assert_eq!((n.available, n.has_last_resort), (0, true));

    // Errors.
    c.signed(&bob, "POST", "/v1/keypackages/claim", claim("nobody", 1))
        .await
        .expect_error(404, ErrorCode::NotFound);
    c.signed(&bob, "POST", "/v1/keypackages/claim", claim("alice", 2))
        .await
        .expect_error(404, ErrorCode::NoKeyPackages);
    c.signed(&bob, "POST", "/v1/keypackages/claim", claim("alice", 70000))
        .await
        .expect_error(400, ErrorCode::BadRequest);
    let not_kp = hushwire_proto::mls::synthetic_private_message(
        b"g",
        0,
        hushwire_proto::mls::ContentType::Application,
        b"",
    );
    c.signed(
        &alice,
        "PUT",
        "/v1/keypackages",
        upload(&[(not_kp.into(), false)]),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    c.signed(
        &alice,
        "PUT",
        "/v1/keypackages",
        upload(&[(bytes::Bytes::from_static(b"\x00"), false)]),
    )
    .await
    .expect_error(400, ErrorCode::BadRequest);
    let many: Vec<_> = (0..201).map(|i| (key_package(1, i as u8), false)).collect();
    c.signed(&alice, "PUT", "/v1/keypackages", upload(&many))
        .await
        .expect_error(413, ErrorCode::TooLarge);
    c.signed(&alice, "GET", "/v1/keypackages/count", vec![])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    c.raw(
        "PUT",
        "/v1/keypackages",
        upload(&[(key_package(1, 1), false)]),
        &[],
    )
    .await
    .expect_error(401, ErrorCode::Unauthenticated);
}

#[tokio::test]
async fn claims_are_rate_limited_per_device() {
    let server = TestServer::start_with(|c| c.rate_limits.claims_per_device_per_minute = 2).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let carol = c.new_user("carol").await;
    let body = upload(&[(key_package(1, 9), true)]);
    assert_eq!(
        c.signed(&alice, "PUT", "/v1/keypackages", body)
            .await
            .status,
        200
    );
    for _ in 0..2 {
        assert_eq!(
            c.signed(&bob, "POST", "/v1/keypackages/claim", claim("alice", 1))
                .await
                .status,
            200
        );
    }
    c.signed(&bob, "POST", "/v1/keypackages/claim", claim("alice", 1))
        .await
        .expect_error(429, ErrorCode::RateLimited);
    // Another device has its own budget.
    assert_eq!(
        c.signed(&carol, "POST", "/v1/keypackages/claim", claim("alice", 1))
            .await
            .status,
        200
    );
}

async fn count(c: &Client, who: &Identity, suite: u32) -> wire::KeyPackageCount {
    let path = format!("/v1/keypackages/count?ciphersuite={suite}");
    c.signed(who, "GET", &path, vec![]).await.decode()
}
