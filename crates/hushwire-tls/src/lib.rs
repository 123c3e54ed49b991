//! A TLS server stream that holds no buffers while its connection is idle.
//!
//! A chat server keeps most of its connections open and silent. Over rustls' buffered
//! API (`ServerConnection`, as `tokio-rustls` uses it) every such connection keeps a
//! 4 KiB receive buffer for its whole life: the buffer is sized for the next read
//! before the read, and an idle connection is always waiting to read. That was the
//! largest single item of an idle Hushwire connection (BENCHMARKS.md, "Idle connection
//! memory").
//!
//! [`TlsStream`] drives rustls' *unbuffered* API ([`UnbufferedServerConnection`]) and
//! owns the buffers itself:
//! - received TLS bytes are read into a buffer that exists only while it holds part
//!   of a record: once every complete record is processed and nothing is left over, it
//!   is freed;
//! - encrypted bytes wait in an outgoing buffer only until the socket takes them;
//! - decrypted bytes go straight into the caller's buffer, and only what does not fit
//!   waits in a buffer of ours until the next read.
//!
//! So an idle connection holds rustls' connection state (keys, the handshake's
//! results) and nothing else. The price is a short-lived allocation per read and per
//! write that is still in flight.
//!
//! The stream is used by one task at a time (it is `AsyncRead + AsyncWrite` through
//! `&mut self`): records are processed as they are read, so a write never finds
//! unprocessed records in front of it.
//!
//! Protocol behaviour is rustls': TLS 1.2 and 1.3, session tickets, key updates,
//! `close_notify`. A peer that closes TCP without `close_notify` ends the stream with
//! [`io::ErrorKind::UnexpectedEof`], as `tokio-rustls` does. A fatal TLS error sends the
//! alert rustls chose, as far as the socket takes it at once, and fails the stream with
//! [`io::ErrorKind::InvalidData`].

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;
/// Most received bytes held at once: one handshake message joined from several records
/// (rustls accepts up to 64 KiB) plus one more record of the largest size.
const MAX_INCOMING: usize = 0xffff + MAX_RECORD;
/// The largest TLS record on the wire (a TLS 1.2 ciphertext: 16 KiB + 2 KiB + header).
const MAX_RECORD: usize = 16_384 + 2_048 + 5;
/// Plaintext taken per write call, and the encrypted backlog above which a write waits
/// for the socket.
const MAX_WRITE: usize = 64 * 1024;
/// Room reserved per record above its plaintext (header, content type, tag, explicit
/// nonce); too little only costs a retry.
const RECORD_OVERHEAD: usize = 64;

/// Completes a server-side TLS handshake on `io` and returns the stream.
///
/// Returns when the handshake is complete (the client's `Finished` is verified) and
/// everything the server had to send for it (including session tickets) is written.
/// Callers bound the time it may take.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        plain: Vec::new(),
        plain_pos: 0,
        peer_closed: false,
        close_queued: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// A server-side TLS stream over `IO` (see the crate documentation).
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received bytes not yet processed: part of a record, or of a handshake message.
    /// Empty and unallocated between reads.
    incoming: Vec<u8>,
    /// Encrypted bytes to write; `outgoing[..sent]` are written. Unallocated when empty.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes the caller's buffer had no room for; `plain[..plain_pos]` are
    /// read. Unallocated when empty.
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer's `close_notify` arrived: reads return end of stream.
    peer_closed: bool,
    /// Our `close_notify` is queued.
    close_queued: bool,
}

impl<IO> fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lengths only: the buffers hold plaintext and the connection holds keys.
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("plain", &(self.plain.len() - self.plain_pos))
            .field("peer_closed", &self.peer_closed)
            .field("close_queued", &self.close_queued)
            .finish_non_exhaustive()
    }
}

/// What a pass of [`TlsStream::pump`] is for.
#[derive(Clone, Copy)]
enum Job<'a> {
    /// Process received records.
    Read,
    /// Process received records, then encrypt these bytes.
    Encrypt(&'a [u8]),
    /// Process received records, then queue `close_notify`.
    CloseNotify,
}

/// How a pass of [`TlsStream::pump`] ended.
struct Pumped {
    /// Plaintext bytes encrypted (`Job::Encrypt`), or whether `close_notify` was queued
    /// (`Job::CloseNotify`, 1 or 0); `None` while the handshake does not allow it.
    done: Option<usize>,
    /// Both sides have sent `close_notify`.
    closed: bool,
}

impl<IO> TlsStream<IO> {
    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The TLS session: negotiated ALPN protocol, cipher suite, version.
    pub fn session(&self) -> &CommonState {
        &self.conn
    }

    /// The ALPN protocol the handshake chose, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Bytes of buffer this stream holds outside rustls (allocated capacity of its
    /// receive, send and plaintext buffers): zero while the connection is idle.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plain.capacity()
    }

    /// Runs rustls over the received bytes until it needs more of them (or the
    /// connection is closed), doing `job` once it may.
    ///
    /// Decrypted data goes to `out` while it has room, the rest to `self.plain`. Records
    /// rustls wants sent (handshake messages, tickets, key updates, alerts) are
    /// appended to `self.outgoing`; the caller writes them.
    fn pump(&mut self, out: &mut Option<&mut ReadBuf<'_>>, job: Job<'_>) -> io::Result<Pumped> {
        let Self {
            conn,
            incoming,
            outgoing,
            plain,
            peer_closed,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    discard_front(incoming, discard);
                    queue_alert(conn, incoming, outgoing);
                    return Err(tls_error(e));
                }
            };
            let mut finished = None;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        deliver(record.payload, out, plain);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, outgoing)?,
                // The encoded records are in `outgoing`, which the caller writes before it
                // waits for anything else.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => *peer_closed = true,
                ConnectionState::Closed => {
                    finished = Some(Pumped {
                        done: None,
                        closed: true,
                    });
                }
                ConnectionState::BlockedHandshake => {
                    finished = Some(Pumped {
                        done: None,
                        closed: false,
                    });
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    let done = match job {
                        Job::Read => None,
                        Job::Encrypt(data) => Some(encrypt_into(&mut traffic, data, outgoing)?),
                        Job::CloseNotify => {
                            close_notify_into(&mut traffic, outgoing)?;
                            Some(1)
                        }
                    };
                    finished = Some(Pumped {
                        done,
                        closed: false,
                    });
                }
                // Early data is never enabled (`max_early_data_size` stays 0), and any state
                // a later rustls adds is one this stream does not know how to serve.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS connection state",
                    ));
                }
            }
            discard_front(incoming, discard);
            if let Some(finished) = finished {
                return Ok(finished);
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let pumped = match self.pump(&mut None, Job::Read) {
                Ok(p) => p,
                Err(e) => return self.fail(cx, e),
            };
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if pumped.closed || self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// After a TLS error: writes what the socket takes of the alert at once, then fails.
    fn fail<T>(&mut self, cx: &mut Context<'_>, e: io::Error) -> Poll<io::Result<T>> {
        let _ = self.poll_send(cx);
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Err(e))
    }

    /// Reads more bytes from the socket into `incoming`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let len = self.incoming.len();
        if len >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message larger than the receive limit",
            )));
        }
        self.incoming.resize(len + READ_CHUNK, 0);
        let mut buf = ReadBuf::new(&mut self.incoming[len..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.incoming.truncate(len + n);
        if self.incoming.is_empty() {
            // Nothing arrived: keep nothing while waiting.
            self.incoming = Vec::new();
        }
        match polled {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes `outgoing` to the socket; frees it once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Copies waiting plaintext into `buf`; frees the plaintext buffer once it is read.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let waiting = &self.plain[self.plain_pos..];
        let n = waiting.len().min(buf.remaining());
        buf.put_slice(&waiting[..n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain_pos < this.plain.len() {
                this.take_plain(buf);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let pumped = match this.pump(&mut Some(&mut *buf), Job::Read) {
                Ok(p) => p,
                Err(e) => return this.fail(cx, e),
            };
            // Records rustls queued while reading (a ticket, a key update's answer) go out
            // now if the socket takes them, else with the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || pumped.closed || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS stream already closed for writing",
            )));
        }
        // Earlier records first; wait for the socket only when a lot is waiting.
        if this.poll_send(cx)?.is_pending() && this.outgoing.len() - this.sent >= MAX_WRITE {
            return Poll::Pending;
        }
        let take = data.len().min(MAX_WRITE);
        let pumped = match this.pump(&mut None, Job::Encrypt(&data[..take])) {
            Ok(p) => p,
            Err(e) => return this.fail(cx, e),
        };
        let Some(n) = pumped.done else {
            return Poll::Ready(Err(io::Error::new(
                if pumped.closed {
                    io::ErrorKind::BrokenPipe
                } else {
                    io::ErrorKind::NotConnected
                },
                "TLS connection does not accept data",
            )));
        };
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            // A connection already closed both ways, or still handshaking, gets no alert.
            if let Err(e) = this.pump(&mut None, Job::CloseNotify) {
                return this.fail(cx, e);
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Puts a decrypted record's bytes into `out` while it has room (and nothing older is
/// waiting), the rest into `plain`.
fn deliver(payload: &[u8], out: &mut Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>) {
    let mut rest = payload;
    if let (true, Some(buf)) = (plain.is_empty(), out) {
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
    plain.extend_from_slice(rest);
}

/// Drops the first `n` processed bytes; frees the buffer when nothing is left.
fn discard_front(incoming: &mut Vec<u8>, n: usize) {
    if n == 0 {
        return;
    }
    if n >= incoming.len() {
        *incoming = Vec::new();
    } else {
        incoming.drain(..n);
    }
}

/// After a fatal error rustls has queued its alert: encode it into `outgoing`.
///
/// One call only: rustls hands out queued records before it reads input, so the first
/// call after the error yields the alert. A second call would go on to parse the same
/// bad input again, and a second error would queue a second alert.
fn queue_alert(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) {
    let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
        let _ = encode_into(&mut encode, outgoing);
    }
    discard_front(incoming, discard);
}

/// A rustls error that asks for a larger output buffer.
trait NeedsRoom: fmt::Display {
    /// The size rustls asked for, if this is that error.
    fn required_size(&self) -> Option<usize>;
}

impl NeedsRoom for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            Self::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
            _ => None,
        }
    }
}

impl NeedsRoom for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            Self::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
            _ => None,
        }
    }
}

/// Appends to `outgoing` what `write` puts into the buffer it is given, starting with
/// `room` bytes and growing as rustls asks. On an error `outgoing` is unchanged.
fn append<E: NeedsRoom>(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = outgoing.len();
    loop {
        outgoing.resize(start + room, 0);
        match write(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(e) => match e.required_size() {
                Some(required) if required > room => room = required,
                _ => {
                    outgoing.truncate(start);
                    return Err(io::Error::other(e.to_string()));
                }
            },
        }
    }
}

/// Encodes a handshake record onto the end of `outgoing`.
fn encode_into(
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    append(outgoing, 1024, |buf| encode.encode(buf))
}

/// Encrypts `data` (split into records by rustls) onto the end of `outgoing`.
fn encrypt_into(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    outgoing: &mut Vec<u8>,
) -> io::Result<usize> {
    let room = data.len() + (data.len() / 16_384 + 1) * RECORD_OVERHEAD;
    append(outgoing, room, |buf| traffic.encrypt(data, buf))?;
    Ok(data.len())
}

/// Encrypts a `close_notify` alert onto the end of `outgoing`.
fn close_notify_into(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    append(outgoing, RECORD_OVERHEAD, |buf| {
        traffic.queue_close_notify(buf)
    })
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
