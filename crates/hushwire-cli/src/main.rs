//! `hushwire`: the Hushwire server, command-line client and demo in one binary.
//!
//! # Layout
//! - this file: the command line (clap), logging, and the mapping of errors to exit
//!   codes (0 ok, 1 user error, 2 unexpected, 3 server or network unreachable,
//!   4 untrusted key — signal-cli's conventions; 5 a key directory proof failed).
//! - `serve`: `serve` and `admin invite` over the `hushwire-server` library.
//! - `commands`: the client commands over `hushwire-client`.
//! - `output`: human and JSON (one object per line) rendering.
//! - `demo`: the whole story on a throw-away embedded server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod admin;
mod app;
mod audit;
mod backup;
mod chat;
mod commands;
mod daemon;
mod demo;
mod device;
mod features;
mod group;
mod media;
mod migrate;
mod output;
mod passphrase;
mod relay;
mod serve;
mod verify;

/// An error caused by the user's input (exit code 1).
/// MLS ciphersuites a conversation can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SuiteArg {
    /// 0x004F MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519: post-quantum hybrid (X-Wing).
    Xwing,
    /// 0x0001 MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519: classic, smaller.
    Classic,
}

impl From<SuiteArg> for hushwire_e2e::Suite {
    fn from(s: SuiteArg) -> Self {
        match s {
            SuiteArg::Xwing => Self::XWing,
            SuiteArg::Classic => Self::Classic,
        }
    }
}

#[derive(Debug)]
pub(crate) struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Builds an `anyhow::Error` that exits with code 1.
pub(crate) fn user_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

/// End-to-end encrypted messenger (MLS). The server relays only ciphertext.
#[derive(Debug, Parser)]
#[command(name = "hushwire", version)]
pub(crate) struct Cli {
    /// Profile directory of the client commands (holds keys and messages).
    /// Default: the user data directory, e.g. ~/.local/share/hushwire.
    #[arg(long, global = true, env = "HUSHWIRE_PROFILE", value_name = "DIR")]
    pub profile: Option<PathBuf>,

    /// Log to stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Reach the server through a proxy, for this and every later command of the
    /// profile (it is stored): `socks5h://HOST:PORT` (Tor, local circumvention tools;
    /// names resolved by the proxy) or `http://HOST:PORT` (HTTP CONNECT). `none` clears.
    #[arg(long, global = true, env = "HUSHWIRE_PROXY", value_name = "URL")]
    pub proxy: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Who may register on a server.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Registration {
    /// Anyone who can reach the server.
    Open,
    /// Only holders of a code from `hushwire admin invite`.
    Invite,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a server. Prints `url: https://…` and `pin: sha256:…` once ready; stops
    /// cleanly on SIGINT/SIGTERM.
    Serve {
        /// Address to listen on (port 0 picks a free port). Default: 127.0.0.1:8443.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (database, generated TLS key). Default: the config file's
        /// `data_dir`, else the user data directory, e.g. ~/.local/share/hushwire-server.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// TOML configuration file; command-line flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// PEM certificate chain (default: a self-signed certificate in the data dir).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Registration policy. Default: open.
        #[arg(long, value_enum)]
        registration: Option<Registration>,
        /// Directory of the decoy website shown to everyone without the secret path
        /// (default: a built-in neutral page in the data directory).
        #[arg(long, value_name = "DIR")]
        site: Option<PathBuf>,
        /// Get the certificate for this public DNS name from an ACME CA (Let's Encrypt by
        /// default), validated by TLS-ALPN-01 on the server's port (the CA connects to
        /// port 443). Repeatable; the first is the URL's host. Kept in DATA/acme.
        #[arg(long, value_name = "DOMAIN", conflicts_with = "tls_cert")]
        acme_domain: Vec<String>,
        /// Contact for the ACME account, e.g. mailto:ops@example.org.
        #[arg(long, value_name = "URI")]
        acme_contact: Option<String>,
        /// ACME directory URL (default: Let's Encrypt production).
        #[arg(long, value_name = "URL")]
        acme_directory: Option<String>,
        /// NATS URL of the cross-node bus, for several nodes sharing one store:
        /// `nats://[user:password@]host[:port]` (comma-separated for several NATS servers).
        /// Nodes wake each other's connections and relay typing/presence; each node also
        /// polls its connected devices' mailboxes (`[bus] poll_interval`). Default: none.
        #[arg(long, value_name = "URL", env = "HUSHWIRE_BUS", hide_env_values = true)]
        bus: Option<String>,
        /// Where media blobs (attachment ciphertext) live: s3://BUCKET[/prefix], shared
        /// by every node of a deployment. Credentials and endpoint from the standard AWS
        /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
        /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) or `[media] s3_credentials_file`.
        /// Default: the config file's `[media] store`, else DATA/blobs on this machine.
        #[arg(long, value_name = "URL", env = "HUSHWIRE_MEDIA_STORE")]
        media: Option<String>,
        /// PostgreSQL store shared by several nodes:
        /// `postgres://user[:password]@host[:port]/db` (migrated on start). Default: the
        /// config file's `store`, else the embedded database in the data directory.
        #[arg(
            long,
            value_name = "URL",
            env = "HUSHWIRE_STORE",
            hide_env_values = true
        )]
        store: Option<String>,
    },
    /// Run a volunteer relay (`--listen --upstream --upstream-pin`), or manage this
    /// profile's relays (`add`, `list`, `remove`, `share`, `add-shared`).
    #[command(args_conflicts_with_subcommands = true)]
    Relay {
        #[command(subcommand)]
        command: Option<relay::RelayCommand>,
        #[command(flatten)]
        run: relay::RelayRunArgs,
    },
    /// The passphrase that protects this profile's database key (`change`).
    Passphrase {
        #[command(subcommand)]
        command: passphrase::PassphraseCommand,
    },
    /// Server administration.
    Admin {
        /// The server's data directory (for every subcommand that takes `--data`).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Audit a server's key directory: verify every signed root and the append-only
    /// proof of every epoch (or of --from..=--to). Exits 5 when anything fails.
    Audit {
        /// The server's URL, e.g. `https://chat.example.org`.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The server's certificate pin (sha256:…), when it has no public certificate.
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
        /// First epoch to verify (default 1).
        #[arg(long, value_name = "N")]
        from: Option<u64>,
        /// Last epoch to verify (default: the latest).
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Remember the audited keys and root here, and refuse a later history that no
        /// longer contains that root (a rewritten history or a forked view).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// {"epochs","from","to","latest","root_hash","signing_key"}.
        #[arg(long)]
        json: bool,
    },
    /// Create an account on a server for this profile.
    Register {
        /// The handle to register: 3-32 characters of a-z, 0-9, '_' and '.'.
        handle: String,
        /// The server's base URL, as printed by `hushwire serve`. Repeat it for every
        /// server (node) of one deployment: they share one certificate (one --pin) and
        /// one secret path. The first is the profile's server; when it does not answer
        /// the next is tried within seconds, and the one that worked goes first next
        /// time (see `hushwire relay list`).
        #[arg(long, value_name = "URL", required = true)]
        server: Vec<String>,
        /// The servers' key pin, as printed by `hushwire serve`. Without it the
        /// servers' certificates must chain to a public CA.
        #[arg(long, value_name = "sha256:HEX")]
        pin: Option<String>,
        /// Invite code, when the server requires one.
        #[arg(long, value_name = "CODE")]
        invite: Option<String>,
        /// Ciphersuite of the conversations this profile starts.
        #[arg(long, value_enum, default_value_t = SuiteArg::Xwing)]
        suite: SuiteArg,
        /// A relay link to reach the server through when the direct route is blocked
        /// (repeatable; kept in the profile).
        #[arg(long, value_name = "LINK")]
        relay: Vec<String>,
    },
    /// Send a text message, or a file (`--file`, end-to-end encrypted, up to 2 GiB;
    /// a progress bar on a terminal). Prints the message id on the last line of stdout.
    /// Exits 0 once the server has durably accepted it; if the server is unreachable the
    /// message (or the rest of the upload) stays queued (exit 3) and the next `send` or
    /// `sync` delivers it.
    Send {
        /// The recipient's handle, or a group as `#TITLE`.
        handle: String,
        /// The text; `-` reads it from stdin.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Send this file (photo, video, voice note, any file).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Text shown with the file.
        #[arg(long, value_name = "TEXT", requires = "file")]
        caption: Option<String>,
        /// Flag the file as a voice note.
        #[arg(long, requires = "file")]
        voice: bool,
        /// View once (a text or a file): the recipient sees it once (`hushwire view ID`;
        /// a view-once file is not downloaded before), then it is gone.
        #[arg(long)]
        view_once: bool,
        /// Ciphersuite, if this message starts the conversation (default: the
        /// profile's, set at registration).
        #[arg(long, value_enum)]
        suite: Option<SuiteArg>,
    },
    /// Full-screen terminal chat app (works over SSH and in tmux).
    Chat,
    /// The chat app in your browser, served by this process on 127.0.0.1 only. Prints
    /// `http://127.0.0.1:PORT/?token=…`; keys never leave this process.
    App {
        /// Address to listen on (loopback only). Default: 127.0.0.1 with a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Do not open the browser.
        #[arg(long)]
        no_open: bool,
    },
    /// JSON-RPC 2.0 for bots and integrations: over stdio (default), a unix socket
    /// (`--socket PATH`) and/or HTTP (`--http ADDR`: POST /api/v1/rpc, GET /api/v1/events as
    /// Server-Sent Events, GET /api/v1/check).
    Daemon {
        /// Serve HTTP on this address (loopback by default; elsewhere needs the token).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Serve on this unix socket.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// The safety number with a contact: 60 digits (and a QR code on a terminal) to compare
    /// in person; `--mark` records that you did.
    Verify {
        /// The contact's handle.
        handle: String,
        /// Record the contact as verified (until its key changes).
        #[arg(long)]
        mark: bool,
        /// {"handle","safety_number","qr_payload","verified"}.
        #[arg(long)]
        json: bool,
    },
    /// Accept a contact's changed account key (after comparing safety numbers with
    /// `verify`); sending to them works again, in a new conversation group.
    Trust {
        /// The contact's handle.
        handle: String,
    },
    /// This account's devices: link a new one, list, remove, rename.
    Device {
        #[command(subcommand)]
        command: device::DeviceCommand,
    },
    /// End-to-end encrypted backups you hold: create, restore (on a new install, also
    /// when every old device is lost), schedule.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Join an account as a new device, with the code `hushwire device link` printed on
    /// one of its devices (`-` reads it from stdin). This profile must be empty. Receives
    /// the account's conversations and history.
    Link {
        /// The link code (`hwlink1:…`).
        code: String,
        /// This device's name, shown on the account's other devices. Default: the host
        /// name.
        #[arg(long)]
        name: Option<String>,
        /// How long to wait for the existing device, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
    },
    /// Group chats: create, add, remove, leave, promote, demote, rename, members. A group
    /// is the conversation `#TITLE` in send, history and receive.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Send queued messages, then print every pending incoming message and wait up to
    /// --timeout seconds for more. Messages are acknowledged only once stored locally.
    Receive {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Where received files are saved (default: the profile's `media` directory).
        #[arg(long, value_name = "DIR")]
        download_dir: Option<PathBuf>,
        /// Seconds to keep waiting for new messages after the pending ones.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        timeout: u64,
    },
    /// Send queued messages and fetch pending ones into the local store, silently.
    Sync,
    /// Print a conversation from the local store.
    History {
        /// The peer's handle, or a group as `#TITLE`.
        handle: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List conversations from the local store, most recent first.
    Conversations {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Mark every message of a conversation read (sends read receipts, unless they
    /// are off).
    Read {
        /// The peer's handle, or a group as `#TITLE`.
        conversation: String,
    },
    /// React to a message with an emoji (`""` removes your reaction).
    React {
        /// The message id (as `send` printed it, or `id` in receive/history --json).
        id: String,
        /// The emoji.
        emoji: String,
    },
    /// Reply to a message, quoting it. Prints the new message id on the last line.
    Reply {
        /// The message id.
        id: String,
        /// The text; `-` reads it from stdin.
        text: String,
    },
    /// Edit one of your messages, on every device of the conversation.
    Edit {
        /// The message id.
        id: String,
        /// The new text; `-` reads it from stdin.
        text: String,
    },
    /// Delete a message: yours for everyone (also the server's queued copies),
    /// someone else's on this device.
    Delete {
        /// The message id.
        id: String,
    },
    /// Open a view-once message (once: then it is gone).
    View {
        /// The message id.
        id: String,
        /// One JSON object (`file`: the path of a view-once file).
        #[arg(long)]
        json: bool,
        /// A view-once file is deleted after this many seconds (or when you press
        /// Enter on a terminal).
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        keep: u64,
    },
    /// Set a conversation's disappearing-messages timer: 5s .. 90d (s, m, h, d, w), or
    /// off. In a group chat only admins may.
    Timer {
        /// The peer's handle, or a group as `#TITLE`.
        conversation: String,
        /// e.g. 5s, 1h, 7d, off.
        duration: String,
    },
    /// Tell a conversation you are typing (or stopped, with --stop). Never stored.
    Typing {
        /// The peer's handle, or a group as `#TITLE`.
        conversation: String,
        /// Stopped typing.
        #[arg(long)]
        stop: bool,
    },
    /// Ask a contact whether they are online (they answer if their setting shares it
    /// with you; yours must share it with them).
    Presence {
        /// The contact's handle.
        handle: String,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        timeout: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List message requests: first messages from people who are not your contacts.
    Requests {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Accept someone's message request: they become a contact.
    Accept {
        /// Their handle.
        handle: String,
    },
    /// Delete someone's message request (its messages, on this device).
    Decline {
        /// Their handle.
        handle: String,
    },
    /// Block an account: its messages are dropped, and the server stops queueing them.
    Block {
        /// Their handle.
        handle: String,
    },
    /// Block and report an account: the server's operator receives your reason and the
    /// last messages they sent you (decrypted on this device: you disclose them), then
    /// they are blocked.
    Report {
        /// Their handle.
        handle: String,
        /// Why (shown to the operator).
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        /// How many of their latest messages to include (0 to 20).
        #[arg(long, value_name = "N", default_value_t = 5,
              value_parser = clap::value_parser!(u8).range(0..=20))]
        messages: u8,
    },
    /// Unblock an account.
    Unblock {
        /// Their handle.
        handle: String,
    },
    /// Show or change settings: `settings read-receipts on|off`, `settings presence
    /// everyone|contacts|nobody`.
    Settings {
        #[command(subcommand)]
        command: Option<features::SettingsCommand>,
    },
    /// Show this profile's identity and server.
    Whoami,
    /// Run the whole story on a temporary local server: register alice and bob, message
    /// both ways (once while bob is offline), and show that the server holds only
    /// ciphertext.
    Demo,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Print a new single-use invite code.
    Invite {
        /// The server's data directory. Default: the user data directory, e.g.
        /// ~/.local/share/hushwire-server.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Hours the code stays valid.
        #[arg(long, value_name = "N", default_value_t = 72)]
        ttl_hours: u64,
    },
    /// Release HANDLE whose owner lost every device: its devices are revoked and the
    /// handle can be registered again with a new key (contacts then see a key change;
    /// the key directory publishes the release).
    ResetAccount {
        /// The handle to release.
        handle: String,
        /// The server's data directory (embedded store). Default: the user data
        /// directory, e.g. ~/.local/share/hushwire-server.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The PostgreSQL store instead (postgres://…).
        #[arg(
            long,
            value_name = "URL",
            env = "HUSHWIRE_STORE",
            hide_env_values = true
        )]
        store: Option<String>,
    },
    /// List users' reports (oldest first), or close one.
    Reports {
        /// The server's data directory. Default: the user data directory, e.g.
        /// ~/.local/share/hushwire-server.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// One JSON object per report.
        #[arg(long)]
        json: bool,
        /// Close (delete) report ID once dealt with.
        #[arg(long, value_name = "ID")]
        close: Option<u64>,
    },
    /// Move a stopped embedded server (its data directory) into PostgreSQL, and its
    /// media into S3 or another directory. Resumable: run it again after an
    /// interruption. Verifies row counts and checksums at the end; exits non-zero on a
    /// difference.
    Migrate {
        /// The embedded server's data directory (the server must be stopped).
        #[arg(long, value_name = "DATA_DIR")]
        from: PathBuf,
        /// The PostgreSQL database, e.g. postgres://user:password@host/db (empty, or
        /// holding an interrupted migration from the same directory).
        #[arg(
            long,
            value_name = "URL",
            env = "HUSHWIRE_MIGRATE_TO",
            hide_env_values = true
        )]
        to: String,
        /// Copy media blobs to s3://BUCKET[/prefix] (AWS_* environment variables) or to
        /// a directory (the new data directory). Default: not copied.
        #[arg(long, value_name = "s3://… | DIR")]
        media_to: Option<String>,
        /// Print the verification report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // The NATS client (serve --bus) logs every reconnection attempt at info; the bus
    // itself logs the loss and the return of the connection once each.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},async_nats=warn"))
    });
    // Colour only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// The exit code for an error, from the most specific cause in its chain.
fn exit_code(err: &anyhow::Error) -> u8 {
    use hushwire_client::ClientError as C;
    use hushwire_e2e::E2eError as E;
    for cause in err.chain() {
        if cause.downcast_ref::<UserError>().is_some() {
            return 1;
        }
        if let Some(e) = cause.downcast_ref::<E>() {
            return e2e_code(e);
        }
        if let Some(v) = cause.downcast_ref::<hushwire_client::VaultError>() {
            return vault_code(v);
        }
        if cause
            .downcast_ref::<hushwire_directory::audit::AuditError>()
            .is_some()
        {
            return 5;
        }
        if let Some(c) = cause.downcast_ref::<C>() {
            return match c {
                C::InvalidHandle(_)
                | C::InvalidUrl { .. }
                | C::InvalidProxy { .. }
                | C::InvalidPin(_)
                | C::HandleTaken(_)
                | C::InviteRequired(_)
                | C::UnknownHandle(_)
                | C::NotRegistered
                | C::AlreadyRegistered(_)
                | C::File { .. }
                | C::Link(_) => 1,
                C::E2e(e) => e2e_code(e),
                C::Vault(v) => vault_code(v),
                C::KeyTransparency { .. } => 5,
                C::Unreachable { .. }
                | C::PinMismatch { .. }
                | C::UntrustedCertificate(_)
                | C::Timeout(_)
                | C::StorageFull(_)
                | C::RateLimited(_)
                | C::Closed { .. } => 3,
                C::Api { status, .. } if *status == 429 || *status >= 500 => 3,
                C::Api { code, .. } if *code == hushwire_proto::wire::ErrorCode::NoKeyPackages => 3,
                _ => 2,
            };
        }
    }
    2
}

/// A wrong, missing or mistyped passphrase is the user's input (1); a damaged key file,
/// an unavailable keyring or a failed write are not (2).
fn vault_code(v: &hushwire_client::VaultError) -> u8 {
    use hushwire_client::VaultError as V;
    match v {
        V::WrongPassphrase { .. }
        | V::NeedPassphrase { .. }
        | V::EmptyPassphrase
        | V::PassphraseMismatch
        | V::NotPassphraseProtected { .. } => 1,
        _ => 2,
    }
}

fn e2e_code(e: &hushwire_e2e::E2eError) -> u8 {
    use hushwire_e2e::E2eError as E;
    match e {
        E::IdentityChanged { .. } => 4,
        E::NotRegistered | E::AlreadyRegistered | E::UnknownConversation(_) | E::WrongKey(_) => 1,
        // A wrong recovery key, a damaged backup file, a restore into a used profile.
        E::Backup(_) | E::RestoreRefused(_) => 1,
        E::NoKeyPackages(_) => 3,
        _ => 2,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The terminal app owns the screen: log only when asked (-v), never over it by default.
    if !matches!(cli.command, Command::Chat) || cli.verbose > 0 {
        init_logging(cli.verbose);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// "outer: inner" without repeating causes whose text is already included.
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let profile = cli.profile.clone();
    let client_command = !matches!(
        cli.command,
        Command::Serve { .. }
            | Command::Admin { .. }
            | Command::Audit { .. }
            | Command::Demo
            | Command::Relay { command: None, .. }
    );
    if client_command && cli.proxy.is_some() {
        relay::apply_route_flags(
            &commands::profile_dir(profile.clone())?,
            cli.proxy.as_deref(),
            &[],
        )?;
    }
    match cli.command {
        Command::Serve {
            listen,
            data,
            config,
            tls_cert,
            tls_key,
            registration,
            site,
            acme_domain,
            acme_contact,
            acme_directory,
            bus,
            media,
            store,
        } => {
            serve::serve(serve::ServeArgs {
                listen,
                data,
                config,
                tls_cert,
                tls_key,
                registration,
                site,
                acme_domains: acme_domain,
                acme_contact,
                acme_directory,
                bus,
                media,
                store,
            })
            .await
        }
        Command::Relay { command: None, run } => relay::run(run).await,
        Command::Passphrase { command } => {
            passphrase::run(&commands::profile_dir(profile)?, command)
        }
        Command::Relay {
            command: Some(command),
            ..
        } => relay::manage(&commands::profile_dir(profile)?, command).await,
        Command::Admin {
            data: admin_data,
            command: AdminCommand::Invite { data, ttl_hours },
        } => serve::admin_invite(data.or(admin_data), ttl_hours).await,
        Command::Admin {
            data: admin_data,
            command: AdminCommand::Reports { data, json, close },
        } => admin::reports(data.or(admin_data), json, close).await,
        Command::Admin {
            data: admin_data,
            command:
                AdminCommand::ResetAccount {
                    handle,
                    data,
                    store,
                },
        } => admin::reset_account(data.or(admin_data), store, &handle).await,
        Command::Audit {
            server,
            pin,
            from,
            to,
            state,
            json,
        } => {
            audit::run(audit::AuditArgs {
                server,
                pin,
                from,
                to,
                state,
                json,
            })
            .await
        }
        Command::Admin {
            data: _,
            command:
                AdminCommand::Migrate {
                    from,
                    to,
                    media_to,
                    json,
                },
        } => migrate::run(from, to, media_to, json).await,
        Command::Register {
            handle,
            server,
            pin,
            invite,
            suite,
            relay,
        } => {
            relay::apply_route_flags(&commands::profile_dir(profile.clone())?, None, &relay)?;
            commands::register(
                &commands::profile_dir(profile)?,
                &handle,
                &server,
                pin.as_deref(),
                invite.as_deref(),
                suite.into(),
            )
            .await
        }
        Command::Send {
            handle,
            text,
            file,
            caption,
            voice,
            view_once,
            suite,
        } => match (file, text) {
            (Some(file), _) => {
                media::send_file(
                    &commands::profile_dir(profile)?,
                    &handle,
                    &file,
                    caption.unwrap_or_default(),
                    voice,
                    view_once,
                    suite.map(Into::into),
                )
                .await
            }
            (None, _) if caption.is_some() || voice => {
                Err(user_error("--caption and --voice go with --file"))
            }
            (None, text) => {
                commands::send(
                    &commands::profile_dir(profile)?,
                    &handle,
                    text.as_deref().unwrap_or_default(),
                    suite.map(Into::into),
                    view_once,
                )
                .await
            }
        },
        Command::Receive {
            json,
            download_dir,
            timeout,
        } => {
            commands::receive(
                &commands::profile_dir(profile)?,
                json,
                download_dir,
                timeout,
            )
            .await
        }
        Command::Group { command } => group::run(&commands::profile_dir(profile)?, command).await,
        Command::Chat => chat::run(&commands::profile_dir(profile)?).await,
        Command::Trust { handle } => verify::trust(&commands::profile_dir(profile)?, &handle).await,
        Command::Verify { handle, mark, json } => {
            verify::run(&commands::profile_dir(profile)?, &handle, mark, json).await
        }
        Command::App { listen, no_open } => {
            app::run(&commands::profile_dir(profile)?, listen, no_open).await
        }
        Command::Daemon { http, socket } => {
            daemon::run(&commands::profile_dir(profile)?, http, socket).await
        }
        Command::Device { command } => device::run(&commands::profile_dir(profile)?, command).await,
        Command::Backup { command } => backup::run(&commands::profile_dir(profile)?, command).await,
        Command::Link {
            code,
            name,
            timeout,
        } => device::join(&commands::profile_dir(profile)?, &code, name, timeout).await,
        Command::Sync => commands::sync(&commands::profile_dir(profile)?).await,
        Command::History { handle, json } => {
            commands::history(&commands::profile_dir(profile)?, &handle, json)
        }
        Command::Conversations { json } => {
            commands::conversations(&commands::profile_dir(profile)?, json)
        }
        Command::Read { conversation } => {
            features::read(&commands::profile_dir(profile)?, &conversation).await
        }
        Command::React { id, emoji } => {
            features::react(&commands::profile_dir(profile)?, &id, &emoji).await
        }
        Command::Reply { id, text } => {
            features::reply(&commands::profile_dir(profile)?, &id, &text).await
        }
        Command::Edit { id, text } => {
            features::edit(&commands::profile_dir(profile)?, &id, &text).await
        }
        Command::Delete { id } => features::delete(&commands::profile_dir(profile)?, &id).await,
        Command::View { id, json, keep } => {
            features::view(&commands::profile_dir(profile)?, &id, json, keep).await
        }
        Command::Timer {
            conversation,
            duration,
        } => features::timer(&commands::profile_dir(profile)?, &conversation, &duration).await,
        Command::Typing { conversation, stop } => {
            features::typing(&commands::profile_dir(profile)?, &conversation, stop).await
        }
        Command::Presence {
            handle,
            timeout,
            json,
        } => features::presence(&commands::profile_dir(profile)?, &handle, timeout, json).await,
        Command::Requests { json } => features::requests(&commands::profile_dir(profile)?, json),
        Command::Accept { handle } => {
            features::accept(&commands::profile_dir(profile)?, &handle).await
        }
        Command::Decline { handle } => features::decline(&commands::profile_dir(profile)?, &handle),
        Command::Report {
            handle,
            reason,
            messages,
        } => {
            features::report(
                &commands::profile_dir(profile)?,
                &handle,
                &reason,
                usize::from(messages),
            )
            .await
        }
        Command::Block { handle } => {
            features::block(&commands::profile_dir(profile)?, &handle, true).await
        }
        Command::Unblock { handle } => {
            features::block(&commands::profile_dir(profile)?, &handle, false).await
        }
        Command::Settings { command } => {
            features::settings(&commands::profile_dir(profile)?, command)
        }
        Command::Whoami => commands::whoami(&commands::profile_dir(profile)?),
        Command::Demo => demo::run().await,
    }
}
