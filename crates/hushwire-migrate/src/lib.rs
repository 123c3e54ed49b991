//! Moves an embedded Hushwire server (SQLite, `{data_dir}/hushwire.db`) into PostgreSQL
//! (the `hushwire-store-postgres` schema), and optionally its media blob bytes into
//! another [`BlobStore`] (e.g. S3): resumably, and verified at the end. The library
//! behind `hushwire admin migrate`; it parses no command line.
//!
//! # What moves
//! Every table of the PostgreSQL schema is filled from the source; the map (and what
//! is folded in where the schemas differ) is in `tables.rs`: accounts, devices
//! (revoked flags, keys), invites, key packages (one-time and last resort), groups
//! (epoch, last seq), rosters, GroupInfos, message bodies (with their reference counts
//! and the disappearing flag from `timed_entries`), mailbox entries with their exact
//! seqs, the per-device seq counters (`mailbox_floor` and the highest queued seq, so
//! new seqs continue after every seq ever handed out), idempotency records, blocks,
//! blob metadata, parts and readers, reports, device lists, link sessions with their
//! slots, and the key directory (its secret, so the nodes sign roots and prove lookups
//! with the keys clients pinned; its epoch log, which they replay to the same roots, so
//! no client sees a rollback or a changed key; and its unpublished changes). Ids keep
//! their values and the
//! identity sequences continue after the source's (AUTOINCREMENT) high-water marks.
//! With [`MediaCopy`], every recorded part of every blob not being deleted is copied
//! and its SHA-256 checked against the metadata on both the source and the target
//! bytes.
//!
//! # Safety
//! - The source is opened with SQLite's exclusive lock held for the whole run and
//!   `query_only`: a running server (which keeps the database open) makes the
//!   migration refuse ([`MigrateError::SourceInUse`]), and a server cannot start on the
//!   data directory while it runs. Nothing is written to the source.
//! - The target must be empty (every Hushwire table absent or without rows) unless it
//!   records a migration from the same source (`hushwire_migration`), which is then
//!   resumed; anything else is refused ([`MigrateError::TargetNotEmpty`],
//!   [`MigrateError::OtherSource`]). A session advisory lock keeps two migrations from
//!   running at once.
//! - Rows are copied in key order, in batches (default 1,000 rows, fewer when rows are
//!   large), each batch in one transaction together with its table's progress
//!   (`hushwire_migration_progress`: last key copied). A run stopped at any point
//!   (SIGKILL included) continues after the last committed batch; inserts are
//!   `ON CONFLICT DO NOTHING` as a safety net, so nothing is duplicated. Media parts are
//!   write-once in the target store, and an existing part is compared by hash.
//!
//! # Verification
//! After the copy, each table's rows are counted and checksummed on both sides: the
//! sum of the SHA-256 of each row's canonical encoding, computed from the same mapped
//! columns, so the order rows are read in does not matter. [`Report::ok`] is false on
//! any difference and on any media part that failed its hash check.
//!
//! The two bookkeeping tables stay in the target (a record of the migration); the
//! store ignores them. Run the migration with every server stopped and start the
//! PostgreSQL nodes after it reports success.

mod source;
mod tables;
mod target;
mod value;

use bytes::Bytes;
use futures_util::TryStreamExt;
use hushwire_blobstore::{BLOB_ID_LEN, BlobStore, BlobStoreError, ObjectBlobStore, PutOutcome};
use serde::Serialize;
use sha2::{Digest, Sha256};
use source::Source;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tables::{Kind, TABLES, Table};
use target::Target;
use value::Value;

pub use source::DATABASE_FILE;

/// Why a migration failed (it can be run again: it resumes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// No database at the source path.
    #[error("no embedded server database at {0}")]
    SourceMissing(PathBuf),
    /// A process (a running server) has the source database open.
    #[error("{0} is in use (is the server still running? stop it first)")]
    SourceInUse(PathBuf),
    /// The source is at another schema version than this build reads.
    #[error(
        "source schema version {found}, this build migrates version {supported} \
         (start and stop the matching server once to upgrade it)"
    )]
    SourceSchema {
        /// Found.
        found: i64,
        /// Read by this build.
        supported: i64,
    },
    /// Reading the source failed.
    #[error("reading the source database: {0}")]
    Sqlite(String),
    /// A source value does not fit its PostgreSQL column.
    #[error("source data cannot be migrated: {0}")]
    SourceData(String),
    /// The target URL does not parse (not quoted: it may hold a password).
    #[error("invalid PostgreSQL connection URL")]
    InvalidUrl,
    /// PostgreSQL failed (the URL is never quoted).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The target store refused to open or migrate its schema.
    #[error("target store: {0}")]
    Store(hushwire_store::StoreError),
    /// The target holds data that this migration did not put there.
    #[error(
        "target database is not empty (table {table} has rows) and holds no migration from this source"
    )]
    TargetNotEmpty {
        /// The first non-empty table found.
        table: String,
    },
    /// The target records a migration from another source.
    #[error("target database holds a migration from another source ({found})")]
    OtherSource {
        /// That source.
        found: String,
    },
    /// Another migration holds the target's migration lock.
    #[error("another migration into this database is running")]
    MigrationRunning,
    /// A blob store failed (source or target).
    #[error("media: {0}")]
    Blob(#[from] BlobStoreError),
    /// Stopped by [`MigrateOptions::stop_after_batches`] (progress is saved).
    #[error("stopped after {0} batches as asked; run again to resume")]
    Stopped(u64),
}

/// One event for a progress display.
#[derive(Debug, Clone)]
pub struct ProgressEvent<'a> {
    /// Table (or `media`).
    pub table: &'a str,
    /// Rows (parts) copied so far, this run and earlier ones.
    pub copied: u64,
    /// Rows (parts) in the source.
    pub total: u64,
    /// The table is complete.
    pub done: bool,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent<'_>) + Send + Sync>;

/// Knobs of a run.
#[derive(Clone)]
pub struct MigrateOptions {
    /// Rows per transaction (at most).
    pub batch_rows: usize,
    /// Approximate bytes of row data per transaction (at most, but one row at least).
    pub batch_bytes: usize,
    /// Stop with [`MigrateError::Stopped`] after this many committed batches (for tests
    /// of resumption, or to bound one run's work).
    pub stop_after_batches: Option<u64>,
    /// Called after each batch and at each table's end.
    pub progress: Option<ProgressFn>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            batch_rows: 1_000,
            batch_bytes: 16 << 20,
            stop_after_batches: None,
            progress: None,
        }
    }
}

impl std::fmt::Debug for MigrateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateOptions")
            .field("batch_rows", &self.batch_rows)
            .field("batch_bytes", &self.batch_bytes)
            .field("stop_after_batches", &self.stop_after_batches)
            .finish_non_exhaustive()
    }
}

/// Where media bytes come from and go to.
#[derive(Debug, Clone)]
pub struct MediaCopy {
    /// The source server's blob store (`ObjectBlobStore::local(data_dir)`).
    pub from: Arc<dyn BlobStore>,
    /// The target blob store.
    pub to: Arc<dyn BlobStore>,
}

/// One table's verification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableCheck {
    /// PostgreSQL table.
    pub table: String,
    /// Rows in the source (as mapped).
    pub source_rows: u64,
    /// Rows in the target.
    pub target_rows: u64,
    /// Source checksum (hex).
    pub source_checksum: String,
    /// Target checksum (hex).
    pub target_checksum: String,
    /// Counts and checksums are equal.
    pub ok: bool,
}

/// The media copy's verification.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MediaCheck {
    /// Recorded parts of live blobs in the source.
    pub source_parts: u64,
    /// Parts copied and verified by hash in the target (all runs).
    pub verified_parts: u64,
    /// Bytes copied in this run.
    pub bytes_this_run: u64,
    /// Parts that failed their hash or length check (all runs).
    pub failures: u64,
    /// The failures of this run (blob id, part, reason).
    pub failed: Vec<String>,
    /// Parts of blobs being deleted, not copied.
    pub skipped_deleting: u64,
    /// Every part verified and none failed.
    pub ok: bool,
}

/// The outcome of a migration: per-table and media checks.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The source database.
    pub source: String,
    /// The target, password redacted.
    pub target: String,
    /// This run resumed an earlier one.
    pub resumed: bool,
    /// Per-table checks, in copy order.
    pub tables: Vec<TableCheck>,
    /// Media, when copied.
    pub media: Option<MediaCheck>,
    /// Findings about the source and the schema map.
    pub notes: Vec<String>,
    /// Every check passed.
    pub ok: bool,
}

/// `url` with any password replaced by `***` (for display).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Key-value form (`host=… password=…`).
        return url
            .split(' ')
            .map(|kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                None => userinfo.to_owned(),
            };
            format!("{}{user}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// The blob store `spec` names: `s3://BUCKET[/prefix]` (reached with the standard AWS
/// environment variables, see [`hushwire_blobstore::S3Settings::from_env`]) or a local
/// directory (blobs under `{dir}/blobs/`, as a server with that data directory keeps them).
pub fn media_target(spec: &str) -> Result<Arc<dyn BlobStore>, MigrateError> {
    if spec.starts_with("s3://") {
        let settings = hushwire_blobstore::S3Settings::from_env(|k| std::env::var(k).ok());
        Ok(Arc::new(ObjectBlobStore::s3(spec, &settings)?))
    } else {
        Ok(Arc::new(ObjectBlobStore::local(Path::new(spec))?))
    }
}

/// The media of the embedded server in `data_dir` (its local blob store, whose empty
/// `blobs/` directory is created if missing, as a server does at start), copied to the
/// store `to` names (see [`media_target`]).
pub fn media_copy(data_dir: &Path, to: &str) -> Result<MediaCopy, MigrateError> {
    if !data_dir.join(DATABASE_FILE).is_file() {
        return Err(MigrateError::SourceMissing(data_dir.join(DATABASE_FILE)));
    }
    Ok(MediaCopy {
        from: Arc::new(ObjectBlobStore::local(data_dir)?),
        to: media_target(to)?,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The key of the media pseudo-table in the progress table.
const MEDIA: &str = "media";

/// Recorded parts of blobs not being deleted, in key order.
const MEDIA_PARTS: Table = Table {
    name: MEDIA,
    cols: &[
        ("blob_id", Kind::Bytes),
        ("part", Kind::I64),
        ("len", Kind::I64),
        ("sha256", Kind::Bytes),
    ],
    key: 2,
    source: "SELECT p.blob_id AS blob_id, p.part AS part, p.len AS len, p.sha256 AS sha256 \
             FROM blob_parts p JOIN blobs b ON b.blob_id = p.blob_id \
             WHERE b.deleting_at_ms IS NULL",
    identity: false,
};

/// Parts of blobs being deleted (left behind).
const DELETING_PARTS: Table = Table {
    name: "deleting parts",
    cols: &[("blob_id", Kind::Bytes)],
    key: 1,
    source: "SELECT p.blob_id AS blob_id FROM blob_parts p JOIN blobs b \
             ON b.blob_id = p.blob_id WHERE b.deleting_at_ms IS NOT NULL",
    identity: false,
};

/// Media parts per progress record.
const MEDIA_BATCH: usize = 32;

/// Migrates the embedded server in `data_dir` into the PostgreSQL database at
/// `target_url` (and its media with `media`), then verifies. Resumes an earlier,
/// interrupted run into the same target. See the crate docs.
pub async fn migrate(
    data_dir: &Path,
    target_url: &str,
    media: Option<MediaCopy>,
    options: &MigrateOptions,
) -> Result<Report, MigrateError> {
    let source = Source::open(data_dir)?;
    let fingerprint = std::fs::canonicalize(&source.path)
        .unwrap_or_else(|_| source.path.clone())
        .display()
        .to_string();
    let mut target = Target::connect(target_url).await?;
    let resumed = target.prepare(target_url, &fingerprint, now_ms()).await?;
    let mut notes = source.notes()?;
    let mut batches = 0u64;
    let batch_rows = options.batch_rows.max(1);
    let report = |table: &str, copied: u64, total: u64, done: bool| {
        if let Some(p) = &options.progress {
            p(&ProgressEvent {
                table,
                copied,
                total,
                done,
            });
        }
    };

    for table in TABLES {
        let mut progress = target.progress(table.name).await?;
        let total = source.count(table)?;
        while !progress.done {
            let rows = source.batch(
                table,
                progress.last_key.as_deref(),
                batch_rows,
                options.batch_bytes,
            )?;
            let done = rows.len() < batch_rows
                && rows.iter().map(|r| weight(r)).sum::<usize>() < options.batch_bytes;
            target.copy_batch(table, &rows, done).await?;
            progress.rows += rows.len() as u64;
            if let Some(last) = rows.last() {
                progress.last_key = Some(last[..table.key].to_vec());
            }
            progress.done = done;
            report(table.name, progress.rows, total, done);
            batches += 1;
            if options.stop_after_batches.is_some_and(|n| batches >= n) && !done {
                return Err(MigrateError::Stopped(batches));
            }
        }
        if table.identity {
            target
                .set_identity(table, source.high_water(table)?)
                .await?;
        }
    }

    let media_check = match &media {
        Some(copy) => {
            Some(copy_media(&source, &mut target, copy, options, &mut batches, &report).await?)
        }
        None => {
            notes.push(
                "media bytes not copied (no media target): they stay in the source's blob \
                 store"
                    .to_owned(),
            );
            None
        }
    };

    let mut checks = Vec::new();
    for table in TABLES {
        let s = source.checksum(table)?;
        let t = target.checksum(table).await?;
        checks.push(TableCheck {
            table: table.name.to_owned(),
            source_rows: s.rows,
            target_rows: t.rows,
            source_checksum: s.hex(),
            target_checksum: t.hex(),
            ok: s == t,
        });
    }
    let ok = checks.iter().all(|c| c.ok) && media_check.as_ref().is_none_or(|m| m.ok);
    if ok {
        target.finish(now_ms()).await?;
    }
    Ok(Report {
        source: source.path.display().to_string(),
        target: redact_url(target_url),
        resumed,
        tables: checks,
        media: media_check,
        notes,
        ok,
    })
}

fn weight(row: &[Value]) -> usize {
    row.iter().map(Value::weight).sum()
}

async fn copy_media(
    source: &Source,
    target: &mut Target,
    copy: &MediaCopy,
    options: &MigrateOptions,
    batches: &mut u64,
    report: &impl Fn(&str, u64, u64, bool),
) -> Result<MediaCheck, MigrateError> {
    let mut progress = target.progress(MEDIA).await?;
    let total = source.count(&MEDIA_PARTS)?;
    let mut check = MediaCheck {
        source_parts: total,
        skipped_deleting: source.count(&DELETING_PARTS)?,
        ..MediaCheck::default()
    };
    while !progress.done {
        let rows = source.batch(
            &MEDIA_PARTS,
            progress.last_key.as_deref(),
            MEDIA_BATCH,
            usize::MAX,
        )?;
        let done = rows.len() < MEDIA_BATCH;
        let mut copied = 0u64;
        let mut failures = 0u64;
        for row in &rows {
            match copy_part(copy, row).await? {
                Ok(bytes) => {
                    copied += 1;
                    check.bytes_this_run += bytes;
                }
                Err(why) => {
                    failures += 1;
                    check.failed.push(why);
                }
            }
        }
        let last = rows.last().map(|r| &r[..2]);
        target
            .media_progress(MEDIA, last, copied, failures, done)
            .await?;
        progress.rows += copied;
        progress.failures += failures;
        if let Some(last) = last {
            progress.last_key = Some(last.to_vec());
        }
        progress.done = done;
        report(MEDIA, progress.rows + progress.failures, total, done);
        *batches += 1;
        if options.stop_after_batches.is_some_and(|n| *batches >= n) && !done {
            return Err(MigrateError::Stopped(*batches));
        }
    }
    check.verified_parts = progress.rows;
    check.failures = progress.failures;
    check.ok = check.failures == 0 && check.verified_parts == total;
    Ok(check)
}

/// Copies one part and checks it. The outer error is a store failure (the run stops
/// and can resume); the inner one a part that failed its check (recorded, skipped).
async fn copy_part(copy: &MediaCopy, row: &[Value]) -> Result<Result<u64, String>, MigrateError> {
    let (
        Some(Value::Bytes(id)),
        Some(Value::Int(part)),
        Some(Value::Int(len)),
        Some(Value::Bytes(sha)),
    ) = (row.first(), row.get(1), row.get(2), row.get(3))
    else {
        return Ok(Err("malformed blob_parts row".to_owned()));
    };
    let name = format!("{}/{part}", hex::encode(id));
    let Ok(blob) = <[u8; BLOB_ID_LEN]>::try_from(id.as_slice()) else {
        return Ok(Err(format!("{name}: blob id of {} bytes", id.len())));
    };
    let (Ok(index), Ok(len)) = (u32::try_from(*part), u64::try_from(*len)) else {
        return Ok(Err(format!("{name}: index or length out of range")));
    };
    let bytes = match read_part(copy.from.as_ref(), &blob, index, len).await {
        Ok(b) => b,
        Err(BlobStoreError::NotFound) => return Ok(Err(format!("{name}: missing in the source"))),
        Err(e) => return Err(e.into()),
    };
    if bytes.len() as u64 != len || Sha256::digest(&bytes).as_slice() != sha.as_slice() {
        return Ok(Err(format!(
            "{name}: source bytes do not match the recorded length/SHA-256"
        )));
    }
    let outcome = copy.to.put_part(&blob, index, bytes).await?;
    let back = match read_part(copy.to.as_ref(), &blob, index, len).await {
        Ok(b) => b,
        Err(BlobStoreError::NotFound) => {
            return Ok(Err(format!(
                "{name}: not readable in the target after writing"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if back.len() as u64 != len || Sha256::digest(&back).as_slice() != sha.as_slice() {
        let how = match outcome {
            PutOutcome::Exists => "a different part already exists in the target",
            PutOutcome::Created => "the target returned other bytes than written",
        };
        return Ok(Err(format!("{name}: {how}")));
    }
    Ok(Ok(len))
}

/// A whole part, at most `len + 1` bytes read (more shows as a length mismatch).
async fn read_part(
    store: &dyn BlobStore,
    blob: &[u8; BLOB_ID_LEN],
    index: u32,
    len: u64,
) -> Result<Bytes, BlobStoreError> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let mut stream = store.read_part(blob, index, 0).await?;
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(64 << 20));
    while let Some(chunk) = stream.try_next().await? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > len {
            break;
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@host:5432/db"),
            "postgres://u:***@host:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@host/db?x=1"),
            "postgres://u@host/db?x=1"
        );
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        assert_eq!(
            redact_url("postgresql://u:p@ss@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
    }
}
