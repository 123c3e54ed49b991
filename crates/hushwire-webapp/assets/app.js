// Hushwire web app. Renders what the local Hushwire process serves and sends it
// commands; it never sees a key. Every string from the server goes into the page as
// text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
const state = {
  me: "",
  online: false,
  conversations: [],
  current: null,
  timeline: null,
  replyTo: null,
  editing: null, // { id, text } while an own message is being edited
  viewOnce: false, // the next attached file goes out view-once
  typing: new Map(), // conversation -> Map(from -> expiry)
  typingSent: 0,
  typingTimer: null,
  uploads: 0,
};

// ------------------------------------------------------------------ helpers

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function icon(path) {
  // Builds an inline SVG icon from a path (DOM API; the markup is ours).
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const p = document.createElementNS(SVG_NS, "path");
  p.setAttribute("d", path);
  svg.appendChild(p);
  return svg;
}
const ICON_REPLY = "M10 9V5l-7 7 7 7v-4.1c5 0 8.5 1.6 11 5.1-1-5-4-10-11-11z";
const ICON_MORE = "M12 8a2 2 0 1 0 0-4 2 2 0 0 0 0 4zm0 2a2 2 0 1 0 0 4 2 2 0 0 0 0-4zm0 6a2 2 0 1 0 0 4 2 2 0 0 0 0-4z";
const ICON_EDIT = "M3 17.2V21h3.8L17.8 9.9l-3.7-3.7L3 17.2zM20.7 7a1 1 0 0 0 0-1.4l-2.3-2.3a1 1 0 0 0-1.4 0l-1.8 1.8 3.7 3.7L20.7 7z";
const ICON_TRASH = "M6 19a2 2 0 0 0 2 2h8a2 2 0 0 0 2-2V7H6v12zM19 4h-3.5l-1-1h-5l-1 1H5v2h14V4z";
const ICON_TIMER = "M15 1H9v2h6V1zm-4 13h2V8h-2v6zm8-6.6 1.4-1.4-1.4-1.4-1.4 1.4A9 9 0 1 0 21 13a9 9 0 0 0-2-5.6zM12 20a7 7 0 1 1 0-14 7 7 0 0 1 0 14z";
const ICON_ONCE = "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18a8 8 0 1 1 0-16 8 8 0 0 1 0 16zm-1.2-12.5h2.4V17h-2V9.8l-1.6.9-.9-1.6 2.1-1.6z";
const TIMERS = [
  ["off", "Off"], ["5m", "5 minutes"], ["1h", "1 hour"], ["8h", "8 hours"],
  ["1d", "1 day"], ["7d", "1 week"], ["90d", "90 days"],
];
const ICON_SMILE = "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18a8 8 0 1 1 0-16 8 8 0 0 1 0 16zm-3.5-9a1.5 1.5 0 1 0 0-3 1.5 1.5 0 0 0 0 3zm7 0a1.5 1.5 0 1 0 0-3 1.5 1.5 0 0 0 0 3zM12 17.5c2.3 0 4.3-1.5 5.1-3.5H6.9c.8 2 2.8 3.5 5.1 3.5z";

function avatar(name, small) {
  const a = el("div", "avatar" + (small ? " small" : ""));
  const clean = name.replace(/^#/, "");
  a.textContent = (clean[0] || "?").toUpperCase();
  let h = 0;
  for (const ch of clean) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  a.classList.add("c" + (h % 8));
  return a;
}

function fmtTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function fmtListTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return fmtTime(ms);
  const diff = (now - d) / 86400000;
  if (diff < 6) return d.toLocaleDateString([], { weekday: "short" });
  return d.toLocaleDateString([], { day: "numeric", month: "short" });
}

function fmtDay(ms) {
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return "Today";
  const y = new Date(now.getTime() - 86400000);
  if (d.toDateString() === y.toDateString()) return "Yesterday";
  return d.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long" });
}

// A timer in words: 3600000 → "1 hour".
function fmtTimer(ms) {
  if (!ms) return "Off";
  const units = [[604800000, "week"], [86400000, "day"], [3600000, "hour"], [60000, "minute"], [1000, "second"]];
  for (const [per, name] of units) {
    if (ms % per === 0) {
      const n = ms / per;
      return n + " " + name + (n === 1 ? "" : "s");
    }
  }
  return Math.round(ms / 1000) + " seconds";
}

function fmtTimerShort(ms) {
  if (!ms) return "";
  const units = [[86400000, "d"], [3600000, "h"], [60000, "m"], [1000, "s"]];
  for (const [per, u] of units) if (ms % per === 0) return ms / per + u;
  return Math.round(ms / 1000) + "s";
}

function fmtSize(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(0) + " KB";
  if (n < 1073741824) return (n / 1048576).toFixed(1) + " MB";
  return (n / 1073741824).toFixed(2) + " GB";
}

let toastTimer = null;
function toast(text, error) {
  const t = $("toast");
  t.textContent = text;
  t.classList.toggle("error", !!error);
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, error ? 6000 : 3000);
}

async function api(path, body) {
  const opts = body === undefined
    ? { credentials: "same-origin" }
    : {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const msg = (data && data.error) || ("request failed (" + r.status + ")");
    throw new Error(msg);
  }
  if (data && data.failures && data.failures.length) toast(data.failures.join("; "), true);
  return data;
}

function q(params) {
  return Object.entries(params).map(([k, v]) => k + "=" + encodeURIComponent(v)).join("&");
}

// ------------------------------------------------------------------ theme

function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  $("set-theme").value = theme || "system";
}

function currentTheme() {
  try { return localStorage.getItem("hushwire-theme") || "system"; } catch (_) { return "system"; }
}

function setTheme(theme) {
  try { localStorage.setItem("hushwire-theme", theme); } catch (_) { /* private mode */ }
  applyTheme(theme);
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : window.matchMedia("(prefers-color-scheme: dark)").matches;
  setTheme(dark ? "light" : "dark");
}

// ------------------------------------------------------------------ conversation list

async function loadState() {
  const s = await api("/api/state");
  state.me = s.me;
  state.conversations = s.conversations;
  $("me-name").textContent = s.me;
  const av = $("me-avatar");
  av.replaceWith(Object.assign(avatar(s.me), { id: "me-avatar" }));
  setOnline(s.online);
  $("set-receipts").checked = !!s.settings.read_receipts;
  $("set-presence").value = s.settings.presence;
  state.blocked = s.settings.blocked || [];
  if ($("dlg-settings").open) renderBlocked();
  renderList();
}

function setOnline(online) {
  state.online = online;
  $("status").classList.toggle("online", online);
  $("status-text").textContent = online ? "Online · end-to-end encrypted" : "Connecting…";
}

function renderList() {
  const list = $("conv-list");
  list.textContent = "";
  $("conv-empty").hidden = state.conversations.length > 0;
  for (const c of state.conversations) {
    const li = el("li", "conv");
    li.dataset.name = c.name;
    li.tabIndex = 0;
    if (c.name === state.current) li.classList.add("active");
    const unread = c.name === state.current ? 0 : c.unread;
    if (unread) li.classList.add("unread");
    li.appendChild(avatar(c.title || c.name));
    const main = el("div", "conv-main");
    const top = el("div", "conv-top");
    top.appendChild(el("span", "conv-name", c.group ? c.title : c.name));
    if (c.request) top.appendChild(el("span", "tag", "Request"));
    if (c.blocked) top.appendChild(el("span", "tag muted", "Blocked"));
    if (c.timer_ms) {
      const tm = el("span", "conv-timer");
      tm.appendChild(icon(ICON_TIMER));
      tm.title = "Disappearing messages: " + fmtTimer(c.timer_ms);
      top.appendChild(tm);
    }
    top.appendChild(el("span", "conv-time", fmtListTime(c.last_at)));
    const bottom = el("div", "conv-bottom");
    let preview = "";
    const typers = typingIn(c.name);
    if (typers.length) preview = typers.join(", ") + " typing…";
    else if (c.preview) {
      const who = c.preview.outgoing ? "You: " : (c.group ? c.preview.from + ": " : "");
      preview = who + c.preview.text;
    }
    bottom.appendChild(el("span", "conv-preview", preview));
    if (unread) bottom.appendChild(el("span", "badge", String(unread)));
    main.append(top, bottom);
    li.appendChild(main);
    li.addEventListener("click", () => openConversation(c.name));
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") openConversation(c.name); });
    list.appendChild(li);
  }
}

// ------------------------------------------------------------------ chat view

async function openConversation(name) {
  if (state.current !== name) {
    state.replyTo = null;
    if (state.editing) cancelEdit();
    setViewOnce(false);
    renderReply();
  }
  state.current = name;
  $("app").classList.add("in-chat");
  $("empty-chat").hidden = true;
  $("chat-head").hidden = false;
  $("composer").hidden = false;
  const conv = state.conversations.find((c) => c.name === name);
  const title = conv ? (conv.group ? conv.title : conv.name) : name;
  $("chat-title").textContent = title;
  $("chat-avatar").replaceWith(Object.assign(avatar(title), { id: "chat-avatar" }));
  renderList();
  await loadTimeline(true);
  $("text").focus();
}

async function loadTimeline(scroll) {
  const name = state.current;
  if (!name) return;
  let t;
  try {
    t = await api("/api/timeline?" + q({ c: name }));
  } catch (e) {
    // A conversation that does not exist yet (a new chat before its first message).
    t = { name, group: name.startsWith("#"), items: [], details: null, me: state.me };
  }
  if (state.current !== name) return;
  state.timeline = t;
  renderHeader();
  renderTimeline(scroll);
  const conv = state.conversations.find((c) => c.name === name);
  if (conv && conv.unread && document.visibilityState === "visible") {
    conv.unread = 0;
    renderList();
    api("/api/read", { conversation: name }).catch(() => {});
  }
}

function renderHeader() {
  const t = state.timeline;
  // A group's members, or the safety number with the contact of a 1:1 chat.
  $("btn-info").hidden = false;
  $("btn-info").title = t.group ? "Group info" : "Safety number";
  $("btn-info").setAttribute("aria-label", $("btn-info").title);
  const timer = $("btn-timer");
  // A timer needs the conversation to exist (after its first message).
  timer.hidden = !(t.items.length || t.group) || t.request || t.blocked;
  timer.classList.toggle("on", !!t.timer_ms);
  $("timer-label").textContent = fmtTimerShort(t.timer_ms);
  timer.title = "Disappearing messages: " + fmtTimer(t.timer_ms);
  renderBars();
  if (t.details) $("chat-title").textContent = t.details.title;
  const typers = typingIn(t.name);
  const sub = $("chat-sub");
  sub.classList.toggle("typing-now", typers.length > 0);
  if (typers.length) sub.textContent = (t.group ? typers.join(", ") + " " : "") + "typing…";
  else if (t.details) sub.textContent = t.details.members.map((m) => m.handle === state.me ? "You" : m.handle).join(", ");
  else sub.textContent = "End-to-end encrypted";
  $("typing").hidden = typers.length === 0;
  $("typing-text").textContent = typers.length ? typers.join(", ") + (typers.length > 1 ? " are" : " is") + " typing…" : "";
}

// A message request or a blocked account: a banner instead of the compose box.
function renderBars() {
  const t = state.timeline;
  const who = t.name;
  $("request-bar").hidden = !t.request || t.blocked;
  $("blocked-bar").hidden = !t.blocked;
  $("composer").hidden = !!(t.request || t.blocked);
  if (t.request) {
    $("request-title").textContent = who + " wants to message you";
    $("request-text").textContent = "They won't know you've seen their messages until you accept. Block them to stop all their messages.";
  }
  if (t.blocked) $("blocked-text").textContent = "You blocked " + who + ". You won't get their messages.";
  const changed = !t.group && keyChanged.has(who);
  $("key-bar").hidden = !changed;
  if (changed) {
    $("key-title").textContent = who + "'s account key changed";
    $("key-text").textContent = "Messages from and to " + who + " are held back until you compare safety numbers with them (in person or on a call) and accept the new key.";
  }
  if ((t.request || t.blocked) && (state.replyTo || state.editing)) {
    state.replyTo = null;
    state.editing = null;
    renderReply();
  }
  if (t.request || t.blocked) $("reply-bar").hidden = true;
}

// Contacts whose account key changed since it was first seen (told by the client's
// "identity" event): their chat shows a banner until the new key is accepted.
const keyChanged = new Set();

async function openSafety(handle) {
  $("safety-title").textContent = "Safety number with " + handle;
  $("safety-digits").textContent = "";
  $("safety-state").textContent = "Loading…";
  $("safety-mark").hidden = true;
  $("safety-trust").hidden = true;
  $("safety-mark").dataset.handle = handle;
  $("safety-trust").dataset.handle = handle;
  if (!$("dlg-safety").open) $("dlg-safety").showModal();
  await loadSafety(handle, false);
}

async function loadSafety(handle, mark) {
  try {
    const r = await api("/api/safety", { handle, mark });
    if (r.changed) {
      keyChanged.add(handle);
      $("safety-digits").textContent = "";
      $("safety-digits").hidden = true;
      $("safety-state").textContent = handle + "'s account key changed since you first saw it: they may have a new phone, or someone may be posing as them. Compare safety numbers with " + handle + " after you accept, and mark them verified if they match.";
      $("safety-trust").hidden = false;
      $("safety-mark").hidden = true;
    } else {
      keyChanged.delete(handle);
      $("safety-digits").hidden = false;
      const groups = r.digits.split(" ");
      const rows = [];
      for (let i = 0; i < groups.length; i += 4) rows.push(groups.slice(i, i + 4).join(" "));
      $("safety-digits").textContent = rows.join("\n");
      $("safety-state").textContent = r.verified
        ? "Verified: you compared these numbers with " + handle + "."
        : "Compare these numbers with the ones on " + handle + "'s screen. If they match, your chat is end-to-end encrypted with no one in between.";
      $("safety-mark").hidden = r.verified;
      $("safety-trust").hidden = true;
    }
  } catch (e) {
    $("safety-state").textContent = e.message;
  }
  if (state.timeline) renderBars();
}

async function trustKey(handle) {
  try {
    await api("/api/trust", { handle });
    toast("Accepted " + handle + "'s new key");
  } catch (e) { toast(e.message, true); }
  await loadSafety(handle, false);
}

async function contact(action, handle) {
  const labels = { accept: "Accepted", block: "Blocked", unblock: "Unblocked", decline: "Request deleted" };
  if (action === "block") {
    const ok = await ask("Block " + handle + "?", "Blocked accounts can't message you or see your presence. You can unblock them in Settings.", "Block");
    if (!ok) return;
  }
  if (action === "decline") {
    const ok = await ask("Delete this request?", "Its messages are deleted from this device. If " + handle + " writes again, it is a new request.", "Delete");
    if (!ok) return;
  }
  try {
    await api("/api/contact", { handle, action });
    toast(labels[action]);
    if (action === "decline" && state.current === handle) closeChat();
  } catch (e) { toast(e.message, true); }
  await refresh(false);
  if ($("dlg-settings").open) renderBlocked();
}

function closeChat() {
  $("app").classList.remove("in-chat");
  state.current = null;
  state.timeline = null;
  $("empty-chat").hidden = false;
  $("chat-head").hidden = true;
  $("composer").hidden = true;
  $("request-bar").hidden = true;
  $("blocked-bar").hidden = true;
  $("key-bar").hidden = true;
  $("reply-bar").hidden = true;
  $("messages").textContent = "";
  renderList();
}

function showTimerMenu() {
  const t = state.timeline;
  if (!t) return;
  const r = $("btn-timer").getBoundingClientRect();
  const current = fmtTimerShort(t.timer_ms) || "off";
  const entries = TIMERS.map(([value, label]) => [label, null, () => setTimer(value), { id: "timer-" + value, checked: value === current }]);
  showMenu(entries, r.left + r.width / 2 - 60, r.bottom + 6, "timer-menu");
  const head = el("div", "menu-head", "Disappearing messages");
  menu.insertBefore(head, menu.firstChild);
}

async function setTimer(value) {
  const conversation = state.current;
  try {
    const r = await api("/api/timer", { conversation, timer: value });
    toast(r.timer_ms ? "Messages now disappear after " + fmtTimer(r.timer_ms) : "Disappearing messages off");
  } catch (e) { toast(e.message, true); }
  await refresh(false);
}

function tickFor(stateName) {
  switch (stateName) {
    case "queued": return ["🕓", "tick queued", "Waiting to send"];
    case "sent": return ["✓", "tick", "Sent"];
    case "delivered": return ["✓✓", "tick", "Delivered"];
    case "read": return ["✓✓", "tick read", "Read"];
    case "failed": return ["!", "tick failed", "Not sent"];
    default: return null;
  }
}

function renderTimeline(scroll) {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  box.textContent = "";
  const t = state.timeline;
  let lastDay = "";
  let lastFrom = null;
  for (const item of t.items) {
    const day = new Date(item.at).toDateString();
    if (day !== lastDay) {
      box.appendChild(el("div", "day", fmtDay(item.at)));
      lastDay = day;
      lastFrom = null;
    }
    if (item.kind === "event") {
      box.appendChild(el("div", "event", item.text));
      lastFrom = null;
      continue;
    }
    const first = lastFrom !== item.from;
    lastFrom = item.from;
    box.appendChild(renderMessage(item, t, first));
    if (item.reactions && item.reactions.length) box.appendChild(renderReactions(item));
  }
  if (t.timer_ms) {
    const note = el("div", "event timer-note");
    note.appendChild(icon(ICON_TIMER));
    note.appendChild(el("span", "", "Disappearing messages are on: new messages vanish " + fmtTimer(t.timer_ms) + " after they're sent."));
    box.appendChild(note);
  }
  if (scroll || atBottom) box.scrollTop = box.scrollHeight;
}

function renderMessage(m, t, first) {
  const row = el("div", "row " + (m.outgoing ? "out" : "in") + (first ? " first" : ""));
  row.dataset.id = m.id;
  const bubble = el("div", "bubble");
  if (t.group && !m.outgoing && first) bubble.appendChild(el("div", "sender", m.from));
  if (m.reply) {
    const qd = el("div", "quote");
    qd.appendChild(el("div", "quote-from", m.reply.from === state.me ? "You" : (m.reply.from || "Message")));
    qd.appendChild(el("div", "quote-text", m.reply.text || "(not on this device)"));
    qd.addEventListener("click", () => {
      const target = document.querySelector('.row[data-id="' + CSS.escape(m.reply.id) + '"]');
      if (target) target.scrollIntoView({ behavior: "smooth", block: "center" });
    });
    bubble.appendChild(qd);
  }
  if (m.view_once) {
    bubble.classList.add("once-bubble");
    bubble.appendChild(renderViewOnce(m, t));
  } else {
    if (m.kind === "attachment") bubble.appendChild(renderAttachment(m, t));
    if (m.text) bubble.appendChild(el("span", "text", m.text));
  }
  const meta = el("span", "meta");
  if (m.expires_at) {
    const clock = el("span", "expires");
    clock.appendChild(icon(ICON_TIMER));
    clock.title = "Disappears " + new Date(m.expires_at).toLocaleString();
    meta.appendChild(clock);
  }
  if (m.edited) meta.appendChild(el("span", "edited", "edited"));
  meta.appendChild(el("span", "", fmtTime(m.at)));
  if (m.outgoing) {
    const tick = tickFor(m.state);
    if (tick) {
      const s = el("span", tick[1], tick[0]);
      s.title = tick[2];
      meta.appendChild(s);
    }
  }
  bubble.appendChild(meta);
  row.appendChild(bubble);
  const actions = el("div", "msg-actions");
  const react = el("button", "icon-btn");
  react.type = "button";
  react.title = "React";
  react.setAttribute("aria-label", "React");
  react.classList.add("react-btn");
  react.appendChild(icon(ICON_SMILE));
  react.addEventListener("click", (e) => { e.stopPropagation(); showPicker(react, m); });
  const reply = el("button", "icon-btn");
  reply.type = "button";
  reply.title = "Reply";
  reply.setAttribute("aria-label", "Reply");
  reply.classList.add("reply-btn");
  reply.appendChild(icon(ICON_REPLY));
  reply.addEventListener("click", () => startReply(m));
  const more = el("button", "icon-btn more-btn");
  more.type = "button";
  more.title = "More";
  more.setAttribute("aria-label", "More actions");
  more.setAttribute("aria-haspopup", "menu");
  more.appendChild(icon(ICON_MORE));
  more.addEventListener("click", (e) => {
    e.stopPropagation();
    const r = more.getBoundingClientRect();
    showMessageMenu(m, r.left + r.width / 2, r.bottom + 4);
  });
  actions.append(react, reply, more);
  row.appendChild(actions);
  row.addEventListener("dblclick", () => startReply(m));
  row.addEventListener("contextmenu", (e) => {
    e.preventDefault();
    showMessageMenu(m, e.clientX, e.clientY);
  });
  return row;
}

function canEdit(m) {
  return m.outgoing && m.kind === "message" && !m.view_once && m.state !== "failed";
}

// A small floating menu of [label, icon, action, danger] entries at (x, y).
let menu = null;
function closeMenu() {
  if (menu) { menu.remove(); menu = null; }
}

function showMenu(entries, x, y, cls) {
  closeMenu();
  closePicker();
  menu = el("div", "menu" + (cls ? " " + cls : ""));
  menu.setAttribute("role", "menu");
  for (const [label, path, action, extra] of entries) {
    const b = el("button", "menu-item" + (extra && extra.danger ? " danger" : "") + (extra && extra.checked ? " checked" : ""));
    b.type = "button";
    b.setAttribute("role", "menuitem");
    if (extra && extra.id) b.dataset.action = extra.id;
    if (path) b.appendChild(icon(path));
    b.appendChild(el("span", "", label));
    b.addEventListener("click", (e) => { e.stopPropagation(); closeMenu(); action(); });
    menu.appendChild(b);
  }
  document.body.appendChild(menu);
  const w = menu.offsetWidth;
  const h = menu.offsetHeight;
  menu.style.left = Math.max(8, Math.min(window.innerWidth - w - 8, x - w / 2)) + "px";
  menu.style.top = Math.max(8, Math.min(window.innerHeight - h - 8, y)) + "px";
  const first = menu.querySelector("button");
  if (first) first.focus();
}

function showMessageMenu(m, x, y) {
  const entries = [];
  if (!m.view_once || m.outgoing) entries.push(["Reply", ICON_REPLY, () => startReply(m), { id: "reply" }]);
  entries.push(["React", ICON_SMILE, () => {
    const row = document.querySelector('.row[data-id="' + CSS.escape(m.id) + '"] .react-btn');
    if (row) showPicker(row, m);
  }, { id: "react" }]);
  if (canEdit(m)) entries.push(["Edit", ICON_EDIT, () => startEdit(m), { id: "edit" }]);
  entries.push([m.outgoing ? "Delete for everyone" : "Delete for me", ICON_TRASH, () => deleteMessage(m), { id: "delete", danger: true }]);
  showMenu(entries, x, y);
}

// A confirmation in the app's own dialog; resolves to true or false.
function ask(title, text, okLabel) {
  return new Promise((resolve) => {
    const d = $("dlg-confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel || "OK";
    const done = (v) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      d.onclose = null;
      if (d.open) d.close();
      resolve(v);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    d.onclose = () => done(false);
    d.showModal();
    $("confirm-cancel").focus();
  });
}

async function deleteMessage(m) {
  const everyone = m.outgoing;
  const ok = await ask(
    everyone ? "Delete for everyone?" : "Delete for me?",
    everyone
      ? "This message will be deleted for everyone in this chat."
      : "This message will be deleted from this device. Others still have it.",
    "Delete",
  );
  if (!ok) return;
  try {
    await api("/api/delete", { id: m.id });
    if (state.replyTo && state.replyTo.id === m.id) { state.replyTo = null; renderReply(); }
    if (state.editing && state.editing.id === m.id) cancelEdit();
    toast("Message deleted");
  } catch (e) { toast(e.message, true); }
  await refresh(false);
}

function startEdit(m) {
  state.replyTo = null;
  state.editing = { id: m.id, text: m.text };
  renderReply();
  const box = $("text");
  box.value = m.text;
  autosize();
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

function cancelEdit() {
  if (!state.editing) return;
  state.editing = null;
  $("text").value = "";
  autosize();
  renderReply();
}

function renderViewOnce(m, t) {
  const what = m.kind === "attachment" ? (m.attachment && m.attachment.image ? "Photo" : "File") : "Message";
  const box = el("div", "once");
  const badge = el("span", "once-icon");
  badge.appendChild(icon(ICON_ONCE));
  if (m.outgoing) {
    box.appendChild(badge);
    box.appendChild(el("span", "once-label", m.viewed ? "View once · Opened" : "View once · " + what));
    if (m.viewed) box.classList.add("done");
    return box;
  }
  if (m.opened) {
    box.classList.add("done");
    box.appendChild(badge);
    box.appendChild(el("span", "once-label", "Opened"));
    return box;
  }
  const b = el("button", "once-open");
  b.type = "button";
  b.appendChild(badge);
  b.appendChild(el("span", "once-label", "View once — open " + what.toLowerCase()));
  b.addEventListener("click", () => openViewOnce(m, t, b));
  box.appendChild(b);
  return box;
}

let onceUrl = null;
async function openViewOnce(m, t, button) {
  button.disabled = true;
  button.classList.add("busy");
  let r;
  try {
    r = await fetch("/api/view-once", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ conversation: t.name, id: m.id }),
    });
  } catch (e) {
    button.disabled = false;
    button.classList.remove("busy");
    toast(e.message, true);
    return;
  }
  const type = r.headers.get("Content-Type") || "";
  if (!r.ok) {
    let msg = "cannot open it (" + r.status + ")";
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    toast(msg, true);
    await refresh(false);
    return;
  }
  const dec = (h) => { try { return decodeURIComponent(r.headers.get(h) || ""); } catch (_) { return ""; } };
  const img = $("once-image");
  const file = $("once-file");
  const textBox = $("once-text");
  img.hidden = true;
  file.hidden = true;
  textBox.hidden = true;
  if (onceUrl) { URL.revokeObjectURL(onceUrl); onceUrl = null; }
  let from = m.from;
  let caption = "";
  if (type.startsWith("application/json")) {
    const v = await r.json();
    from = v.from || from;
    caption = v.text || "";
  } else {
    const blob = await r.blob();
    onceUrl = URL.createObjectURL(blob);
    from = dec("X-Hushwire-From") || from;
    caption = dec("X-Hushwire-Text");
    if (type.startsWith("image/")) {
      img.src = onceUrl;
      img.hidden = false;
    } else {
      const name = dec("X-Hushwire-Name") || "file";
      const a = $("once-download");
      a.href = onceUrl;
      a.download = name;
      $("once-file-name").textContent = name + " · " + fmtSize(blob.size);
      file.hidden = false;
    }
  }
  if (caption) { textBox.textContent = caption; textBox.hidden = false; }
  $("once-from").textContent = from;
  $("once-from-avatar").replaceWith(Object.assign(avatar(from, true), { id: "once-from-avatar" }));
  $("dlg-once").showModal();
  await refresh(false);
}

function closeViewOnce() {
  const d = $("dlg-once");
  if (d.open) d.close();
  // Drop the picture at once: the dialog's close event (Escape) comes a task later.
  onViewOnceClosed();
}

function onViewOnceClosed() {
  $("once-image").removeAttribute("src");
  $("once-download").removeAttribute("href");
  $("once-text").textContent = "";
  if (onceUrl) { URL.revokeObjectURL(onceUrl); onceUrl = null; }
}

function renderAttachment(m, t) {
  const a = m.attachment;
  const src = q({ c: t.name, id: m.id });
  if (a.image && (a.thumb || a.ready)) {
    const wrap = el("a", "media");
    wrap.href = "#";
    const img = el("img");
    img.alt = a.name;
    img.loading = "lazy";
    img.src = a.ready ? "/api/media?" + src : "/api/thumb?" + src;
    if (a.width && a.height) {
      img.width = Math.min(320, a.width);
      img.height = Math.round(img.width * a.height / a.width);
    }
    img.addEventListener("error", () => {
      if (a.thumb && !img.src.includes("/api/thumb")) img.src = "/api/thumb?" + src;
    });
    wrap.appendChild(img);
    wrap.addEventListener("click", (e) => {
      e.preventDefault();
      $("big-image").src = a.ready ? "/api/media?" + src : "/api/thumb?" + src;
      $("big-image").alt = a.name;
      $("dlg-image").showModal();
    });
    return wrap;
  }
  const f = el("a", "file");
  if (a.ready) {
    f.href = "/api/media?" + src;
    f.download = a.name;
  }
  f.appendChild(el("div", "file-icon", "📄"));
  const info = el("div");
  info.appendChild(el("div", "file-name", a.name));
  const status = a.error ? "failed: " + a.error : (a.ready ? fmtSize(a.size) : fmtSize(a.size) + " · downloading…");
  info.appendChild(el("div", "file-size", status));
  f.appendChild(info);
  return f;
}

function renderReactions(m) {
  const line = el("div", "reactions-row " + (m.outgoing ? "out" : "in"));
  const box = el("div", "reactions");
  for (const r of m.reactions) {
    const b = el("button", "reaction" + (r.mine ? " mine" : ""), r.emoji + (r.from.length > 1 ? " " + r.from.length : ""));
    b.type = "button";
    b.title = r.from.join(", ");
    b.addEventListener("click", () => react(m, r.mine ? "" : r.emoji));
    box.appendChild(b);
  }
  line.appendChild(box);
  return line;
}

let picker = null;
function closePicker() {
  if (picker) { picker.remove(); picker = null; }
}

function showPicker(anchor, m) {
  closePicker();
  picker = el("div", "picker");
  for (const e of REACTIONS) {
    const b = el("button", "", e);
    b.type = "button";
    b.title = "React " + e;
    b.addEventListener("click", () => { closePicker(); react(m, e); });
    picker.appendChild(b);
  }
  document.body.appendChild(picker);
  const r = anchor.getBoundingClientRect();
  const w = picker.offsetWidth;
  const left = Math.max(8, Math.min(window.innerWidth - w - 8, r.left + r.width / 2 - w / 2));
  picker.style.left = left + "px";
  picker.style.top = Math.max(8, r.top - 52) + "px";
}

async function react(m, emoji) {
  try {
    await api("/api/react", { id: m.id, emoji });
    await loadTimeline(false);
  } catch (e) { toast(e.message, true); }
}

function startReply(m) {
  if (state.editing) cancelEdit();
  state.replyTo = { id: m.id, from: m.from, text: m.kind === "attachment" ? "📎 " + m.attachment.name : m.text };
  renderReply();
  $("text").focus();
}

function renderReply() {
  const r = state.replyTo;
  const ed = state.editing;
  $("reply-bar").hidden = !r && !ed;
  $("reply-bar").classList.toggle("editing", !!ed);
  $("reply-cancel").title = ed ? "Cancel editing" : "Cancel reply";
  $("text").placeholder = ed ? "Edit message" : "Message";
  if (ed) {
    $("reply-from").textContent = "Edit message";
    $("reply-text").textContent = ed.text;
    return;
  }
  if (!r) return;
  $("reply-from").textContent = "Replying to " + (r.from === state.me ? "yourself" : r.from);
  $("reply-text").textContent = r.text;
}

// ------------------------------------------------------------------ composing

async function saveEdit() {
  const box = $("text");
  const text = box.value;
  const ed = state.editing;
  if (!ed) return;
  if (!text.trim()) { toast("The text is empty: delete the message instead", true); return; }
  if (text === ed.text) { cancelEdit(); return; }
  try {
    const r = await api("/api/edit", { id: ed.id, text });
    state.editing = null;
    box.value = "";
    autosize();
    renderReply();
    if (r.pending) toast("Queued: it goes out when the server is reachable");
  } catch (e) { toast(e.message, true); }
  await refresh(false);
}

async function sendText() {
  if (state.editing) return saveEdit();
  const box = $("text");
  const text = box.value;
  if (!text.trim() || !state.current) return;
  const body = { to: state.current, text };
  if (state.replyTo) body.reply_to = state.replyTo.id;
  box.value = "";
  autosize();
  state.replyTo = null;
  renderReply();
  stopTyping();
  try {
    const r = await api("/api/send", body);
    if (r.pending) toast("Queued: it goes out when the server is reachable");
  } catch (e) {
    box.value = text;
    toast(e.message, true);
  }
  await refresh(true);
}

function autosize() {
  const box = $("text");
  box.style.height = "auto";
  box.style.height = Math.min(160, box.scrollHeight + 2) + "px";
}

function onInput() {
  autosize();
  if (!state.current) return;
  const now = Date.now();
  if ($("text").value && now - state.typingSent > 4000) {
    state.typingSent = now;
    api("/api/typing", { conversation: state.current, typing: true }).catch(() => {});
  }
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(stopTyping, 5000);
}

function stopTyping() {
  clearTimeout(state.typingTimer);
  if (state.typingSent && state.current) {
    state.typingSent = 0;
    api("/api/typing", { conversation: state.current, typing: false }).catch(() => {});
  }
}

function uploadFile(file, viewOnce) {
  const to = state.current;
  if (!to) return Promise.resolve();
  state.uploads += 1;
  $("upload").hidden = false;
  $("upload-name").textContent = file.name;
  $("upload-pct").textContent = "0%";
  $("upload-fill").style.width = "0%";
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const params = { to, name: file.name };
    if (viewOnce) params.view_once = "true";
    xhr.open("POST", "/api/upload?" + q(params));
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      // The first half: into the local process; the second: encrypted to the server.
      const pct = Math.round((e.loaded / e.total) * 50);
      $("upload-fill").style.width = pct + "%";
      $("upload-pct").textContent = pct + "%";
    });
    xhr.upload.addEventListener("load", () => { $("upload-pct").textContent = "Encrypting…"; });
    xhr.addEventListener("loadend", async () => {
      state.uploads -= 1;
      if (state.uploads === 0) $("upload").hidden = true;
      if (xhr.status !== 200) {
        let msg = "upload failed (" + xhr.status + ")";
        try { msg = JSON.parse(xhr.responseText).error || msg; } catch (_) { /* not JSON */ }
        toast(msg, true);
      }
      await refresh(true);
      resolve();
    });
    xhr.send(file);
  });
}

async function uploadFiles(files) {
  // The view-once switch applies to the files picked while it is on, then turns off.
  const once = state.viewOnce;
  setViewOnce(false);
  for (const f of files) await uploadFile(f, once);
}

function setViewOnce(on) {
  state.viewOnce = on;
  const b = $("btn-view-once");
  b.classList.toggle("on", on);
  b.setAttribute("aria-pressed", on ? "true" : "false");
  b.title = on ? "View once: on (the next file can be opened once)" : "View once: off";
}

function onTransfer(ev) {
  if (!ev.upload || state.uploads === 0 || !ev.total) return;
  const pct = 50 + Math.round((ev.done / ev.total) * 50);
  $("upload-fill").style.width = pct + "%";
  $("upload-pct").textContent = pct + "%";
}

// ------------------------------------------------------------------ typing (received)

function typingIn(conversation) {
  const m = state.typing.get(conversation);
  if (!m) return [];
  const now = Date.now();
  return [...m.entries()].filter(([, exp]) => exp > now).map(([from]) => from);
}

function onTyping(ev) {
  let m = state.typing.get(ev.conversation);
  if (!m) { m = new Map(); state.typing.set(ev.conversation, m); }
  if (ev.typing) m.set(ev.from, Date.now() + 8000);
  else m.delete(ev.from);
  renderList();
  if (state.timeline && state.timeline.name === ev.conversation) renderHeader();
  setTimeout(() => {
    renderList();
    if (state.timeline) renderHeader();
  }, 8100);
}

// ------------------------------------------------------------------ groups

async function createGroup(e) {
  e.preventDefault();
  const title = $("group-title").value.trim();
  const members = $("group-members").value.split(/[\s,]+/).filter(Boolean);
  if (!title || !members.length) return;
  try {
    const r = await api("/api/groups", { title, members });
    $("dlg-group").close();
    $("group-title").value = "";
    $("group-members").value = "";
    await loadState();
    await openConversation(r.name);
    toast("Group created");
  } catch (err) { toast(err.message, true); }
}

function openInfo() {
  const t = state.timeline;
  if (!t || !t.details) return;
  const d = t.details;
  $("info-title").textContent = d.title;
  $("rename-title").value = d.title;
  const list = $("info-members");
  list.textContent = "";
  for (const m of d.members) {
    const li = el("li");
    li.appendChild(avatar(m.handle, true));
    const name = el("span", "grow", m.handle === state.me ? m.handle + " (you)" : m.handle);
    li.appendChild(name);
    if (m.admin) li.appendChild(el("span", "role", "admin"));
    if (d.admin && m.handle !== state.me) {
      const rm = el("button", "link-btn", "Remove");
      rm.type = "button";
      rm.addEventListener("click", () => groupOp("remove", { handles: [m.handle] }));
      li.appendChild(rm);
    }
    list.appendChild(li);
  }
  $("dlg-info").showModal();
}

async function groupOp(op, extra) {
  const group = state.current;
  try {
    await api("/api/group", Object.assign({ group, op }, extra || {}));
    toast(op === "leave" ? "You left the group" : "Done");
    await refresh(false);
    if ($("dlg-info").open) openInfoRefresh();
  } catch (e) { toast(e.message, true); }
}

function openInfoRefresh() {
  $("dlg-info").close();
  openInfo();
}

// ------------------------------------------------------------------ devices, settings

async function startLink() {
  $("link-qr").textContent = "";
  $("link-code").value = "";
  $("link-status").textContent = "Opening a link session…";
  $("dlg-link").showModal();
  try {
    const r = await api("/api/link", {});
    const img = el("img");
    img.alt = "QR code of the link code";
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(r.svg);
    $("link-qr").appendChild(img);
    $("link-code").value = r.code;
    $("link-status").textContent = "Waiting for the new device (up to " + Math.round(r.timeout_secs / 60) + " minutes)…";
  } catch (e) {
    $("link-status").textContent = e.message;
  }
}

function onLink(ev) {
  $("link-code").value = "";
  $("link-qr").textContent = "";
  const msg = ev.ok
    ? "Linked “" + ev.name + "” (device " + ev.device + "); added to " + ev.conversations + " conversation(s)."
    : "Linking ended: " + ev.error;
  $("link-status").textContent = msg;
  toast(msg, !ev.ok);
}

function renderBlocked() {
  const list = $("blocked-list");
  list.textContent = "";
  const blocked = state.blocked || [];
  $("blocked-none").hidden = blocked.length > 0;
  for (const h of blocked) {
    const li = el("li");
    li.appendChild(avatar(h, true));
    li.appendChild(el("span", "grow", h));
    const b = el("button", "pill ghost small unblock-btn", "Unblock");
    b.type = "button";
    b.dataset.handle = h;
    b.addEventListener("click", () => contact("unblock", h));
    li.appendChild(b);
    list.appendChild(li);
  }
}

async function openSettings() {
  renderBlocked();
  $("dlg-settings").showModal();
  const list = $("devices");
  list.textContent = "";
  list.appendChild(el("li", "role", "Loading…"));
  try {
    const r = await api("/api/devices");
    list.textContent = "";
    for (const d of r.devices) {
      const li = el("li");
      li.appendChild(el("span", "grow", d.name + (d.current ? " (this device)" : "")));
      li.appendChild(el("span", "role", "#" + d.id));
      list.appendChild(li);
    }
  } catch (e) {
    list.textContent = "";
    list.appendChild(el("li", "role", e.message));
  }
}

async function saveSettings(patch) {
  try { await api("/api/settings", patch); toast("Saved"); } catch (e) { toast(e.message, true); }
}

// ------------------------------------------------------------------ live updates

let refreshTimer = null;
let refreshScroll = false;
function refresh(scroll) {
  refreshScroll = refreshScroll || scroll;
  clearTimeout(refreshTimer);
  return new Promise((resolve) => {
    refreshTimer = setTimeout(async () => {
      const s = refreshScroll;
      refreshScroll = false;
      try {
        await loadState();
        if (state.current) await loadTimeline(s);
      } catch (e) { toast(e.message, true); }
      resolve();
    }, 60);
  });
}

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.addEventListener("message", (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    switch (ev.type) {
      case "hello":
      case "connection": setOnline(ev.online); if (ev.type === "hello") refresh(false); break;
      case "typing": onTyping(ev); break;
      case "transfer": onTransfer(ev); break;
      case "link": onLink(ev); refresh(false); break;
      case "presence": break;
      case "identity":
        keyChanged.add(ev.handle);
        toast(ev.handle + "'s account key changed: compare safety numbers", true);
        refresh(false);
        break;
      case "message": {
        const m = state.typing.get(ev.conversation);
        if (m) m.delete(ev.from);
        refresh(ev.conversation === state.current);
        break;
      }
      default: refresh(false);
    }
  });
  ws.addEventListener("close", () => {
    setOnline(false);
    setTimeout(connect, 1500);
  });
}

// ------------------------------------------------------------------ wiring

function init() {
  applyTheme(currentTheme());
  $("btn-theme").addEventListener("click", toggleTheme);
  $("set-theme").addEventListener("change", (e) => setTheme(e.target.value));
  $("set-receipts").addEventListener("change", (e) => saveSettings({ read_receipts: e.target.checked }));
  $("set-presence").addEventListener("change", (e) => saveSettings({ presence: e.target.value }));
  $("btn-settings").addEventListener("click", openSettings);
  $("settings-close").addEventListener("click", () => $("dlg-settings").close());
  $("btn-link").addEventListener("click", startLink);
  $("link-close").addEventListener("click", () => $("dlg-link").close());
  $("link-copy").addEventListener("click", () => {
    const v = $("link-code").value;
    if (v && navigator.clipboard) navigator.clipboard.writeText(v).then(() => toast("Copied"), () => {});
  });
  $("btn-new-group").addEventListener("click", () => { $("dlg-group").showModal(); $("group-title").focus(); });
  $("group-cancel").addEventListener("click", () => $("dlg-group").close());
  $("group-form").addEventListener("submit", createGroup);
  $("btn-info").addEventListener("click", () => {
    if (state.timeline && !state.timeline.group) openSafety(state.current);
    else openInfo();
  });
  $("btn-key-check").addEventListener("click", () => openSafety(state.current));
  $("safety-close").addEventListener("click", () => $("dlg-safety").close());
  $("safety-mark").addEventListener("click", (e) => loadSafety(e.target.dataset.handle, true));
  $("safety-trust").addEventListener("click", (e) => trustKey(e.target.dataset.handle));
  $("info-close").addEventListener("click", () => $("dlg-info").close());
  $("btn-leave").addEventListener("click", () => {
    if (confirm("Leave this group?")) { $("dlg-info").close(); groupOp("leave"); }
  });
  $("rename-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const title = $("rename-title").value.trim();
    if (title) groupOp("rename", { title });
  });
  $("add-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const handles = $("add-handles").value.split(/[\s,]+/).filter(Boolean);
    if (handles.length) { $("add-handles").value = ""; groupOp("add", { handles }); }
  });
  $("dlg-image").addEventListener("click", () => $("dlg-image").close());
  $("new-chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const h = $("new-chat").value.trim().replace(/^@/, "");
    if (!h) return;
    $("new-chat").value = "";
    openConversation(h);
  });
  $("btn-back").addEventListener("click", () => {
    $("app").classList.remove("in-chat");
    state.current = null;
    renderList();
  });
  setViewOnce(false);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); sendText(); });
  $("text").addEventListener("input", onInput);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendText(); }
    if (e.key === "Escape" && state.editing) { e.preventDefault(); cancelEdit(); }
    if (e.key === "Escape" && state.replyTo) { state.replyTo = null; renderReply(); }
    if (e.key === "ArrowUp" && !$("text").value && state.timeline) {
      // Up on an empty box edits the last own text, as in other messengers.
      const own = state.timeline.items.filter((m) => m.kind === "message" && canEdit(m));
      if (own.length) { e.preventDefault(); startEdit(own[own.length - 1]); }
    }
  });
  $("reply-cancel").addEventListener("click", () => {
    if (state.editing) cancelEdit();
    state.replyTo = null;
    renderReply();
  });
  $("btn-view-once").addEventListener("click", () => setViewOnce(!state.viewOnce));
  $("btn-timer").addEventListener("click", (e) => { e.stopPropagation(); showTimerMenu(); });
  $("btn-accept").addEventListener("click", () => contact("accept", state.current));
  $("btn-block").addEventListener("click", () => contact("block", state.current));
  $("btn-decline").addEventListener("click", () => contact("decline", state.current));
  $("btn-unblock").addEventListener("click", () => contact("unblock", state.current));
  $("once-close").addEventListener("click", closeViewOnce);
  $("dlg-once").addEventListener("close", onViewOnceClosed);
  $("btn-attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    uploadFiles(files);
  });
  const chat = $("chat");
  let depth = 0;
  chat.addEventListener("dragenter", (e) => {
    if (!state.current || !e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
    e.preventDefault();
    depth += 1;
    $("drop").hidden = false;
  });
  chat.addEventListener("dragover", (e) => { if (state.current) e.preventDefault(); });
  chat.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("drop").hidden = true; });
  chat.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    if (state.current && e.dataTransfer && e.dataTransfer.files.length) uploadFiles([...e.dataTransfer.files]);
  });
  document.addEventListener("click", (e) => {
    if (picker && !picker.contains(e.target)) closePicker();
    if (menu && !menu.contains(e.target)) closeMenu();
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") { closeMenu(); closePicker(); } });
  $("messages").addEventListener("scroll", closeMenu);
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") refresh(false); });
  loadState().catch((e) => toast(e.message, true));
  connect();
}

document.addEventListener("DOMContentLoaded", init);
