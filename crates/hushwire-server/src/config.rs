//! Server configuration: one typed struct, loadable from TOML, validated before use.
//!
//! Every field has a default (documented on the field), so an empty TOML file is a valid
//! configuration. Unknown keys are refused so a typo is an error, not a silent default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hushwire_proto::limits;
use serde::{Deserialize, Serialize};

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationPolicy {
    /// Anyone who can reach the server.
    #[default]
    Open,
    /// Only holders of a single-use code from `hushwire admin invite`.
    Invite,
}

/// TLS material. With neither path set the server makes (once) and reuses a
/// self-signed certificate in `{data_dir}/tls/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Default: none (self-signed).
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default: none (self-signed).
    pub key: Option<PathBuf>,
}

/// Let's Encrypt's production directory, the default ACME directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Certificates from an ACME CA (RFC 8555) for public deployments: the server answers
/// the CA's TLS-ALPN-01 challenge (RFC 8737) on its own port, so the domains must resolve
/// to this server and the CA must reach it on port 443 (listen there, or forward 443 to
/// it). Off while `domains` is empty; exclusive with `[tls] cert/key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// DNS names the certificate covers (no wildcards, no IP addresses); the first one is
    /// the host of the printed URL. Default: none (ACME off).
    pub domains: Vec<String>,
    /// Contact URI the CA may write to about the certificate, e.g.
    /// `mailto:ops@example.org`. Default: none.
    pub contact: Option<String>,
    /// ACME directory URL. Default: Let's Encrypt production.
    pub directory: String,
    /// Where the account key, certificate and key are kept. Default: `{data_dir}/acme`.
    pub cache_dir: Option<PathBuf>,
    /// PEM root certificate of the ACME server's own HTTPS endpoint, for a private or
    /// test CA (e.g. Pebble). Default: none (the system's trust store).
    pub directory_root: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            contact: None,
            directory: LETS_ENCRYPT_DIRECTORY.to_string(),
            cache_dir: None,
            directory_root: None,
        }
    }
}

impl AcmeConfig {
    /// Whether ACME is on.
    pub fn enabled(&self) -> bool {
        !self.domains.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.domains.len() > 100 {
            return Err(invalid("acme.domains", "at most 100 names"));
        }
        for d in &self.domains {
            if !is_dns_name(d) {
                return Err(invalid(
                    "acme.domains",
                    format!(
                        "{d:?} is not a DNS name (TLS-ALPN-01 covers neither wildcards nor IP addresses)"
                    ),
                ));
            }
        }
        if let Some(c) = &self.contact
            && !(c.starts_with("mailto:") && c.len() > "mailto:".len() && c.contains('@'))
        {
            return Err(invalid(
                "acme.contact",
                "must be a mailto: URI, e.g. mailto:ops@example.org",
            ));
        }
        if !self.directory.starts_with("https://") {
            return Err(invalid("acme.directory", "must be an https:// URL"));
        }
        Ok(())
    }
}

/// A fully qualified DNS name: 2+ labels of letters, digits and inner hyphens, ≤ 253
/// characters, not all-numeric at the end (so not an IP address).
fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Rate limits (token buckets refilled continuously; the burst equals the per-minute
/// rate). "Per client IP" counts an IPv6 client by its /64, as
/// `max_connections_per_ip` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Registrations per client IP per minute. Default: 5.
    pub registrations_per_ip_per_minute: u32,
    /// Key-package claims per authenticated device per minute. Default: 60.
    pub claims_per_device_per_minute: u32,
    /// Ephemeral signals (typing, presence), block changes and retractions per
    /// authenticated device per minute. Default: 120.
    pub signals_per_device_per_minute: u32,
    /// Message submits (chat messages, reactions, receipts, edits, commits: all alike
    /// to the server) per authenticated device per minute; past it a submit is
    /// refused `RATE_LIMITED` and the client keeps the message queued and retries.
    /// Default: 1200 (20 a second sustained, bursts of 1200: a client catching up on
    /// receipts after a long offline spell is slowed, not refused for good).
    pub submits_per_device_per_minute: u32,
    /// Unauthenticated link-session requests (slot writes and reads, `PUT`/`GET
    /// /v1/links/{id}/{slot}`) per client IP per minute. Default: 120.
    pub link_requests_per_ip_per_minute: u32,
    /// Public key-directory requests (`GET /v1/directory…`: roots and audit proofs)
    /// per client IP per minute. Default: 600.
    pub directory_requests_per_ip_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            registrations_per_ip_per_minute: 5,
            claims_per_device_per_minute: 60,
            signals_per_device_per_minute: 120,
            submits_per_device_per_minute: 1200,
            link_requests_per_ip_per_minute: 120,
            directory_requests_per_ip_per_minute: 600,
        }
    }
}

/// Size limits. They may be lower than the protocol's (`hushwire_proto::limits`),
/// never higher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message/frame accepted, in bytes.
    /// Default: `limits::MAX_FRAME_BYTES` (1 MiB).
    pub max_frame_bytes: usize,
    /// Largest MLS message inside a `Submit`, in bytes.
    /// Default: `limits::MAX_MLS_MESSAGE_BYTES` (512 KiB).
    pub max_message_bytes: usize,
    /// Largest HTTPS API body, in bytes. Default: `limits::MAX_API_BODY_BYTES` (256 KiB).
    pub max_body_bytes: usize,
    /// Most members (distinct handles) in a group's roster; a commit with more is
    /// rejected `LIMIT_EXCEEDED`. Default: 1024.
    pub max_group_members: usize,
    /// Largest MLS application message (a chat message) in bytes; larger ones are
    /// rejected `TOO_LARGE` (`max_message_bytes` applies too, whichever is lower).
    /// Commits are bounded by `max_message_bytes` only.
    /// Default: 128 KiB (a 64 KiB text plus MLS overhead).
    pub max_group_message_bytes: usize,
    /// Most non-revoked devices per account; `POST /v1/devices` past it is refused
    /// `LIMIT_EXCEEDED`. Between 1 and `limits::MAX_LISTED_DEVICES` (64).
    /// Default: `limits::DEFAULT_MAX_DEVICES_PER_ACCOUNT` (8).
    pub max_devices_per_account: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            max_message_bytes: limits::MAX_MLS_MESSAGE_BYTES,
            max_body_bytes: limits::MAX_API_BODY_BYTES,
            max_group_members: 1024,
            max_group_message_bytes: 128 * 1024,
            max_devices_per_account: limits::DEFAULT_MAX_DEVICES_PER_ACCOUNT,
        }
    }
}

/// Default largest blob: the ciphertext of a 2 GiB attachment. Clients encrypt with
/// STREAM over 64 KiB chunks, each with a 16-byte tag: 2 GiB + (2 GiB / 64 KiB) × 16 B,
/// plus 4 KiB of headroom for the format's header and the last chunk
/// (2 148 012 032 bytes).
pub const DEFAULT_MAX_BLOB_BYTES: u64 =
    limits::MAX_ATTACHMENT_BYTES + (limits::MAX_ATTACHMENT_BYTES / (64 * 1024)) * 16 + 4096;

/// Most parts one blob may have (`max_blob_bytes / part_size`, rounded up): bounds a
/// blob's part records and its status response.
pub const MAX_BLOB_PARTS: u64 = 1 << 16;

/// Media (end-to-end encrypted attachments): the server stores opaque ciphertext blobs
/// in `{data_dir}/blobs/` or an S3 bucket (`store`; see `hushwire-blobstore`) with their
/// metadata in the store. Durations are written like `"30days"`, `"24h"`, `"15m"`,
/// `"500ms"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Where blob bytes live: `"s3://BUCKET[/prefix]"` (objects
    /// `{prefix}/blobs/{id}/{part}`; every node of a deployment names the same, and
    /// nodes sharing a bucket must share the store: the daily orphan scan deletes
    /// objects the node's store has no record of), reached
    /// with the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`) or
    /// `s3_credentials_file`. Default: unset, the local `{data_dir}/blobs/`.
    pub store: Option<String>,
    /// An AWS-style credentials file (`[default]` with `aws_access_key_id`,
    /// `aws_secret_access_key`, optionally `aws_session_token`, `region`,
    /// `endpoint_url`, `allow_http`) whose values win over the environment. Shown only
    /// as "set". Default: none.
    pub s3_credentials_file: Option<PathBuf>,
    /// Largest blob (ciphertext bytes) a client may create; larger is `TOO_LARGE`.
    /// Default: [`DEFAULT_MAX_BLOB_BYTES`], the ciphertext of a 2 GiB file.
    pub max_blob_bytes: u64,
    /// Bytes per upload part (every part but a blob's last one), fixed per blob at its
    /// creation; also the most a part request's body may hold. 1 KiB to
    /// `limits::MAX_BLOB_PART_BYTES` (8 MiB). Lowering it makes uploads in progress with
    /// the larger size fail (they are swept as abandoned). Default: 4 MiB.
    pub part_size: u32,
    /// Per-account quota: the sizes of an account's unexpired blobs added up, counted
    /// when a blob is created; beyond it creation is `QUOTA_EXCEEDED`. Default: 10 GiB.
    pub quota_bytes: u64,
    /// Memory for part bodies being received, all uploads together (each holds a
    /// whole part while its signature is checked); further parts wait. At least
    /// `part_size`. Default: 64 MiB.
    pub upload_buffer_bytes: u64,
    /// How long a blob is kept at most. Default: 30 days.
    #[serde(with = "human_duration")]
    pub retention: Duration,
    /// How long a blob is kept once every recipient device has fetched it.
    /// Default: 24 hours.
    #[serde(with = "human_duration")]
    pub grace_after_fetch: Duration,
    /// How long an upload may stay incomplete before it is deleted. Default: 24 hours.
    #[serde(with = "human_duration")]
    pub abandoned_upload_after: Duration,
    /// How often the sweeper deletes due blobs. Default: 15 minutes.
    #[serde(with = "human_duration")]
    pub sweep_interval: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            store: None,
            s3_credentials_file: None,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            part_size: 4 * 1024 * 1024,
            quota_bytes: 10 * 1024 * 1024 * 1024,
            upload_buffer_bytes: 64 * 1024 * 1024,
            retention: Duration::from_secs(30 * 24 * 3600),
            grace_after_fetch: Duration::from_secs(24 * 3600),
            abandoned_upload_after: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(15 * 60),
        }
    }
}

/// `media.*` environment variables, each overriding the key of the same name.
pub const MEDIA_ENV: [&str; 10] = [
    "HUSHWIRE_MEDIA_STORE",
    "HUSHWIRE_MEDIA_S3_CREDENTIALS_FILE",
    "HUSHWIRE_MEDIA_MAX_BLOB_BYTES",
    "HUSHWIRE_MEDIA_PART_SIZE",
    "HUSHWIRE_MEDIA_QUOTA_BYTES",
    "HUSHWIRE_MEDIA_UPLOAD_BUFFER_BYTES",
    "HUSHWIRE_MEDIA_RETENTION",
    "HUSHWIRE_MEDIA_GRACE_AFTER_FETCH",
    "HUSHWIRE_MEDIA_ABANDONED_UPLOAD_AFTER",
    "HUSHWIRE_MEDIA_SWEEP_INTERVAL",
];

impl MediaConfig {
    /// Applies `HUSHWIRE_MEDIA_*` variables (see [`MEDIA_ENV`]) read through `var`:
    /// sizes as integers of bytes, durations as in the file.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn int<T: std::str::FromStr>(field: &'static str, v: &str) -> Result<T, ConfigError> {
            v.trim()
                .parse()
                .map_err(|_| invalid(field, format!("{v:?} is not a whole number")))
        }
        fn dur(field: &'static str, v: &str) -> Result<Duration, ConfigError> {
            humantime::parse_duration(v.trim())
                .map_err(|e| invalid(field, format!("{v:?} is not a duration: {e}")))
        }
        for name in MEDIA_ENV {
            let Some(v) = var(name) else { continue };
            match name {
                "HUSHWIRE_MEDIA_STORE" => {
                    self.store = Some(v.trim().to_owned()).filter(|s| !s.is_empty());
                }
                "HUSHWIRE_MEDIA_S3_CREDENTIALS_FILE" => {
                    self.s3_credentials_file =
                        Some(PathBuf::from(v.trim())).filter(|p| !p.as_os_str().is_empty());
                }
                "HUSHWIRE_MEDIA_MAX_BLOB_BYTES" => self.max_blob_bytes = int(name, &v)?,
                "HUSHWIRE_MEDIA_PART_SIZE" => self.part_size = int(name, &v)?,
                "HUSHWIRE_MEDIA_QUOTA_BYTES" => self.quota_bytes = int(name, &v)?,
                "HUSHWIRE_MEDIA_UPLOAD_BUFFER_BYTES" => self.upload_buffer_bytes = int(name, &v)?,
                "HUSHWIRE_MEDIA_RETENTION" => self.retention = dur(name, &v)?,
                "HUSHWIRE_MEDIA_GRACE_AFTER_FETCH" => self.grace_after_fetch = dur(name, &v)?,
                "HUSHWIRE_MEDIA_ABANDONED_UPLOAD_AFTER" => {
                    self.abandoned_upload_after = dur(name, &v)?;
                }
                _ => self.sweep_interval = dur(name, &v)?,
            }
        }
        Ok(())
    }

    /// The S3 location of `store`, `None` for the local data directory.
    pub fn s3_location(&self) -> Result<Option<hushwire_blobstore::S3Location>, ConfigError> {
        self.store
            .as_deref()
            .map(hushwire_blobstore::S3Location::parse)
            .transpose()
            .map_err(|e| invalid("media.store", e.to_string()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.s3_location()?;
        if self.s3_credentials_file.is_some() && self.store.is_none() {
            return Err(invalid(
                "media.s3_credentials_file",
                "is only used with media.store = \"s3://…\"",
            ));
        }
        let max_part = u32::try_from(limits::MAX_BLOB_PART_BYTES).unwrap_or(u32::MAX);
        if !(1024..=max_part).contains(&self.part_size) {
            return Err(invalid(
                "media.part_size",
                format!("must be between 1024 and {max_part}"),
            ));
        }
        if self.max_blob_bytes.div_ceil(u64::from(self.part_size)) > MAX_BLOB_PARTS {
            return Err(invalid(
                "media.max_blob_bytes",
                format!("must be at most {MAX_BLOB_PARTS} parts of media.part_size"),
            ));
        }
        if self.quota_bytes == 0 {
            return Err(invalid("media.quota_bytes", "must be at least 1"));
        }
        if self.upload_buffer_bytes < u64::from(self.part_size)
            || self.upload_buffer_bytes > u64::from(u32::MAX)
        {
            return Err(invalid(
                "media.upload_buffer_bytes",
                format!("must be between media.part_size and {}", u32::MAX),
            ));
        }
        let day = Duration::from_secs(24 * 3600);
        for (field, v, min, max) in [
            (
                "media.retention",
                self.retention,
                Duration::from_secs(1),
                day * 3650,
            ),
            (
                "media.grace_after_fetch",
                self.grace_after_fetch,
                Duration::ZERO,
                day * 3650,
            ),
            (
                "media.abandoned_upload_after",
                self.abandoned_upload_after,
                Duration::from_secs(1),
                day * 3650,
            ),
            (
                "media.sweep_interval",
                self.sweep_interval,
                Duration::from_millis(10),
                day,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return Err(invalid(
                    field,
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The key directory (`[directory]`): key transparency (see `hushwire-directory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// How often pending key changes (new accounts, device lists, released handles) are
    /// published as a new signed epoch. A new account's key is verifiable by its contacts
    /// from the next publication on. 100 ms to 1 day. Default: 30 s.
    #[serde(with = "human_duration")]
    pub publish_interval: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            publish_interval: Duration::from_secs(30),
        }
    }
}

impl DirectoryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.publish_interval < Duration::from_millis(100)
            || self.publish_interval > Duration::from_secs(86_400)
        {
            return Err(invalid(
                "directory.publish_interval",
                "must be between 100ms and 1d",
            ));
        }
        Ok(())
    }
}

/// The cross-node bus (`[bus]`): with several `hushwire serve` nodes sharing one store,
/// they wake each other's connections and relay ephemeral signals over NATS core
/// pub/sub (see `hushwire-bus`). Off (one node) while `url` is unset.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// NATS server URL(s), comma-separated: `nats://[user:password@|token@]host[:port]`
    /// (`tls://` for TLS). Shown redacted (scheme, host and port only).
    /// Default: none (a single node, no bus).
    pub url: Option<String>,
    /// Subject prefix: every node of one deployment uses the same; deployments sharing a
    /// NATS server use different ones. Default: `hushwire`.
    pub subject_prefix: String,
    /// How often, with a bus, each node re-checks its connected devices' mailboxes in
    /// the store (covers notices lost while NATS is down). 10 ms to 1 h. Default: 2 s.
    #[serde(with = "human_duration")]
    pub poll_interval: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: None,
            subject_prefix: hushwire_bus::DEFAULT_PREFIX.to_string(),
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &self.redacted_url())
            .field("subject_prefix", &self.subject_prefix)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl BusConfig {
    /// Whether a bus is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// The URL without credentials, for logs; `None` without a bus.
    pub fn redacted_url(&self) -> Option<String> {
        self.url
            .as_deref()
            .map(|u| match hushwire_bus::BusUrl::parse(u) {
                Ok(u) => u.redacted(),
                Err(_) => "(invalid)".to_string(),
            })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            hushwire_bus::BusUrl::parse(url).map_err(|e| invalid("bus.url", e.to_string()))?;
        }
        hushwire_bus::validate_prefix(&self.subject_prefix)
            .map_err(|e| invalid("bus.subject_prefix", e.to_string()))?;
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.poll_interval) {
            return Err(invalid("bus.poll_interval", "must be between 10ms and 1h"));
        }
        Ok(())
    }
}

/// Serde for durations as human-readable strings (`"24h"`, `"30days"`, `"500ms"`).
mod human_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Everything `hushwire serve` can be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default: `127.0.0.1:8443`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory for the database and the generated TLS material. Default: `hushwire-data`
    /// (relative to the working directory).
    pub data_dir: PathBuf,
    /// The store (`store = "postgres://user:password@host/db"`): PostgreSQL, shared by
    /// every node of a deployment. Default: none, the embedded SQLite database in
    /// `data_dir`.
    pub store: Option<StoreUrl>,
    /// TLS certificate and key. Default: self-signed, generated on first start.
    pub tls: TlsConfig,
    /// Certificates from an ACME CA (`[acme]`). Default: off.
    pub acme: AcmeConfig,
    /// Secret path prefix every API route lives under, e.g. `/abc123`; part of the URL
    /// users receive. Default: `""`, which means a random one generated on first start
    /// and kept in `{data_dir}/path_prefix`. Everything outside it is the decoy site.
    pub path_prefix: String,
    /// Directory of the decoy website served at `/` to everyone without the prefix.
    /// Default: `{data_dir}/site`, holding a built-in neutral page.
    pub site_dir: Option<PathBuf>,
    /// Who may register. Default: `open`.
    pub registration: RegistrationPolicy,
    /// Days after which undelivered messages are deleted. Default: 30.
    pub retention_days: u32,
    /// Most simultaneous TCP connections (HTTPS and WebSocket alike); further ones wait
    /// in the kernel's accept queue. Default: 10 000.
    pub max_connections: usize,
    /// Most simultaneous connections from one client IP address (an IPv4-mapped IPv6
    /// peer counts as its IPv4 address, an IPv6 peer as its /64, since whoever holds one
    /// address of a /64 can use them all); further ones are closed right after accept,
    /// before TLS, so one address cannot take every `max_connections` slot. At least 1;
    /// above `max_connections` it is `max_connections` in effect (a small server keeps
    /// working without setting it). Default: 256 (room for many users behind one NAT
    /// address).
    pub max_connections_per_ip: usize,
    /// Client address prefixes (CIDR such as `"10.0.0.0/8"`, or a bare address) that
    /// `max_connections_per_ip` does not apply to. Default: `["127.0.0.0/8",
    /// "::1/128"]`: a reverse proxy or load balancer on the same host, and local
    /// benchmarks, connect from loopback. Behind a proxy on another host, add its address.
    pub connection_limit_exempt: Vec<String>,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// Size limits.
    pub limits: Limits,
    /// Media blobs (`[media]`).
    pub media: MediaConfig,
    /// The cross-node bus (`[bus]`). Default: off.
    pub bus: BusConfig,
    /// The key directory.
    pub directory: DirectoryConfig,
    /// Seconds a WebSocket client has to answer the challenge. Default: 10.
    pub auth_timeout_secs: u64,
    /// Seconds a TLS handshake may take. Default: 10.
    pub handshake_timeout_secs: u64,
    /// Seconds between retention sweeps (`Store::expire`). Default: 3600.
    pub expire_interval_secs: u64,
    /// Seconds graceful shutdown waits for connections to finish. Default: 10.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("hushwire-data"),
            store: None,
            tls: TlsConfig::default(),
            acme: AcmeConfig::default(),
            path_prefix: String::new(),
            site_dir: None,
            registration: RegistrationPolicy::Open,
            retention_days: 30,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            connection_limit_exempt: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            rate_limits: RateLimits::default(),
            limits: Limits::default(),
            media: MediaConfig::default(),
            bus: BusConfig::default(),
            directory: DirectoryConfig::default(),
            auth_timeout_secs: 10,
            handshake_timeout_secs: 10,
            expire_interval_secs: 3600,
            shutdown_grace_secs: 10,
        }
    }
}

/// The URL of an external store (`store = …`). It may carry a password, so Debug and
/// Display show it without user info and query.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl StoreUrl {
    /// The URL as given (with its password: for connecting only, never for logs).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it names PostgreSQL (`postgres://` or `postgresql://`).
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// `scheme://host[:port]/path`, without user info and query (either may hold a
    /// password).
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        format!("{scheme}://{host}{path}")
    }
}

impl From<String> for StoreUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys or wrong types.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent.
    #[error("invalid config value `{field}`: {reason}")]
    Invalid {
        /// The offending key, dotted.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl ServerConfig {
    /// Parses TOML (missing keys take their defaults) and validates the result.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// `connection_limit_exempt` parsed.
    pub(crate) fn connection_limit_exempt_cidrs(
        &self,
    ) -> Result<Vec<crate::conn_limit::Cidr>, ConfigError> {
        self.connection_limit_exempt
            .iter()
            .map(|c| {
                crate::conn_limit::Cidr::parse(c)
                    .map_err(|reason| invalid("connection_limit_exempt", reason))
            })
            .collect()
    }

    /// Checks every value; the error names the key and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if let Some(url) = &self.store
            && !url.is_postgres()
        {
            return Err(invalid(
                "store",
                "must be a postgres:// URL (leave it unset for the embedded database)",
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "tls",
                    "set both `cert` and `key`, or neither for a self-signed certificate",
                ));
            }
            _ => {}
        }
        self.acme.validate()?;
        if self.acme.enabled() && self.tls.cert.is_some() {
            return Err(invalid(
                "acme",
                "set either `[acme] domains` or `[tls] cert/key`, not both",
            ));
        }
        validate_prefix(&self.path_prefix)?;
        if !(1..=3650).contains(&self.retention_days) {
            return Err(invalid("retention_days", "must be between 1 and 3650"));
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(invalid("max_connections", "must be between 1 and 1000000"));
        }
        if self.max_connections_per_ip == 0 || self.max_connections_per_ip > 1_000_000 {
            return Err(invalid(
                "max_connections_per_ip",
                "must be between 1 and 1000000",
            ));
        }
        self.connection_limit_exempt_cidrs()?;
        if self.rate_limits.registrations_per_ip_per_minute == 0 {
            return Err(invalid(
                "rate_limits.registrations_per_ip_per_minute",
                "must be at least 1",
            ));
        }
        if self.rate_limits.claims_per_device_per_minute == 0 {
            return Err(invalid(
                "rate_limits.claims_per_device_per_minute",
                "must be at least 1",
            ));
        }
        if self.rate_limits.signals_per_device_per_minute == 0 {
            return Err(invalid(
                "rate_limits.signals_per_device_per_minute",
                "must be at least 1",
            ));
        }
        if self.rate_limits.submits_per_device_per_minute == 0 {
            return Err(invalid(
                "rate_limits.submits_per_device_per_minute",
                "must be at least 1",
            ));
        }
        if self.rate_limits.link_requests_per_ip_per_minute == 0 {
            return Err(invalid(
                "rate_limits.link_requests_per_ip_per_minute",
                "must be at least 1",
            ));
        }
        if self.rate_limits.directory_requests_per_ip_per_minute == 0 {
            return Err(invalid(
                "rate_limits.directory_requests_per_ip_per_minute",
                "must be at least 1",
            ));
        }
        let l = &self.limits;
        if !(1024..=limits::MAX_FRAME_BYTES).contains(&l.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!("must be between 1024 and {}", limits::MAX_FRAME_BYTES),
            ));
        }
        if !(256..=limits::MAX_MLS_MESSAGE_BYTES).contains(&l.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes",
                format!("must be between 256 and {}", limits::MAX_MLS_MESSAGE_BYTES),
            ));
        }
        if l.max_message_bytes > l.max_frame_bytes {
            return Err(invalid(
                "limits.max_message_bytes",
                "must not exceed limits.max_frame_bytes",
            ));
        }
        if !(1024..=limits::MAX_API_BODY_BYTES).contains(&l.max_body_bytes) {
            return Err(invalid(
                "limits.max_body_bytes",
                format!("must be between 1024 and {}", limits::MAX_API_BODY_BYTES),
            ));
        }
        if !(2..=limits::MAX_ROSTER).contains(&l.max_group_members) {
            return Err(invalid(
                "limits.max_group_members",
                format!("must be between 2 and {}", limits::MAX_ROSTER),
            ));
        }
        if !(256..=limits::MAX_MLS_MESSAGE_BYTES).contains(&l.max_group_message_bytes) {
            return Err(invalid(
                "limits.max_group_message_bytes",
                format!("must be between 256 and {}", limits::MAX_MLS_MESSAGE_BYTES),
            ));
        }
        if !(1..=limits::MAX_LISTED_DEVICES).contains(&l.max_devices_per_account) {
            return Err(invalid(
                "limits.max_devices_per_account",
                format!("must be between 1 and {}", limits::MAX_LISTED_DEVICES),
            ));
        }
        self.media.validate()?;
        self.bus.validate()?;
        self.directory.validate()?;
        for (field, v) in [
            ("auth_timeout_secs", self.auth_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
        ] {
            if !(1..=600).contains(&v) {
                return Err(invalid(field, "must be between 1 and 600"));
            }
        }
        if !(1..=86_400).contains(&self.expire_interval_secs) {
            return Err(invalid(
                "expire_interval_secs",
                "must be between 1 and 86400",
            ));
        }
        Ok(())
    }

    /// Retention as milliseconds.
    pub fn retention_ms(&self) -> u64 {
        u64::from(self.retention_days) * 24 * 3600 * 1000
    }

    /// The decoy site's directory: `site_dir`, else `{data_dir}/site`.
    pub fn site_path(&self) -> PathBuf {
        self.site_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("site"))
    }

    /// Where the generated path prefix is kept: `{data_dir}/path_prefix`.
    pub fn prefix_path(&self) -> PathBuf {
        self.data_dir.join("path_prefix")
    }

    /// Where ACME state is kept: `acme.cache_dir`, else `{data_dir}/acme`.
    pub fn acme_cache_dir(&self) -> PathBuf {
        self.acme
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("acme"))
    }

    /// Where the embedded database lives: `{data_dir}/hushwire.db`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("hushwire.db")
    }

    pub(crate) fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    pub(crate) fn expire_interval(&self) -> Duration {
        Duration::from_secs(self.expire_interval_secs)
    }
}

fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Ok(());
    }
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        return Err(invalid(
            "path_prefix",
            "must be empty or start with '/' and not end with '/', e.g. \"/abc123\"",
        ));
    }
    if prefix.len() > 128 {
        return Err(invalid("path_prefix", "must be at most 128 characters"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~')))
    {
        return Err(invalid(
            "path_prefix",
            format!("may contain only A-Z, a-z, 0-9, '/', '-', '_', '.', '~'; found {c:?}"),
        ));
    }
    if prefix.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(invalid(
            "path_prefix",
            "must not contain '.' or '..' segments",
        ));
    }
    Ok(())
}

/// A human-readable dump for start-up logs. This config holds no secrets; file paths
/// are shown, the key file only as "set".
impl fmt::Display for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen = {}", self.listen)?;
        writeln!(f, "data_dir = {}", self.data_dir.display())?;
        match &self.store {
            Some(url) => writeln!(f, "store = {}", url.redacted())?,
            None => writeln!(f, "store = (embedded, in data_dir)")?,
        }
        match &self.tls.cert {
            Some(cert) => writeln!(f, "tls.cert = {}", cert.display())?,
            None => writeln!(f, "tls.cert = (self-signed in data_dir/tls)")?,
        }
        writeln!(
            f,
            "tls.key = {}",
            if self.tls.key.is_some() {
                "set"
            } else {
                "(self-signed)"
            }
        )?;
        if self.acme.enabled() {
            writeln!(
                f,
                "acme = {} from {}",
                self.acme.domains.join(", "),
                self.acme.directory
            )?;
        }
        // The prefix is a secret: anyone who knows it can tell this is a Hushwire server.
        writeln!(
            f,
            "path_prefix = {}",
            if self.path_prefix.is_empty() {
                "(generated in data_dir/path_prefix)"
            } else {
                "set"
            }
        )?;
        writeln!(f, "site_dir = {}", self.site_path().display())?;
        writeln!(f, "registration = {:?}", self.registration)?;
        writeln!(f, "retention_days = {}", self.retention_days)?;
        writeln!(f, "max_connections = {}", self.max_connections)?;
        writeln!(
            f,
            "max_connections_per_ip = {} (exempt: {})",
            self.max_connections_per_ip,
            if self.connection_limit_exempt.is_empty() {
                "none".to_owned()
            } else {
                self.connection_limit_exempt.join(", ")
            }
        )?;
        writeln!(
            f,
            "rate_limits = {} registrations/IP/min, {} claims/device/min, {} signals/device/min, \
             {} submits/device/min, {} link requests/IP/min, {} directory requests/IP/min",
            self.rate_limits.registrations_per_ip_per_minute,
            self.rate_limits.claims_per_device_per_minute,
            self.rate_limits.signals_per_device_per_minute,
            self.rate_limits.submits_per_device_per_minute,
            self.rate_limits.link_requests_per_ip_per_minute,
            self.rate_limits.directory_requests_per_ip_per_minute
        )?;
        writeln!(
            f,
            "directory.publish_interval = {}",
            humantime::format_duration(self.directory.publish_interval)
        )?;
        writeln!(
            f,
            "media.store = {}{}",
            self.media
                .store
                .as_deref()
                .unwrap_or("(local, data_dir/blobs)"),
            if self.media.s3_credentials_file.is_some() {
                ", S3 credentials file set"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "media = blobs up to {} B in {} B parts, quota {} B/account, retention {}, \
             kept {} after fetch, abandoned uploads {}, sweep every {}",
            self.media.max_blob_bytes,
            self.media.part_size,
            self.media.quota_bytes,
            humantime::format_duration(self.media.retention),
            humantime::format_duration(self.media.grace_after_fetch),
            humantime::format_duration(self.media.abandoned_upload_after),
            humantime::format_duration(self.media.sweep_interval)
        )?;
        if let Some(url) = self.bus.redacted_url() {
            writeln!(
                f,
                "bus = {url}, subjects {}.*, mailbox poll every {}",
                self.bus.subject_prefix,
                humantime::format_duration(self.bus.poll_interval)
            )?;
        }
        write!(
            f,
            "limits = frame {} B, message {} B, body {} B, group members {}, group message {} B, \
             devices per account {}",
            self.limits.max_frame_bytes,
            self.limits.max_message_bytes,
            self.limits.max_body_bytes,
            self.limits.max_group_members,
            self.limits.max_group_message_bytes,
            self.limits.max_devices_per_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_url_parses_and_never_shows_its_password() {
        let c = ServerConfig::from_toml(
            r#"store = "postgres://hw:s3cret@db.internal:5433/hushwire?password=s3cret""#,
        )
        .unwrap();
        let url = c.store.clone().unwrap();
        assert!(url.is_postgres());
        assert_eq!(url.redacted(), "postgres://db.internal:5433/hushwire");
        for shown in [format!("{c:?}"), c.to_string(), url.to_string()] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(shown_has_store(&c.to_string()));
        let err = ServerConfig::from_toml(r#"store = "mysql://x/y""#).unwrap_err();
        assert!(err.to_string().contains("store"), "{err}");
        assert_eq!(ServerConfig::default().store, None);
    }

    fn shown_has_store(shown: &str) -> bool {
        shown.contains("store = postgres://db.internal:5433/hushwire")
    }

    #[test]
    fn empty_toml_is_the_default() {
        let c = ServerConfig::from_toml("").unwrap();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.retention_days, 30);
    }

    #[test]
    fn parses_fields() {
        let c = ServerConfig::from_toml(
            r#"
            listen = "127.0.0.1:0"
            data_dir = "/tmp/x"
            path_prefix = "/abc123"
            registration = "invite"
            [rate_limits]
            claims_per_device_per_minute = 10
            [limits]
            max_frame_bytes = 65536
            max_message_bytes = 32768
            "#,
        )
        .unwrap();
        assert_eq!(c.registration, RegistrationPolicy::Invite);
        assert_eq!(c.rate_limits.claims_per_device_per_minute, 10);
        assert_eq!(c.rate_limits.registrations_per_ip_per_minute, 5);
        assert_eq!(c.limits.max_frame_bytes, 65536);
    }

    #[test]
    fn rejects_bad_values() {
        let err = |t: &str| ServerConfig::from_toml(t).unwrap_err().to_string();
        assert!(err("nope = 1").contains("unknown field"));
        assert!(err("registration = \"closed\"").contains("unknown variant"));
        assert!(err("path_prefix = \"abc\"").contains("path_prefix"));
        assert!(err("path_prefix = \"/abc/\"").contains("path_prefix"));
        assert!(err("path_prefix = \"/a b\"").contains("path_prefix"));
        assert!(err("path_prefix = \"/a/../b\"").contains("path_prefix"));
        assert!(err("retention_days = 0").contains("retention_days"));
        assert!(err("max_connections = 0").contains("max_connections"));
        assert!(err("max_connections_per_ip = 0").contains("max_connections_per_ip"));
        assert!(err("max_connections_per_ip = 1000001").contains("max_connections_per_ip"));
        // A small server need not lower the per-IP cap below its default.
        assert!(ServerConfig::from_toml("max_connections = 100").is_ok());
        assert!(
            err("connection_limit_exempt = [\"10.0.0.0/33\"]").contains("connection_limit_exempt")
        );
        assert!(
            err("connection_limit_exempt = [\"proxy.local\"]").contains("connection_limit_exempt")
        );
        assert!(err("[limits]\nmax_frame_bytes = 2000000").contains("limits.max_frame_bytes"));
        assert!(
            err("[limits]\nmax_frame_bytes = 2048\nmax_message_bytes = 4096")
                .contains("limits.max_message_bytes")
        );
        assert!(err("[tls]\ncert = \"/c.pem\"").contains("tls"));
        assert!(
            err("[rate_limits]\nclaims_per_device_per_minute = 0")
                .contains("claims_per_device_per_minute")
        );
        assert!(
            err("[rate_limits]\nlink_requests_per_ip_per_minute = 0")
                .contains("link_requests_per_ip_per_minute")
        );
        assert!(err("[limits]\nmax_devices_per_account = 0").contains("max_devices_per_account"));
        assert!(err("[limits]\nmax_devices_per_account = 65").contains("max_devices_per_account"));
    }

    #[test]
    fn device_and_link_limits() {
        let d = ServerConfig::default();
        assert_eq!(d.limits.max_devices_per_account, 8);
        assert_eq!(d.rate_limits.link_requests_per_ip_per_minute, 120);
        let c = ServerConfig::from_toml(
            "[limits]\nmax_devices_per_account = 3\n[rate_limits]\nlink_requests_per_ip_per_minute = 9",
        )
        .unwrap();
        assert_eq!(c.limits.max_devices_per_account, 3);
        assert_eq!(c.rate_limits.link_requests_per_ip_per_minute, 9);
        assert!(c.to_string().contains("devices per account 3"));
    }

    #[test]
    fn media_defaults_file_and_env() {
        let d = MediaConfig::default();
        assert_eq!(d.max_blob_bytes, 2_148_012_032);
        assert_eq!(d.part_size, 4 << 20);
        assert_eq!(d.retention, Duration::from_secs(30 * 86_400));
        let mut c = ServerConfig::from_toml(
            r#"
            [media]
            part_size = 65536
            quota_bytes = 1000000
            retention = "7days"
            grace_after_fetch = "0s"
            sweep_interval = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.media.part_size, 65536);
        assert_eq!(c.media.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.media.grace_after_fetch, Duration::ZERO);
        assert_eq!(c.media.sweep_interval, Duration::from_millis(250));
        assert_eq!(c.media.abandoned_upload_after, Duration::from_secs(86_400));
        // The environment overrides the file.
        c.media
            .apply_env(|k| match k {
                "HUSHWIRE_MEDIA_QUOTA_BYTES" => Some("42".into()),
                "HUSHWIRE_MEDIA_RETENTION" => Some("1h 30m".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(c.media.quota_bytes, 42);
        assert_eq!(c.media.retention, Duration::from_secs(5400));
        assert_eq!(c.media.part_size, 65536);
        assert!(
            c.media
                .apply_env(|k| (k == "HUSHWIRE_MEDIA_PART_SIZE").then(|| "big".into()))
                .unwrap_err()
                .to_string()
                .contains("HUSHWIRE_MEDIA_PART_SIZE")
        );
        // Round trip through TOML.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(ServerConfig::from_toml(&text).unwrap(), c);
        let err = |t: &str| ServerConfig::from_toml(t).unwrap_err().to_string();
        assert!(err("[media]\npart_size = 100").contains("media.part_size"));
        assert!(err("[media]\npart_size = 16777216").contains("media.part_size"));
        assert!(err("[media]\nretention = \"soon\"").contains("retention"));
        assert!(err("[media]\nretention = \"0s\"").contains("media.retention"));
        assert!(
            err("[media]\npart_size = 1024\nmax_blob_bytes = 1000000000")
                .contains("media.max_blob_bytes")
        );
        assert!(err("[media]\nupload_buffer_bytes = 1024").contains("media.upload_buffer_bytes"));
    }

    #[test]
    fn bus_section_parses_validates_and_hides_credentials() {
        let c = ServerConfig::from_toml(
            r#"
            [bus]
            url = "nats://node:hunter2@10.0.0.5:4222"
            subject_prefix = "hw.prod"
            poll_interval = "500ms"
            "#,
        )
        .unwrap();
        assert!(c.bus.enabled());
        assert_eq!(c.bus.poll_interval, Duration::from_millis(500));
        let shown = format!("{c} {c:?}");
        assert!(shown.contains("nats://10.0.0.5:4222"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("node:"),
            "{shown}"
        );
        assert!(!ServerConfig::default().bus.enabled());
        let err = |t: &str| ServerConfig::from_toml(t).unwrap_err().to_string();
        assert!(err("[bus]\nurl = \"http://x\"").contains("bus.url"));
        let e = err("[bus]\nurl = \"nats://u:hunter2@h:1/x\"");
        assert!(e.contains("bus.url") && !e.contains("hunter2"), "{e}");
        assert!(err("[bus]\nsubject_prefix = \"a.*\"").contains("bus.subject_prefix"));
        assert!(err("[bus]\npoll_interval = \"2h\"").contains("bus.poll_interval"));
    }

    #[test]
    fn media_store_local_or_s3() {
        assert_eq!(MediaConfig::default().store, None);
        assert_eq!(MediaConfig::default().s3_location().unwrap(), None);
        let c = ServerConfig::from_toml(
            "[media]\nstore = \"s3://hushwire-media/prod\"\n\
             s3_credentials_file = \"/etc/hushwire/s3-secret\"\n",
        )
        .unwrap();
        let loc = c.media.s3_location().unwrap().unwrap();
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("hushwire-media", "prod")
        );
        let shown = c.to_string();
        assert!(
            shown.contains("media.store = s3://hushwire-media/prod"),
            "{shown}"
        );
        assert!(!shown.contains("s3-secret"), "{shown}");
        // The environment overrides the file.
        let mut m = c.media.clone();
        m.apply_env(|k| (k == "HUSHWIRE_MEDIA_STORE").then(|| "s3://other-bucket".into()))
            .unwrap();
        assert_eq!(m.store.as_deref(), Some("s3://other-bucket"));
        let err = |t: &str| ServerConfig::from_toml(t).unwrap_err().to_string();
        assert!(err("[media]\nstore = \"/var/blobs\"").contains("media.store"));
        assert!(err("[media]\nstore = \"s3://UP\"").contains("media.store"));
        assert!(err("[media]\ns3_credentials_file = \"/c\"").contains("media.s3_credentials_file"));
    }

    #[test]
    fn display_hides_key_path() {
        let mut c = ServerConfig::default();
        c.tls.cert = Some("/etc/c.pem".into());
        c.tls.key = Some("/etc/secret-key.pem".into());
        let s = c.to_string();
        assert!(s.contains("tls.key = set"));
        assert!(!s.contains("secret-key"));
    }
}
