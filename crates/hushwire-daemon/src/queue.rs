//! The durable event queue: `daemon-events.sqlite` in the profile directory.
//!
//! Every event the service reports is appended here (WAL, `synchronous=FULL`, one
//! transaction per batch) before any consumer sees it. Consumers read from the table by
//! sequence number; the *delivered* cursor records how far events were handed to at least
//! one consumer, so a consumer attaching later gets what nobody was given yet, in order.
//!
//! Message ids of every queued message are kept in `seen` (ids only, never content), so
//! that the start-up reconciliation with the profile ([`EventQueue::append`] with
//! `message_id`) queues a message at most once.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::watch;

/// The file name of the queue in the profile directory.
pub const QUEUE_FILE: &str = "daemon-events.sqlite";
/// Events older than this are deleted (30 days).
pub const RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
/// At most this many events are kept; the oldest go first.
pub const RETENTION_EVENTS: u64 = 100_000;

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQLite failed.
    #[error("event queue: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The queue's file cannot be opened with the profile's key (or is not a database).
    #[error("event queue: {0}")]
    Open(#[from] hushwire_e2e::E2eError),
    /// A stored event is not JSON (the file was changed by something else).
    #[error("event queue: a stored event does not parse: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The queue's lock was poisoned by a panicking thread.
    #[error("event queue: lock poisoned")]
    Poisoned,
    /// A blocking task failed.
    #[error("event queue: background task failed")]
    Join,
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event's JSON object (without `seq`).
    pub body: Value,
    /// The message it reports (`FROM/ID`), if it reports a stored message: queued at
    /// most once for this key, unless `repeat`.
    pub message_id: Option<String>,
    /// Queue it even when its message was queued before (an attachment's second report,
    /// once downloaded), still recording the key.
    pub repeat: bool,
}

/// One queued event.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    /// Its sequence number (increasing, never reused).
    pub seq: u64,
    /// The event object (with `seq`).
    pub body: Value,
}

/// The durable queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventQueue {
    conn: Arc<Mutex<Connection>>,
    latest: Arc<watch::Sender<u64>>,
    /// Whether the file was created by this open (no baseline of seen messages yet).
    fresh: bool,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl EventQueue {
    /// Opens (creating) the queue in `profile_dir`, encrypted at rest with the profile's
    /// database key (SQLCipher; a plaintext queue of an older release is encrypted first).
    pub fn open(profile_dir: &Path, key: &hushwire_e2e::StoreKey) -> Result<Self, QueueError> {
        let path = profile_dir.join(QUEUE_FILE);
        let fresh = !path.exists();
        let conn = hushwire_e2e::open_encrypted(&path, key)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO state (key, value) VALUES ('delivered', 0);",
        )?;
        let latest: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        // AUTOINCREMENT keeps numbers growing even when every row was deleted.
        let reserved: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let latest = to_u64(latest.max(reserved.unwrap_or(0)));
        let (tx, _) = watch::channel(latest);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            latest: Arc::new(tx),
            fresh,
        })
    }

    /// Whether this open created the file.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    async fn blocking<R, F>(&self, f: F) -> Result<R, QueueError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, QueueError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| QueueError::Poisoned)?;
            f(&mut guard)
        })
        .await
        .map_err(|_| QueueError::Join)?
    }

    /// Appends `events` in one transaction (skipping messages already queued) and wakes
    /// the consumers. Returns how many were appended.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<usize, QueueError> {
        if events.is_empty() {
            return Ok(0);
        }
        let (n, last) = self
            .blocking(move |conn| {
                let tx = conn.transaction()?;
                let now = now_ms();
                let mut n = 0;
                let mut last = 0i64;
                for e in events {
                    if let Some(id) = &e.message_id {
                        let inserted =
                            tx.execute("INSERT OR IGNORE INTO seen (id) VALUES (?1)", params![id])?;
                        if inserted == 0 && !e.repeat {
                            continue;
                        }
                    }
                    tx.execute(
                        "INSERT INTO events (at_ms, body) VALUES (?1, ?2)",
                        params![to_i64(now), e.body.to_string()],
                    )?;
                    last = tx.last_insert_rowid();
                    n += 1;
                }
                // Bounded retention: by age and by count.
                tx.execute(
                    "DELETE FROM events WHERE at_ms < ?1",
                    params![to_i64(now.saturating_sub(RETENTION_MS))],
                )?;
                tx.execute(
                    "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1",
                    params![to_i64(RETENTION_EVENTS)],
                )?;
                tx.commit()?;
                Ok((n, to_u64(last)))
            })
            .await?;
        if n > 0 {
            self.latest.send_modify(|v| *v = (*v).max(last));
        }
        Ok(n)
    }

    /// Records message ids as already reported without queueing events (the baseline
    /// of a new queue: what the profile held before the daemon first ran).
    pub async fn mark_seen(&self, ids: Vec<String>) -> Result<(), QueueError> {
        self.blocking(move |conn| {
            let tx = conn.transaction()?;
            for id in ids {
                tx.execute("INSERT OR IGNORE INTO seen (id) VALUES (?1)", params![id])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Message ids among `ids` that were never queued.
    pub async fn unseen(&self, ids: Vec<String>) -> Result<Vec<String>, QueueError> {
        self.blocking(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT 1 FROM seen WHERE id = ?1")?;
            let mut out = Vec::new();
            for id in ids {
                if stmt
                    .query_row(params![id], |_| Ok(()))
                    .optional()?
                    .is_none()
                {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Up to `limit` events after `after`, in order.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedEvent>, QueueError> {
        self.blocking(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![to_i64(after), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, body) = row?;
                let mut body: Value = serde_json::from_str(&body)?;
                if let Value::Object(map) = &mut body {
                    map.insert("seq".into(), Value::from(seq));
                }
                out.push(QueuedEvent {
                    seq: to_u64(seq),
                    body,
                });
            }
            Ok(out)
        })
        .await
    }

    /// How far events were handed to a consumer.
    pub async fn delivered(&self) -> Result<u64, QueueError> {
        self.blocking(|conn| {
            let v: i64 =
                conn.query_row("SELECT value FROM state WHERE key = 'delivered'", [], |r| {
                    r.get(0)
                })?;
            Ok(to_u64(v))
        })
        .await
    }

    /// Records that every event up to `seq` was handed to a consumer.
    pub async fn set_delivered(&self, seq: u64) -> Result<(), QueueError> {
        self.blocking(move |conn| {
            conn.execute(
                "UPDATE state SET value = MAX(value, ?1) WHERE key = 'delivered'",
                params![to_i64(seq)],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest sequence number (changes are observable with `changed()`).
    pub fn latest(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn appends_in_order_dedupes_messages_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = EventQueue::open(dir.path(), &hushwire_e2e::StoreKey::from_bytes([7; 32])).unwrap();
        assert!(q.is_fresh());
        let n = q
            .append(vec![
                NewEvent {
                    body: json!({"type": "a"}),
                    message_id: None,
                    repeat: false,
                },
                NewEvent {
                    body: json!({"type": "m"}),
                    message_id: Some("m1".into()),
                    repeat: false,
                },
                NewEvent {
                    body: json!({"type": "m"}),
                    message_id: Some("m1".into()),
                    repeat: false,
                },
            ])
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(*q.latest().borrow(), 2);
        q.set_delivered(1).await.unwrap();
        drop(q);
        let q = EventQueue::open(dir.path(), &hushwire_e2e::StoreKey::from_bytes([7; 32])).unwrap();
        assert!(!q.is_fresh());
        assert_eq!(q.delivered().await.unwrap(), 1);
        let rest = q.read_after(1, 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].seq, 2);
        assert_eq!(rest[0].body, json!({"type": "m", "seq": 2}));
        assert_eq!(
            q.unseen(vec!["m1".into(), "m2".into()]).await.unwrap(),
            vec!["m2".to_string()]
        );
        // Delivered never goes back.
        q.set_delivered(0).await.unwrap();
        assert_eq!(q.delivered().await.unwrap(), 1);
    }
}
