//! Hushwire client library: the connection to a Hushwire server and the sync engine
//! every front end (CLI, TUI, daemons) drives.
//!
//! The server is the MLS Delivery Service and only ever sees ciphertext; all
//! encryption and the local store live in [`hushwire_e2e::Profile`]. This crate moves
//! bytes between a profile and the server, reliably: outbox items keep their ids across
//! retries, incoming envelopes are acknowledged only after the profile stored them, and
//! transient failures are retried with exponential backoff and jitter.
//!
//! # Layout
//! - [`tls`]: TLS 1.3 client configuration; the pinned-key verifier.
//! - [`endpoint`]: [`Endpoint`] — base URL, TLS setup, and dialing over routes:
//!   direct, SOCKS5 / HTTP CONNECT proxies, volunteer relays; automatic failover.
//! - [`routes`]: [`RouteBook`] — a profile's ways in (`routes.json`) and what it
//!   learned about them.
//! - [`api`]: [`ApiClient`] for the HTTPS routes; signed requests ([`Signer`]).
//! - [`connection`]: the raw authenticated WebSocket [`Connection`] (also used by the
//!   load generator without a profile).
//! - `register`: [`register`] — create an identity and register it on a server.
//! - `client`: [`Client`] — the sync engine: flush the outbox, receive, key packages;
//!   attachments ([`Client::send_file`], [`Client::download_attachment`]: encrypted
//!   with `hushwire_media`, uploaded and downloaded in resumable, streamed parts);
//!   conversation features ([`Client::send_typing`], [`Client::announce_presence`],
//!   [`Client::request_presence`]; blocks, retractions and receipts the profile queues
//!   go out with the outbox).
//! - `client/devices`: several devices per account: the signed device list, removing
//!   and renaming devices, linking a new device ([`Client::link_device`] on the existing
//!   device, [`join_by_link`] on the new one).
//! - `error`: [`ClientError`].

pub mod api;
pub mod connection;
pub mod endpoint;
mod error;
pub mod routes;
pub mod tls;

#[cfg(test)]
mod test_support;

pub use api::{ApiClient, ApiRequest, ByteStream, KeySigner, Signer};
pub use connection::{Connection, FrameReceiver, FrameSender, PendingConnection};
pub use endpoint::{Dialer, Endpoint, Transport};
pub use error::ClientError;
/// HTTP methods of [`ApiRequest::new`].
pub use reqwest::Method;
pub use routes::{ProxyKind, ProxyUrl, Route, RouteBook, ServerNode};
mod client;
mod register;

/// End-to-end encrypted backups: write, schedule, restore (a new device of the account).
pub use client::backup;

pub use client::{
    Client, ClientOptions, Direction, Joined, LinkReport, LinkRequest, PRESENCE_WAIT, PendingLink,
    ProfileSigner, ProgressFn, ReceiveReport, SUITES, SendFileOptions, Transfer, join_by_link,
};
/// The key file itself (`change_passphrase`, prompts, the environment variables).
pub use hushwire_vault as vault;
/// Re-exported: how a profile's key is unlocked (`ClientOptions::unlock`).
pub use hushwire_vault::{Passphrase, Unlock, VaultError};
pub use register::{INITIAL_KEY_PACKAGES, Registered, register, register_servers};

/// The database key of the profile in `dir`, unlocked as `unlock` says (creating the key
/// file of a new profile, see `hushwire-vault`). Pass it on as [`Unlock::Key`] to open
/// the profile again without asking again.
pub fn profile_key(
    dir: &std::path::Path,
    unlock: &Unlock,
) -> Result<hushwire_e2e::StoreKey, ClientError> {
    Ok(hushwire_vault::unlock(dir, unlock)?)
}

/// Opens the profile in `dir`: unlocks its database key as `unlock` says (see
/// [`profile_key`]), then opens the encrypted database.
pub fn open_profile(
    dir: &std::path::Path,
    unlock: &Unlock,
) -> Result<hushwire_e2e::Profile, ClientError> {
    let key = profile_key(dir, unlock)?;
    Ok(hushwire_e2e::Profile::open(dir, &key)?)
}

/// Re-exported so front ends need not depend on `hushwire-e2e` for the common types.
pub use hushwire_e2e::{AttachmentInfo, Event, Identity, MessageState, StoredMessage};
