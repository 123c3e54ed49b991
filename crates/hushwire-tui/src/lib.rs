//! `hushwire chat`: Hushwire's full-screen terminal app (ratatui + crossterm), a thin
//! front over [`hushwire_service`] and the client library.
//!
//! # Usage
//!
//! ```text
//! hushwire --profile ~/.hushwire/alice chat
//! ```
//!
//! The screen has the conversation list on the left (1:1 chats and `#groups`, newest
//! first, with unread counts and the last message), the open conversation on the right
//! (sender, time, text; own messages with ticks `…` queued, `✓` sent, `✓✓` delivered,
//! `✓✓ read` (in a group: the best receipt of any member);
//! replies quoted; reactions under the message; files as `📎 name (size)` with the path
//! they were saved to), the compose line below and a status bar (online/offline, who is
//! typing, the last notice). A bell (`\x07`) rings for each new incoming message.
//! It needs no mouse, works over SSH and in tmux, follows terminal resizes and restores
//! the terminal on exit and on panic.
//!
//! Keys (F1 or `?` shows them): Tab/Shift-Tab and ←/→ switch panes, ↑/↓ select, Enter
//! opens a conversation or sends, Esc goes back, PgUp/PgDn scroll, `r` replies to the
//! selected message, `e` reacts to it (type an emoji, Enter), `n` starts a conversation,
//! `q` (list) or Ctrl-C quits. Commands on the compose line:
//!
//! | command | does |
//! |---|---|
//! | `/new HANDLE` | open (or start) a conversation |
//! | `/file PATH` | send a file to the open conversation |
//! | `/group create TITLE a,b` | create a group chat |
//! | `/group add a,b`, `/group remove a`, `/group leave`, `/group rename TITLE`, `/group promote a`, `/group demote a` | change the open group (or name one: `/group add #TITLE a`) |
//! | `/group info` | the open group's title, members (devices) and admins |
//! | `/link` | link a new device: shows `link-code:` and a QR code; approve its name with `y` |
//! | `/devices` | list this account's devices |
//! | `/verify [HANDLE]` | the safety number with a contact (the open chat's by default); `/verify HANDLE mark` marks them verified once the digits match |
//! | `/trust [HANDLE]` | accept a contact's changed account key (sending to them is refused until then) |
//! | `/read` | mark the open conversation read (opening it does too) |
//! | `/quit` | quit |
//!
//! Opening a conversation marks it read (read receipts, unless turned off with
//! `hushwire settings`). Typing sends a typing signal at most every 3 s. Received files
//! are downloaded to the profile's `media` directory.
//!
//! # Design
//!
//! [`App`] is the whole screen's state, changed only by [`App::handle_key`],
//! [`App::apply_event`] and [`App::set_snapshot`]; [`draw`] renders it. Neither does I/O,
//! so both are tested with ratatui's `TestBackend`. The loop in [`run`] reads the
//! keyboard on a thread, subscribes to the service's events and carries out the model's
//! [`Action`]s with the client library through [`hushwire_service::Service::with`].
//! Unread counts come from the profile (messages not yet marked read), so they survive
//! a restart.

pub mod app;
mod run;
pub mod ui;

pub use app::{Action, App, Focus, Overlay};
pub use run::run;
pub use ui::draw;

/// Why the terminal app stopped.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The client service could not start or stopped.
    #[error(transparent)]
    Service(#[from] hushwire_service::ServiceError),
    /// The client refused (e.g. the profile is not registered).
    #[error(transparent)]
    Client(#[from] hushwire_client::ClientError),
    /// The terminal could not be set up, drawn or restored.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
}
