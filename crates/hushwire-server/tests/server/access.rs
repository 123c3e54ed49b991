//! The access-control matrix: every HTTP route and every WebSocket client operation,
//! tried by every kind of caller that must be refused.
//!
//! HTTP principals (for each signed route, aimed at alice's resources):
//! - no `x-hushwire-auth` header, and a malformed one;
//! - a well-formed header naming an account that does not exist ("ghost"), one naming
//!   alice's device but signed by another key ("impostor"), one by alice's removed
//!   device (its own key: the credentials it held), and one of alice's past the auth
//!   window (a stale captured credential);
//! - a replayed request: a signed request that was accepted, sent again verbatim;
//! - a valid account (bob) acting on alice's resources.
//!
//! WebSocket principals: any operation before `auth`; an `auth` answer with an invalid
//! handle, for a ghost, by an impostor, by a removed device; a replayed challenge answer
//! (the `auth` of one successful login offered to another connection's challenge); bob,
//! logged in, using every operation on alice's group, messages and account; and a device
//! removed while connected.
//!
//! Existence. The ghost, impostor and removed-device answers are byte-identical on every
//! route (and the WebSocket close is identical too): a header names any handle, so a
//! different answer would tell anyone whether an account or device exists. A resource of
//! another account (group, blob, link session, device number) is answered byte for byte
//! like one that does not exist. The exceptions, where saying whether an account exists
//! is what the route is for, are marked [`AsOther::Discovery`] (plus registration):
//! - `POST /v1/register` answers HANDLE_TAKEN for a registered handle: a new account
//!   must learn that its handle is taken (it is the only unauthenticated one).
//! - `GET /v1/accounts/{handle}` and `POST /v1/accounts`: contact discovery, an
//!   account's public keys and devices, which a client needs to verify it.
//! - `POST /v1/keypackages/claim` and `/claim-batch`: starting a conversation needs to
//!   tell "no such account" from "no key packages left".
//! - `POST /v1/reports`: the reported account must exist to be reported.
//! - `POST /v1/directory/lookup`: key transparency answers with a proof of presence or
//!   of absence; that is its purpose.
//!
//! All of these but registration need a signed request by a current device.
//!
//! Completeness: `every_route_is_in_the_matrix` compares [`ROUTES`] with the routes
//! `src/api.rs` builds (both ways), and `ws_op` matches `client_frame::Body` without a
//! wildcard arm, so a new route or operation fails the test (or its compilation) until
//! it is classified here.

use std::collections::BTreeSet;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use hushwire_proto::identity::REQUEST_AUTH_HEADER;
use hushwire_proto::mls;
use hushwire_proto::wire::{self, ErrorCode, client_frame, server_frame, submit_result};
use prost::Message as _;

use crate::common::*;
use crate::controls::{done, pending};
use crate::devices::{add_device, certificate, create_link, signed_list};
use crate::media::{PART, ciphertext, created, hex, media_config, upload_all};

// ------------------------------------------------------------------ the HTTP table

/// The routes, as `src/api.rs` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    Register,
    Account,
    Accounts,
    KeyPackagesUpload,
    Claim,
    ClaimBatch,
    KeyPackageCount,
    GroupInfo,
    WebSocket,
    BlobCreate,
    BlobDownload,
    BlobDelete,
    BlobStatus,
    BlobPart,
    Report,
    DeviceAdd,
    DeviceRecover,
    DeviceList,
    DeviceRemove,
    LinkCreate,
    LinkDelete,
    LinkSlotPut,
    LinkSlotGet,
    Directory,
    DirectoryRoots,
    DirectoryAudit,
    DirectoryLookup,
    DirectoryHistory,
}

/// Who may call a route.
#[derive(Debug)]
enum Access {
    /// No account needed, by design (why). Bad credentials are not asked for.
    Public(&'static str),
    /// A signed request by a current device: every bad credential is 401
    /// UNAUTHENTICATED; what another account may do is the [`AsOther`].
    Signed(AsOther),
}

/// What bob gets when he aims the route at alice.
#[derive(Debug)]
enum AsOther {
    /// 404 NOT_FOUND, byte-identical to the answer for a resource that does not exist.
    Hidden,
    /// Refused with this status and code: the request can only act on the caller's own
    /// account, and alice's material does not verify under bob's account.
    Refused(u16, ErrorCode),
    /// The request cannot name another account: it acts on the caller's (why).
    OwnOnly(&'static str),
    /// Open to every account and says whether an account exists (why): see the module
    /// documentation.
    Discovery(&'static str),
}

impl Access {
    /// One line for the matrix printout.
    fn describe(&self) -> String {
        match self {
            Public(why) => format!("public: {why}"),
            Signed(Hidden) => "signed; another account's resource: 404 like a missing one".into(),
            Signed(Refused(status, code)) => {
                format!("signed; with another account's material: {status} {code:?}")
            }
            Signed(OwnOnly(why)) => format!("signed; own account only: {why}"),
            Signed(Discovery(why)) => format!("signed; tells whether an account exists: {why}"),
        }
    }
}

struct Route {
    rt: Rt,
    method: &'static str,
    /// As in `src/api.rs`, without the prefix.
    path: &'static str,
    access: Access,
}

const fn route(rt: Rt, method: &'static str, path: &'static str, access: Access) -> Route {
    Route {
        rt,
        method,
        path,
        access,
    }
}

use Access::{Public, Signed};
use AsOther::{Discovery, Hidden, OwnOnly, Refused};

/// Every HTTP route of the server.
const ROUTES: &[Route] = &[
    route(
        Rt::Register,
        "POST",
        "/v1/register",
        Public("creates an account; HANDLE_TAKEN for a registered handle"),
    ),
    route(
        Rt::Account,
        "GET",
        "/v1/accounts/{handle}",
        Signed(Discovery("contact discovery: public keys and devices")),
    ),
    route(
        Rt::Accounts,
        "POST",
        "/v1/accounts",
        Signed(Discovery(
            "batch contact discovery; unknown handles left out",
        )),
    ),
    route(
        Rt::KeyPackagesUpload,
        "PUT",
        "/v1/keypackages",
        Signed(OwnOnly("stores key packages for the calling device")),
    ),
    route(
        Rt::Claim,
        "POST",
        "/v1/keypackages/claim",
        Signed(Discovery("claiming a key package starts a conversation")),
    ),
    route(
        Rt::ClaimBatch,
        "POST",
        "/v1/keypackages/claim-batch",
        Signed(Discovery("claims for a new group's members")),
    ),
    route(
        Rt::KeyPackageCount,
        "GET",
        "/v1/keypackages/count",
        Signed(OwnOnly("counts the calling device's key packages")),
    ),
    route(
        Rt::GroupInfo,
        "GET",
        "/v1/groups/{group_id}/info",
        Signed(Hidden),
    ),
    route(
        Rt::WebSocket,
        "GET",
        "/v1/ws",
        Public("authenticates in-band (challenge, auth): see websocket_access_matrix"),
    ),
    route(Rt::BlobCreate, "POST", "/v1/blobs", Signed(Hidden)),
    route(Rt::BlobDownload, "GET", "/v1/blobs/{id}", Signed(Hidden)),
    route(Rt::BlobDelete, "DELETE", "/v1/blobs/{id}", Signed(Hidden)),
    route(
        Rt::BlobStatus,
        "GET",
        "/v1/blobs/{id}/status",
        Signed(Hidden),
    ),
    route(
        Rt::BlobPart,
        "PUT",
        "/v1/blobs/{id}/parts/{index}",
        Signed(Hidden),
    ),
    route(
        Rt::Report,
        "POST",
        "/v1/reports",
        Signed(Discovery(
            "reports are about another account, which must exist",
        )),
    ),
    route(
        Rt::DeviceAdd,
        "POST",
        "/v1/devices",
        Signed(Refused(400, ErrorCode::BadRequest)),
    ),
    route(
        Rt::DeviceRecover,
        "POST",
        "/v1/devices/recover",
        Public("the fresh certificate under the account key is the credential (backup restore)"),
    ),
    route(
        Rt::DeviceList,
        "PUT",
        "/v1/devices/list",
        Signed(Refused(400, ErrorCode::BadRequest)),
    ),
    route(
        Rt::DeviceRemove,
        "DELETE",
        "/v1/devices/{device_id}",
        Signed(Hidden),
    ),
    route(
        Rt::LinkCreate,
        "POST",
        "/v1/links",
        Signed(OwnOnly("opens a session owned by the calling device")),
    ),
    route(Rt::LinkDelete, "DELETE", "/v1/links/{id}", Signed(Hidden)),
    route(
        Rt::LinkSlotPut,
        "PUT",
        "/v1/links/{id}/{slot}",
        Public("the 128-bit link id is the capability; slots are sealed end to end"),
    ),
    route(
        Rt::LinkSlotGet,
        "GET",
        "/v1/links/{id}/{slot}",
        Public("the 128-bit link id is the capability; slots are sealed end to end"),
    ),
    route(
        Rt::Directory,
        "GET",
        "/v1/directory",
        Public("key transparency: anyone may audit"),
    ),
    route(
        Rt::DirectoryRoots,
        "GET",
        "/v1/directory/roots",
        Public("key transparency: anyone may audit"),
    ),
    route(
        Rt::DirectoryAudit,
        "GET",
        "/v1/directory/audit/{epoch}",
        Public("key transparency: anyone may audit"),
    ),
    route(
        Rt::DirectoryLookup,
        "POST",
        "/v1/directory/lookup",
        Signed(Discovery("proofs of presence or absence of any handle")),
    ),
    route(
        Rt::DirectoryHistory,
        "GET",
        "/v1/directory/history",
        Signed(OwnOnly("the calling device's own handle")),
    ),
];

/// The routes `src/api.rs` builds: (METHOD, path) of every `.route(...)` between
/// `Router::new()` and `.fallback(`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = include_str!("../../src/api.rs");
    let start = src.find("Router::new()").expect("api.rs builds a Router");
    let end = start
        + src[start..]
            .find(".fallback(")
            .expect("api.rs has a fallback");
    let code: Vec<&str> = src[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    let code = code.join("\n");
    let mut out = BTreeSet::new();
    for chunk in code.split(".route(").skip(1) {
        let open = "format!(\"{p}";
        let at = chunk
            .find(open)
            .expect("a route path is format!(\"{p}...\")")
            + open.len();
        let rest = &chunk[at..];
        let close = rest.find('"').expect("the path string ends");
        let path = rest[..close].replace("{{", "{").replace("}}", "}");
        let handlers = &rest[close..];
        let mut found = false;
        for m in [
            "get", "post", "put", "delete", "patch", "head", "options", "trace", "connect", "any",
        ] {
            let needle = format!("{m}(");
            let mut from = 0;
            while let Some(i) = handlers[from..].find(&needle) {
                let pos = from + i;
                let before = handlers[..pos].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    out.insert((m.to_uppercase(), path.clone()));
                    found = true;
                }
                from = pos + needle.len();
            }
        }
        assert!(found, "no method found for route {path}");
    }
    out
}

#[test]
fn every_route_is_in_the_matrix() {
    let source = routes_in_source();
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(table.len(), ROUTES.len(), "a route is listed twice");
    let missing: Vec<_> = source.difference(&table).collect();
    let stale: Vec<_> = table.difference(&source).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "classify every route in access.rs ROUTES: not in the table {missing:?}; \
         not a route any more {stale:?}"
    );
}

// ------------------------------------------------------------------ the world

const MISSING_GROUP: &[u8] = b"no-such-group";
const GROUP: &[u8] = b"alice-and-carol";

fn missing_blob() -> String {
    "ab".repeat(32)
}

fn missing_link() -> String {
    "cd".repeat(16)
}

/// Alice's resources and every principal.
struct World {
    server: TestServer,
    c: Client,
    /// alice/1.
    alice: Identity,
    /// alice/2, removed through `DELETE /v1/devices/2`.
    removed: Identity,
    /// alice/3, a current device nobody else may touch.
    alice3: Identity,
    bob: Identity,
    /// In alice's group.
    carol: Identity,
    /// Sends the requests that are then replayed (aimed at nothing of alice's).
    dave: Identity,
    /// Never registered.
    ghost: Identity,
    /// alice/1 with another key.
    impostor: Identity,
    /// Alice's blob in her group (complete).
    blob: String,
    blob_bytes: Vec<u8>,
    /// Alice's link session.
    link: String,
    /// Alice's connection (she created the group on it).
    _alice_ws: Ws,
}

/// Whose resource a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Alice,
    Missing,
}

struct Req {
    method: &'static str,
    path: String,
    body: Vec<u8>,
}

async fn world() -> World {
    let server = TestServer::start_with(|c| {
        media_config(c);
        c.rate_limits.claims_per_device_per_minute = 10_000;
        c.rate_limits.signals_per_device_per_minute = 10_000;
        c.rate_limits.link_requests_per_ip_per_minute = 10_000;
        c.rate_limits.directory_requests_per_ip_per_minute = 10_000;
    })
    .await;
    let c = server.client();
    let alice = c.new_user("alice").await;
    let bob = c.new_user("bob").await;
    let carol = c.new_user("carol").await;
    let dave = c.new_user("dave").await;
    let removed = add_device(&c, &alice).await;
    let alice3 = add_device(&c, &alice).await;
    assert_eq!((removed.device_id, alice3.device_id), (2, 3));
    c.signed(&alice, "DELETE", "/v1/devices/2", vec![])
        .await
        .decode::<()>();
    let mut ghost = Identity::new("ghost");
    ghost.device_id = 1;
    let mut impostor = Identity::new("alice");
    impostor.device_id = 1;

    // A last-resort key package, so claims never run out.
    let upload = wire::UploadKeyPackages {
        key_packages: vec![wire::KeyPackageUpload {
            key_package: key_package(1, 1),
            last_resort: true,
        }],
    };
    c.signed(&alice, "PUT", "/v1/keypackages", upload.encode_to_vec())
        .await
        .decode::<wire::UploadKeyPackagesResponse>();

    // A group of alice and carol, with a (sealed) GroupInfo, and a message in it.
    let mut alice_ws = c.login(&alice).await;
    alice_ws.backlog().await;
    let mut create = commit(GROUP, 0, 1, &[&alice, &carol]);
    create.welcomes = vec![wire::WelcomeOut {
        welcome: welcome_bytes(),
        recipients: vec![carol.addr()],
    }];
    let mut group_info = mls::SEALED_GROUP_INFO_MAGIC.to_vec();
    group_info.resize(mls::SEALED_GROUP_INFO_MIN_BYTES, 7);
    create.group_info = group_info.into();
    accepted(alice_ws.submit(1, create).await);
    accepted(alice_ws.submit(2, app_message(GROUP, 1, 2, b"hello")).await);
    assert_eq!(pending(&server, &carol).await, 2);

    let blob_bytes = ciphertext(PART as usize + 10, 3);
    let blob = created(&c, &alice, GROUP, blob_bytes.len() as u64).await;
    assert!(upload_all(&c, &alice, &blob, &blob_bytes).await.complete);
    let link = hex(&create_link(&c, &alice, 600).await.link_id);

    World {
        server,
        c,
        alice,
        removed,
        alice3,
        bob,
        carol,
        dave,
        ghost,
        impostor,
        blob,
        blob_bytes,
        link,
        _alice_ws: alice_ws,
    }
}

impl World {
    /// The request of `rt` aimed at alice's resource, or at one that does not exist.
    fn request(&self, r: &Route, target: Target) -> Req {
        let alice = target == Target::Alice;
        let handle = if alice { "alice" } else { "ghost" };
        let group = if alice { GROUP } else { MISSING_GROUP };
        let blob = if alice {
            self.blob.clone()
        } else {
            missing_blob()
        };
        let link = if alice {
            self.link.clone()
        } else {
            missing_link()
        };
        let none = Vec::new;
        let (path, body) = match r.rt {
            Rt::Register => {
                // A registered handle, or a new one.
                let who = Identity::new(if alice { "alice" } else { "erin" });
                (
                    "/v1/register".to_owned(),
                    who.register_request("").encode_to_vec(),
                )
            }
            Rt::Account => (format!("/v1/accounts/{handle}"), none()),
            Rt::Accounts => (
                "/v1/accounts".to_owned(),
                wire::AccountsRequest {
                    handles: vec![handle.to_owned()],
                }
                .encode_to_vec(),
            ),
            Rt::KeyPackagesUpload => (
                "/v1/keypackages".to_owned(),
                wire::UploadKeyPackages {
                    key_packages: vec![wire::KeyPackageUpload {
                        key_package: key_package(1, 9),
                        last_resort: false,
                    }],
                }
                .encode_to_vec(),
            ),
            Rt::Claim => (
                "/v1/keypackages/claim".to_owned(),
                wire::ClaimKeyPackages {
                    handle: handle.to_owned(),
                    ciphersuite: 1,
                }
                .encode_to_vec(),
            ),
            Rt::ClaimBatch => (
                "/v1/keypackages/claim-batch".to_owned(),
                wire::ClaimKeyPackagesBatch {
                    handles: vec![handle.to_owned()],
                    ciphersuite: 1,
                }
                .encode_to_vec(),
            ),
            Rt::KeyPackageCount => ("/v1/keypackages/count?ciphersuite=1".to_owned(), none()),
            Rt::GroupInfo => (format!("/v1/groups/{}/info", hex(group)), none()),
            Rt::WebSocket => ("/v1/ws".to_owned(), none()),
            Rt::BlobCreate => (
                "/v1/blobs".to_owned(),
                wire::CreateBlob {
                    size: 10,
                    group_id: Bytes::copy_from_slice(group),
                }
                .encode_to_vec(),
            ),
            Rt::BlobDownload | Rt::BlobDelete => (format!("/v1/blobs/{blob}"), none()),
            Rt::BlobStatus => (format!("/v1/blobs/{blob}/status"), none()),
            Rt::BlobPart => (
                format!("/v1/blobs/{blob}/parts/1"),
                self.blob_bytes[PART as usize..].to_vec(),
            ),
            Rt::Report => (
                "/v1/reports".to_owned(),
                wire::ReportRequest {
                    handle: handle.to_owned(),
                    reason: "spam".to_owned(),
                    messages: vec![],
                }
                .encode_to_vec(),
            ),
            Rt::DeviceAdd => {
                // A certificate of a new device under alice's account key.
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let body = wire::AddDevice {
                    certificate: Some(certificate(&self.alice, &key)),
                };
                ("/v1/devices".to_owned(), body.encode_to_vec())
            }
            Rt::DeviceRecover => {
                // A certificate for alice signed by another key (the impostor's), or
                // one for a handle nobody registered.
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let (who, cert) = if alice {
                    ("alice", certificate(&self.impostor, &key))
                } else {
                    ("ghost", certificate(&Identity::new("ghost"), &key))
                };
                let body = wire::RecoverDevice {
                    handle: who.to_owned(),
                    certificate: Some(cert),
                };
                ("/v1/devices/recover".to_owned(), body.encode_to_vec())
            }
            Rt::DeviceList => (
                "/v1/devices/list".to_owned(),
                signed_list("alice", 1, &[&self.alice], &self.alice.account).encode_to_vec(),
            ),
            // Alice's device 3; bob's account has no device 3 (nor 99).
            Rt::DeviceRemove => (
                format!("/v1/devices/{}", if alice { 3 } else { 99 }),
                none(),
            ),
            Rt::LinkCreate => (
                "/v1/links".to_owned(),
                wire::LinkCreate { ttl_secs: 60 }.encode_to_vec(),
            ),
            Rt::LinkDelete => (format!("/v1/links/{link}"), none()),
            Rt::LinkSlotPut => (format!("/v1/links/{link}/s1"), b"sealed".to_vec()),
            Rt::LinkSlotGet => (format!("/v1/links/{link}/s1"), none()),
            Rt::Directory => ("/v1/directory".to_owned(), none()),
            Rt::DirectoryRoots => ("/v1/directory/roots?after=0&limit=1".to_owned(), none()),
            Rt::DirectoryAudit => ("/v1/directory/audit/1".to_owned(), none()),
            Rt::DirectoryLookup => (
                "/v1/directory/lookup".to_owned(),
                wire::DirectoryLookupRequest {
                    handles: vec![handle.to_owned()],
                }
                .encode_to_vec(),
            ),
            Rt::DirectoryHistory => ("/v1/directory/history".to_owned(), none()),
        };
        Req {
            method: r.method,
            path,
            body,
        }
    }

    async fn send(&self, req: &Req, headers: &[(&str, String)]) -> Resp {
        self.c
            .raw(req.method, &req.path, req.body.clone(), headers)
            .await
    }

    async fn signed(&self, who: &Identity, req: &Req) -> Resp {
        self.c
            .signed(who, req.method, &req.path, req.body.clone())
            .await
    }

    /// The auth header `who` would send for `req` at `unix_ms`.
    fn header(&self, who: &Identity, req: &Req, unix_ms: u64) -> (&'static str, String) {
        let full = format!("{}{}", self.c.prefix, req.path);
        (
            REQUEST_AUTH_HEADER,
            who.auth_header(req.method, &full, &req.body, unix_ms),
        )
    }
}

fn what(r: &Route) -> String {
    format!("{} {}", r.method, r.path)
}

/// Asserts a 401 UNAUTHENTICATED; returns its message.
fn unauthenticated(resp: &Resp, r: &Route, who: &str) -> String {
    assert_eq!(
        resp.status,
        401,
        "{} as {who}: {:?}",
        what(r),
        wire::ApiError::decode(resp.body.clone())
    );
    let e = resp.error();
    assert_eq!(
        e.code,
        ErrorCode::Unauthenticated as i32,
        "{} as {who}",
        what(r)
    );
    e.message
}

// ------------------------------------------------------------------ the HTTP matrix

#[tokio::test]
async fn http_access_matrix() {
    let w = world().await;
    let mut checks = 0usize;
    for r in ROUTES {
        eprintln!("{:6} {:30} {}", r.method, r.path, r.access.describe());
        let mine = w.request(r, Target::Alice);
        let none = w.request(r, Target::Missing);
        let as_other = match &r.access {
            Access::Public(_) => {
                checks += public_route(&w, r, &mine, &none).await;
                continue;
            }
            Access::Signed(as_other) => as_other,
        };

        // No credentials, malformed credentials.
        let m = unauthenticated(&w.send(&mine, &[]).await, r, "nobody");
        assert!(m.contains("missing"), "{m}");
        let bad = [(REQUEST_AUTH_HEADER, "alice.1.not-a-signature".to_owned())];
        let m = unauthenticated(&w.send(&mine, &bad).await, r, "malformed");
        assert!(m.contains("malformed"), "{m}");
        checks += 2;

        // A ghost, an impostor, a removed device: one answer, which says nothing about
        // whether "ghost" exists or alice/2 ever did.
        let ghost = w.signed(&w.ghost, &mine).await;
        unauthenticated(&ghost, r, "ghost");
        let impostor = w.signed(&w.impostor, &mine).await;
        unauthenticated(&impostor, r, "impostor");
        let removed = w.signed(&w.removed, &mine).await;
        unauthenticated(&removed, r, "removed device");
        assert_eq!(impostor.body, ghost.body, "{}: impostor vs ghost", what(r));
        assert_eq!(removed.body, ghost.body, "{}: removed vs ghost", what(r));
        checks += 5;

        // A credential of alice's from before the auth window.
        let stale = w.header(&w.alice, &mine, now_ms() - 6 * 60 * 1000);
        unauthenticated(&w.send(&mine, &[stale]).await, r, "stale");
        checks += 1;

        // A replayed request: accepted once (whatever the handler made of it), refused
        // the second time.
        let h = w.header(&w.dave, &none, now_ms());
        let first = w.send(&none, std::slice::from_ref(&h)).await;
        assert_ne!(first.status, 401, "{}: dave's own request", what(r));
        let m = unauthenticated(&w.send(&none, &[h]).await, r, "replay");
        assert!(m.contains("replayed"), "{}: {m}", what(r));
        checks += 1;

        // Bob, on alice's resources.
        checks += as_another_account(&w, r, as_other, &mine, &none).await;
    }
    checks += alice_is_intact(&w).await;
    eprintln!(
        "http access matrix: {} routes, {checks} checks",
        ROUTES.len()
    );
}

/// A public route: no account needed; what it says about existence.
async fn public_route(w: &World, r: &Route, mine: &Req, none: &Req) -> usize {
    let to_mine = w.send(mine, &[]).await;
    let to_none = w.send(none, &[]).await;
    match r.rt {
        Rt::Register => {
            // The one unauthenticated answer that says an account exists.
            to_mine.expect_error(409, ErrorCode::HandleTaken);
            to_none.decode::<wire::RegisterResponse>();
        }
        Rt::DeviceRecover => {
            // A certificate that does not verify under alice's key and one for a handle
            // that does not exist: the same answer.
            to_mine.expect_error(401, ErrorCode::Unauthenticated);
            to_none.expect_error(401, ErrorCode::Unauthenticated);
            assert_eq!(to_mine.body, to_none.body, "{}: alice told apart", what(r));
        }
        Rt::WebSocket => {
            to_mine.expect_error(400, ErrorCode::BadRequest);
            to_none.expect_error(400, ErrorCode::BadRequest);
        }
        Rt::LinkSlotPut => {
            // Whoever holds the link id may write a slot, once.
            assert_eq!(to_mine.status, 200, "{:?}", to_mine.body);
            to_none.expect_error(404, ErrorCode::NotFound);
        }
        Rt::LinkSlotGet => {
            assert_eq!(to_mine.status, 200, "{:?}", to_mine.body);
            assert_eq!(&to_mine.body[..], b"sealed");
            to_none.expect_error(404, ErrorCode::NotFound);
        }
        Rt::Directory | Rt::DirectoryRoots | Rt::DirectoryAudit => {
            // 200, or 503 while the directory loads, or 404 for an epoch not yet
            // published: never a demand for credentials.
            for resp in [&to_mine, &to_none] {
                assert!(
                    [200, 404, 503].contains(&resp.status),
                    "{}: {}",
                    what(r),
                    resp.status
                );
            }
        }
        other => panic!("{other:?} is not a public route"),
    }
    2
}

/// Bob aims the route at alice's resource (and at one that does not exist).
async fn as_another_account(
    w: &World,
    r: &Route,
    as_other: &AsOther,
    mine: &Req,
    none: &Req,
) -> usize {
    let to_mine = w.signed(&w.bob, mine).await;
    match as_other {
        Hidden => {
            let to_none = w.signed(&w.bob, none).await;
            let e = to_mine.expect_error(404, ErrorCode::NotFound);
            assert_eq!(
                to_mine.body,
                to_none.body,
                "{}: alice's resource is told apart from a missing one ({e:?})",
                what(r)
            );
            2
        }
        Refused(status, code) => {
            to_mine.expect_error(*status, *code);
            1
        }
        OwnOnly(_) => {
            // Answered about bob's own account or device.
            match r.rt {
                Rt::KeyPackageCount => {
                    let count: wire::KeyPackageCount = to_mine.decode();
                    // Alice's device has a last-resort package; bob's (one uploaded
                    // above, never a last resort) does not.
                    assert_eq!((count.available, count.has_last_resort), (1, false));
                }
                Rt::DirectoryHistory => {
                    assert!([200, 503].contains(&to_mine.status), "{}", to_mine.status);
                }
                _ => assert_eq!(to_mine.status, 200, "{}: {:?}", what(r), to_mine.body),
            }
            1
        }
        Discovery(_) => {
            let to_none = w.signed(&w.bob, none).await;
            match r.rt {
                Rt::Account => {
                    assert_eq!(to_mine.decode::<wire::AccountInfo>().handle, "alice");
                    to_none.expect_error(404, ErrorCode::NotFound);
                }
                Rt::Accounts => {
                    assert_eq!(to_mine.decode::<wire::AccountsResponse>().accounts.len(), 1);
                    assert!(
                        to_none
                            .decode::<wire::AccountsResponse>()
                            .accounts
                            .is_empty()
                    );
                }
                Rt::Claim => {
                    let claimed: wire::ClaimedKeyPackages = to_mine.decode();
                    assert_eq!(claimed.key_packages.len(), 1);
                    to_none.expect_error(404, ErrorCode::NotFound);
                }
                Rt::ClaimBatch => {
                    let mine: wire::ClaimedKeyPackagesBatch = to_mine.decode();
                    assert!(!mine.claimed[0].unknown_account);
                    let none: wire::ClaimedKeyPackagesBatch = to_none.decode();
                    assert!(none.claimed[0].unknown_account);
                }
                Rt::Report => {
                    to_mine.decode::<wire::ReportFiled>();
                    to_none.expect_error(404, ErrorCode::NotFound);
                }
                Rt::DirectoryLookup => {
                    for resp in [&to_mine, &to_none] {
                        assert!([200, 503].contains(&resp.status), "{}", resp.status);
                    }
                }
                other => panic!("{other:?} is not a discovery route"),
            }
            2
        }
    }
}

/// Nothing bob (or the bad credentials) tried changed alice's account.
async fn alice_is_intact(w: &World) -> usize {
    let c = &w.c;
    // Her devices: none added, none removed, no device list published.
    let info: wire::AccountInfo = c
        .signed(&w.alice3, "GET", "/v1/accounts/alice", vec![])
        .await
        .decode();
    let devices: Vec<(u32, bool)> = info
        .devices
        .iter()
        .map(|d| (d.device_id, d.revoked))
        .collect();
    assert_eq!(devices, vec![(1, false), (2, true), (3, false)]);
    assert!(info.device_list.is_none());
    // Her blob: still there, whole, for carol (a member).
    let blob = c
        .signed(&w.carol, "GET", &format!("/v1/blobs/{}", w.blob), vec![])
        .await;
    assert_eq!(blob.status, 200);
    assert_eq!(blob.body, w.blob_bytes);
    // Her group's GroupInfo.
    let info: wire::GroupInfoResponse = c
        .signed(
            &w.alice,
            "GET",
            &format!("/v1/groups/{}/info", hex(GROUP)),
            vec![],
        )
        .await
        .decode();
    assert_eq!(info.epoch, 1);
    // Her link session: still hers to end.
    c.signed(&w.alice, "DELETE", &format!("/v1/links/{}", w.link), vec![])
        .await
        .decode::<()>();
    // Her key packages: only hers.
    let count: wire::KeyPackageCount = c
        .signed(
            &w.alice,
            "GET",
            "/v1/keypackages/count?ciphersuite=1",
            vec![],
        )
        .await
        .decode();
    assert!(count.has_last_resort);
    5
}

#[tokio::test]
async fn unlisted_methods_and_paths_are_refused() {
    let w = world().await;
    let mut checks = 0;
    let paths: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    for path in paths {
        let listed: Vec<&Route> = ROUTES.iter().filter(|r| r.path == path).collect();
        let req = w.request(listed[0], Target::Alice);
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if listed.iter().any(|r| r.method == method) {
                continue;
            }
            let resp = w.c.raw(method, &req.path, vec![], &[]).await;
            assert_eq!(resp.status, 405, "{method} {path}");
            checks += 1;
        }
    }
    w.c.raw("GET", "/v1/nothing-here", vec![], &[])
        .await
        .expect_error(404, ErrorCode::NotFound);
    eprintln!("unlisted methods: {} checks", checks + 1);
}

// ------------------------------------------------------------------ the WebSocket matrix

/// Every client operation. No wildcard arm: a new `client_frame::Body` variant does not
/// compile until it is classified here, and `websocket_access_matrix` fails until
/// `ws_samples` has one.
fn ws_op(body: &client_frame::Body) -> (usize, &'static str) {
    match body {
        client_frame::Body::Auth(_) => (0, "auth"),
        client_frame::Body::Submit(_) => (1, "submit"),
        client_frame::Body::Ack(_) => (2, "ack"),
        client_frame::Body::Ping(_) => (3, "ping"),
        client_frame::Body::Ephemeral(_) => (4, "ephemeral"),
        client_frame::Body::Block(_) => (5, "block"),
        client_frame::Body::Retract(_) => (6, "retract"),
    }
}
const WS_OPS: usize = 7;

/// One frame of every operation, aimed at alice.
fn ws_samples(w: &World) -> Vec<client_frame::Body> {
    vec![
        client_frame::Body::Auth(wire::AuthResponse {
            handle: "alice".into(),
            device_id: 1,
            signature: Bytes::from_static(&[0; 64]),
        }),
        client_frame::Body::Submit(app_message(GROUP, 1, 100, b"intruder")),
        client_frame::Body::Ack(wire::Ack {
            up_to_seq: u64::MAX,
        }),
        client_frame::Body::Ping(wire::Ping { client_time_ms: 1 }),
        client_frame::Body::Ephemeral(wire::Ephemeral {
            group_id: Bytes::from_static(GROUP),
            mls_message: mls::synthetic_private_message(
                GROUP,
                1,
                mls::ContentType::Application,
                b"typing",
            )
            .into(),
        }),
        client_frame::Body::Block(wire::SetBlock {
            handle: w.alice.handle.clone(),
            blocked: true,
        }),
        client_frame::Body::Retract(wire::Retract {
            group_id: Bytes::from_static(GROUP),
            message_id: message_id(2),
        }),
    ]
}

/// Sends `auth` (signed by `who` over `nonce`, or as given) on a fresh connection;
/// returns the close.
async fn login_refused(
    c: &Client,
    auth: impl FnOnce(&[u8]) -> wire::AuthResponse,
) -> (u16, String) {
    let mut ws = c.ws_connect().await;
    let nonce = ws.challenge().await;
    ws.send(7, client_frame::Body::Auth(auth(&nonce))).await;
    ws.expect_close().await
}

fn auth_answer(who: &Identity, nonce: &[u8]) -> wire::AuthResponse {
    use ed25519_dalek::Signer;
    let payload = hushwire_proto::identity::ws_auth_payload(nonce, &who.handle, who.device_id);
    wire::AuthResponse {
        handle: who.handle.clone(),
        device_id: who.device_id,
        signature: Bytes::copy_from_slice(&who.device.sign(&payload).to_bytes()),
    }
}

fn submit_outcome_code(o: &submit_result::Outcome) -> Option<ErrorCode> {
    match o {
        submit_result::Outcome::Rejected(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn websocket_access_matrix() {
    let w = world().await;
    let c = &w.c;
    let mut checks = 0usize;
    let samples = ws_samples(&w);
    let covered: BTreeSet<usize> = samples.iter().map(|b| ws_op(b).0).collect();
    assert_eq!(
        covered,
        (0..WS_OPS).collect(),
        "ws_samples needs one frame per operation"
    );

    // Before auth, every operation closes the connection with 1008.
    for body in &samples {
        let (_, name) = ws_op(body);
        let mut ws = c.ws_connect().await;
        ws.challenge().await;
        ws.send(1, body.clone()).await;
        let expected = match body {
            client_frame::Body::Auth(_) => "authentication failed",
            _ => "expected an auth frame first",
        };
        assert_eq!(ws.expect_close().await, (1008, expected.into()), "{name}");
        checks += 1;
    }

    // Bad credentials: one close for a ghost, an impostor and a removed device.
    let expected = (1008, "authentication failed".to_owned());
    assert_eq!(
        login_refused(c, |n| auth_answer(&w.ghost, n)).await,
        expected,
        "ghost"
    );
    assert_eq!(
        login_refused(c, |n| auth_answer(&w.impostor, n)).await,
        expected,
        "impostor"
    );
    assert_eq!(
        login_refused(c, |n| auth_answer(&w.removed, n)).await,
        expected,
        "removed device"
    );
    let mut bad_handle = auth_answer(&w.alice, &[0; 32]);
    bad_handle.handle = "Not A Handle!".into();
    assert_eq!(
        login_refused(c, |_| bad_handle).await,
        (1008, "authentication failed: invalid handle".to_owned())
    );
    checks += 4;

    // A replayed challenge answer: alice's successful login, offered to a new
    // connection's challenge (while the first is still open, and after it closed).
    let mut first = c.ws_connect().await;
    let first_nonce = first.challenge().await;
    let captured = auth_answer(&w.alice, &first_nonce);
    first
        .send(7, client_frame::Body::Auth(captured.clone()))
        .await;
    assert!(matches!(
        first.recv().await.body,
        Some(server_frame::Body::AuthOk(_))
    ));
    let mut second = c.ws_connect().await;
    let second_nonce = second.challenge().await;
    assert_ne!(second_nonce, first_nonce, "challenges must be fresh");
    second
        .send(7, client_frame::Body::Auth(captured.clone()))
        .await;
    assert_eq!(second.expect_close().await, expected, "replay while open");
    drop(first);
    assert_eq!(
        login_refused(c, |_| captured).await,
        expected,
        "replay after close"
    );
    checks += 2;

    // Bob, logged in, on alice's group, messages and account.
    let mut carol_ws = c.login(&w.carol).await;
    let (carol_backlog, _) = carol_ws.backlog().await;
    assert_eq!(carol_backlog.len(), 2);
    let carol_pending = pending(&w.server, &w.carol).await;
    let alice_pending = pending(&w.server, &w.alice).await;
    let mut bob = c.login(&w.bob).await;
    bob.backlog().await;
    for body in samples {
        let (_, name) = ws_op(&body);
        match body {
            client_frame::Body::Auth(auth) => {
                // A second auth on a logged-in connection (dave's, naming alice).
                let mut again = c.login(&w.dave).await;
                again.backlog().await;
                again.send(9, client_frame::Body::Auth(auth)).await;
                assert_eq!(
                    again.expect_close().await,
                    (
                        1002,
                        "unexpected auth frame: already authenticated".to_owned()
                    )
                );
                checks += 1;
            }
            client_frame::Body::Submit(submit) => {
                // An application message, a commit at the group's epoch naming bob, a
                // commit "creating" the group again: all NOT_MEMBER.
                let o = bob.submit(10, submit).await;
                assert_eq!(submit_outcome_code(&o), Some(ErrorCode::NotMember), "{o:?}");
                let takeover = commit(GROUP, 1, 101, &[&w.bob, &w.alice, &w.carol]);
                let o = bob.submit(11, takeover).await;
                assert_eq!(submit_outcome_code(&o), Some(ErrorCode::NotMember), "{o:?}");
                let recreate = commit(GROUP, 0, 102, &[&w.bob]);
                let o = bob.submit(12, recreate).await;
                assert_eq!(submit_outcome_code(&o), Some(ErrorCode::NotMember), "{o:?}");
                // A group id nobody uses is UNKNOWN_GROUP: group ids are random
                // secrets of their members, so only a (former) member can tell the two
                // apart, and a member removed from a group learns it from NOT_MEMBER.
                let o = bob
                    .submit(13, app_message(MISSING_GROUP, 1, 103, b"x"))
                    .await;
                assert_eq!(
                    submit_outcome_code(&o),
                    Some(ErrorCode::UnknownGroup),
                    "{o:?}"
                );
                checks += 4;
            }
            client_frame::Body::Ack(ack) => {
                // Only bob's own mailbox, only up to what bob was sent.
                bob.send(14, client_frame::Body::Ack(ack)).await;
                bob.ping().await;
                checks += 1;
            }
            client_frame::Body::Ping(ping) => {
                bob.send(15, client_frame::Body::Ping(ping)).await;
                assert!(matches!(
                    bob.recv().await.body,
                    Some(server_frame::Body::Pong(_))
                ));
                checks += 1;
            }
            client_frame::Body::Ephemeral(e) => {
                let d = done(&mut bob, 16, client_frame::Body::Ephemeral(e)).await;
                let code = d.error.as_ref().map(|e| e.code);
                assert_eq!(code, Some(ErrorCode::NotMember as i32), "{d:?}");
                // Nothing reached carol: her next frame is the pong.
                carol_ws.ping().await;
                checks += 2;
            }
            client_frame::Body::Block(b) => {
                // Blocking is bob's own business; a handle that exists and one that
                // does not get the same answer.
                let real = done(&mut bob, 17, client_frame::Body::Block(b)).await;
                let ghost = wire::SetBlock {
                    handle: w.ghost.handle.clone(),
                    blocked: true,
                };
                let unreal = done(&mut bob, 18, client_frame::Body::Block(ghost)).await;
                assert_eq!(real, wire::Done { error: None });
                assert_eq!(real, unreal);
                let unblock = wire::SetBlock {
                    handle: w.alice.handle.clone(),
                    blocked: false,
                };
                let d = done(&mut bob, 19, client_frame::Body::Block(unblock)).await;
                assert_eq!(d.error, None);
                checks += 1;
            }
            client_frame::Body::Retract(r) => {
                // Alice's message stays queued for carol; the answer is the same as for
                // a message that does not exist.
                let d = done(&mut bob, 20, client_frame::Body::Retract(r)).await;
                let nothing = wire::Retract {
                    group_id: Bytes::from_static(MISSING_GROUP),
                    message_id: message_id(999),
                };
                let d2 = done(&mut bob, 21, client_frame::Body::Retract(nothing)).await;
                assert_eq!(d, wire::Done { error: None });
                assert_eq!(d, d2);
                checks += 1;
            }
        }
        eprintln!("ws as another account: {name} checked");
    }
    assert_eq!(pending(&w.server, &w.carol).await, carol_pending);
    assert_eq!(pending(&w.server, &w.alice).await, alice_pending);
    carol_ws.ping().await;
    checks += 1;

    // A device removed while connected is closed, and cannot come back.
    let mut alice3 = c.login(&w.alice3).await;
    alice3.backlog().await;
    c.signed(&w.alice, "DELETE", "/v1/devices/3", vec![])
        .await
        .decode::<()>();
    assert_eq!(
        alice3.expect_close().await,
        (1008, "device removed".to_owned())
    );
    assert_eq!(
        login_refused(c, |n| auth_answer(&w.alice3, n)).await,
        expected
    );
    checks += 2;

    eprintln!("websocket access matrix: {WS_OPS} operations, {checks} checks");
}
