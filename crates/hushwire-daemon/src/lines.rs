//! The line protocol of stdio and the unix socket: one JSON object (or batch array) per
//! line both ways; responses and `receive` notifications share the output.

use std::io::BufRead as _;

use serde_json::Value;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
};
use tokio::sync::mpsc;

use crate::queue::{EventQueue, QueueError, QueuedEvent};
use crate::rpc::{Methods, RpcError, code, error_response, notification};

/// The longest request line (1 MiB); longer ones are answered with `-32600`.
pub const MAX_LINE: usize = 1 << 20;
/// Events read from the queue at a time.
const EVENT_BATCH: usize = 256;

/// What the writer writes.
enum Out {
    /// A response.
    Line(String),
    /// A notification of queued event `seq`: delivered once written.
    Event(u64, String),
}

/// One line read, or why not.
pub(crate) enum Line {
    /// A request line (without its newline).
    Text(String),
    /// The line was longer than [`MAX_LINE`] (it was skipped).
    TooLong,
    /// The line is not UTF-8.
    NotUtf8,
}

fn finish(mut buf: Vec<u8>) -> Line {
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    match String::from_utf8(buf) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::NotUtf8,
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at the end.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        // Skip the rest of the line.
        loop {
            buf.clear();
            let n = (&mut *r)
                .take(64 * 1024)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 || buf.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(finish(buf)))
}

/// [`read_line`] for a blocking reader (stdin on its own thread).
pub(crate) fn read_line_blocking<R: std::io::BufRead>(r: &mut R) -> std::io::Result<Option<Line>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        loop {
            buf.clear();
            let n = (&mut *r).take(64 * 1024).read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(finish(buf)))
}

/// The next queued events after `*pos`, waiting for some if there are none.
pub(crate) async fn next_events(
    queue: &EventQueue,
    pos: u64,
    latest: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<Vec<QueuedEvent>, QueueError> {
    loop {
        latest.borrow_and_update();
        let events = queue.read_after(pos, EVENT_BATCH).await?;
        if !events.is_empty() {
            return Ok(events);
        }
        if latest.changed().await.is_err() {
            // The queue is gone: nothing will come.
            std::future::pending::<()>().await;
        }
    }
}

/// Answers one line.
pub(crate) async fn answer(methods: &Methods, line: Line) -> Option<Value> {
    match line {
        Line::Text(t) if t.trim().is_empty() => None,
        Line::Text(t) => methods.handle_text(&t).await,
        Line::TooLong => Some(error_response(
            Value::Null,
            &RpcError {
                code: code::INVALID_REQUEST,
                message: format!("a request line is at most {MAX_LINE} bytes"),
                data: None,
            },
        )),
        Line::NotUtf8 => Some(error_response(
            Value::Null,
            &RpcError {
                code: code::PARSE,
                message: "parse error: not UTF-8".into(),
                data: None,
            },
        )),
    }
}

/// Serves one line-protocol peer: requests from `lines` (ends when it closes), responses
/// and every queued event (from the delivered cursor on) to `writer`.
pub(crate) async fn serve<W>(
    methods: Methods,
    queue: EventQueue,
    mut lines: mpsc::Receiver<Line>,
    mut writer: W,
) -> Result<(), crate::DaemonError>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let q = queue.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let (text, seq) = match out {
                Out::Line(t) => (t, None),
                Out::Event(seq, t) => (t, Some(seq)),
            };
            writer.write_all(text.as_bytes()).await?;
            writer.write_all(b"\n").await?;
            writer.flush().await?;
            if let Some(seq) = seq {
                q.set_delivered(seq).await?;
            }
        }
        Ok::<(), crate::DaemonError>(())
    });
    let q = queue.clone();
    let events_tx = out_tx.clone();
    let events_task = tokio::spawn(async move {
        let mut latest = q.latest();
        let mut pos = q.delivered().await?;
        loop {
            let events = next_events(&q, pos, &mut latest).await?;
            for e in events {
                pos = e.seq;
                let text = notification(&e.body).to_string();
                if events_tx.send(Out::Event(e.seq, text)).await.is_err() {
                    return Ok::<(), crate::DaemonError>(());
                }
            }
        }
    });
    while let Some(line) = lines.recv().await {
        if let Some(resp) = answer(&methods, line).await
            && out_tx.send(Out::Line(resp.to_string())).await.is_err()
        {
            break;
        }
    }
    events_task.abort();
    drop(out_tx);
    match writer_task.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// Feeds the lines of an async reader into a channel.
pub(crate) fn spawn_reader<R>(mut reader: R) -> mpsc::Receiver<Line>
where
    R: AsyncBufRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(line)) = read_line(&mut reader).await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Feeds stdin's lines into a channel from a thread of its own (a blocking read must
/// not hold the runtime open at exit).
pub(crate) fn spawn_stdin() -> Result<mpsc::Receiver<Line>, std::io::Error> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("hushwire-daemon-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            while let Ok(Some(line)) = read_line_blocking(&mut lock) {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
