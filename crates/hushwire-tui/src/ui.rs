//! Rendering: [`draw`] paints an [`App`] into a frame, nothing else.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use unicode_width::UnicodeWidthChar as _;

use crate::app::{App, Focus, MessageView, Overlay, clock, human_size, shorten};

/// The keys and commands shown by the help overlay.
pub const HELP: &[(&str, &str)] = &[
    ("F1 / ?", "this help (Esc closes it)"),
    ("Tab / Shift-Tab  ← →", "next / previous pane"),
    (
        "↑ ↓  PgUp PgDn",
        "select a conversation or a message; scroll",
    ),
    (
        "Enter / Esc",
        "open, send / back (cancels a reply or an edit)",
    ),
    ("r / e", "reply to / react to the selected message"),
    (
        "E / d",
        "edit your selected message / delete the selected message",
    ),
    ("v", "open the selected view-once message (once)"),
    (
        "n / q / Ctrl-C",
        "new conversation / quit (list pane) / quit",
    ),
    ("/new HANDLE", "open a conversation with HANDLE"),
    ("/file PATH", "send a file (/viewonce PATH: viewable once)"),
    (
        "/group create TITLE a,b",
        "create a group chat with a and b",
    ),
    (
        "/group add a,b | remove a",
        "add or remove members of the open group",
    ),
    ("/group leave | rename T", "leave or rename the open group"),
    (
        "/group promote a | demote a",
        "make a an admin, or take it back",
    ),
    ("/group info", "the open group's members and admins"),
    ("/edit TEXT  /delete", "edit / delete the selected message"),
    (
        "/timer 30m|1h|7d|off",
        "disappearing messages in this conversation",
    ),
    (
        "/accept  /block [HANDLE]",
        "answer a message request; block someone",
    ),
    (
        "/unblock HANDLE  /blocked",
        "take a block back; list blocked accounts",
    ),
    ("/receipts on|off", "send read receipts or not"),
    ("/presence everyone|contacts|nobody", "who sees you online"),
    (
        "/link  /devices",
        "link a new device (QR code); list your devices",
    ),
    (
        "/verify [HANDLE] [mark]  /trust HANDLE",
        "safety number; accept a changed key",
    ),
    ("/read  /quit", "mark the conversation read; quit"),
];

fn focused(on: bool) -> Style {
    if on {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default().fg(Color::DarkGray)
    }
}

/// Paints the whole screen. `now_ms` decides which typing signals are still shown.
pub fn draw(frame: &mut Frame, app: &App, now_ms: u64) {
    let [main, compose, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [list, messages] =
        Layout::horizontal([Constraint::Percentage(30), Constraint::Percentage(70)]).areas(main);
    draw_list(frame, app, list);
    draw_messages(frame, app, messages, now_ms);
    draw_compose(frame, app, compose);
    draw_status(frame, app, status, now_ms);
    match &app.overlay {
        None => {}
        Some(Overlay::Help) => draw_help(frame),
        Some(Overlay::Link { code, qr, status }) => draw_link(frame, code, qr, status),
        Some(Overlay::Approve { name }) => {
            let lines = vec![
                Line::from(format!(
                    "A new device asks to join your account as \"{name}\"."
                )),
                Line::from(""),
                Line::from("Link it? It will read your conversations.  y = yes, n = no").bold(),
            ];
            popup(frame, "Link a device", lines, 70, 7);
        }
        Some(Overlay::Confirm { question, .. }) => {
            let lines = vec![
                Line::from(question.clone()),
                Line::from(""),
                Line::from("y = yes, n = no").bold(),
            ];
            popup(frame, "Are you sure?", lines, 70, 6);
        }
        Some(Overlay::ViewOnce { from, text, path }) => {
            let mut lines = vec![Line::from(format!("From {from}, viewable once:")).bold()];
            if !text.is_empty() {
                lines.push(Line::from(""));
                lines.extend(text.lines().map(|l| Line::from(l.to_string())));
            }
            if let Some(path) = path {
                lines.push(Line::from(""));
                lines.push(Line::from("The file is decrypted at:"));
                lines.push(Line::from(path.clone()).fg(Color::Yellow));
                lines.push(Line::from(
                    "Open it now: it is deleted when this window closes.",
                ));
            }
            lines.push(Line::from(""));
            lines.push(Line::from("Esc closes it for good.").fg(Color::DarkGray));
            let height = u16::try_from(lines.len() + 4).unwrap_or(u16::MAX);
            popup(frame, "View once", lines, 76, height);
        }
        Some(Overlay::Info { title, lines }) => {
            let height = u16::try_from(lines.len())
                .unwrap_or(u16::MAX)
                .saturating_add(2);
            let lines = lines.iter().map(|l| Line::from(l.clone())).collect();
            popup(frame, title, lines, 70, height);
        }
    }
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let width = usize::from(area.width.saturating_sub(4));
    let items: Vec<ListItem> = app
        .conversations
        .iter()
        .map(|c| {
            let mut head = vec![Span::styled(
                c.name.clone(),
                Style::default().add_modifier(Modifier::BOLD),
            )];
            if c.unread > 0 {
                head.push(Span::styled(
                    format!(" ({})", c.unread),
                    Style::default().fg(Color::Black).bg(Color::Green),
                ));
            }
            if c.request {
                head.push(Span::styled(" request", Style::default().fg(Color::Yellow)));
            }
            if let Some(at) = c.last_at_ms {
                head.push(Span::styled(
                    format!("  {}", clock(at)),
                    Style::default().fg(Color::DarkGray),
                ));
            }
            ListItem::new(vec![
                Line::from(head),
                Line::from(Span::styled(
                    shorten(&c.preview, width),
                    Style::default().fg(Color::Gray),
                )),
            ])
        })
        .collect();
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(focused(app.focus == Focus::List))
        .title(format!(" Chats — {} ", app.me));
    if items.is_empty() {
        let p = Paragraph::new("No conversations yet.\n/new HANDLE starts one.")
            .block(block)
            .wrap(Wrap { trim: false });
        frame.render_widget(p, area);
        return;
    }
    let list = List::new(items)
        .block(block)
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▌");
    let mut state = ListState::default();
    state.select(Some(app.selected));
    frame.render_stateful_widget(list, area, &mut state);
}

/// Breaks `text` into lines of at most `width` columns.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        let mut cols = 0;
        for c in para.chars() {
            let c = if c.is_control() { ' ' } else { c };
            let w = c.width().unwrap_or(0);
            if cols + w > width && !line.is_empty() {
                out.push(std::mem::take(&mut line));
                cols = 0;
            }
            line.push(c);
            cols += w;
        }
        out.push(line);
    }
    out
}

/// The lines of one message.
fn message_lines(m: &MessageView, width: usize, selected: bool) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if m.notice {
        for l in wrap(&format!("— {} —", m.text), width) {
            lines.push(Line::from(Span::styled(
                l,
                Style::default()
                    .fg(Color::DarkGray)
                    .add_modifier(Modifier::ITALIC),
            )));
        }
        return lines;
    }
    let name_style = if m.outgoing {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
            .fg(Color::Magenta)
            .add_modifier(Modifier::BOLD)
    };
    let mut head = vec![
        Span::styled(
            if selected { "▶ " } else { "" },
            Style::default().fg(Color::Yellow),
        ),
        Span::styled(m.from.clone(), name_style),
        Span::styled(
            format!("  {}", clock(m.at_ms)),
            Style::default().fg(Color::DarkGray),
        ),
    ];
    if m.edited {
        head.push(Span::styled(
            " (edited)",
            Style::default().fg(Color::DarkGray),
        ));
    }
    if m.view_once {
        head.push(Span::styled(" ①", Style::default().fg(Color::Yellow)));
    }
    if m.expires_at_ms.is_some() {
        head.push(Span::styled(" ⏱", Style::default().fg(Color::DarkGray)));
    }
    if let Some(t) = m.ticks {
        let color = match t {
            crate::app::Ticks::Read => Color::Blue,
            crate::app::Ticks::Failed => Color::Red,
            _ => Color::Green,
        };
        head.push(Span::styled(
            format!("  {}", t.symbol()),
            Style::default().fg(color),
        ));
    }
    lines.push(Line::from(head));
    if let Some((from, text)) = &m.quote {
        let q = if from.is_empty() {
            text.clone()
        } else {
            format!("{from}: {text}")
        };
        for l in wrap(&q, width.saturating_sub(4)) {
            lines.push(Line::from(Span::styled(
                format!("  ┃ {l}"),
                Style::default().fg(Color::DarkGray),
            )));
        }
    }
    if let Some(a) = &m.attachment {
        let mut text = format!("📎 {} ({})", a.name, human_size(a.size));
        if let Some(path) = &a.path {
            text.push_str(&format!(" saved to {path}"));
        } else if let Some(e) = &a.error {
            text.push_str(&format!(" download failed: {e}"));
        }
        for l in wrap(&text, width.saturating_sub(2)) {
            lines.push(Line::from(Span::styled(
                format!("  {l}"),
                Style::default().fg(Color::Yellow),
            )));
        }
    }
    if !m.text.is_empty() {
        for l in wrap(&m.text, width.saturating_sub(2)) {
            lines.push(Line::from(format!("  {l}")));
        }
    }
    if !m.reactions.is_empty() {
        let r: Vec<String> = m
            .reactions
            .iter()
            .map(|(emoji, who)| format!("{emoji} {}", who.join(", ")))
            .collect();
        lines.push(Line::from(Span::styled(
            format!("  {}", r.join("   ")),
            Style::default().fg(Color::LightYellow),
        )));
    }
    if selected {
        lines = lines
            .into_iter()
            .map(|l| l.style(Style::default().bg(Color::Rgb(40, 40, 60))))
            .collect();
    }
    lines
}

fn draw_messages(frame: &mut Frame, app: &App, area: Rect, now_ms: u64) {
    let title = match &app.open {
        Some(name) => {
            let typing = app.typing_in_open(now_ms);
            let timer = if app.timer_ms > 0 {
                format!(" ⏱ {}", hushwire_service::timer_text(app.timer_ms))
            } else {
                String::new()
            };
            if typing.is_empty() {
                format!(" {name}{timer} ")
            } else {
                format!(" {name}{timer} — {} typing… ", typing.join(", "))
            }
        }
        None => " No conversation open ".into(),
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(focused(app.focus == Focus::Messages))
        .title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if app.open.is_none() {
        let p = Paragraph::new(
            "Select a conversation and press Enter, or type /new HANDLE.\nF1 or ? shows every key and command.",
        )
        .wrap(Wrap { trim: false });
        frame.render_widget(p, inner);
        return;
    }
    if app.messages.is_empty() {
        frame.render_widget(Paragraph::new("No messages yet. Say hello!"), inner);
        return;
    }
    let width = usize::from(inner.width);
    let height = usize::from(inner.height);
    let mut lines: Vec<Line> = Vec::new();
    let mut anchor_end = 0;
    let anchor = app.selected_message.unwrap_or(app.messages.len() - 1);
    for (i, m) in app.messages.iter().enumerate() {
        lines.extend(message_lines(m, width, app.selected_message == Some(i)));
        if i == anchor {
            anchor_end = lines.len();
        }
    }
    let top = anchor_end.saturating_sub(height);
    let visible: Vec<Line> = lines.into_iter().skip(top).take(height).collect();
    frame.render_widget(Paragraph::new(visible), inner);
}

fn draw_compose(frame: &mut Frame, app: &App, area: Rect) {
    let (title, text) = if let Some((_, input)) = &app.react_prompt {
        (
            " React with (type an emoji, Enter) ".to_string(),
            input.clone(),
        )
    } else if let Some(r) = &app.reply_to {
        let quoted = app
            .messages
            .iter()
            .find(|m| &m.id == r)
            .map(|m| format!("{}: {}", m.from, shorten(&m.text, 40)))
            .unwrap_or_default();
        (
            format!(" Reply to {quoted} (Esc cancels) "),
            app.compose.clone(),
        )
    } else if app.editing.is_some() {
        (
            " Edit your message (Enter saves, Esc cancels) ".to_string(),
            app.compose.clone(),
        )
    } else {
        let to = app.open.as_deref().unwrap_or("…");
        let request = app
            .conversations
            .iter()
            .any(|c| c.request && Some(c.name.as_str()) == app.open.as_deref());
        if request {
            (
                format!(" Message request from {to} — /accept, /block, or reply to accept "),
                app.compose.clone(),
            )
        } else {
            (
                format!(" Message {to} — Enter sends, /commands, F1 help "),
                app.compose.clone(),
            )
        }
    };
    let active = app.focus == Focus::Compose || app.react_prompt.is_some();
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(focused(active))
        .title(title);
    let inner = block.inner(area);
    // Show the end of a long line.
    let width = usize::from(inner.width.saturating_sub(1));
    let cols: usize = text.chars().map(|c| c.width().unwrap_or(0)).sum();
    let shown: String = if cols > width {
        let mut skip = cols - width;
        text.chars()
            .skip_while(|c| {
                let w = c.width().unwrap_or(0);
                if skip == 0 {
                    return false;
                }
                skip = skip.saturating_sub(w);
                true
            })
            .collect()
    } else {
        text
    };
    let shown_cols: usize = shown.chars().map(|c| c.width().unwrap_or(0)).sum();
    frame.render_widget(Paragraph::new(shown).block(block), area);
    if active && app.overlay.is_none() {
        let x = inner
            .x
            .saturating_add(u16::try_from(shown_cols).unwrap_or(u16::MAX));
        frame.set_cursor_position((x.min(inner.right().saturating_sub(1)), inner.y));
    }
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect, now_ms: u64) {
    let mut spans = if app.online {
        vec![Span::styled(
            " ● online ",
            Style::default().fg(Color::Green),
        )]
    } else {
        vec![Span::styled(" ○ offline ", Style::default().fg(Color::Red))]
    };
    let typing = app.typing_in_open(now_ms);
    if !typing.is_empty() {
        spans.push(Span::styled(
            format!("│ {} typing… ", typing.join(", ")),
            Style::default().fg(Color::Yellow),
        ));
    }
    spans.push(Span::raw(format!("│ {} ", app.status)));
    let left = Line::from(spans);
    let [l, r] = Layout::horizontal([Constraint::Min(10), Constraint::Length(12)]).areas(area);
    frame.render_widget(Paragraph::new(left), l);
    frame.render_widget(
        Paragraph::new(Line::from(" F1/? help ").style(Style::default().fg(Color::DarkGray))),
        r,
    );
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn popup(frame: &mut Frame, title: &str, lines: Vec<Line>, width: u16, height: u16) {
    let area = centered(frame.area(), width, height);
    frame.render_widget(Clear, area);
    let p = Paragraph::new(lines)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(Style::default().fg(Color::Cyan))
                .title(format!(" {title} "))
                .title_bottom(" Esc closes "),
        )
        .wrap(Wrap { trim: false });
    frame.render_widget(p, area);
}

fn draw_help(frame: &mut Frame) {
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<26}"), Style::default().fg(Color::Cyan)),
                Span::raw(*v),
            ])
        })
        .collect();
    let height = u16::try_from(HELP.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    popup(frame, "Help — keys and commands", lines, 80, height);
}

fn draw_link(frame: &mut Frame, code: &str, qr: &str, status: &str) {
    let mut lines: Vec<Line> = vec![Line::from(Span::styled(
        status.to_string(),
        Style::default().fg(Color::Yellow),
    ))];
    lines.extend(qr.lines().map(|l| Line::from(l.to_string())));
    if !code.is_empty() {
        lines.push(Line::from(format!("link-code: {code}")));
    }
    let qr_width = qr.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let width = u16::try_from(qr_width.max(76) + 2).unwrap_or(u16::MAX);
    // Rows for the wrapped code.
    let code_rows = (code.len() + 11) / usize::from(width.saturating_sub(2).max(1)) + 1;
    let height = u16::try_from(lines.len() + code_rows + 1).unwrap_or(u16::MAX);
    popup(
        frame,
        "Link a new device — on it: hushwire --profile DIR link CODE",
        lines,
        width,
        height,
    );
}
