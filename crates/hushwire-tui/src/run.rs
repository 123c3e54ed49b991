//! The I/O loop: terminal, keyboard, service events, and the [`Action`]s of the model
//! carried out through the client service.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyEventKind};
use hushwire_client::{Client, ClientError, SendFileOptions};
use hushwire_e2e::DeleteScope;
use hushwire_e2e::{E2eError, TimelineItem};
use hushwire_service::{Command, Emitter, Outcome, Service, ServiceError, ServiceOptions};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::TuiError;
use crate::app::{self, Action, App, ConversationRow, GroupOp, Overlay, Snapshot};

/// Bound of one network operation started from the app.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a link code stays valid.
const LINK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the client waits for the user to approve a linking device.
const APPROVE_TIMEOUT: Duration = Duration::from_secs(120);

/// What reaches the loop besides service events.
enum UiMsg {
    Input(TermEvent),
    InputClosed,
    Snapshot(Result<Snapshot, String>),
    /// An action finished: a notice for the status line, and a conversation to open.
    Done {
        notice: String,
        open: Option<String>,
    },
    LinkCode(String),
    LinkApprove(String, oneshot::Sender<bool>),
    LinkDone(String),
    Devices(Vec<String>),
    Info(String, Vec<String>),
    ViewOnce(hushwire_service::ViewOnce),
}

fn now_ms() -> u64 {
    hushwire_client::api::unix_ms()
}

/// Runs the app on the registered profile in `profile_dir` until the user quits.
pub async fn run(profile_dir: &Path) -> Result<(), TuiError> {
    let service = Service::start(profile_dir, ServiceOptions::default())?;
    let me = service
        .with(|c| Box::pin(async move { c.identity().map(|i| i.handle.clone()) }))
        .await??;
    let mut app = App::new(me);
    let mut terminal = ratatui::try_init().map_err(TuiError::Terminal)?;
    let result = event_loop(&mut terminal, &service, &mut app).await;
    let restored = ratatui::try_restore();
    service.shutdown().await;
    result?;
    restored.map_err(TuiError::Terminal)
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    service: &Service,
    app: &mut App,
) -> Result<(), TuiError> {
    let (ui_tx, mut ui_rx) = mpsc::unbounded_channel::<UiMsg>();
    let input_tx = ui_tx.clone();
    // crossterm's read blocks: a thread of its own. It ends with the process.
    std::thread::Builder::new()
        .name("hushwire-tui-input".into())
        .spawn(move || {
            loop {
                match crossterm::event::read() {
                    Ok(ev) => {
                        if input_tx.send(UiMsg::Input(ev)).is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        let _ = input_tx.send(UiMsg::InputClosed);
                        return;
                    }
                }
            }
        })
        .map_err(TuiError::Terminal)?;
    let mut events = service.subscribe();
    let mut online = service.online();
    app.online = *online.borrow_and_update();
    let mut loop_state = LoopState {
        service: service.clone(),
        ui: ui_tx,
        refreshing: false,
        refresh_again: false,
        approve: None,
    };
    loop_state.refresh(app);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        terminal
            .draw(|f| crate::ui::draw(f, app, now_ms()))
            .map_err(TuiError::Terminal)?;
        if app.quit {
            return Ok(());
        }
        let actions = tokio::select! {
            msg = ui_rx.recv() => match msg {
                Some(msg) => loop_state.message(app, msg),
                None => return Ok(()),
            },
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let out = app.apply_event(&ev, now_ms());
                    if out.bell {
                        bell();
                    }
                    out.actions
                }
                Err(broadcast::error::RecvError::Lagged(_)) => vec![Action::Refresh],
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(TuiError::Service(ServiceError::Stopped))
                }
            },
            changed = online.changed() => {
                if changed.is_err() {
                    return Err(TuiError::Service(ServiceError::Stopped));
                }
                let now = *online.borrow_and_update();
                app.online = now;
                if now { vec![Action::Refresh] } else { Vec::new() }
            },
            _ = tick.tick() => {
                app.tick(now_ms());
                Vec::new()
            }
        };
        for action in actions {
            loop_state.act(app, action);
        }
    }
}

/// Rings the terminal bell (new incoming message).
fn bell() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\x07");
    let _ = out.flush();
}

struct LoopState {
    service: Service,
    ui: mpsc::UnboundedSender<UiMsg>,
    refreshing: bool,
    refresh_again: bool,
    approve: Option<oneshot::Sender<bool>>,
}

impl LoopState {
    fn message(&mut self, app: &mut App, msg: UiMsg) -> Vec<Action> {
        match msg {
            UiMsg::Input(TermEvent::Key(key)) if key.kind != KeyEventKind::Release => {
                return app.handle_key(key, now_ms());
            }
            UiMsg::Input(_) => {} // resize and the rest: redrawn anyway
            UiMsg::InputClosed => {
                app.quit = true;
            }
            UiMsg::Snapshot(result) => {
                self.refreshing = false;
                match result {
                    Ok(s) => app.set_snapshot(s),
                    Err(e) => app.status = format!("cannot read the profile: {e}"),
                }
                if std::mem::take(&mut self.refresh_again) {
                    self.refresh(app);
                }
            }
            UiMsg::Done { notice, open } => {
                if !notice.is_empty() {
                    app.status = notice;
                }
                let mut actions = vec![Action::Refresh];
                if let Some(open) = open {
                    actions.extend(app.open_conversation(&open));
                }
                return actions;
            }
            UiMsg::LinkCode(code) => {
                let qr = qrcode::QrCode::new(code.as_bytes())
                    .map(|q| {
                        q.render::<qrcode::render::unicode::Dense1x2>()
                            .quiet_zone(true)
                            .build()
                    })
                    .unwrap_or_default();
                app.overlay = Some(Overlay::Link {
                    code,
                    qr,
                    status: format!("waiting for the new device ({} s)…", LINK_TIMEOUT.as_secs()),
                });
            }
            UiMsg::LinkApprove(name, answer) => {
                self.approve = Some(answer);
                app.overlay = Some(Overlay::Approve { name });
            }
            UiMsg::LinkDone(text) => {
                self.approve = None;
                app.status = text.clone();
                if let Some(Overlay::Link { status, .. }) = &mut app.overlay {
                    *status = text;
                }
                return vec![Action::Refresh];
            }
            UiMsg::Devices(lines) => {
                app.overlay = Some(Overlay::Info {
                    title: "Your devices".into(),
                    lines,
                });
            }
            UiMsg::Info(title, lines) => {
                app.overlay = Some(Overlay::Info { title, lines });
            }
            UiMsg::ViewOnce(v) => {
                app.overlay = Some(Overlay::ViewOnce {
                    from: v.from,
                    text: v.text,
                    path: v.path.map(|p| p.display().to_string()),
                });
                return vec![Action::Refresh];
            }
        }
        Vec::new()
    }

    /// Loads the conversation list and the open conversation (one load at a time; a
    /// request meanwhile loads again afterwards).
    fn refresh(&mut self, app: &App) {
        if self.refreshing {
            self.refresh_again = true;
            return;
        }
        self.refreshing = true;
        let open = app.open.clone();
        let service = self.service.clone();
        let ui = self.ui.clone();
        tokio::spawn(async move {
            let result = service
                .with(move |c| Box::pin(async move { load_snapshot(c, open.as_deref()) }))
                .await;
            let result = match result {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = ui.send(UiMsg::Snapshot(result));
        });
    }

    fn act(&mut self, app: &mut App, action: Action) {
        let emitter = self.service.emitter();
        match action {
            Action::Refresh => self.refresh(app),
            Action::Quit => app.quit = true,
            Action::ApproveLink(yes) => {
                if let Some(answer) = self.approve.take() {
                    let _ = answer.send(yes);
                }
            }
            Action::Typing {
                conversation,
                typing,
            } => {
                let service = self.service.clone();
                // Best effort: a lost typing signal matters to nobody.
                tokio::spawn(async move {
                    let _ = service
                        .with(move |c| {
                            Box::pin(async move {
                                c.send_typing(&conversation, typing, NETWORK_TIMEOUT).await
                            })
                        })
                        .await;
                });
            }
            Action::Send { to, text, reply_to } => self.spawn(move |c| {
                Box::pin(async move {
                    match reply_to {
                        Some(r) => c.profile_mut().queue_reply(&r, &text, now_ms())?,
                        None => c.queue_text(&to, &text)?,
                    };
                    Ok(flush(c, &emitter, "").await)
                })
            }),
            Action::SendFile {
                to,
                path,
                view_once,
            } => self.spawn(move |c| {
                Box::pin(async move {
                    let path = expand_home(&path);
                    let options = SendFileOptions {
                        view_once,
                        ..SendFileOptions::default()
                    };
                    c.send_file(&to, &path, &options).await?;
                    let what = if view_once {
                        "view-once file sent"
                    } else {
                        "file sent"
                    };
                    Ok(flush(c, &emitter, what).await)
                })
            }),
            Action::React { message_id, emoji } => self.command(Command::React {
                id: message_id,
                emoji,
            }),
            Action::MarkRead(conversation) => self.command(Command::MarkRead { conversation }),
            Action::Command(command) => self.command(command),
            Action::OpenViewOnce(id) => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                let dir = service.profile_dir().join("media").join(".view-once");
                tokio::spawn(async move {
                    let msg = match service.open_view_once(&id, dir, NETWORK_TIMEOUT).await {
                        Ok(v) => UiMsg::ViewOnce(v),
                        Err(e) => done(format!("cannot open it: {e}")),
                    };
                    let _ = ui.send(msg);
                });
            }
            Action::DiscardViewOnce(path) => {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    app.status = format!("cannot delete {path}: {e}");
                }
            }
            Action::Blocked => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let result = service
                        .with(|c| Box::pin(async move { c.profile().blocked() }))
                        .await;
                    let msg = match result {
                        Ok(Ok(list)) if list.is_empty() => done("nobody is blocked".into()),
                        Ok(Ok(list)) => UiMsg::Info(
                            "Blocked (/unblock HANDLE)".into(),
                            list.into_iter().map(|h| format!("  {h}")).collect(),
                        ),
                        Ok(Err(e)) => done(e.to_string()),
                        Err(e) => done(e.to_string()),
                    };
                    let _ = ui.send(msg);
                });
            }
            Action::GroupCreate { title, members } => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let result = service
                        .with(move |c| {
                            Box::pin(async move {
                                let name = c.create_group(&title, &members, None)?;
                                let notice = flush(c, &emitter, &format!("created {name}")).await;
                                Ok::<_, ClientError>((name, notice))
                            })
                        })
                        .await;
                    let msg = match result {
                        Ok(Ok((name, notice))) => UiMsg::Done {
                            notice,
                            open: Some(name),
                        },
                        Ok(Err(e)) => done(e.to_string()),
                        Err(e) => done(e.to_string()),
                    };
                    let _ = ui.send(msg);
                });
            }
            Action::Group { group, op } => self.spawn(move |c| {
                Box::pin(async move {
                    let now = now_ms();
                    let p = c.profile_mut();
                    let what = match &op {
                        GroupOp::Add(h) => {
                            p.group_add(&group, h, now)?;
                            format!("added {} to {group}", h.join(", "))
                        }
                        GroupOp::Remove(h) => {
                            p.group_remove(&group, h, now)?;
                            format!("removed {} from {group}", h.join(", "))
                        }
                        GroupOp::Leave => {
                            p.group_leave(&group, now)?;
                            format!("left {group}")
                        }
                        GroupOp::Rename(t) => {
                            p.group_rename(&group, t, now)?;
                            format!("renamed {group} to #{t}")
                        }
                        GroupOp::Promote(h) => {
                            p.group_set_admin(&group, h, true, now)?;
                            format!("made {h} an admin of {group}")
                        }
                        GroupOp::Demote(h) => {
                            p.group_set_admin(&group, h, false, now)?;
                            format!("{h} is no longer an admin of {group}")
                        }
                    };
                    Ok(flush(c, &emitter, &what).await)
                })
            }),
            Action::GroupInfo(group) => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let name = group.clone();
                    let result = service
                        .with(move |c| Box::pin(async move { c.profile().group_details(&name) }))
                        .await;
                    let msg = match result {
                        Ok(Ok(d)) => {
                            let mut lines = vec![
                                format!("title: {}", d.title),
                                format!(
                                    "who may change members: {}",
                                    if d.admins_only { "admins" } else { "everyone" }
                                ),
                                format!("state: {}, epoch {}", d.state, d.epoch),
                                format!("{} member(s):", d.members.len()),
                            ];
                            lines.extend(d.members.iter().map(|m| {
                                format!(
                                    "  {}{} ({} device{})",
                                    m.handle,
                                    if m.admin { " [admin]" } else { "" },
                                    m.devices.len(),
                                    if m.devices.len() == 1 { "" } else { "s" }
                                )
                            }));
                            UiMsg::Info(group, lines)
                        }
                        Ok(Err(e)) => done(format!("{group}: {e}")),
                        Err(e) => done(e.to_string()),
                    };
                    let _ = ui.send(msg);
                });
            }
            Action::Devices => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let result = service
                        .with(|c| {
                            Box::pin(async move {
                                tokio::time::timeout(NETWORK_TIMEOUT, c.devices()).await
                            })
                        })
                        .await;
                    let msg = match result {
                        Ok(Ok(Ok(devices))) => UiMsg::Devices(
                            devices
                                .iter()
                                .map(|d| {
                                    format!(
                                        "{}{} {}",
                                        if d.current { "* " } else { "  " },
                                        d.device_id,
                                        if d.name.is_empty() {
                                            "(no name)"
                                        } else {
                                            &d.name
                                        }
                                    )
                                })
                                .collect(),
                        ),
                        Ok(Ok(Err(e))) => done(format!("cannot list devices: {e}")),
                        Ok(Err(_)) => done("listing the devices timed out".into()),
                        Err(e) => done(e.to_string()),
                    };
                    let _ = ui.send(msg);
                });
            }
            Action::Verify { handle, mark } => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let msg = match service.safety_number(&handle, mark).await {
                        Ok(number) => UiMsg::Info(
                            format!("Safety number with {handle}"),
                            crate::app::safety_lines(&handle, &number),
                        ),
                        Err(e) => done(format!("cannot show the safety number: {e}")),
                    };
                    let _ = ui.send(msg);
                });
            }
            Action::Trust(handle) => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let notice = match service.trust(&handle).await {
                        Ok(()) => format!(
                            "accepted {handle}'s current account key; compare safety numbers: /verify {handle}"
                        ),
                        Err(e) => format!("cannot accept {handle}'s key: {e}"),
                    };
                    let _ = ui.send(done(notice));
                });
            }
            Action::Link => {
                let ui = self.ui.clone();
                let service = self.service.clone();
                tokio::spawn(async move {
                    let text = match link(&service, &ui).await {
                        Ok(t) => t,
                        Err(e) => format!("linking failed: {e}"),
                    };
                    let _ = ui.send(UiMsg::LinkDone(text));
                });
            }
        }
    }

    /// Runs a conversation command; what it did (or why not) goes to the status line.
    fn command(&self, command: Command) {
        let ui = self.ui.clone();
        let service = self.service.clone();
        tokio::spawn(async move {
            let what = describe(&command);
            let msg = match service.command(command).await {
                Ok(outcome) => done(outcome_notice(what, &outcome)),
                Err(e) => done(e.to_string()),
            };
            let _ = ui.send(msg);
        });
    }

    /// Runs `f` on the client; its notice (or error) goes to the status line.
    fn spawn<F>(&self, f: F)
    where
        F: for<'a> FnOnce(
                &'a mut Client,
            )
                -> hushwire_service::ClientFuture<'a, Result<String, ClientError>>
            + Send
            + 'static,
    {
        let ui = self.ui.clone();
        let service = self.service.clone();
        tokio::spawn(async move {
            let msg = match service.with(f).await {
                Ok(Ok(notice)) => done(notice),
                Ok(Err(e)) => done(e.to_string()),
                Err(e) => done(e.to_string()),
            };
            let _ = ui.send(msg);
        });
    }
}

/// What a successful command says on the status line (empty: nothing worth saying).
fn describe(command: &Command) -> String {
    match command {
        Command::Reply { .. } | Command::React { .. } | Command::MarkRead { .. } => String::new(),
        Command::Edit { .. } => "message edited".into(),
        Command::Delete { .. } => "message deleted".into(),
        Command::Timer {
            conversation,
            timer_ms,
        } => format!(
            "disappearing messages in {conversation}: {}",
            hushwire_service::timer_text(*timer_ms)
        ),
        Command::Accept { handle } => format!("accepted {handle}'s message request"),
        Command::Block { handle } => format!("blocked {handle}"),
        Command::Unblock { handle } => format!("unblocked {handle}"),
        Command::ReadReceipts(on) => {
            format!("read receipts {}", if *on { "on" } else { "off" })
        }
        Command::Presence(share) => format!("presence shared with: {share:?}").to_lowercase(),
    }
}

fn outcome_notice(what: String, outcome: &Outcome) -> String {
    let what = match outcome.scope {
        Some(DeleteScope::Everyone) => "deleted for everyone".into(),
        Some(DeleteScope::Unsent) => "deleted before it was sent".into(),
        Some(DeleteScope::ForMe) => "deleted on this device".into(),
        None => what,
    };
    if let Some(reason) = outcome.failures.first() {
        return format!("refused: {reason}");
    }
    match &outcome.pending {
        Some(e) => format!("queued; will be sent when the server is reachable ({e})"),
        None => what,
    }
}

fn done(notice: String) -> UiMsg {
    UiMsg::Done { notice, open: None }
}

/// `~/x` → `$HOME/x`.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Sends what is queued; the notice says so, or that it waits for the connection.
async fn flush(c: &mut Client, emitter: &Emitter, ok: &str) -> String {
    match c
        .flush_outbox(NETWORK_TIMEOUT, &mut |e| emitter.emit(e))
        .await
    {
        Ok(_) => ok.to_string(),
        Err(e) => format!("queued; will be sent when the server is reachable ({e})"),
    }
}

/// The device-linking side of this device (see `hushwire device link`). The client is
/// held only to open the session and to finish it: while the new device is awaited and
/// the user decides, it keeps receiving.
async fn link(service: &Service, ui: &mpsc::UnboundedSender<UiMsg>) -> Result<String, ClientError> {
    let stopped = |e: ServiceError| ClientError::Protocol(e.to_string());
    let pending = service
        .with(|c| Box::pin(async move { c.open_link(LINK_TIMEOUT).await }))
        .await
        .map_err(stopped)??;
    let _ = ui.send(UiMsg::LinkCode(pending.code().encode()));
    let request = match pending.wait_for_device().await {
        Ok(r) => r,
        Err(e) => {
            let _ = service
                .with(move |c| Box::pin(async move { c.close_link(&pending).await }))
                .await;
            return Err(e);
        }
    };
    let (answer, answered) = oneshot::channel();
    let _ = ui.send(UiMsg::LinkApprove(request.name.clone(), answer));
    let approved = matches!(
        tokio::time::timeout(APPROVE_TIMEOUT, answered).await,
        Ok(Ok(true))
    );
    let emitter = service.emitter();
    let report = service
        .with(move |c| {
            Box::pin(async move {
                c.finish_link(pending, request, approved, &mut |e| emitter.emit(e))
                    .await
            })
        })
        .await
        .map_err(stopped)??;
    Ok(format!(
        "linked device {} ({}): added to {} conversation(s), {} message(s) of history sent",
        report.device_id, report.name, report.conversations, report.history.messages
    ))
}

/// The conversation list (with previews) and the open conversation's messages.
fn load_snapshot(c: &Client, open: Option<&str>) -> Result<Snapshot, E2eError> {
    let profile = c.profile();
    let unread: HashMap<String, u64> = profile.unread_counts()?.into_iter().collect();
    let mut conversations = Vec::new();
    for summary in profile.conversations()? {
        let timeline = profile.timeline(&summary.name)?;
        conversations.push(ConversationRow {
            preview: timeline.last().map(app::preview).unwrap_or_default(),
            unread: unread.get(&summary.name).copied().unwrap_or(0),
            name: summary.name,
            last_at_ms: summary.last_message_at_ms,
            request: summary.request,
        });
    }
    let open = match open {
        Some(name) => {
            let items: Vec<TimelineItem> = profile.timeline(name)?;
            let reactions = profile.reactions(name)?;
            let receipts = profile.receipts(name).unwrap_or_else(|_| HashMap::new());
            Some((
                name.to_string(),
                app::message_views(&items, &reactions, &receipts),
            ))
        }
        None => None,
    };
    let timer_ms = match &open {
        Some((name, _)) => profile.timer(name).unwrap_or(0),
        None => 0,
    };
    Ok(Snapshot {
        conversations,
        open,
        timer_ms,
    })
}
