//! XMPP client for the ejabberd comparison: TCP stream, SASL PLAIN, resource binding,
//! initial presence, `<message>` stanzas, XEP-0198 stream-management acks where the
//! server offers them. No TLS (loopback; the Hushwire side pays for TLS).
//!
//! [`Framer`] cuts the incoming byte stream into top-level stanzas with quick-xml and is
//! pure (unit-tested below); [`XmppConn`] does the I/O.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use quick_xml::escape::{escape, resolve_predefined_entity, unescape};
use quick_xml::events::{BytesStart, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Delivery, PeerCmd};
use crate::devices::Shared;
use crate::sched::{self, TextStamp};

/// Largest stanza (or unparsed input) accepted before the connection is given up.
const MAX_BUFFERED: usize = 1 << 20;
/// Commands written per flush at most.
const MAX_COALESCE: usize = 64;
/// Most elements handled per read before writing replies (bounded inner loop).
const MAX_ELEMENTS_PER_READ: usize = 1 << 16;
const NS_SM: &str = "urn:xmpp:sm:3";

/// One parsed XML element (namespaces left as attributes; names without prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name (`features` for `<stream:features>`).
    pub name: String,
    /// Attributes as written (`xmlns`, `xml:lang`, …), values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// Concatenated character data directly inside this element.
    pub text: String,
}

impl Element {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// What the framer cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlEvent {
    /// `<stream:stream …>` (the server's stream header, also after a restart).
    StreamOpen(Element),
    /// `</stream:stream>`.
    StreamEnd,
    /// A complete top-level element (stanza or stream-level element).
    Element(Element),
}

/// Cuts an XMPP byte stream into [`XmlEvent`]s. Incomplete input stays buffered until
/// the rest arrives.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

fn element_of(e: &BytesStart<'_>) -> Result<Element> {
    let name = std::str::from_utf8(e.local_name().as_ref())
        .context("element name is not UTF-8")?
        .to_string();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| anyhow!("bad attribute: {err}"))?;
        let key = std::str::from_utf8(a.key.as_ref())
            .context("attribute name is not UTF-8")?
            .to_string();
        let raw = std::str::from_utf8(&a.value).context("attribute value is not UTF-8")?;
        let value = unescape(raw).map_err(|err| anyhow!("bad attribute value: {err}"))?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Element {
        name,
        attrs,
        ..Element::default()
    })
}

fn is_stream_tag(qname: &[u8]) -> bool {
    qname == b"stream:stream"
}

impl Framer {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes waiting for the rest of an element.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, `None` if more input is needed. Errors on malformed
    /// input that cannot become valid (or an element larger than the limit).
    pub fn next_event(&mut self) -> Result<Option<XmlEvent>> {
        // The closing stream tag has no start tag in this buffer, which quick-xml reports
        // as ill-formed: recognise it here.
        let ws = self
            .buf
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        if let Some(rest) = self.buf.get(ws..)
            && let Some(after) = rest.strip_prefix(b"</stream:stream")
        {
            if let Some(gt) = after.iter().position(|&b| b == b'>') {
                let used = ws + b"</stream:stream".len() + gt + 1;
                self.buf.drain(..used);
                return Ok(Some(XmlEvent::StreamEnd));
            }
            return Ok(None);
        }
        let mut reader = quick_xml::Reader::from_reader(self.buf.as_slice());
        reader.config_mut().check_end_names = false;
        let mut stack: Vec<Element> = Vec::new();
        // Bytes at the front that hold nothing (whitespace keep-alives, declarations).
        let mut skippable = 0usize;
        // Bounded: every iteration consumes input, and the input is finite.
        let outcome = loop {
            let event = match reader.read_event() {
                Ok(ev) => ev,
                // Most often a tag cut in the middle: wait for more bytes (bounded by
                // MAX_BUFFERED below).
                Err(_) => break None,
            };
            match event {
                Event::Eof => break None,
                Event::Start(e) if stack.is_empty() && is_stream_tag(e.name().as_ref()) => {
                    break Some(XmlEvent::StreamOpen(element_of(&e)?));
                }
                Event::End(e) if stack.is_empty() && is_stream_tag(e.name().as_ref()) => {
                    break Some(XmlEvent::StreamEnd);
                }
                Event::Start(e) => stack.push(element_of(&e)?),
                Event::Empty(e) => {
                    let el = element_of(&e)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => break Some(XmlEvent::Element(el)),
                    }
                }
                Event::End(_) => {
                    let Some(done) = stack.pop() else {
                        bail!("unexpected end tag at top level");
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => break Some(XmlEvent::Element(done)),
                    }
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text
                            .push_str(&t.decode().map_err(|err| anyhow!("bad text: {err}"))?);
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text
                            .push_str(&t.decode().map_err(|err| anyhow!("bad CDATA: {err}"))?);
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(top) = stack.last_mut() {
                        if let Ok(Some(ch)) = r.resolve_char_ref() {
                            top.text.push(ch);
                        } else {
                            let name = r.decode().map_err(|err| anyhow!("bad entity: {err}"))?;
                            let v = resolve_predefined_entity(&name)
                                .ok_or_else(|| anyhow!("unknown entity &{name};"))?;
                            top.text.push_str(v);
                        }
                    }
                }
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
            if stack.is_empty() {
                skippable = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
            }
        };
        match outcome {
            Some(ev) => {
                let used = usize::try_from(reader.buffer_position())
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.buf.drain(..used);
                Ok(Some(ev))
            }
            None => {
                let skip = skippable.min(self.buf.len());
                self.buf.drain(..skip);
                if self.buf.len() > MAX_BUFFERED {
                    bail!("more than {MAX_BUFFERED} bytes without a complete element");
                }
                Ok(None)
            }
        }
    }
}

/// The client's stream header.
pub fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        escape(domain)
    )
}

/// SASL PLAIN with an empty authorization identity.
pub fn auth_plain(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
}

/// A chat message to `to` with `body` (escaped).
pub fn message(to: &str, body: &str) -> String {
    format!(
        "<message to='{}' type='chat'><body>{}</body></message>",
        escape(to),
        escape(body)
    )
}

/// XEP-0198 answer: `h` stanzas handled.
pub fn sm_ack(h: u32) -> String {
    format!("<a xmlns='{NS_SM}' h='{h}'/>")
}

/// XEP-0198 request for the server's count.
pub fn sm_request() -> String {
    format!("<r xmlns='{NS_SM}'/>")
}

/// How to reach ejabberd and log in.
#[derive(Debug, Clone)]
pub struct XmppOpts {
    /// The c2s listener (loopback).
    pub addr: SocketAddr,
    /// The virtual host (`bench.local`).
    pub domain: String,
    /// Users are `{user_prefix}{n}` with password `{password_prefix}{n}`...
    pub user_prefix: String,
    pub password_prefix: String,
    /// ...for n = first_user + connection index.
    pub first_user: u32,
    /// Enable XEP-0198 stream management when offered.
    pub stream_management: bool,
}

impl XmppOpts {
    /// The bare JID of connection `i`.
    pub fn jid(&self, i: u32) -> String {
        format!(
            "{}{}@{}",
            self.user_prefix,
            self.first_user.saturating_add(i),
            self.domain
        )
    }
}

/// One logged-in XMPP connection.
pub struct XmppConn {
    stream: TcpStream,
    framer: Framer,
    out: Vec<u8>,
    shared: Arc<Shared>,
    /// Stream management on.
    sm: bool,
    /// Stanzas received since SM was enabled (what we report in `<a h=…/>`).
    h_in: u32,
    /// Our stanzas the server has acknowledged so far.
    acked_out: u32,
    /// Our stanzas not yet acknowledged: the intended send time of traffic messages.
    unacked: VecDeque<Option<u64>>,
    /// A `<r/>` of ours is unanswered.
    r_pending: bool,
    rbuf: Vec<u8>,
    /// Deliveries to this user, from the initial presence on (offline messages arrive
    /// before the log-in's ping is answered).
    delivery: Delivery,
}

impl XmppConn {
    /// Whether XEP-0198 stream management is on (the server acks our stanzas).
    pub fn stream_management(&self) -> bool {
        self.sm
    }

    fn queue(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Queues a stanza (counted for stream management).
    fn queue_stanza(&mut self, s: &str, intended_ns: Option<u64>) {
        self.queue(s);
        if self.sm {
            self.unacked.push_back(intended_ns);
        }
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .context("writing to the XMPP server")?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads until the framer yields an event (or `until`).
    async fn next_event(&mut self, until: Instant) -> Result<XmlEvent> {
        // Bounded by `until` (and by MAX_BUFFERED inside the framer).
        loop {
            if let Some(ev) = self.framer.next_event()? {
                return Ok(ev);
            }
            let n = tokio::time::timeout_at(until, self.stream.read(&mut self.rbuf))
                .await
                .map_err(|_| anyhow!("timed out waiting for the XMPP server"))?
                .context("reading from the XMPP server")?;
            if n == 0 {
                bail!("the XMPP server closed the connection");
            }
            let data = self.rbuf.get(..n).unwrap_or_default();
            self.framer.push(data);
        }
    }

    /// The next element for the log-in sequence; stream-management housekeeping and
    /// unsolicited stanzas are handled on the way.
    async fn next_element(&mut self, until: Instant) -> Result<Element> {
        // Bounded by `until`.
        loop {
            match self.next_event(until).await? {
                XmlEvent::Element(el) => {
                    if let Some(el) = self.handle(el)? {
                        return Ok(el);
                    }
                    self.flush().await?;
                }
                XmlEvent::StreamEnd => bail!("the XMPP server closed the stream"),
                XmlEvent::StreamOpen(_) => {}
            }
        }
    }

    /// Waits for the server's stream header and its features.
    async fn open_stream(&mut self, domain: &str, until: Instant) -> Result<Element> {
        self.queue(&stream_header(domain));
        self.flush().await?;
        match self.next_event(until).await? {
            XmlEvent::StreamOpen(_) => {}
            other => bail!("expected the stream header, got {other:?}"),
        }
        let features = self.next_element(until).await?;
        if features.name != "features" {
            bail!("expected stream features, got <{}>", features.name);
        }
        Ok(features)
    }

    /// Connects and logs in connection `index` as `opts.jid(index)`; ends with the
    /// session available (initial presence processed: a ping sent after it answered).
    pub async fn connect(
        opts: &XmppOpts,
        index: u32,
        shared: Arc<Shared>,
        until: Instant,
    ) -> Result<Self> {
        let stream =
            tokio::time::timeout_at(until, crate::source::connect(opts.addr, index as usize))
                .await
                .map_err(|_| anyhow!("timed out connecting to {}", opts.addr))?
                .with_context(|| format!("connecting to {}", opts.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let mut c = Self {
            stream,
            framer: Framer::default(),
            out: Vec::with_capacity(1024),
            shared,
            sm: false,
            h_in: 0,
            acked_out: 0,
            unacked: VecDeque::new(),
            r_pending: false,
            rbuf: vec![0; 16 * 1024],
            delivery: Delivery::new(index),
        };
        let n = opts.first_user.saturating_add(index);
        let user = format!("{}{n}", opts.user_prefix);
        let features = c.open_stream(&opts.domain, until).await?;
        let plain = features
            .child("mechanisms")
            .is_some_and(|m| m.children.iter().any(|x| x.text.trim() == "PLAIN"));
        if !plain {
            bail!("the server does not offer SASL PLAIN on a plain connection");
        }
        c.queue(&auth_plain(&user, &format!("{}{n}", opts.password_prefix)));
        c.flush().await?;
        let reply = c.next_element(until).await?;
        match reply.name.as_str() {
            "success" => {}
            "failure" => bail!(
                "SASL PLAIN refused for {user}: {}",
                reply.children.first().map_or("?", |e| e.name.as_str())
            ),
            other => bail!("unexpected <{other}> after <auth>"),
        }
        // Stream restart after SASL: a new header and features from the server.
        c.framer = Framer::default();
        let features = c.open_stream(&opts.domain, until).await?;
        c.queue(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>lg</resource></bind></iq>",
        );
        c.flush().await?;
        let bound = c.next_element(until).await?;
        if bound.name != "iq" || bound.attr("id") != Some("bind") {
            bail!("unexpected <{}> while binding", bound.name);
        }
        if bound.attr("type") != Some("result") {
            bail!("resource binding refused for {user}");
        }
        let sm_offered = features
            .children
            .iter()
            .any(|f| f.name == "sm" && f.attr("xmlns") == Some(NS_SM));
        if opts.stream_management && sm_offered {
            c.queue(&format!("<enable xmlns='{NS_SM}'/>"));
            c.flush().await?;
            let reply = c.next_element(until).await?;
            match reply.name.as_str() {
                "enabled" => c.sm = true,
                "failed" => bail!("the server refused stream management"),
                other => bail!("unexpected <{other}> after <enable/>"),
            }
        }
        c.queue_stanza("<presence/>", None);
        c.queue_stanza(
            "<iq type='get' id='ready'><ping xmlns='urn:xmpp:ping'/></iq>",
            None,
        );
        c.flush().await?;
        // Bounded by `until`: other stanzas (our own presence, offline messages) pass by
        // first.
        loop {
            let el = c.next_element(until).await?;
            if el.name == "iq" && el.attr("id") == Some("ready") {
                break;
            }
            if el.name == "message" {
                match el.child("body") {
                    Some(body) => c.delivery.record(&c.shared, body.text.as_bytes()),
                    None => c.delivery.foreign(&c.shared),
                }
            }
        }
        Ok(c)
    }

    /// Stream-management and protocol housekeeping. Returns the element when the caller
    /// has to look at it (messages, iq results, stream-level elements).
    fn handle(&mut self, el: Element) -> Result<Option<Element>> {
        let stanza = matches!(el.name.as_str(), "message" | "presence" | "iq");
        if stanza && self.sm {
            self.h_in = self.h_in.wrapping_add(1);
        }
        match el.name.as_str() {
            "presence" => Ok(None),
            "iq" if matches!(el.attr("type"), Some("get" | "set")) => {
                // We offer no services: answer as RFC 6120 requires.
                let id = escape(el.attr("id").unwrap_or_default()).into_owned();
                let to = el
                    .attr("from")
                    .map(|f| format!(" to='{}'", escape(f)))
                    .unwrap_or_default();
                self.queue_stanza(
                    &format!(
                        "<iq type='error' id='{id}'{to}><error type='cancel'>\
                         <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                         </error></iq>"
                    ),
                    None,
                );
                Ok(None)
            }
            "r" if el.attr("xmlns") == Some(NS_SM) => {
                self.queue(&sm_ack(self.h_in));
                Ok(None)
            }
            "a" if el.attr("xmlns") == Some(NS_SM) => {
                let h: u32 = el
                    .attr("h")
                    .and_then(|h| h.parse().ok())
                    .context("<a/> without a valid h")?;
                self.r_pending = false;
                let newly = h.wrapping_sub(self.acked_out) as usize;
                self.acked_out = h;
                for _ in 0..newly.min(self.unacked.len()) {
                    if let Some(Some(intended)) = self.unacked.pop_front() {
                        super::on_accepted(&self.shared, intended);
                    }
                }
                // Messages sent while our request was out: ask again right away, or their
                // acceptance would wait for this connection's next message.
                if self.unacked.iter().any(Option::is_some) {
                    self.queue(&sm_request());
                    self.r_pending = true;
                }
                Ok(None)
            }
            "error" => {
                let what = el.children.first().map_or("?", |c| c.name.as_str());
                bail!("stream error from the XMPP server: {what}")
            }
            _ => Ok(Some(el)),
        }
    }

    /// Handles every complete element in the framer: deliveries are recorded, replies
    /// queued (the caller flushes).
    fn handle_buffered(&mut self, delivery: &mut Delivery) -> Result<()> {
        for _ in 0..MAX_ELEMENTS_PER_READ {
            match self.framer.next_event()? {
                None => return Ok(()),
                Some(XmlEvent::Element(el)) => {
                    if let Some(el) = self.handle(el)?
                        && el.name == "message"
                    {
                        match el.child("body") {
                            Some(body) => delivery.record(&self.shared, body.text.as_bytes()),
                            None => delivery.foreign(&self.shared),
                        }
                    }
                }
                Some(XmlEvent::StreamEnd) => bail!("the XMPP server closed the stream"),
                Some(XmlEvent::StreamOpen(_)) => {}
            }
        }
        Ok(())
    }

    /// The traffic loop: sends what the scheduler hands over, records deliveries,
    /// acknowledges. Ends on [`PeerCmd::Close`], a closed channel, an error or the
    /// shared deadline.
    pub async fn run(
        mut self,
        me: u32,
        opts: Arc<XmppOpts>,
        mut rx: mpsc::UnboundedReceiver<PeerCmd>,
    ) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let deadline = tokio::time::sleep_until(shared.deadline);
        tokio::pin!(deadline);
        let mut delivery = std::mem::replace(&mut self.delivery, Delivery::new(me));
        let mut rbuf = vec![0u8; 16 * 1024];
        // Stanzas that arrived with the end of the log-in are already buffered.
        self.handle_buffered(&mut delivery)?;
        self.flush().await?;
        loop {
            tokio::select! {
                biased;
                () = &mut deadline => return Ok(()),
                cmd = rx.recv() => {
                    let mut cmd = cmd;
                    let mut sent = Vec::new();
                    for _ in 0..MAX_COALESCE {
                        match cmd {
                            Some(PeerCmd::Send { to, stamp }) => {
                                let body = sched::text_payload(shared.payload_bytes, TextStamp {
                                    nonce: shared.run_nonce, to, stamp,
                                });
                                self.queue_stanza(&message(&opts.jid(to), &body), Some(stamp.intended_ns));
                                super::on_written(&shared, stamp.intended_ns);
                                sent.push(stamp.intended_ns);
                            }
                            Some(PeerCmd::Close) | None => {
                                if self.sm {
                                    let h = self.h_in;
                                    self.queue(&sm_ack(h));
                                }
                                self.queue("</stream:stream>");
                                self.flush().await?;
                                // Bounded: wait briefly for the server's closing tag.
                                let until = Instant::now() + Duration::from_secs(2);
                                let _ = tokio::time::timeout_at(until, self.stream.read(&mut rbuf)).await;
                                return Ok(());
                            }
                        }
                        match rx.try_recv() {
                            Ok(next) => cmd = Some(next),
                            Err(_) => break,
                        }
                    }
                    if self.sm && !sent.is_empty() && !self.r_pending {
                        self.queue(&sm_request());
                        self.r_pending = true;
                    }
                    self.flush().await?;
                    if !self.sm {
                        // Without stream management nothing acknowledges a stanza: count it
                        // accepted once written.
                        for t in sent {
                            super::on_accepted(&shared, t);
                        }
                    }
                }
                n = self.stream.read(&mut rbuf) => {
                    let n = n.context("reading from the XMPP server")?;
                    if n == 0 {
                        bail!("the XMPP server closed the connection");
                    }
                    self.framer.push(rbuf.get(..n).unwrap_or_default());
                    self.handle_buffered(&mut delivery)?;
                    self.flush().await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(f: &mut Framer) -> Vec<XmlEvent> {
        let mut out = Vec::new();
        for _ in 0..100 {
            match f.next_event().unwrap() {
                Some(ev) => out.push(ev),
                None => break,
            }
        }
        out
    }

    #[test]
    fn cuts_stream_header_features_and_stanzas() {
        let mut f = Framer::default();
        f.push(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='bench.local' \
              version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
              <mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>\
              </stream:features>",
        );
        let ev = events(&mut f);
        assert_eq!(ev.len(), 2);
        let XmlEvent::StreamOpen(open) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(open.attr("id"), Some("abc"));
        let XmlEvent::Element(features) = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(features.name, "features");
        let mechs: Vec<&str> = features
            .child("mechanisms")
            .unwrap()
            .children
            .iter()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(mechs, ["PLAIN", "SCRAM-SHA-1"]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn waits_for_split_stanzas_and_keeps_the_rest() {
        let msg = b"<message from='user2@bench.local/lg' to='user1@bench.local/lg' type='chat' \
                    xml:lang='en'><body>a &amp; b &lt;c&gt; &#x41;</body></message>";
        let mut f = Framer::default();
        // Every split point: nothing until the element is complete, then exactly it.
        for cut in 1..msg.len() {
            f.push(&msg[..cut]);
            assert_eq!(f.next_event().unwrap(), None, "cut at {cut}");
            f.push(&msg[cut..]);
            let Some(XmlEvent::Element(el)) = f.next_event().unwrap() else {
                panic!("cut at {cut}")
            };
            assert_eq!(el.name, "message");
            assert_eq!(el.attr("xml:lang"), Some("en"));
            assert_eq!(el.child("body").unwrap().text, "a & b <c> A");
            assert_eq!(f.next_event().unwrap(), None);
            assert_eq!(f.buffered(), 0);
        }
        // Two stanzas and whitespace keep-alives in one read; stream end.
        f.push(b" <r xmlns='urn:xmpp:sm:3'/>\n<a xmlns='urn:xmpp:sm:3' h='7'/> </stream:stream>");
        let ev = events(&mut f);
        assert_eq!(ev.len(), 3);
        let XmlEvent::Element(a) = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!((a.name.as_str(), a.attr("h")), ("a", Some("7")));
        assert_eq!(ev[2], XmlEvent::StreamEnd);
    }

    #[test]
    fn rejects_runaway_input() {
        let mut f = Framer::default();
        f.push(b"<message><body>");
        f.push(&vec![b'x'; MAX_BUFFERED + 1]);
        assert!(f.next_event().is_err());
    }

    #[test]
    fn builds_stanzas() {
        assert!(stream_header("bench.local").contains("to='bench.local'"));
        // base64("\0user1\0pass1")
        assert_eq!(
            auth_plain("user1", "pass1"),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHVzZXIxAHBhc3Mx</auth>"
        );
        let m = message("u@d", "x<y");
        assert_eq!(
            m,
            "<message to='u@d' type='chat'><body>x&lt;y</body></message>"
        );
        // Our own stanzas parse back.
        let mut f = Framer::default();
        f.push(m.as_bytes());
        f.push(sm_ack(42).as_bytes());
        let ev = events(&mut f);
        let XmlEvent::Element(el) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(el.child("body").unwrap().text, "x<y");
        let XmlEvent::Element(a) = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(a.attr("h"), Some("42"));
        let opts = XmppOpts {
            addr: "127.0.0.1:15222".parse().unwrap(),
            domain: "bench.local".into(),
            user_prefix: "user".into(),
            password_prefix: "pass".into(),
            first_user: 1,
            stream_management: true,
        };
        assert_eq!(opts.jid(0), "user1@bench.local");
        assert_eq!(opts.jid(9_999), "user10000@bench.local");
    }

    /// A scripted ejabberd stand-in on 127.0.0.1: log-in, stream management, one
    /// message to ourselves, acks both ways, close.
    #[tokio::test]
    async fn logs_in_sends_receives_and_acks_against_a_scripted_server() {
        use crate::sched::Stamp;
        use std::sync::atomic::Ordering;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut f = Framer::default();
            let mut buf = vec![0u8; 4096];
            let mut next = async |sock: &mut TcpStream, f: &mut Framer| -> XmlEvent {
                for _ in 0..1000 {
                    if let Some(ev) = f.next_event().unwrap() {
                        return ev;
                    }
                    let n = sock.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed early");
                    f.push(&buf[..n]);
                }
                panic!("no event")
            };
            let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' id='s1' version='1.0'>";
            assert!(matches!(
                next(&mut sock, &mut f).await,
                XmlEvent::StreamOpen(_)
            ));
            sock.write_all(
                format!(
                    "{header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                 <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let XmlEvent::Element(auth) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(auth.attr("mechanism"), Some("PLAIN"));
            let creds = base64::engine::general_purpose::STANDARD
                .decode(&auth.text)
                .unwrap();
            assert_eq!(creds, b"\0user1\0pass1");
            sock.write_all(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                .await
                .unwrap();
            assert!(matches!(
                next(&mut sock, &mut f).await,
                XmlEvent::StreamOpen(_)
            ));
            sock.write_all(
                format!(
                    "{header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
                 <sm xmlns='urn:xmpp:sm:3'/></stream:features>"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let XmlEvent::Element(bind) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!((bind.name.as_str(), bind.attr("id")), ("iq", Some("bind")));
            sock.write_all(
                b"<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <jid>user1@bench.local/lg</jid></bind></iq>",
            )
            .await
            .unwrap();
            let XmlEvent::Element(enable) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(enable.name, "enable");
            sock.write_all(b"<enabled xmlns='urn:xmpp:sm:3'/>")
                .await
                .unwrap();
            let XmlEvent::Element(presence) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(presence.name, "presence");
            let XmlEvent::Element(ping) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(ping.attr("id"), Some("ready"));
            // One stanza to the client, then a request: it must answer h=1.
            sock.write_all(b"<iq type='result' id='ready'/><r xmlns='urn:xmpp:sm:3'/>")
                .await
                .unwrap();
            let XmlEvent::Element(a) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!((a.name.as_str(), a.attr("h")), ("a", Some("1")));
            // The traffic message (to ourselves) and the client's ack request.
            let XmlEvent::Element(msg) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(msg.attr("to"), Some("user1@bench.local"));
            let body = msg.child("body").unwrap().text.clone();
            let XmlEvent::Element(r) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(r.name, "r");
            // Deliver it (twice: the repeat must count as a duplicate) and ack the
            // client's three stanzas (presence, ping, message).
            let deliver = format!(
                "<message from='user1@bench.local/lg' to='user1@bench.local/lg' \
                 type='chat'><body>{body}</body></message>"
            );
            sock.write_all(
                format!("{deliver}{deliver}<a xmlns='urn:xmpp:sm:3' h='3'/>").as_bytes(),
            )
            .await
            .unwrap();
            // Close: the final ack covers the three stanzas received (the ping result and
            // both copies), then the stream end.
            let XmlEvent::Element(a) = next(&mut sock, &mut f).await else {
                panic!()
            };
            assert_eq!(a.attr("h"), Some("3"));
            assert_eq!(next(&mut sock, &mut f).await, XmlEvent::StreamEnd);
            sock.write_all(b"</stream:stream>").await.unwrap();
        });

        let deadline = Instant::now() + Duration::from_secs(20);
        let shared = Arc::new(Shared::new(7, 100, 1, Duration::ZERO, deadline).unwrap());
        shared
            .window_start_ns
            .store(0, std::sync::atomic::Ordering::Relaxed);
        shared
            .window_end_ns
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        let opts = Arc::new(XmppOpts {
            addr,
            domain: "bench.local".into(),
            user_prefix: "user".into(),
            password_prefix: "pass".into(),
            first_user: 1,
            stream_management: true,
        });
        let conn = XmppConn::connect(&opts, 0, Arc::clone(&shared), deadline)
            .await
            .unwrap();
        assert!(conn.stream_management());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(conn.run(0, Arc::clone(&opts), rx));
        let stamp = Stamp {
            intended_ns: shared.now_ns(),
            msg_no: 0,
        };
        tx.send(PeerCmd::Send { to: 0, stamp }).unwrap();
        let c = &shared.c;
        for _ in 0..2000 {
            if c.duplicates.load(Ordering::Relaxed) >= 1 && c.accepted.load(Ordering::Relaxed) >= 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(c.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(c.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(c.written.load(Ordering::Relaxed), 1);
        tx.send(PeerCmd::Close).unwrap();
        task.await.unwrap().unwrap();
        server.await.unwrap();
    }
}
