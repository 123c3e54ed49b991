//! The terminal app's model: everything on screen, updated by keys ([`App::handle_key`]),
//! client events ([`App::apply_event`]) and data loaded from the profile
//! ([`App::set_snapshot`]). It does no I/O: what it wants done comes back as
//! [`Action`]s, which the I/O loop (`crate::run`) carries out through the client service.

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hushwire_client::{Event, MessageState, StoredMessage};
use hushwire_e2e::{GroupEvent, GroupEventKind, Reaction, Receipt, ReceiptStatus, TimelineItem};
use hushwire_service::{Command, ServiceEvent};

/// At most one "typing" signal per conversation in this interval.
pub const TYPING_SEND_INTERVAL_MS: u64 = 3_000;
/// How long a received "typing" signal is shown without a newer one.
pub const TYPING_SHOWN_MS: u64 = 6_000;
/// How many messages PgUp/PgDn move.
pub const PAGE_MESSAGES: usize = 5;

/// One line of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// The peer's handle or `#GROUP`.
    pub name: String,
    /// Messages received while it was not open.
    pub unread: u64,
    /// The latest entry, shortened.
    pub preview: String,
    /// The latest message's time.
    pub last_at_ms: Option<u64>,
    /// An unanswered message request.
    pub request: bool,
}

/// Delivery state of an own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticks {
    /// Waiting in the outbox.
    Queued,
    /// Accepted by the server: ✓.
    Sent,
    /// Stored on a recipient's device: ✓✓.
    Delivered,
    /// Read by a recipient: ✓✓ read.
    Read,
    /// Refused by the server.
    Failed,
}

impl Ticks {
    /// How the ticks print.
    pub fn symbol(self) -> &'static str {
        match self {
            Ticks::Queued => "…",
            Ticks::Sent => "✓",
            Ticks::Delivered => "✓✓",
            Ticks::Read => "✓✓ read",
            Ticks::Failed => "✗ failed",
        }
    }
}

/// A file carried by a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentView {
    /// The file name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it was saved, once downloaded.
    pub path: Option<String>,
    /// Why the download failed.
    pub error: Option<String>,
}

/// One entry of the message pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The message id.
    pub id: String,
    /// The sender's handle.
    pub from: String,
    /// The sender's time.
    pub at_ms: u64,
    /// The text (a caption for a file; the description of a group change).
    pub text: String,
    /// Sent by this account.
    pub outgoing: bool,
    /// Own messages' delivery state.
    pub ticks: Option<Ticks>,
    /// A reply: the quoted message's sender and text.
    pub quote: Option<(String, String)>,
    /// Reactions: each emoji with who reacted.
    pub reactions: Vec<(String, Vec<String>)>,
    /// A file.
    pub attachment: Option<AttachmentView>,
    /// A group membership/metadata change (shown as a notice, not a bubble).
    pub notice: bool,
    /// Edited by its author.
    pub edited: bool,
    /// A view-once message (its content is not shown; `v` opens a received one once).
    pub view_once: bool,
    /// When it disappears (the conversation's timer), if it does.
    pub expires_at_ms: Option<u64>,
}

/// The pane that has the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list.
    List,
    /// The message pane.
    Messages,
    /// The compose line.
    Compose,
}

/// A window over the panes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// The keys and commands.
    Help,
    /// Device linking: the code, its QR rendering and how it goes.
    Link {
        /// The `link-code:` text (empty until the server answered).
        code: String,
        /// The QR code, rendered as text.
        qr: String,
        /// What linking is doing.
        status: String,
    },
    /// A new device asks to be linked under this name: `y`/`n`.
    Approve {
        /// The name it proposes.
        name: String,
    },
    /// A question answered with `y`/`n` (deleting a message...).
    Confirm {
        /// The question.
        question: String,
        /// What `y` does.
        action: Box<Action>,
    },
    /// An opened view-once message: shown until closed, then its file is deleted.
    ViewOnce {
        /// The sender.
        from: String,
        /// Its text or caption.
        text: String,
        /// The decrypted file, if it carried one.
        path: Option<String>,
    },
    /// Lines to read (device list, group members...).
    Info {
        /// The title.
        title: String,
        /// The lines.
        lines: Vec<String>,
    },
}

/// A change to a group chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOp {
    /// Add members.
    Add(Vec<String>),
    /// Remove members.
    Remove(Vec<String>),
    /// Leave the group.
    Leave,
    /// Change the title.
    Rename(String),
    /// Make a member an admin.
    Promote(String),
    /// Take a member's admin rights.
    Demote(String),
}

/// Something for the I/O loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a text (a reply when `reply_to` is set).
    Send {
        /// The conversation.
        to: String,
        /// The text.
        text: String,
        /// The message replied to.
        reply_to: Option<String>,
    },
    /// Send a file.
    SendFile {
        /// The conversation.
        to: String,
        /// The file.
        path: String,
        /// Viewable once by the recipients.
        view_once: bool,
    },
    /// A conversation command (edit, delete, timer, accept, block, settings...).
    Command(Command),
    /// Open a received view-once message (once).
    OpenViewOnce(String),
    /// Delete the decrypted file of a closed view-once message.
    DiscardViewOnce(String),
    /// List the blocked accounts.
    Blocked,
    /// React to a message.
    React {
        /// The message.
        message_id: String,
        /// The emoji.
        emoji: String,
    },
    /// Mark a conversation read (sends read receipts).
    MarkRead(String),
    /// Tell a conversation that this user is typing (or stopped).
    Typing {
        /// The conversation.
        conversation: String,
        /// Started or stopped.
        typing: bool,
    },
    /// Create a group chat.
    GroupCreate {
        /// Its title.
        title: String,
        /// The other members.
        members: Vec<String>,
    },
    /// Change a group chat.
    Group {
        /// The group, `#TITLE`.
        group: String,
        /// What to do.
        op: GroupOp,
    },
    /// Link a new device.
    Link,
    /// Answer the linking device's approval question.
    ApproveLink(bool),
    /// List this account's devices.
    Devices,
    /// Show the safety number with a contact; with `mark`, mark the contact verified.
    Verify {
        /// The contact.
        handle: String,
        /// The user compared the digits with the other person.
        mark: bool,
    },
    /// Accept a contact's changed account key.
    Trust(String),
    /// Show a group's title, members and admins.
    GroupInfo(String),
    /// Reload the conversation list and the open conversation.
    Refresh,
    /// Leave the app.
    Quit,
}

/// What an event means for the I/O loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOutcome {
    /// Ring the terminal bell (a new incoming message).
    pub bell: bool,
    /// Things to do.
    pub actions: Vec<Action>,
}

/// The data loaded from the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The conversations, newest first (`unread` is filled in by the app).
    pub conversations: Vec<ConversationRow>,
    /// The open conversation's name and messages, when one is open.
    pub open: Option<(String, Vec<MessageView>)>,
    /// The open conversation's disappearing-messages timer (0: off).
    pub timer_ms: u64,
}

/// The whole screen's state.
#[derive(Debug, Clone)]
pub struct App {
    /// This account's handle.
    pub me: String,
    /// The live connection works.
    pub online: bool,
    /// Why it does not.
    pub offline_reason: Option<String>,
    /// The conversation list.
    pub conversations: Vec<ConversationRow>,
    /// The selected row of the list.
    pub selected: usize,
    /// The open conversation.
    pub open: Option<String>,
    /// Its messages, oldest first.
    pub messages: Vec<MessageView>,
    /// The selected message (`None`: follow the newest).
    pub selected_message: Option<usize>,
    /// The pane with the keyboard.
    pub focus: Focus,
    /// The compose line.
    pub compose: String,
    /// The message the next text replies to.
    pub reply_to: Option<String>,
    /// The emoji being typed for a reaction (to the message id).
    pub react_prompt: Option<(String, String)>,
    /// The own message the compose line replaces the text of (`E` on it).
    pub editing: Option<String>,
    /// The open conversation's disappearing-messages timer (0: off).
    pub timer_ms: u64,
    /// A window over the panes.
    pub overlay: Option<Overlay>,
    /// The last notice (errors, results).
    pub status: String,
    /// Who is typing, per conversation, until when.
    pub typing: HashMap<String, HashMap<String, u64>>,
    /// Set by `/quit` and Ctrl-C.
    pub quit: bool,
    unread: HashMap<String, u64>,
    last_typing_sent: Option<(String, u64)>,
}

impl App {
    /// An empty screen for account `me`, offline until the service says otherwise.
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            online: false,
            offline_reason: None,
            conversations: Vec::new(),
            selected: 0,
            open: None,
            messages: Vec::new(),
            selected_message: None,
            focus: Focus::List,
            compose: String::new(),
            reply_to: None,
            react_prompt: None,
            editing: None,
            timer_ms: 0,
            overlay: None,
            status: "Welcome! Press F1 or ? for help.".into(),
            typing: HashMap::new(),
            quit: false,
            unread: HashMap::new(),
            last_typing_sent: None,
        }
    }

    /// Replaces the loaded data, keeping the selection on the same conversation.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        let selected_name = self
            .conversations
            .get(self.selected)
            .map(|c| c.name.clone());
        self.conversations = snapshot.conversations;
        for row in &mut self.conversations {
            // The profile's count (unread until opened, across sessions) or, when ahead
            // of it, this session's; the open conversation is being read.
            row.unread = if self.open.as_deref() == Some(row.name.as_str()) {
                0
            } else {
                row.unread
                    .max(self.unread.get(&row.name).copied().unwrap_or(0))
            };
        }
        if let Some(name) = selected_name
            && let Some(i) = self.conversations.iter().position(|c| c.name == name)
        {
            self.selected = i;
        }
        self.selected = self
            .selected
            .min(self.conversations.len().saturating_sub(1));
        if let Some((name, messages)) = snapshot.open
            && self.open.as_deref() == Some(name.as_str())
        {
            let selected_id = self
                .selected_message
                .and_then(|i| self.messages.get(i))
                .map(|m| m.id.clone());
            self.messages = messages;
            self.timer_ms = snapshot.timer_ms;
            self.selected_message =
                selected_id.and_then(|id| self.messages.iter().position(|m| m.id == id));
        }
    }

    /// Messages received in `conversation` while it was not open.
    pub fn unread(&self, conversation: &str) -> u64 {
        self.unread.get(conversation).copied().unwrap_or(0)
    }

    /// Who is typing in the open conversation (sorted).
    pub fn typing_in_open(&self, now_ms: u64) -> Vec<String> {
        let Some(open) = &self.open else {
            return Vec::new();
        };
        let mut who: Vec<String> = self
            .typing
            .get(open)
            .map(|m| {
                m.iter()
                    .filter(|(_, until)| **until > now_ms)
                    .map(|(w, _)| w.clone())
                    .collect()
            })
            .unwrap_or_default();
        who.sort();
        who
    }

    /// Forgets typing signals that are too old.
    pub fn tick(&mut self, now_ms: u64) {
        for who in self.typing.values_mut() {
            who.retain(|_, until| *until > now_ms);
        }
        self.typing.retain(|_, who| !who.is_empty());
    }

    /// Opens `conversation` (it may not exist yet: the first message creates it).
    pub fn open_conversation(&mut self, conversation: &str) -> Vec<Action> {
        if self.open.as_deref() != Some(conversation) {
            self.messages.clear();
            self.selected_message = None;
            self.reply_to = None;
            self.editing = None;
            self.timer_ms = 0;
        }
        self.open = Some(conversation.to_string());
        self.unread.remove(conversation);
        if let Some(row) = self
            .conversations
            .iter_mut()
            .find(|c| c.name == conversation)
        {
            row.unread = 0;
        }
        if let Some(i) = self
            .conversations
            .iter()
            .position(|c| c.name == conversation)
        {
            self.selected = i;
        }
        self.focus = Focus::Compose;
        vec![Action::Refresh, Action::MarkRead(conversation.to_string())]
    }

    /// Applies one service event.
    pub fn apply_event(&mut self, event: &ServiceEvent, now_ms: u64) -> EventOutcome {
        let mut out = EventOutcome::default();
        let event = match event {
            ServiceEvent::Connection { online, reason } => {
                self.online = *online;
                self.offline_reason = reason.clone();
                if *online {
                    out.actions.push(Action::Refresh);
                }
                return out;
            }
            ServiceEvent::Client(e) => e,
        };
        // Events come from the server (or from a send that reached it): the connection
        // works, whatever the last connection notice said.
        if !matches!(
            event,
            Event::SendFailed { .. } | Event::GroupOperationFailed { .. }
        ) {
            self.online = true;
            self.offline_reason = None;
        }
        match event {
            Event::Message(m) | Event::Attachment(m, _) | Event::RelayLink(m) => {
                self.incoming(m, &mut out);
            }
            Event::Typing {
                conversation,
                from,
                typing,
            } => {
                let who = self.typing.entry(conversation.clone()).or_default();
                if *typing {
                    who.insert(from.clone(), now_ms + TYPING_SHOWN_MS);
                } else {
                    who.remove(from);
                }
            }
            Event::GroupOperationFailed {
                conversation,
                reason,
            } => {
                self.status = format!("{conversation}: the change was refused: {reason}");
                out.actions.push(Action::Refresh);
            }
            Event::SendFailed { reason, .. } => {
                self.status = format!("a message was refused: {reason}");
                out.actions.push(Action::Refresh);
            }
            Event::Undecryptable { conversation, .. } => {
                self.status = format!(
                    "a message in {} could not be decrypted",
                    conversation.as_deref().unwrap_or("an unknown conversation")
                );
            }
            Event::DevicesChanged(_) => {
                self.status = "your devices changed (/devices lists them)".into();
                out.actions.push(Action::Refresh);
            }
            Event::Request { from, .. } => {
                self.status = format!("message request from {from}");
                out.actions.push(Action::Refresh);
            }
            Event::IdentityChanged { handle } => {
                self.status = format!(
                    "{handle}'s account key changed: sending to {handle} is refused until you \
                     compare safety numbers (/verify {handle}) and accept it (/trust {handle})"
                );
                out.bell = true;
                out.actions.push(Action::Refresh);
            }
            _ => out.actions.push(Action::Refresh),
        }
        out
    }

    fn incoming(&mut self, m: &StoredMessage, out: &mut EventOutcome) {
        out.actions.push(Action::Refresh);
        if m.outgoing {
            return;
        }
        out.bell = true;
        if let Some(who) = self.typing.get_mut(&m.conversation) {
            who.remove(&m.from);
        }
        if self.open.as_deref() == Some(m.conversation.as_str()) {
            out.actions.push(Action::MarkRead(m.conversation.clone()));
        } else {
            *self.unread.entry(m.conversation.clone()).or_default() += 1;
            if let Some(row) = self
                .conversations
                .iter_mut()
                .find(|c| c.name == m.conversation)
            {
                row.unread += 1;
            }
        }
    }

    /// Handles one key press at `now_ms`.
    pub fn handle_key(&mut self, key: KeyEvent, now_ms: u64) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            self.quit = true;
            return vec![Action::Quit];
        }
        if let Some(overlay) = &self.overlay {
            return self.overlay_key(overlay.clone(), key);
        }
        if let Some((id, mut input)) = self.react_prompt.take() {
            match key.code {
                KeyCode::Esc => self.status = "reaction cancelled".into(),
                KeyCode::Enter => {
                    let emoji = input.trim().to_string();
                    if !emoji.is_empty() {
                        return vec![Action::React {
                            message_id: id,
                            emoji,
                        }];
                    }
                }
                KeyCode::Backspace => {
                    input.pop();
                    self.react_prompt = Some((id, input));
                }
                KeyCode::Char(c) => {
                    input.push(c);
                    self.react_prompt = Some((id, input));
                }
                _ => self.react_prompt = Some((id, input)),
            }
            return Vec::new();
        }
        if key.code == KeyCode::F(1) {
            self.overlay = Some(Overlay::Help);
            return Vec::new();
        }
        match self.focus {
            Focus::List => self.list_key(key),
            Focus::Messages => self.messages_key(key),
            Focus::Compose => self.compose_key(key, now_ms),
        }
    }

    fn overlay_key(&mut self, overlay: Overlay, key: KeyEvent) -> Vec<Action> {
        match overlay {
            Overlay::Confirm { action, .. } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.overlay = None;
                    vec![*action]
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                    self.overlay = None;
                    self.status = "cancelled".into();
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Overlay::ViewOnce { path, .. } => {
                if matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                    self.overlay = None;
                    self.status = "the view-once message is gone".into();
                    return path.map(Action::DiscardViewOnce).into_iter().collect();
                }
                Vec::new()
            }
            Overlay::Approve { .. } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.overlay = Some(Overlay::Link {
                        code: String::new(),
                        qr: String::new(),
                        status: "approved; linking the device…".into(),
                    });
                    vec![Action::ApproveLink(true)]
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                    self.overlay = None;
                    self.status = "device link refused".into();
                    vec![Action::ApproveLink(false)]
                }
                _ => Vec::new(),
            },
            _ => {
                if matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::F(1)
                ) || (key.code == KeyCode::Char('?') && overlay == Overlay::Help)
                {
                    if matches!(overlay, Overlay::Link { .. }) {
                        self.status = "linking goes on until the code expires".into();
                    }
                    self.overlay = None;
                }
                Vec::new()
            }
        }
    }

    fn list_key(&mut self, key: KeyEvent) -> Vec<Action> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.conversations.len().saturating_sub(1));
            }
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                if let Some(name) = self
                    .conversations
                    .get(self.selected)
                    .map(|c| c.name.clone())
                {
                    return self.open_conversation(&name);
                }
                self.focus = Focus::Compose;
            }
            KeyCode::Tab => self.focus = Focus::Messages,
            KeyCode::BackTab => self.focus = Focus::Compose,
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
            KeyCode::Char('n') => {
                self.compose = "/new ".into();
                self.focus = Focus::Compose;
            }
            KeyCode::Char('/') => {
                self.compose = "/".into();
                self.focus = Focus::Compose;
            }
            KeyCode::Char('q') => {
                self.quit = true;
                return vec![Action::Quit];
            }
            _ => {}
        }
        Vec::new()
    }

    fn scroll(&mut self, up: bool, by: usize) {
        let n = self.messages.len();
        if n == 0 {
            self.selected_message = None;
            return;
        }
        self.selected_message = match (self.selected_message, up) {
            (None, true) => Some(n.saturating_sub(by)),
            (None, false) => None,
            (Some(i), true) => Some(i.saturating_sub(by)),
            (Some(i), false) => {
                if i + by >= n {
                    None
                } else {
                    Some(i + by)
                }
            }
        };
    }

    /// The selected message, or the newest one.
    pub fn target_message(&self) -> Option<&MessageView> {
        match self.selected_message {
            Some(i) => self.messages.get(i),
            None => self.messages.iter().rev().find(|m| !m.notice),
        }
    }

    fn messages_key(&mut self, key: KeyEvent) -> Vec<Action> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.scroll(true, 1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll(false, 1),
            KeyCode::PageUp => self.scroll(true, PAGE_MESSAGES),
            KeyCode::PageDown => self.scroll(false, PAGE_MESSAGES),
            KeyCode::End => self.selected_message = None,
            KeyCode::Char('r') => match self.target_message().filter(|m| !m.notice) {
                Some(m) => {
                    self.reply_to = Some(m.id.clone());
                    self.focus = Focus::Compose;
                }
                None => self.status = "no message to reply to".into(),
            },
            KeyCode::Char('e') => match self.target_message().filter(|m| !m.notice) {
                Some(m) => self.react_prompt = Some((m.id.clone(), String::new())),
                None => self.status = "no message to react to".into(),
            },
            KeyCode::Char('E') => self.start_edit(),
            KeyCode::Char('d') | KeyCode::Delete => return self.confirm_delete(),
            KeyCode::Char('v') => return self.open_view_once(),
            KeyCode::Tab | KeyCode::Enter | KeyCode::Right => self.focus = Focus::Compose,
            KeyCode::BackTab | KeyCode::Left | KeyCode::Esc => self.focus = Focus::List,
            KeyCode::Char('/') => {
                self.compose = "/".into();
                self.focus = Focus::Compose;
            }
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
            _ => {}
        }
        Vec::new()
    }

    fn compose_key(&mut self, key: KeyEvent, now_ms: u64) -> Vec<Action> {
        match key.code {
            KeyCode::Enter => return self.submit(),
            KeyCode::Backspace => {
                self.compose.pop();
            }
            KeyCode::Esc => {
                // Esc cancels a reply or an edit first, then leaves the compose line.
                let cancelled_edit = self.editing.take().is_some();
                if cancelled_edit {
                    self.compose.clear();
                    self.status = "edit cancelled".into();
                }
                let cancelled_reply = self.reply_to.take().is_some() || cancelled_edit;
                self.focus = if cancelled_reply {
                    Focus::Compose
                } else {
                    Focus::Messages
                };
            }
            KeyCode::Tab => self.focus = Focus::List,
            KeyCode::BackTab => self.focus = Focus::Messages,
            KeyCode::PageUp => self.scroll(true, PAGE_MESSAGES),
            KeyCode::PageDown => self.scroll(false, PAGE_MESSAGES),
            KeyCode::Up => self.scroll(true, 1),
            KeyCode::Down => self.scroll(false, 1),
            KeyCode::Char(c) => {
                self.compose.push(c);
                return self.typing_signal(now_ms);
            }
            _ => {}
        }
        Vec::new()
    }

    /// A typing signal, at most one per [`TYPING_SEND_INTERVAL_MS`] per conversation.
    fn typing_signal(&mut self, now_ms: u64) -> Vec<Action> {
        let Some(open) = self.open.clone() else {
            return Vec::new();
        };
        if self.compose.starts_with('/') || self.editing.is_some() {
            return Vec::new();
        }
        if let Some((conv, at)) = &self.last_typing_sent
            && *conv == open
            && now_ms.saturating_sub(*at) < TYPING_SEND_INTERVAL_MS
        {
            return Vec::new();
        }
        self.last_typing_sent = Some((open.clone(), now_ms));
        vec![Action::Typing {
            conversation: open,
            typing: true,
        }]
    }

    fn submit(&mut self) -> Vec<Action> {
        let line = std::mem::take(&mut self.compose);
        let text = line.trim();
        if text.is_empty() {
            return Vec::new();
        }
        if let Some(command) = text.strip_prefix('/') {
            return self.command(command);
        }
        if let Some(id) = self.editing.take() {
            self.selected_message = None;
            return vec![Action::Command(Command::Edit {
                id,
                text: text.to_string(),
            })];
        }
        let Some(to) = self.open.clone() else {
            self.status = "open a conversation first (Enter in the list, or /new HANDLE)".into();
            self.compose = line;
            return Vec::new();
        };
        self.last_typing_sent = None;
        self.selected_message = None;
        vec![Action::Send {
            to,
            text: text.to_string(),
            reply_to: self.reply_to.take(),
        }]
    }

    fn command(&mut self, command: &str) -> Vec<Action> {
        let (name, rest) = command
            .split_once(char::is_whitespace)
            .map(|(a, b)| (a, b.trim()))
            .unwrap_or((command, ""));
        match name {
            "quit" | "q" => {
                self.quit = true;
                vec![Action::Quit]
            }
            "help" => {
                self.overlay = Some(Overlay::Help);
                Vec::new()
            }
            "new" | "open" => {
                if rest.is_empty() || rest.contains(char::is_whitespace) {
                    self.status = "usage: /new HANDLE".into();
                    return Vec::new();
                }
                self.open_conversation(rest)
            }
            "file" | "viewonce" => match (&self.open, rest.is_empty()) {
                (Some(to), false) => vec![Action::SendFile {
                    to: to.clone(),
                    path: rest.to_string(),
                    view_once: name == "viewonce",
                }],
                (None, _) => {
                    self.status = "open a conversation first".into();
                    Vec::new()
                }
                (_, true) => {
                    self.status = format!("usage: /{name} PATH");
                    Vec::new()
                }
            },
            "edit" => {
                if rest.is_empty() {
                    self.start_edit();
                    return Vec::new();
                }
                match self.own_text_target() {
                    Some(id) => vec![Action::Command(Command::Edit {
                        id,
                        text: rest.to_string(),
                    })],
                    None => {
                        self.status = "select one of your text messages to edit".into();
                        Vec::new()
                    }
                }
            }
            "delete" => self.confirm_delete(),
            "view" => self.open_view_once(),
            "timer" => match (&self.open, hushwire_service::parse_timer(rest)) {
                (None, _) => {
                    self.status = "open a conversation first".into();
                    Vec::new()
                }
                (Some(_), Err(e)) if !rest.is_empty() => {
                    self.status = e;
                    Vec::new()
                }
                (Some(c), Ok(timer_ms)) if !rest.is_empty() => {
                    vec![Action::Command(Command::Timer {
                        conversation: c.clone(),
                        timer_ms,
                    })]
                }
                (Some(_), _) => {
                    self.status = format!(
                        "disappearing messages: {} (usage: /timer 5s|30m|1h|7d|off)",
                        hushwire_service::timer_text(self.timer_ms)
                    );
                    Vec::new()
                }
            },
            "accept" | "block" | "unblock" => {
                let handle = if rest.is_empty() {
                    self.open.clone().filter(|o| !o.starts_with('#'))
                } else {
                    Some(rest.to_string())
                };
                let Some(handle) = handle.filter(|h| !h.contains(char::is_whitespace)) else {
                    self.status = format!("usage: /{name} HANDLE (or open their chat)");
                    return Vec::new();
                };
                let command = match name {
                    "accept" => Command::Accept { handle },
                    "block" => Command::Block { handle },
                    _ => Command::Unblock { handle },
                };
                vec![Action::Command(command)]
            }
            "verify" | "trust" => {
                let (who, mark) = match rest.strip_suffix(" mark").map(str::trim) {
                    Some(who) if name == "verify" => (who, true),
                    _ if name == "verify" && rest == "mark" => ("", true),
                    _ => (rest, false),
                };
                let handle = if who.is_empty() {
                    self.open.clone().filter(|o| !o.starts_with('#'))
                } else {
                    Some(who.to_string())
                };
                let Some(handle) = handle.filter(|h| !h.contains(char::is_whitespace)) else {
                    self.status = if name == "verify" {
                        "usage: /verify [HANDLE] [mark] (or open their chat)".into()
                    } else {
                        "usage: /trust HANDLE (or open their chat)".into()
                    };
                    return Vec::new();
                };
                if name == "verify" {
                    vec![Action::Verify { handle, mark }]
                } else {
                    vec![Action::Trust(handle)]
                }
            }
            "blocked" => vec![Action::Blocked],
            "receipts" => match rest {
                "on" | "off" => vec![Action::Command(Command::ReadReceipts(rest == "on"))],
                _ => {
                    self.status = "usage: /receipts on|off".into();
                    Vec::new()
                }
            },
            "presence" => {
                let share = match rest {
                    "everyone" => hushwire_e2e::PresenceShare::Everyone,
                    "contacts" => hushwire_e2e::PresenceShare::Contacts,
                    "nobody" => hushwire_e2e::PresenceShare::Nobody,
                    _ => {
                        self.status = "usage: /presence everyone|contacts|nobody".into();
                        return Vec::new();
                    }
                };
                vec![Action::Command(Command::Presence(share))]
            }
            "read" => match &self.open {
                Some(c) => vec![Action::MarkRead(c.clone())],
                None => {
                    self.status = "open a conversation first".into();
                    Vec::new()
                }
            },
            "link" => {
                self.overlay = Some(Overlay::Link {
                    code: String::new(),
                    qr: String::new(),
                    status: "asking the server for a link code…".into(),
                });
                vec![Action::Link]
            }
            "devices" => vec![Action::Devices],
            "group" => self.group_command(rest),
            other => {
                self.status = format!("unknown command /{other} (F1 lists them)");
                Vec::new()
            }
        }
    }

    /// The selected (or newest) message if it is an own, editable text.
    fn own_text_target(&self) -> Option<String> {
        let m = match self.selected_message {
            Some(i) => self.messages.get(i),
            None => self.messages.iter().rev().find(|m| m.outgoing && !m.notice),
        }?;
        (m.outgoing && !m.notice && !m.view_once && m.attachment.is_none()).then(|| m.id.clone())
    }

    /// `E` on an own text: the compose line takes its text; Enter replaces it.
    fn start_edit(&mut self) {
        let Some(id) = self.own_text_target() else {
            self.status = "only your own text messages can be edited".into();
            return;
        };
        let text = self
            .messages
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.text.clone())
            .unwrap_or_default();
        self.compose = text;
        self.editing = Some(id);
        self.reply_to = None;
        self.focus = Focus::Compose;
        self.status = "editing: Enter saves, Esc cancels".into();
    }

    /// `d` on a message: asks, then deletes (an own one for everyone).
    fn confirm_delete(&mut self) -> Vec<Action> {
        let Some(m) = self.target_message().filter(|m| !m.notice) else {
            self.status = "no message to delete".into();
            return Vec::new();
        };
        let question = if m.outgoing {
            format!("Delete \"{}\" for everyone?", shorten(&m.text, 40))
        } else {
            format!(
                "Delete {}'s message \"{}\" on this device?",
                m.from,
                shorten(&m.text, 40)
            )
        };
        self.overlay = Some(Overlay::Confirm {
            question,
            action: Box::new(Action::Command(Command::Delete { id: m.id.clone() })),
        });
        Vec::new()
    }

    /// `v` on a received view-once message: opens it (once).
    fn open_view_once(&mut self) -> Vec<Action> {
        match self.target_message() {
            Some(m) if m.view_once && !m.outgoing => vec![Action::OpenViewOnce(m.id.clone())],
            Some(m) if m.view_once => {
                self.status = "your own view-once messages cannot be opened".into();
                Vec::new()
            }
            _ => {
                self.status = "select a view-once message (↑ ↓) to open it".into();
                Vec::new()
            }
        }
    }

    fn group_command(&mut self, rest: &str) -> Vec<Action> {
        let (sub, args) = rest
            .split_once(char::is_whitespace)
            .map(|(a, b)| (a, b.trim()))
            .unwrap_or((rest, ""));
        if sub == "create" {
            let Some((title, members)) = args.rsplit_once(char::is_whitespace) else {
                self.status = "usage: /group create TITLE alice,bob".into();
                return Vec::new();
            };
            let members = split_handles(members);
            if title.trim().is_empty() || members.is_empty() {
                self.status = "usage: /group create TITLE alice,bob".into();
                return Vec::new();
            }
            return vec![Action::GroupCreate {
                title: title.trim().to_string(),
                members,
            }];
        }
        // The group: an explicit `#GROUP` first, else the open conversation.
        let (group, args) = match args.strip_prefix('#') {
            Some(_) => {
                let (g, a) = args
                    .split_once(char::is_whitespace)
                    .map(|(a, b)| (a, b.trim()))
                    .unwrap_or((args, ""));
                (Some(g.to_string()), a)
            }
            None => (self.open.clone().filter(|o| o.starts_with('#')), args),
        };
        let Some(group) = group else {
            self.status = "open a group (#TITLE) first, or name it: /group add #TITLE bob".into();
            return Vec::new();
        };
        let op = match sub {
            "add" if !split_handles(args).is_empty() => GroupOp::Add(split_handles(args)),
            "remove" if !split_handles(args).is_empty() => GroupOp::Remove(split_handles(args)),
            "leave" => GroupOp::Leave,
            "rename" if !args.is_empty() => GroupOp::Rename(args.to_string()),
            "promote" if split_handles(args).len() == 1 => GroupOp::Promote(args.to_string()),
            "demote" if split_handles(args).len() == 1 => GroupOp::Demote(args.to_string()),
            "info" | "members" => return vec![Action::GroupInfo(group)],
            _ => {
                self.status = "usage: /group create TITLE a,b | add a,b | remove a | leave | \
                               rename TITLE | promote a | demote a | info"
                    .into();
                return Vec::new();
            }
        };
        vec![Action::Group { group, op }]
    }
}

fn split_handles(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// A line of text shortened to `max` characters (with `…`).
pub fn shorten(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut s: String = one_line.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// How a group change reads.
pub fn describe_group_event(e: &GroupEvent) -> String {
    let who = e.handles.join(", ");
    match e.kind {
        GroupEventKind::Added => format!("{} added {who}", e.by),
        GroupEventKind::Removed => format!("{} removed {who}", e.by),
        GroupEventKind::Left => format!("{} left", e.by),
        GroupEventKind::Renamed => format!(
            "{} renamed the group to {}",
            e.by,
            e.title.as_deref().unwrap_or("?")
        ),
        GroupEventKind::Promoted => format!("{} made {who} admin", e.by),
        GroupEventKind::Demoted => format!("{} removed {who} as admin", e.by),
        GroupEventKind::Diverged => format!(
            "this device refused a change by {}; an admin can reset the group",
            e.by
        ),
        GroupEventKind::Reset => format!("{} rebuilt the group", e.by),
    }
}

/// The preview of a timeline entry in the conversation list.
pub fn preview(item: &TimelineItem) -> String {
    match item {
        TimelineItem::Message(m) => {
            let text = if m.view_once {
                "view-once message"
            } else {
                &m.text
            };
            if m.outgoing {
                format!("you: {text}")
            } else {
                text.to_string()
            }
        }
        TimelineItem::RelayLink(_) => "shared a relay link".into(),
        TimelineItem::Attachment(m, a) => format!(
            "📎 {}",
            if m.text.is_empty() {
                &a.file_name
            } else {
                &m.text
            }
        ),
        TimelineItem::Group(e) => describe_group_event(e),
    }
}

fn ticks_of(m: &StoredMessage, receipts: Option<&Vec<Receipt>>) -> Ticks {
    match m.state {
        MessageState::Queued => Ticks::Queued,
        MessageState::Failed => Ticks::Failed,
        MessageState::Sent | MessageState::Received => {
            let best = receipts.and_then(|r| r.iter().map(|r| r.status).max());
            match best {
                Some(ReceiptStatus::Read | ReceiptStatus::Viewed) => Ticks::Read,
                Some(ReceiptStatus::Delivered) => Ticks::Delivered,
                None => Ticks::Sent,
            }
        }
    }
}

/// Builds the message pane's entries from a conversation's timeline, its reactions and
/// the receipts for own messages (as [`hushwire_e2e::Profile`] returns them).
pub fn message_views(
    items: &[TimelineItem],
    reactions: &HashMap<String, Vec<Reaction>>,
    receipts: &HashMap<String, Vec<Receipt>>,
) -> Vec<MessageView> {
    let texts: HashMap<&str, (&str, &str)> = items
        .iter()
        .filter_map(|i| match i {
            TimelineItem::Message(m) | TimelineItem::Attachment(m, _) => {
                Some((m.id.as_str(), (m.from.as_str(), m.text.as_str())))
            }
            _ => None,
        })
        .collect();
    let view = |m: &StoredMessage| {
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for r in reactions.get(&m.id).into_iter().flatten() {
            if r.emoji.is_empty() {
                continue;
            }
            match grouped.iter_mut().find(|(e, _)| *e == r.emoji) {
                Some((_, who)) => who.push(r.from.clone()),
                None => grouped.push((r.emoji.clone(), vec![r.from.clone()])),
            }
        }
        MessageView {
            id: m.id.clone(),
            from: m.from.clone(),
            at_ms: m.sent_at_ms,
            // A view-once message's content shows only when opened (`v`).
            text: match (m.view_once, m.outgoing) {
                (false, _) => m.text.clone(),
                (true, true) => "(view-once message)".into(),
                (true, false) if m.viewed => "(view-once message, opened)".into(),
                (true, false) => {
                    "(view-once message: select it and press v to open it once)".into()
                }
            },
            outgoing: m.outgoing,
            ticks: m.outgoing.then(|| ticks_of(m, receipts.get(&m.id))),
            quote: m.reply_to.as_ref().map(|r| match texts.get(r.as_str()) {
                Some((from, text)) => (from.to_string(), shorten(text, 60)),
                None => (String::new(), "(a message not on this device)".into()),
            }),
            reactions: grouped,
            attachment: None,
            notice: false,
            edited: m.edited_at_ms.is_some(),
            view_once: m.view_once,
            expires_at_ms: m.expires_at_ms,
        }
    };
    items
        .iter()
        .map(|item| match item {
            TimelineItem::Message(m) => view(m),
            TimelineItem::RelayLink(m) => MessageView {
                text: "shared a relay link (hushwire relay to use it)".into(),
                ..view(m)
            },
            TimelineItem::Attachment(m, _) if m.view_once => view(m),
            TimelineItem::Attachment(m, a) => MessageView {
                attachment: Some(AttachmentView {
                    name: a.file_name.clone(),
                    size: a.size,
                    // A sent file's path is its source: only saved files are shown.
                    path: a
                        .path
                        .as_ref()
                        .filter(|_| !m.outgoing)
                        .map(|p| p.display().to_string()),
                    error: a.error.clone(),
                }),
                ..view(m)
            },
            TimelineItem::Group(e) => MessageView {
                id: String::new(),
                from: e.by.clone(),
                at_ms: e.at_ms,
                text: describe_group_event(e),
                outgoing: false,
                ticks: None,
                quote: None,
                reactions: Vec::new(),
                attachment: None,
                notice: true,
                edited: false,
                view_once: false,
                expires_at_ms: None,
            },
        })
        .collect()
}

/// A byte count for people: `812 B`, `1.5 KB`, `3.2 MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `HH:MM` (UTC) of a time in milliseconds since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!("{:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// The safety number overlay: the 60 digits in three rows of four groups, whether the
/// contact is verified, and what to do.
pub fn safety_lines(handle: &str, number: &hushwire_e2e::SafetyNumber) -> Vec<String> {
    let groups: Vec<&str> = number.digits.split(' ').collect();
    let mut lines: Vec<String> = groups
        .chunks(4)
        .map(|row| format!("  {}", row.join(" ")))
        .collect();
    lines.push(String::new());
    lines.push(if number.verified {
        format!("verified: you compared these digits with {handle}")
    } else {
        format!("not verified: compare these digits with {handle}, then /verify {handle} mark")
    });
    lines
}
