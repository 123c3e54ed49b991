//! Media blobs over real HTTPS: create, parts, resume, ranged download, access rules,
//! quota, deletion, the sweeper, and storage failures.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use hushwire_proto::identity;
use hushwire_proto::wire::{self, ErrorCode};
use hushwire_server::ServerConfig;
use hushwire_store::{Accounts, BlobId, Blobs, NewDevice};
use prost::Message as _;

use crate::common::*;

pub(crate) const PART: u32 = 1024;

pub(crate) fn media_config(c: &mut ServerConfig) {
    c.media.part_size = PART;
    c.media.max_blob_bytes = 64 * 1024;
    c.media.upload_buffer_bytes = 16 * 1024;
}

/// Bytes that look like ciphertext (the server never sees anything else).
pub(crate) fn ciphertext(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

async fn make_group(c: &Client, group: &[u8], members: &[&Identity]) {
    let mut ws = c.login(members[0]).await;
    ws.backlog().await;
    let mut commit = commit(group, 0, 1, members);
    commit.welcomes = vec![wire::WelcomeOut {
        welcome: welcome_bytes(),
        recipients: members.iter().skip(1).map(|m| m.addr()).collect(),
    }];
    accepted(ws.submit(1, commit).await);
}

/// Adds a device to `who`'s account through the store (as linking would).
async fn link(server: &TestServer, who: &Identity) -> Identity {
    let device = SigningKey::generate(&mut rand::rngs::OsRng);
    let key = device.verifying_key().to_bytes();
    let created = now_ms();
    let cert = who
        .account
        .sign(&identity::device_cert_payload(&who.handle, &key, created))
        .to_bytes();
    let record = server
        .store
        .add_device(
            &who.handle,
            NewDevice {
                device_key: key.to_vec(),
                cert_created_at_ms: created,
                cert_signature: cert.to_vec(),
            },
        )
        .await
        .unwrap()
        .unwrap();
    Identity {
        handle: who.handle.clone(),
        account: who.account.clone(),
        device,
        device_id: record.addr.device_id,
    }
}

async fn create(c: &Client, who: &Identity, group: &[u8], size: u64) -> Resp {
    let body = wire::CreateBlob {
        size,
        group_id: Bytes::copy_from_slice(group),
    }
    .encode_to_vec();
    c.signed(who, "POST", "/v1/blobs", body).await
}

/// A created blob's hex id (asserting success).
pub(crate) async fn created(c: &Client, who: &Identity, group: &[u8], size: u64) -> String {
    let b: wire::BlobCreated = create(c, who, group, size).await.decode();
    assert_eq!(b.blob_id.len(), 32);
    assert_eq!(b.part_size, PART);
    hex(&b.blob_id)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) async fn put(c: &Client, who: &Identity, id: &str, index: u32, body: &[u8]) -> Resp {
    c.signed(
        who,
        "PUT",
        &format!("/v1/blobs/{id}/parts/{index}"),
        body.to_vec(),
    )
    .await
}

pub(crate) async fn upload_all(
    c: &Client,
    who: &Identity,
    id: &str,
    data: &[u8],
) -> wire::BlobStatus {
    let mut last = None;
    for (i, part) in data.chunks(PART as usize).enumerate() {
        last = Some(put(c, who, id, i as u32, part).await.decode());
    }
    last.expect("upload_all needs data")
}

async fn get_status(c: &Client, who: &Identity, id: &str) -> Resp {
    c.signed(who, "GET", &format!("/v1/blobs/{id}/status"), vec![])
        .await
}

async fn download(c: &Client, who: &Identity, id: &str, range: Option<&str>) -> Resp {
    let headers: Vec<(&str, String)> = range.map(|r| ("range", r.to_owned())).into_iter().collect();
    c.signed_with(who, "GET", &format!("/v1/blobs/{id}"), vec![], &headers)
        .await
}

fn blob_dir(server: &TestServer, id: &str) -> PathBuf {
    server.server.config().data_dir.join("blobs").join(id)
}

/// Polls `cond` every 20 ms until it holds, for at most `TIMEOUT`.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bid(hex: &str) -> BlobId {
    BlobId::from_hex(hex).unwrap()
}

/// Whether the store has no record of the blob any more.
async fn is_gone(store: std::sync::Arc<hushwire_server::SqliteStore>, id: String) -> bool {
    store.known_blobs(&[bid(&id)]).await.unwrap().is_empty()
}

#[tokio::test]
async fn upload_resume_and_ranged_download() {
    let server = TestServer::start_with(media_config).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;

    let data = ciphertext(3000, 1);
    let id = created(&c, &alice, b"g", 3000).await;
    // Parts 0 and 2 arrive; the upload is interrupted before part 1.
    let s: wire::BlobStatus = put(&c, &alice, &id, 0, &data[..1024]).await.decode();
    assert_eq!((s.received_bytes, s.complete), (1024, false));
    let s: wire::BlobStatus = put(&c, &alice, &id, 2, &data[2048..]).await.decode();
    assert_eq!(s.missing_parts, vec![1]);
    // Nobody can download an incomplete blob.
    download(&c, &bob, &id, None)
        .await
        .expect_error(404, ErrorCode::NotFound);
    // Resuming: ask the status, send what is missing. A part sent twice is fine.
    let s: wire::BlobStatus = get_status(&c, &alice, &id).await.decode();
    assert_eq!(
        (
            s.size,
            s.part_size,
            s.received_bytes,
            s.missing_parts.clone(),
            s.complete
        ),
        (3000, PART, 1024 + 952, vec![1], false)
    );
    let s: wire::BlobStatus = put(&c, &alice, &id, 0, &data[..1024]).await.decode();
    assert_eq!(s.missing_parts, vec![1]);
    // Different bytes for a stored part are refused and change nothing.
    let mut other = data[..1024].to_vec();
    other[5] ^= 1;
    put(&c, &alice, &id, 0, &other)
        .await
        .expect_error(400, ErrorCode::BadRequest);
    let s: wire::BlobStatus = put(&c, &alice, &id, 1, &data[1024..2048]).await.decode();
    assert_eq!((s.received_bytes, s.complete), (3000, true));
    assert!(s.missing_parts.is_empty());

    // The bytes on disk are exactly the uploaded ciphertext, one object per part.
    let dir = blob_dir(&server, &id);
    let mut on_disk = Vec::new();
    for i in 0..3 {
        on_disk.extend(std::fs::read(dir.join(i.to_string())).unwrap());
    }
    assert_eq!(on_disk, data);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);

    // Whole, and resumed from an offset.
    let r = download(&c, &bob, &id, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), &data[..]);
    assert_eq!(r.headers["content-length"], "3000");
    assert_eq!(r.headers["accept-ranges"], "bytes");
    let r = download(&c, &bob, &id, Some("bytes=1500-")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 1500-2999/3000");
    assert_eq!(r.body.as_ref(), &data[1500..]);
    let r = download(&c, &bob, &id, Some("bytes=1000-1099")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &data[1000..1100]);
    let r = download(&c, &bob, &id, Some("bytes=3000-")).await;
    r.expect_error(416, ErrorCode::RangeNotSatisfiable);
    assert_eq!(r.headers["content-range"], "bytes */3000");
    // The uploader's account reads it too.
    let r = download(&c, &alice, &id, Some("bytes=2999-")).await;
    assert_eq!(r.body.as_ref(), &data[2999..]);

    // bob received the last byte: recorded as fetched.
    let store = server.store.clone();
    eventually("bob's fetch is recorded", || {
        let store = store.clone();
        let id = bid(&id);
        async move {
            store
                .blob_readers(&id)
                .await
                .unwrap()
                .iter()
                .any(|r| r.device.handle == "bob" && r.fetched_at_ms.is_some())
        }
    })
    .await;
    // Every recipient has it now (the uploading device does not count).
    eventually("the blob counts as fetched", || {
        let store = store.clone();
        let id = bid(&id);
        async move {
            store
                .blob(&id)
                .await
                .unwrap()
                .unwrap()
                .fetched_at_ms
                .is_some()
        }
    })
    .await;
}

#[tokio::test]
async fn nobody_else_learns_a_blob_exists() {
    let server = TestServer::start_with(media_config).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let carol = c.new_user("carol").await;
    make_group(&c, b"g", &[&alice, &bob]).await;
    let alice2 = link(&server, &alice).await;

    // A device outside the roster (carol; alice's second device) cannot create.
    create(&c, &carol, b"g", 10)
        .await
        .expect_error(404, ErrorCode::NotFound);
    create(&c, &alice2, b"g", 10)
        .await
        .expect_error(404, ErrorCode::NotFound);
    create(&c, &alice, b"unknown group", 10)
        .await
        .expect_error(404, ErrorCode::NotFound);

    let data = ciphertext(1500, 2);
    let id = created(&c, &alice, b"g", 1500).await;
    // Only the uploading account writes and reads the status.
    put(&c, &bob, &id, 0, &data[..1024])
        .await
        .expect_error(404, ErrorCode::NotFound);
    get_status(&c, &bob, &id)
        .await
        .expect_error(404, ErrorCode::NotFound);
    // alice's other device continues her upload.
    put(&c, &alice, &id, 0, &data[..1024])
        .await
        .decode::<wire::BlobStatus>();
    let s: wire::BlobStatus = put(&c, &alice2, &id, 1, &data[1024..]).await.decode();
    assert!(s.complete);
    // Readers: bob (roster) and alice's devices; not carol.
    assert_eq!(download(&c, &bob, &id, None).await.body.as_ref(), &data[..]);
    assert_eq!(
        download(&c, &alice2, &id, None).await.body.as_ref(),
        &data[..]
    );
    download(&c, &carol, &id, None)
        .await
        .expect_error(404, ErrorCode::NotFound);
    // Unknown ids look the same; malformed ones are a bad request.
    let unknown = hex(&[7u8; 32]);
    download(&c, &bob, &unknown, None)
        .await
        .expect_error(404, ErrorCode::NotFound);
    get_status(&c, &alice, &unknown)
        .await
        .expect_error(404, ErrorCode::NotFound);
    download(&c, &bob, "abc", None)
        .await
        .expect_error(400, ErrorCode::BadRequest);
    // Unsigned: refused before anything else (a part body is not even read).
    let r = c.raw("GET", &format!("/v1/blobs/{id}"), vec![], &[]).await;
    r.expect_error(401, ErrorCode::Unauthenticated);
    let r = c
        .raw(
            "PUT",
            &format!("/v1/blobs/{id}/parts/0"),
            data[..1024].to_vec(),
            &[],
        )
        .await;
    r.expect_error(401, ErrorCode::Unauthenticated);
    // A signature by another device (or over other bytes) is refused too.
    let path = format!("{}/v1/blobs/{id}/parts/0", c.prefix);
    let forged = bob.auth_header("PUT", &path, &data[..1024], now_ms());
    let forged = forged.replacen("bob.", "alice.", 1);
    let r = c
        .raw(
            "PUT",
            &format!("/v1/blobs/{id}/parts/0"),
            data[..1024].to_vec(),
            &[("x-hushwire-auth", forged)],
        )
        .await;
    r.expect_error(401, ErrorCode::Unauthenticated);
}

#[tokio::test]
async fn part_and_size_checks() {
    let server = TestServer::start_with(media_config).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;

    create(&c, &alice, b"g", 64 * 1024 + 1)
        .await
        .expect_error(413, ErrorCode::TooLarge);
    create(&c, &alice, b"", 10)
        .await
        .expect_error(400, ErrorCode::BadRequest);

    let data = ciphertext(2500, 3);
    let id = created(&c, &alice, b"g", 2500).await;
    // Index past the last part.
    put(&c, &alice, &id, 3, &data[..452])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    put(&c, &alice, &id, 4_294_967_295, &data[..10])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    let r = c
        .signed(&alice, "PUT", &format!("/v1/blobs/{id}/parts/x"), vec![1])
        .await;
    r.expect_error(400, ErrorCode::BadRequest);
    // A full part must be full; the last one exactly the remainder.
    put(&c, &alice, &id, 0, &data[..1000])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    put(&c, &alice, &id, 2, &data[2048..2400])
        .await
        .expect_error(400, ErrorCode::BadRequest);
    put(&c, &alice, &id, 2, &data[2000..])
        .await
        .expect_error(413, ErrorCode::TooLarge);
    // More than a part can ever hold: refused as the body arrives.
    put(&c, &alice, &id, 0, &ciphertext(PART as usize + 1, 4))
        .await
        .expect_error(413, ErrorCode::TooLarge);
    let s: wire::BlobStatus = get_status(&c, &alice, &id).await.decode();
    assert_eq!((s.received_bytes, s.missing_parts), (0, vec![0, 1, 2]));
    assert!(
        !blob_dir(&server, &id).exists()
            || std::fs::read_dir(blob_dir(&server, &id)).unwrap().count() == 0
    );
    let s = upload_all(&c, &alice, &id, &data).await;
    assert!(s.complete);

    // An empty file: no parts, complete at once, downloads as nothing.
    let empty = created(&c, &alice, b"g", 0).await;
    let s: wire::BlobStatus = get_status(&c, &alice, &empty).await.decode();
    assert!(s.complete && s.missing_parts.is_empty());
    let r = download(&c, &bob, &empty, None).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = download(&c, &bob, &empty, Some("bytes=0-")).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[tokio::test]
async fn quota_and_delete() {
    let server = TestServer::start_with(|c| {
        media_config(c);
        c.media.quota_bytes = 5000;
    })
    .await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;

    let data = ciphertext(3000, 5);
    let first = created(&c, &alice, b"g", 3000).await;
    upload_all(&c, &alice, &first, &data).await;
    let r = create(&c, &alice, b"g", 2001).await;
    let e = r.expect_error(403, ErrorCode::QuotaExceeded);
    assert!(e.message.contains("3000 of its 5000"), "{}", e.message);
    // bob's quota is his own.
    created(&c, &bob, b"g", 5000).await;
    created(&c, &alice, b"g", 2000).await;

    // Only the owner deletes; then the blob is gone at once, bytes and all.
    let path = format!("/v1/blobs/{first}");
    c.signed(&bob, "DELETE", &path, vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);
    let r = c.signed(&alice, "DELETE", &path, vec![]).await;
    assert_eq!(r.status, 200);
    assert!(!blob_dir(&server, &first).exists());
    download(&c, &bob, &first, None)
        .await
        .expect_error(404, ErrorCode::NotFound);
    c.signed(&alice, "DELETE", &path, vec![])
        .await
        .expect_error(404, ErrorCode::NotFound);
    assert_eq!(
        server.store.known_blobs(&[bid(&first)]).await.unwrap(),
        vec![]
    );
    // The quota is released.
    created(&c, &alice, b"g", 3000).await;
    create(&c, &alice, b"g", 1)
        .await
        .expect_error(403, ErrorCode::QuotaExceeded);
}

#[tokio::test]
async fn sweeper_deletes_fetched_abandoned_and_expired_blobs() {
    let orphan = hex(&[0xee; 32]);
    let server = TestServer::start_with(|c| {
        media_config(c);
        c.media.quota_bytes = 4000;
        c.media.grace_after_fetch = Duration::from_millis(200);
        c.media.abandoned_upload_after = Duration::from_secs(3);
        c.media.retention = Duration::from_secs(6);
        c.media.sweep_interval = Duration::from_millis(100);
        // Bytes without a record (left by a crash) are found at start.
        let dir = c.data_dir.join("blobs").join(&orphan);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0"), b"orphan").unwrap();
    })
    .await;
    eventually("the orphan is removed", || {
        let dir = blob_dir(&server, &orphan);
        async move { !dir.exists() }
    })
    .await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;

    let fetched = created(&c, &alice, b"g", 1000).await;
    upload_all(&c, &alice, &fetched, &ciphertext(1000, 6)).await;
    let unfetched = created(&c, &alice, b"g", 1000).await;
    upload_all(&c, &alice, &unfetched, &ciphertext(1000, 7)).await;
    let abandoned = created(&c, &alice, b"g", 2000).await;
    let s: wire::BlobStatus = put(&c, &alice, &abandoned, 0, &ciphertext(1024, 8))
        .await
        .decode();
    assert!(!s.complete);
    // The quota is full.
    create(&c, &alice, b"g", 1)
        .await
        .expect_error(403, ErrorCode::QuotaExceeded);

    assert_eq!(download(&c, &bob, &fetched, None).await.status, 200);
    let store = server.store.clone();
    eventually("the fetched blob goes after the grace", || {
        is_gone(store.clone(), fetched.clone())
    })
    .await;
    assert!(!blob_dir(&server, &fetched).exists());
    // The others stay: nobody fetched them, and their time has not come.
    assert!(blob_dir(&server, &unfetched).exists());
    assert!(server.store.blob(&bid(&abandoned)).await.unwrap().is_some());
    // The quota is freed as blobs go.
    let extra = created(&c, &alice, b"g", 1000).await;
    let r = c
        .signed(&alice, "DELETE", &format!("/v1/blobs/{extra}"), vec![])
        .await;
    assert_eq!(r.status, 200);

    eventually("the abandoned upload goes", || {
        is_gone(store.clone(), abandoned.clone())
    })
    .await;
    assert!(!blob_dir(&server, &abandoned).exists());
    assert!(server.store.blob(&bid(&unfetched)).await.unwrap().is_some());
    eventually("the unfetched blob goes at the end of retention", || {
        is_gone(store.clone(), unfetched.clone())
    })
    .await;
    assert!(!blob_dir(&server, &unfetched).exists());
    assert_eq!(server.store.blob_usage("alice", now_ms()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_failed_write_fails_only_that_request() {
    let server = TestServer::start_with(media_config).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;

    let good = created(&c, &alice, b"g", 100).await;
    let data = ciphertext(100, 9);
    upload_all(&c, &alice, &good, &data).await;
    // The blob's directory cannot be made: every write of its parts fails.
    let bad = created(&c, &alice, b"g", 2000).await;
    let blocker = blob_dir(&server, &bad);
    std::fs::write(&blocker, b"not a directory").unwrap();
    let part = ciphertext(PART as usize, 10);
    put(&c, &alice, &bad, 0, &part)
        .await
        .expect_error(500, ErrorCode::Internal);
    // Nothing was recorded, nothing half-written; the server and other blobs are fine.
    let s: wire::BlobStatus = get_status(&c, &alice, &bad).await.decode();
    assert_eq!((s.received_bytes, s.missing_parts), (0, vec![0, 1]));
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
    assert_eq!(
        download(&c, &bob, &good, None).await.body.as_ref(),
        &data[..]
    );
    // Once the disk is writable again the same part goes through.
    std::fs::remove_file(&blocker).unwrap();
    let s: wire::BlobStatus = put(&c, &alice, &bad, 0, &part).await.decode();
    assert_eq!(s.missing_parts, vec![1]);
    assert_eq!(std::fs::read(blocker.join("0")).unwrap(), part);
}

/// A part whose bytes were stored but not recorded (a crash in between) is completed
/// by sending the same bytes again; other bytes are refused.
#[tokio::test]
async fn stored_but_unrecorded_part_is_recovered() {
    let server = TestServer::start_with(media_config).await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;
    let id = created(&c, &alice, b"g", 2048).await;
    let data = ciphertext(2048, 11);
    std::fs::create_dir_all(blob_dir(&server, &id)).unwrap();
    std::fs::write(blob_dir(&server, &id).join("1"), &data[1024..]).unwrap();
    let mut other = data[1024..].to_vec();
    other[0] ^= 0xff;
    put(&c, &alice, &id, 1, &other)
        .await
        .expect_error(400, ErrorCode::BadRequest);
    let s: wire::BlobStatus = put(&c, &alice, &id, 1, &data[1024..]).await.decode();
    assert_eq!(s.missing_parts, vec![0]);
    let s: wire::BlobStatus = put(&c, &alice, &id, 0, &data[..1024]).await.decode();
    assert!(s.complete);
    assert_eq!(download(&c, &bob, &id, None).await.body.as_ref(), &data[..]);
}

/// The same routes with the blob bytes in S3 (a local moto server), chosen by
/// `media.store` and a credentials file named in the config.
#[tokio::test]
async fn blobs_in_s3_upload_and_download() {
    use futures_util::TryStreamExt as _;
    use hushwire_server::{BlobStore as _, ObjectBlobStore};

    let Some(moto) = hushwire_blobstore::moto::MotoServer::start().unwrap() else {
        return;
    };
    let bucket = moto.create_bucket().unwrap();
    let creds_dir = tempfile::tempdir().unwrap();
    let creds = creds_dir.path().join("s3-credentials");
    std::fs::write(&creds, moto.credentials_file()).unwrap();
    let url = format!("s3://{bucket}/node-shared");
    let server = TestServer::start_with(|c| {
        media_config(c);
        c.media.store = Some(url.clone());
        c.media.s3_credentials_file = Some(creds.clone());
    })
    .await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    make_group(&c, b"g", &[&alice, &bob]).await;

    let data = ciphertext(2500, 4);
    let id = created(&c, &alice, b"g", 2500).await;
    let s = upload_all(&c, &alice, &id, &data).await;
    assert!(s.complete);
    // A part sent again is recognised (S3's conditional write), different bytes refused.
    let s: wire::BlobStatus = put(&c, &alice, &id, 0, &data[..1024]).await.decode();
    assert!(s.complete);
    let mut other = data[..1024].to_vec();
    other[0] ^= 1;
    put(&c, &alice, &id, 0, &other)
        .await
        .expect_error(400, ErrorCode::BadRequest);

    let r = download(&c, &bob, &id, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), &data[..]);
    let r = download(&c, &bob, &id, Some("bytes=1000-2099")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &data[1000..2100]);

    // The bytes are in the bucket under the prefix, not in the data directory.
    let bucket_view = ObjectBlobStore::s3(&url, &moto.settings()).unwrap();
    let mut parts: Vec<(String, u32, u64)> = bucket_view
        .list_parts()
        .map_ok(|p| (hex(&p.blob), p.index, p.size))
        .try_collect()
        .await
        .unwrap();
    parts.sort_unstable();
    assert_eq!(
        parts,
        [
            (id.clone(), 0, 1024),
            (id.clone(), 1, 1024),
            (id.clone(), 2, 452)
        ]
    );
    assert!(!blob_dir(&server, &id).exists());

    // Deleting the blob deletes its objects.
    let r = c
        .signed(&alice, "DELETE", &format!("/v1/blobs/{id}"), vec![])
        .await;
    assert_eq!(r.status, 200);
    eventually("the blob's objects are deleted", || {
        let view = ObjectBlobStore::s3(&url, &moto.settings()).unwrap();
        async move {
            view.list_parts()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
}
