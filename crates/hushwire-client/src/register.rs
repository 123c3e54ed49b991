//! Registration: create an identity in a profile and register it on a server.

use std::path::Path;

use hushwire_e2e::Identity;
use hushwire_proto::identity::validate_handle;
use hushwire_proto::wire::{self, ErrorCode};

use crate::api::unix_ms;
use crate::client::{ClientOptions, upload_initial_key_packages};
use crate::{ApiClient, ApiRequest, Client, ClientError, Endpoint, ServerNode};

/// One-time key packages uploaded per suite at registration (plus one last-resort).
pub const INITIAL_KEY_PACKAGES: usize = 20;

/// The outcome of [`register`].
#[derive(Debug)]
pub struct Registered {
    /// The new identity.
    pub identity: Identity,
    /// Key packages the server stored.
    pub key_packages: u32,
    /// Set when registration succeeded but the key package upload failed; the next
    /// `receive`/`sync` tops them up.
    pub key_package_error: Option<ClientError>,
}

/// Registers `handle` on `server_url` from the profile in `profile_dir` (over the
/// profile's routes, `routes.json`, if it has any):
/// checks the handle locally, checks that the server is reachable and presents the
/// pinned key, creates the account and device keys, `POST /v1/register`, records the
/// device id, then uploads key packages for both suites.
pub async fn register(
    profile_dir: &Path,
    handle: &str,
    server_url: &str,
    pin: Option<&str>,
    invite: Option<&str>,
    options: ClientOptions,
) -> Result<Registered, ClientError> {
    register_servers(
        profile_dir,
        handle,
        &[server_url.to_string()],
        pin,
        invite,
        options,
    )
    .await
}

/// Like [`register`] with every server URL of one deployment (nodes sharing one
/// certificate, so one `pin`, one secret path and one store). The first is the
/// profile's server; the others are kept in the profile's routes
/// ([`RouteBook`](crate::RouteBook), `routes.json`) and tried in order when it does
/// not answer — registration itself included. Every URL must have the same path (the secret prefix).
pub async fn register_servers(
    profile_dir: &Path,
    handle: &str,
    server_urls: &[String],
    pin: Option<&str>,
    invite: Option<&str>,
    options: ClientOptions,
) -> Result<Registered, ClientError> {
    validate_handle(handle)?;
    let Some((primary, others)) = server_urls.split_first() else {
        return Err(ClientError::InvalidUrl {
            url: String::new(),
            reason: "no server URL given".into(),
        });
    };
    // Validate everything before touching the profile.
    let first = Endpoint::new(primary, pin)?;
    let first_node = ServerNode::parse(primary)?;
    let mut nodes: Vec<ServerNode> = Vec::with_capacity(others.len());
    for url in others {
        let node = ServerNode::parse(url)?;
        if node.path() != first_node.path() {
            return Err(ClientError::InvalidUrl {
                url: url.clone(),
                reason: "the servers of one deployment share the secret path; this URL's \
                         path differs from the first server's"
                    .into(),
            });
        }
        if node.address() != first_node.address()
            && !nodes.iter().any(|n| n.address() == node.address())
        {
            nodes.push(node);
        }
    }
    let mut profile = crate::open_profile(profile_dir, &options.unlock)?;
    if let Some(identity) = profile.identity() {
        return Err(ClientError::AlreadyRegistered(identity.handle.clone()));
    }
    // The profile's routes (the other servers, relays, proxy) apply to registration
    // too. A profile registered with one URL gets no `servers` entry at all.
    let book = crate::RouteBook::load(profile_dir)?;
    let routes = if nodes.is_empty() && book.servers().next().is_none() {
        book
    } else {
        crate::RouteBook::set_servers(profile_dir, &nodes)?
    };
    let endpoint = first
        .with_connect_timeout(options.connect_timeout)
        .with_routes(routes);
    // Fail on a wrong pin or an unreachable server before making any keys.
    endpoint.probe().await?;
    let registration = profile.create_identity(handle, unix_ms())?;
    let api = ApiClient::new(endpoint.clone())?;
    let request = wire::RegisterRequest {
        handle: handle.to_string(),
        account_key: registration.account_key.to_vec().into(),
        device: Some(registration.device),
        invite: invite.unwrap_or_default().to_string(),
    };
    let response: wire::RegisterResponse = match api.call(ApiRequest::register(&request)).await {
        Ok(r) => r,
        Err(ClientError::Api {
            code: ErrorCode::HandleTaken,
            message,
            ..
        }) => {
            tracing::debug!(%message, "handle taken");
            return Err(ClientError::HandleTaken(handle.to_string()));
        }
        Err(ClientError::Api {
            code: ErrorCode::InviteRequired,
            message,
            ..
        }) => {
            return Err(ClientError::InviteRequired(message));
        }
        Err(e) => return Err(e),
    };
    profile.complete_registration(
        &endpoint.base_url(),
        endpoint.pin().as_deref(),
        response.device_id,
    )?;
    let mut client = Client::from_profile(profile, options)?;
    client.set_routes(endpoint.routes().clone())?;
    let (key_packages, key_package_error) =
        match upload_initial_key_packages(&mut client, INITIAL_KEY_PACKAGES).await {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e)),
        };
    // The account's first signed device list (devices.rs): contacts then accept only
    // the devices this account lists.
    if let Err(e) = client
        .publish_device_list(hushwire_e2e::DeviceListEdit::Initial)
        .await
    {
        tracing::warn!(error = %e, "the first device list was not published");
    }
    let identity = client.identity()?.clone();
    Ok(Registered {
        identity,
        key_packages,
        key_package_error,
    })
}
