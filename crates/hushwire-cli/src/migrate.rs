//! `admin migrate`: an embedded server's data directory into PostgreSQL (and its media
//! into S3 or another directory), with a verification table at the end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hushwire_migrate::{MigrateOptions, ProgressEvent, Report, media_copy, migrate, redact_url};

use crate::user_error;

/// Progress lines per table at most this often (and once at its end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    from: PathBuf,
    to: String,
    media_to: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        return Err(user_error(
            "--to must be a postgres:// or postgresql:// URL",
        ));
    }
    let media = match &media_to {
        Some(spec) => Some(media_copy(&from, spec).map_err(|e| user_error(e.to_string()))?),
        None => None,
    };
    let last = Arc::new(Mutex::new(None::<(String, Instant)>));
    let progress = move |p: &ProgressEvent<'_>| {
        let Ok(mut last) = last.lock() else { return };
        let due = match &*last {
            Some((table, at)) => table != p.table || at.elapsed() >= PROGRESS_EVERY,
            None => true,
        };
        if due || p.done {
            eprintln!(
                "migrate: {:<14} {:>10} / {} {}",
                p.table,
                p.copied,
                p.total,
                if p.done { "done" } else { "…" }
            );
            *last = Some((p.table.to_owned(), Instant::now()));
        }
    };
    let options = MigrateOptions {
        progress: Some(Arc::new(progress)),
        ..MigrateOptions::default()
    };
    eprintln!(
        "migrate: {} -> {}{}",
        from.display(),
        redact_url(&to),
        media_to
            .as_deref()
            .map(|m| format!(" (media -> {})", redact_url(m)))
            .unwrap_or_default()
    );
    let report = migrate(&from, &to, media, &options)
        .await
        .map_err(|e| user_error(format!("migration failed: {e}")))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if report.ok {
        Ok(())
    } else {
        Err(user_error("verification found differences (see above)"))
    }
}

fn print_table(report: &Report) {
    println!("source: {}", report.source);
    println!(
        "target: {}{}",
        report.target,
        if report.resumed { " (resumed)" } else { "" }
    );
    println!(
        "{:<14} {:>12} {:>12}  {:<32}  result",
        "table", "source rows", "target rows", "checksum (source = target)"
    );
    for t in &report.tables {
        let sum = if t.source_checksum == t.target_checksum {
            t.source_checksum.clone()
        } else {
            format!("{} != {}", t.source_checksum, t.target_checksum)
        };
        println!(
            "{:<14} {:>12} {:>12}  {:<32}  {}",
            t.table,
            t.source_rows,
            t.target_rows,
            sum,
            if t.ok { "ok" } else { "MISMATCH" }
        );
    }
    match &report.media {
        Some(m) => {
            println!(
                "media: {}/{} parts copied and verified by SHA-256, {} failed, {} of blobs \
                 being deleted skipped: {}",
                m.verified_parts,
                m.source_parts,
                m.failures,
                m.skipped_deleting,
                if m.ok { "ok" } else { "MISMATCH" }
            );
            for f in &m.failed {
                println!("  failed: {f}");
            }
        }
        None => println!("media: not copied"),
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    println!("result: {}", if report.ok { "OK" } else { "FAILED" });
}
