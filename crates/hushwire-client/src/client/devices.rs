//! Several devices per account in the sync engine: publishing the signed device list,
//! removing and renaming devices, and linking a new device (both sides).
//!
//! Linking, as the existing device runs it ([`Client::link_device`]):
//! 1. `POST /v1/links` opens a session; the link code (server URLs, pin, session id, a
//!    fresh 32-byte secret) is shown to the user.
//! 2. The new device ([`join_by_link`]) writes `hello` (its device key and name).
//! 3. The existing device asks for approval, certifies the key with the account key,
//!    registers it (`POST /v1/devices`), publishes the next signed device list and
//!    writes `welcome` (handle, account secret, device id, certificate).
//! 4. The new device uploads its key packages and writes `ready` with one last-resort
//!    package per suite.
//! 5. The existing device adds the new device to every conversation (one commit per
//!    group, through the outbox), drains its own mailbox so its history is complete,
//!    and writes the history archive in parts `h0`, `h1`, ... and then `done`.
//! 6. The new device reads the archive and confirms with `fin` (then the existing device
//!    deletes the session), joins the groups from their Welcomes and imports the archive
//!    (idempotent by message id, so messages that also arrived live are not doubled).
//!
//! Every slot is sealed with [`LinkChannel`]: the server relays it but can neither read
//! nor alter it, and a wrong code fails to decrypt.

use std::path::Path;
use std::time::{Duration, Instant};

use hushwire_e2e::{
    DeviceListEdit, Event, HistoryOptions, HistoryStats, Identity, LinkChannel, LinkSecrets,
    OwnDevice, Suite, keys::SecretKey,
};
use hushwire_proto::limits::{MAX_LINK_SLOT_BYTES, MAX_LINK_TTL_SECS};
use hushwire_proto::link::LinkCode;
use hushwire_proto::wire::{self, ErrorCode};
use prost::Message as _;
use rand::RngCore as _;

use super::{Client, SUITES, upload_initial_key_packages};
use crate::api::unix_ms;
use crate::register::INITIAL_KEY_PACKAGES;
use crate::{ApiClient, ApiRequest, ClientError, ClientOptions, Endpoint, ServerNode};

/// Size of one history part in the link session (sealed, it stays under
/// `MAX_LINK_SLOT_BYTES`).
const HISTORY_PART_BYTES: usize = 1024 * 1024;
/// How long one long-poll for a slot waits on the server.
const SLOT_POLL_MS: u64 = 15_000;

/// What [`Client::link_device`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// The new device's id.
    pub device_id: u32,
    /// Its name.
    pub name: String,
    /// Conversations it was added to.
    pub conversations: usize,
    /// What the history archive held.
    pub history: HistoryStats,
    /// Bytes this device wrote to the link session (sealed).
    pub bytes_sent: u64,
}

/// What [`join_by_link`] did.
#[derive(Debug)]
pub struct Joined {
    /// This device's new identity.
    pub identity: Identity,
    /// Conversations the existing device added it to.
    pub conversations: u32,
    /// What the imported history held.
    pub history: HistoryStats,
    /// Bytes read from the link session (sealed).
    pub bytes_received: u64,
}

/// A link session opened by [`Client::open_link`], waiting for the new device.
pub struct PendingLink {
    api: ApiClient,
    channel: LinkChannel,
    link_id: Vec<u8>,
    code: LinkCode,
    deadline: Instant,
}

impl std::fmt::Debug for PendingLink {
    // The code carries the session secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink").finish_non_exhaustive()
    }
}

impl PendingLink {
    /// The link code to show (its secret included: show it, never log it).
    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// Step 2 of linking: waits (until the session's deadline) for the new device's
    /// hello. Needs no client, so the app keeps receiving meanwhile.
    pub async fn wait_for_device(&self) -> Result<LinkRequest, ClientError> {
        let (hello, _) = read_slot(
            &self.api,
            &self.channel,
            &self.link_id,
            "hello",
            self.deadline,
        )
        .await?;
        let hello: wire::LinkHello = decode(&hello, "the new device's hello")?;
        let device_key: [u8; 32] = hello
            .device_key
            .as_ref()
            .try_into()
            .map_err(|_| link_error("the new device's key is not 32 bytes"))?;
        let name = if hushwire_e2e::validate_device_name(&hello.name).is_ok() {
            hello.name
        } else {
            "new device".to_string()
        };
        Ok(LinkRequest { name, device_key })
    }
}

/// A new device asking to be linked ([`PendingLink::wait_for_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    /// The name it proposes (checked; "new device" when unusable).
    pub name: String,
    device_key: [u8; 32],
}

fn link_error(reason: impl Into<String>) -> ClientError {
    ClientError::Link(reason.into())
}

/// Maps a link-session API error to a clear message.
fn slot_error(e: ClientError) -> ClientError {
    match e {
        ClientError::Api {
            code: ErrorCode::NotFound,
            ..
        } => link_error("unknown or expired link code"),
        ClientError::Api {
            code: ErrorCode::Conflict,
            ..
        } => link_error("this link code was used already"),
        other => other,
    }
}

async fn put_slot(
    api: &ApiClient,
    channel: &LinkChannel,
    link_id: &[u8],
    slot: &str,
    message: &[u8],
) -> Result<u64, ClientError> {
    let sealed = channel.seal(slot, message)?;
    let n = sealed.len() as u64;
    api.call_with_timeout::<()>(
        ApiRequest::put_link_slot(link_id, slot, sealed),
        Duration::from_secs(60),
    )
    .await
    .map_err(slot_error)?;
    Ok(n)
}

/// Waits until `slot` is written (long-polling) and returns its opened bytes and the
/// sealed size.
async fn read_slot(
    api: &ApiClient,
    channel: &LinkChannel,
    link_id: &[u8],
    slot: &str,
    deadline: Instant,
) -> Result<(Vec<u8>, u64), ClientError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(format!(
                "waiting for the other device ({slot})"
            )));
        }
        let wait = (left.as_millis() as u64).min(SLOT_POLL_MS);
        let mut stream = api
            .open_stream(ApiRequest::get_link_slot(link_id, slot, wait))
            .await
            .map_err(slot_error)?;
        if stream.status() == 204 {
            continue;
        }
        let mut sealed = Vec::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), stream.next_chunk())
            .await
            .map_err(|_| ClientError::Timeout(format!("reading link message {slot}")))?
        {
            let chunk = chunk?;
            if sealed.len() + chunk.len() > MAX_LINK_SLOT_BYTES {
                return Err(link_error(format!("link message {slot} is too large")));
            }
            sealed.extend_from_slice(&chunk);
        }
        let n = sealed.len() as u64;
        return Ok((channel.open(slot, &sealed)?, n));
    }
}

/// After writing a refusal or failure: gives the new device a moment to read it (it
/// answers `fin`) before the session is deleted.
async fn await_fin(api: &ApiClient, channel: &LinkChannel, link_id: &[u8], deadline: Instant) {
    let soon = (Instant::now() + Duration::from_secs(15)).min(deadline);
    let _ = read_slot(api, channel, link_id, "fin", soon).await;
}

fn decode<M: prost::Message + Default>(bytes: &[u8], what: &str) -> Result<M, ClientError> {
    M::decode(bytes).map_err(|e| link_error(format!("{what} does not decode: {e}")))
}

impl Client {
    /// Fetches this account from the server and pins its device list; queues a
    /// [`Event::DevicesChanged`] if it changed since last shown. Returns the devices.
    pub async fn refresh_own_devices(&mut self) -> Result<Vec<OwnDevice>, ClientError> {
        let handle = self.identity()?.handle.clone();
        let account = self.fetch_account(&handle).await?;
        self.profile.learn_account(&account)?;
        if let Some(news) = self.profile.take_device_list_news()? {
            self.events.push_back(Event::DevicesChanged(news));
        }
        Ok(self.profile.own_devices()?)
    }

    /// Adds this account's listed devices that are missing from its conversations: a
    /// device restored from a backup registers itself with the account key and
    /// publishes the list, and the account's other devices that are alive bring it into
    /// every conversation. Each group gets its own claimed key packages (a one-time
    /// package serves one Welcome). Returns the number of groups queued; a device
    /// without key packages is tried again at the next check.
    pub async fn add_missing_own_devices(&mut self) -> Result<usize, ClientError> {
        let missing = self.profile.own_devices_missing()?;
        if missing.is_empty() {
            return Ok(0);
        }
        let handle = self.identity()?.handle.clone();
        let mut queued = 0;
        for group in missing {
            let claim = wire::ClaimKeyPackages {
                handle: handle.clone(),
                ciphersuite: u32::from(group.suite.code()),
            };
            let req = self.signed(ApiRequest::claim_key_packages(&claim))?;
            let claimed = match self.api.call::<wire::ClaimedKeyPackages>(req).await {
                Ok(c) => c,
                Err(ClientError::Api {
                    code: ErrorCode::NoKeyPackages | ErrorCode::NotFound | ErrorCode::RateLimited,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
            let key_packages: Vec<(u32, Vec<u8>)> = claimed
                .key_packages
                .into_iter()
                .filter(|k| group.device_ids.contains(&k.device_id))
                .map(|k| (k.device_id, k.key_package.to_vec()))
                .collect();
            if self
                .profile
                .queue_add_own_devices_to(&group.group_id, &key_packages, unix_ms())?
            {
                queued += 1;
            }
        }
        if queued > 0 {
            tracing::info!(groups = queued, "adding this account's new devices");
        }
        Ok(queued)
    }

    /// Signs the next device list with `edit`, publishes it and pins it. A concurrent
    /// change by another device of the account (CONFLICT) is re-read and the edit
    /// applied on top of it.
    pub async fn publish_device_list(&mut self, edit: DeviceListEdit) -> Result<(), ClientError> {
        let mut attempts = 0;
        loop {
            let signed = self.profile.next_device_list(edit.clone(), unix_ms())?;
            let req = self.signed(ApiRequest::put_device_list(&signed))?;
            match self.api.call::<()>(req).await {
                Ok(()) => {
                    self.refresh_own_devices().await?;
                    return Ok(());
                }
                Err(ClientError::Api {
                    code: ErrorCode::Conflict,
                    ..
                }) if attempts < 3 => {
                    attempts += 1;
                    self.refresh_own_devices().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Accepts `handle`'s current account key (after it changed; see
    /// [`Event::IdentityChanged`]): fetched now and pinned
    /// ([`hushwire_e2e::Profile::trust`]).
    pub async fn trust(&mut self, handle: &str) -> Result<(), ClientError> {
        let account = self.fetch_account(handle).await?;
        self.profile.trust(&account)?;
        Ok(())
    }

    /// This account's devices as the server's signed list says (fetched now).
    pub async fn devices(&mut self) -> Result<Vec<OwnDevice>, ClientError> {
        self.refresh_own_devices().await
    }

    /// Renames device `device_id` (a new signed list version).
    pub async fn rename_device(&mut self, device_id: u32, name: &str) -> Result<(), ClientError> {
        hushwire_e2e::validate_device_name(name)?;
        self.refresh_own_devices().await?;
        self.publish_device_list(DeviceListEdit::Rename(device_id, name.to_string()))
            .await
    }

    /// Removes device `device_id` of this account: a signed list without it, the server
    /// revokes it (its connections close, it can no longer log in), and this device
    /// removes its leaf from every conversation (commits sent within `timeout`). Returns
    /// the number of conversations it was removed from.
    pub async fn remove_device(
        &mut self,
        device_id: u32,
        timeout: Duration,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<usize, ClientError> {
        let me = self.identity()?.device_id;
        if device_id == me {
            return Err(ClientError::Protocol(
                "this is the current device: remove it from another device of the account".into(),
            ));
        }
        let devices = self.refresh_own_devices().await?;
        if devices.iter().any(|d| d.device_id == device_id) {
            self.publish_device_list(DeviceListEdit::Remove(device_id))
                .await?;
        }
        let req = self.signed(ApiRequest::remove_device(device_id))?;
        match self.api.call::<()>(req).await {
            Ok(()) => {}
            Err(ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }) if !devices.iter().any(|d| d.device_id == device_id) => {
                return Err(ClientError::Protocol(format!(
                    "this account has no device {device_id}"
                )));
            }
            // Revoked already (e.g. a retry): the leaves still go.
            Err(ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        let n = self.profile.queue_remove_own_device(device_id, unix_ms())?;
        self.flush_outbox(timeout, on_event).await?;
        Ok(n)
    }

    /// The existing device's side of linking: opens a link session valid for `timeout`,
    /// hands the link code to `on_code` (to show it), waits for the new device, asks
    /// `approve` with the name it proposes, then registers and certifies it, adds it to
    /// every conversation and sends the history archive. See the module docs.
    ///
    /// This holds the client for the whole wait; an app that keeps receiving meanwhile
    /// uses the three steps instead: [`Client::open_link`], [`PendingLink::wait_for_device`]
    /// (which needs no client) and [`Client::finish_link`].
    pub async fn link_device(
        &mut self,
        timeout: Duration,
        on_code: &mut (dyn FnMut(&LinkCode) + Send),
        approve: &mut (dyn FnMut(&str) -> bool + Send),
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<LinkReport, ClientError> {
        let pending = self.open_link(timeout).await?;
        on_code(pending.code());
        let request = match pending.wait_for_device().await {
            Ok(r) => r,
            Err(e) => {
                self.close_link(&pending).await;
                return Err(e);
            }
        };
        let approved = approve(&request.name);
        self.finish_link(pending, request, approved, on_event).await
    }

    /// Step 1 of linking: opens a link session valid for `timeout` (at most the server's
    /// limit). Show [`PendingLink::code`] to the user.
    pub async fn open_link(&mut self, timeout: Duration) -> Result<PendingLink, ClientError> {
        let deadline = Instant::now() + timeout;
        let ttl = u32::try_from(timeout.as_secs().max(1))
            .unwrap_or(MAX_LINK_TTL_SECS)
            .min(MAX_LINK_TTL_SECS);
        let req = self.signed(ApiRequest::create_link(&wire::LinkCreate { ttl_secs: ttl }))?;
        let created: wire::LinkCreated = self.api.call(req).await?;
        let link_id = created.link_id.to_vec();
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        let link_id_arr: [u8; 16] = link_id
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("the server's link id is not 16 bytes".into()))?;
        let mut servers = vec![self.endpoint.base_url()];
        for node in self.endpoint.routes().servers() {
            servers.push(node.url.clone());
        }
        let code = LinkCode {
            servers,
            pin: self.endpoint.tls().pin(),
            link_id: link_id_arr,
            secret: *secret,
        };
        let channel = LinkChannel::new(&link_id, &secret);
        Ok(PendingLink {
            api: self.api.clone(),
            channel,
            link_id,
            code,
            deadline,
        })
    }

    /// Step 3 of linking: with the user's answer to [`LinkRequest::name`], registers and
    /// certifies the new device, adds it to every conversation and sends the history
    /// archive (or tells the new device it was declined). The session is deleted either
    /// way.
    pub async fn finish_link(
        &mut self,
        pending: PendingLink,
        request: LinkRequest,
        approved: bool,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<LinkReport, ClientError> {
        let result = self.run_link(&pending, request, approved, on_event).await;
        self.close_link(&pending).await;
        result
    }

    /// Deletes a link session (it also expires by itself).
    pub async fn close_link(&mut self, pending: &PendingLink) {
        if let Ok(req) = self.signed(ApiRequest::delete_link(&pending.link_id)) {
            let _ = self.api.call::<()>(req).await;
        }
    }

    async fn run_link(
        &mut self,
        pending: &PendingLink,
        request: LinkRequest,
        approved: bool,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<LinkReport, ClientError> {
        let (channel, link_id, deadline) =
            (&pending.channel, &pending.link_id[..], pending.deadline);
        let api = self.api.clone();
        let LinkRequest { name, device_key } = request;
        let mut sent = 0u64;
        let refuse = |reason: &str| wire::LinkWelcome {
            refused: reason.to_string(),
            ..wire::LinkWelcome::default()
        };
        if !approved {
            put_slot(
                &api,
                channel,
                link_id,
                "welcome",
                &refuse("declined on the existing device").encode_to_vec(),
            )
            .await?;
            await_fin(&api, channel, link_id, deadline).await;
            return Err(link_error("linking declined"));
        }
        let now = unix_ms();
        let certificate = self.profile.certify_device(&device_key, now)?;
        let req = self.signed(ApiRequest::add_device(&wire::AddDevice {
            certificate: Some(certificate.clone()),
        }))?;
        let added: wire::DeviceAdded = match self.api.call(req).await {
            Ok(a) => a,
            Err(e) => {
                let reason = match &e {
                    ClientError::Api {
                        code: ErrorCode::LimitExceeded,
                        message,
                        ..
                    } => format!("the account has the most devices allowed ({message})"),
                    other => format!("the server refused the device: {other}"),
                };
                put_slot(
                    &api,
                    channel,
                    link_id,
                    "welcome",
                    &refuse(&reason).encode_to_vec(),
                )
                .await?;
                await_fin(&api, channel, link_id, deadline).await;
                return Err(link_error(reason));
            }
        };
        self.publish_device_list(DeviceListEdit::Add {
            device_id: added.device_id,
            device_key,
            name: name.clone(),
            linked_at_ms: now,
        })
        .await?;
        self.emit(on_event);
        let LinkSecrets {
            handle,
            account_secret,
        } = self.profile.link_secrets()?;
        let welcome = wire::LinkWelcome {
            refused: String::new(),
            handle,
            account_secret: zeroize::Zeroizing::new(account_secret.expose().to_vec())
                .to_vec()
                .into(),
            device_id: added.device_id,
            certificate: Some(certificate),
        };
        let welcome_bytes = zeroize::Zeroizing::new(welcome.encode_to_vec());
        sent += put_slot(&api, channel, link_id, "welcome", &welcome_bytes).await?;
        drop(welcome);

        let (ready, _) = read_slot(&api, channel, link_id, "ready", deadline).await?;
        let ready: wire::LinkReady = decode(&ready, "the new device's key packages")?;
        let key_packages: Vec<(Suite, Vec<u8>)> = ready
            .key_packages
            .iter()
            .filter_map(|k| {
                let suite = u16::try_from(k.suite).ok().and_then(Suite::from_code)?;
                Some((suite, k.key_package.to_vec()))
            })
            .collect();
        let conversations =
            self.profile
                .queue_add_own_device(added.device_id, &key_packages, unix_ms())?;
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = async {
            self.flush_outbox(left, on_event).await?;
            // Everything ordered before the adds is in this device's mailbox: store it, so
            // the archive holds all the history the new device cannot decrypt itself.
            self.sync(deadline.saturating_duration_since(Instant::now()), on_event)
                .await?;
            let mut archive = Vec::new();
            let stats = self.profile.export_history(
                &mut archive,
                &HistoryOptions {
                    include_media_refs: true,
                    since_ms: None,
                    now_ms: Some(unix_ms()),
                },
            )?;
            Ok::<_, ClientError>((archive, stats))
        }
        .await;
        let (archive, stats) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let done = wire::LinkDone {
                    failed: format!("the existing device could not finish: {e}"),
                    ..wire::LinkDone::default()
                };
                if put_slot(&api, channel, link_id, "done", &done.encode_to_vec())
                    .await
                    .is_ok()
                {
                    await_fin(&api, channel, link_id, deadline).await;
                }
                return Err(e);
            }
        };
        let mut parts = 0u32;
        for chunk in archive.chunks(HISTORY_PART_BYTES) {
            sent += put_slot(&api, channel, link_id, &format!("h{parts}"), chunk).await?;
            parts += 1;
        }
        let done = wire::LinkDone {
            history_parts: parts,
            history_bytes: archive.len() as u64,
            conversations: u32::try_from(conversations).unwrap_or(u32::MAX),
            failed: String::new(),
        };
        sent += put_slot(&api, channel, link_id, "done", &done.encode_to_vec()).await?;
        // The new device confirms it read everything; only then is the session deleted.
        read_slot(&api, channel, link_id, "fin", deadline).await?;
        Ok(LinkReport {
            device_id: added.device_id,
            name,
            conversations,
            history: stats,
            bytes_sent: sent,
        })
    }
}

/// The new device's side of linking: joins the account of the device showing `code`,
/// from the empty profile in `profile_dir`, under `name`; receives the Welcomes of the
/// account's conversations and imports the history archive. Fails cleanly on a wrong,
/// expired or used code (nothing is written to the profile but the pending key).
pub async fn join_by_link(
    profile_dir: &Path,
    code: &str,
    name: &str,
    options: ClientOptions,
    timeout: Duration,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Joined, ClientError> {
    let deadline = Instant::now() + timeout;
    let code = LinkCode::decode(code).map_err(|e| link_error(e.to_string()))?;
    hushwire_e2e::validate_device_name(name)?;
    let mut profile = crate::open_profile(profile_dir, &options.unlock)?;
    if let Some(identity) = profile.identity() {
        return Err(ClientError::AlreadyRegistered(identity.handle.clone()));
    }
    let Some((primary, others)) = code.servers.split_first() else {
        return Err(link_error("the link code names no server"));
    };
    let pin = code.pin.map(|p| crate::tls::pin_to_string(&p));
    let first = Endpoint::new(primary, pin.as_deref())?;
    let mut nodes: Vec<ServerNode> = Vec::new();
    for url in others {
        nodes.push(ServerNode::parse(url)?);
    }
    let routes = if nodes.is_empty() {
        crate::RouteBook::load(profile_dir)?
    } else {
        crate::RouteBook::set_servers(profile_dir, &nodes)?
    };
    let endpoint = first
        .with_connect_timeout(options.connect_timeout)
        .with_routes(routes);
    endpoint.probe().await?;
    let api = ApiClient::new(endpoint.clone())?;
    let channel = LinkChannel::new(&code.link_id, &code.secret);
    let link_id = code.link_id;

    let device_key = profile.begin_link(unix_ms())?;
    let hello = wire::LinkHello {
        device_key: device_key.to_vec().into(),
        name: name.to_string(),
    };
    put_slot(&api, &channel, &link_id, "hello", &hello.encode_to_vec()).await?;
    let (welcome, mut received) = read_slot(&api, &channel, &link_id, "welcome", deadline).await?;
    let welcome = zeroize::Zeroizing::new(welcome);
    let welcome: wire::LinkWelcome = decode(&welcome, "the link welcome")?;
    if !welcome.refused.is_empty() {
        let _ = put_slot(&api, &channel, &link_id, "fin", b"").await;
        return Err(link_error(format!(
            "the existing device refused: {}",
            welcome.refused
        )));
    }
    let account_secret = SecretKey::from_slice(&welcome.account_secret)
        .ok_or_else(|| link_error("the account key in the welcome is malformed"))?;
    let certificate = welcome
        .certificate
        .clone()
        .ok_or_else(|| link_error("the welcome has no device certificate"))?;
    let secrets = LinkSecrets {
        handle: welcome.handle.clone(),
        account_secret,
    };
    profile.complete_link(
        &secrets,
        welcome.device_id,
        &certificate,
        &endpoint.base_url(),
        endpoint.pin().as_deref(),
    )?;
    drop(secrets);
    let mut client = Client::from_profile(profile, options)?;
    client.set_routes(endpoint.routes().clone())?;
    client.set_media_dir(profile_dir.join("media"));
    upload_initial_key_packages(&mut client, INITIAL_KEY_PACKAGES).await?;
    // One last-resort package per suite serves every conversation the existing device
    // adds this device to.
    let mut ready = wire::LinkReady::default();
    let mut uploads = Vec::new();
    for suite in SUITES {
        for kp in client.profile.key_packages(suite, 1, true)? {
            ready.key_packages.push(wire::LinkKeyPackage {
                suite: u32::from(suite.code()),
                key_package: kp.clone().into(),
            });
            uploads.push(wire::KeyPackageUpload {
                key_package: kp.into(),
                last_resort: true,
            });
        }
    }
    client.upload_key_packages(uploads).await?;
    put_slot(&api, &channel, &link_id, "ready", &ready.encode_to_vec()).await?;
    let (done, n) = read_slot(&api, &channel, &link_id, "done", deadline).await?;
    received += n;
    let done: wire::LinkDone = decode(&done, "the link's end")?;
    if !done.failed.is_empty() {
        let _ = put_slot(&api, &channel, &link_id, "fin", b"").await;
        return Err(link_error(done.failed));
    }
    let mut archive = Vec::with_capacity(usize::try_from(done.history_bytes).unwrap_or(0));
    for i in 0..done.history_parts {
        let (part, n) = read_slot(&api, &channel, &link_id, &format!("h{i}"), deadline).await?;
        received += n;
        archive.extend_from_slice(&part);
    }
    put_slot(&api, &channel, &link_id, "fin", b"").await?;
    // Join the conversations first (their Welcomes are in this device's mailbox), so the
    // archive's group chats map onto the joined groups.
    client
        .sync(deadline.saturating_duration_since(Instant::now()), on_event)
        .await?;
    let history = client
        .profile
        .import_history(&mut std::io::Cursor::new(archive))?;
    client.refresh_own_devices().await?;
    client.emit(on_event);
    let identity = client.identity()?.clone();
    client.disconnect().await;
    Ok(Joined {
        identity,
        conversations: done.conversations,
        history,
        bytes_received: received,
    })
}
