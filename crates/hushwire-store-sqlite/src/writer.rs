//! The single writer thread and its group commit.
//!
//! Callers send [`Job`]s over a bounded channel. The thread takes the first job, drains
//! up to `max_batch` more that are already waiting, and runs them all in one
//! `BEGIN IMMEDIATE … COMMIT`. Only after the `COMMIT` (an fsync of the WAL with
//! `synchronous=FULL`) does any caller get its reply: an `Ok` is durable.
//!
//! A job that fails must change nothing. Jobs first run side by side with no savepoints:
//! a savepoint makes SQLite copy every page a job touches into a sub-journal (about
//! 20 KiB of copying and allocation per message, the largest item in the writer's
//! profile). A job that fails having changed nothing (SQLite's `total_changes` is
//! unchanged; a failed statement undoes itself) needs no undo. If a failed job had
//! changed rows, the whole transaction is rolled back and the batch runs again with one
//! `SAVEPOINT` per job, so that job rolls back alone; jobs are therefore re-runnable
//! (`FnMut`), and only the last run's results are answered.
//!
//! Acknowledgement hints ([`Msg::Ack`]) ride along: the latest one per device is applied
//! at the start of the next batch, in the same commit, and nobody waits for it.

use crate::conv::{same_error, store_error};
use crate::ops::WriterState;
use hushwire_store::{DeviceId, StoreError};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// One write operation, run on the writer thread inside a savepoint.
pub(crate) trait Job: Send {
    /// Runs the operation; returns whether it succeeded. May run again (after a
    /// rollback); the last run's result counts.
    fn run(&mut self, state: &mut WriterState) -> bool;
    /// Replies to the caller once the batch's fate is known: `Ok` when the batch
    /// committed, else the commit's error.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
    /// Whether the last run failed because the disk is full.
    fn storage_full(&self) -> bool {
        false
    }
}

/// A [`Job`] made of a closure and the caller's reply channel.
pub(crate) struct FnJob<T, F> {
    f: F,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> FnJob<T, F> {
    pub(crate) fn new(f: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            f,
            out: None,
            reply,
        }
    }
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send,
    F: FnMut(&mut WriterState) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, state: &mut WriterState) -> bool {
        let out = (self.f)(state);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), &StoreError>) {
        let out = match (committed, self.out) {
            // A job that failed changed nothing: its own error stands.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), Some(Ok(_))) => Err(same_error(e)),
            (Ok(()), None) => Err(StoreError::Backend("write job did not run".into())),
            (Err(e), None) => Err(same_error(e)),
        };
        // The caller may have gone away (cancelled); the write stands regardless.
        let _ = self.reply.send(out);
    }

    fn storage_full(&self) -> bool {
        matches!(self.out, Some(Err(StoreError::StorageFull(_))))
    }
}

/// What the writer thread receives.
pub(crate) enum Msg {
    Job(Box<dyn Job>),
    /// An acknowledgement hint ([`hushwire_store::Mailboxes::ack_hint`]): applied in the
    /// next batch, coalesced with the device's other queued acks, answered to nobody.
    Ack {
        device: DeviceId,
        up_to_seq: u64,
    },
    /// Finish what is queued before this, checkpoint the WAL, close, then reply.
    Shutdown(oneshot::Sender<()>),
}

/// Queued acknowledgement hints, highest seq per device.
pub(crate) type Acks = HashMap<DeviceId, u64>;

fn add_ack(acks: &mut Acks, device: DeviceId, up_to_seq: u64) {
    let e = acks.entry(device).or_insert(up_to_seq);
    *e = (*e).max(up_to_seq);
}

/// How the writer forms batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most jobs per commit.
    pub(crate) max_batch: usize,
    /// How long a batch stays open for more jobs when the previous commit had company
    /// (zero: never wait). See [`crate::SqliteOptions::commit_window`].
    pub(crate) window: std::time::Duration,
}

/// A batch this large is not held open: its commit cost is already shared widely, and
/// waiting would only add latency.
const WINDOW_TARGET: usize = 32;

/// Takes what is already queued into `batch`/`acks`, up to the batch bound. Acks count
/// towards a (larger) bound too, so this ends even if acks keep coming.
fn drain(
    rx: &mut mpsc::Receiver<Msg>,
    batch: &mut Vec<Box<dyn Job>>,
    acks: &mut Acks,
    shutdown: &mut Option<oneshot::Sender<()>>,
    max_batch: usize,
) {
    let mut taken = 0;
    while shutdown.is_none() && batch.len() < max_batch && taken < 4 * max_batch {
        match rx.try_recv() {
            Ok(Msg::Job(job)) => batch.push(job),
            Ok(Msg::Ack { device, up_to_seq }) => add_ack(acks, device, up_to_seq),
            Ok(Msg::Shutdown(reply)) => *shutdown = Some(reply),
            Err(_) => break,
        }
        taken += 1;
    }
}

/// The writer thread's main loop. Returns when every sender is gone or on shutdown.
///
/// Group commit: a batch is everything queued when the writer gets to it. Under load,
/// that alone gives small batches (a commit's fsync takes about a millisecond here, and
/// each commit costs a fixed ~100 µs of CPU for its WAL frames and fsync). So when the
/// previous batch had more than one job (callers overlap) and fewer than
/// [`WINDOW_TARGET`] jobs are waiting, the batch stays open for `window` before it runs.
/// A lone job (low load) never waits, nor does a batch that is already large.
pub(crate) fn run(mut state: WriterState, mut rx: mpsc::Receiver<Msg>, batching: Batching) {
    let Batching { max_batch, window } = batching;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    let mut acks = Acks::new();
    let mut shutdown = None;
    let mut last_batch = 0usize;
    while shutdown.is_none() {
        match rx.blocking_recv() {
            None => break,
            Some(Msg::Shutdown(reply)) => shutdown = Some(reply),
            Some(Msg::Job(job)) => batch.push(job),
            Some(Msg::Ack { device, up_to_seq }) => add_ack(&mut acks, device, up_to_seq),
        }
        drain(&mut rx, &mut batch, &mut acks, &mut shutdown, max_batch);
        let small = batch.len() < WINDOW_TARGET.min(max_batch);
        if last_batch > 1 && small && !window.is_zero() && !batch.is_empty() {
            std::thread::sleep(window);
            drain(&mut rx, &mut batch, &mut acks, &mut shutdown, max_batch);
        }
        last_batch = batch.len();
        if !batch.is_empty() || !acks.is_empty() {
            run_batch(&mut state, &mut batch, &mut acks);
            // Outside the transaction: wipe deleted disappearing/retracted content from
            // the WAL when due (see `controls.rs`).
            state.maybe_wipe();
        }
    }
    // Refuse what is still queued (queued acks are hints: they may go), then let go of
    // the database.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Job(job) => job.finish(Err(&StoreError::Closed)),
            Msg::Ack { .. } => {}
            Msg::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }
    state.close();
    if let Some(reply) = shutdown {
        let _ = reply.send(());
    }
}

fn exec(state: &WriterState, sql: &str) -> Result<(), StoreError> {
    state
        .conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(|e| store_error(&e, format!("{sql}: {e}")))
}

/// Runs the queued acks and `batch` in one transaction and replies to every job.
fn run_batch(state: &mut WriterState, batch: &mut Vec<Box<dyn Job>>, acks: &mut Acks) {
    let mut result = run_in_transaction(state, batch, acks, Isolation::Shared);
    if matches!(result, Ok(Outcome::NeedsIsolation)) {
        // A failed job left changes behind: undo everything, run again with savepoints.
        let _ = state.conn.execute_batch("ROLLBACK");
        state.clear_caches();
        result = run_in_transaction(state, batch, acks, Isolation::PerJob);
    }
    acks.clear();
    if result.is_err() {
        // The transaction is gone: caches may describe rolled-back changes.
        if !state.conn.is_autocommit() {
            let _ = state.conn.execute_batch("ROLLBACK");
        }
        state.clear_caches();
    }
    let committed = result.as_ref().map(|_| ());
    match &committed {
        Ok(()) => {}
        // Expected to pass once space is freed: one warning per refused batch.
        Err(e @ StoreError::StorageFull(_)) => {
            tracing::warn!(error = %e, jobs = batch.len(), "disk full: write batch refused");
        }
        Err(e) => tracing::error!(error = %e, jobs = batch.len(), "write batch failed"),
    }
    for job in batch.drain(..) {
        job.finish(committed);
    }
}

/// How the jobs of one transaction are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints; a failed job that changed rows abandons the pass.
    Shared,
    /// One savepoint per job.
    PerJob,
}

/// How a pass ended.
enum Outcome {
    Committed,
    /// A job failed after changing rows (only under [`Isolation::Shared`]). Nothing was
    /// committed; the transaction is still open.
    NeedsIsolation,
}

/// Runs one unit (an ack or a job) under `isolation`; `Ok(false)` abandons a shared
/// pass.
fn run_unit(
    state: &mut WriterState,
    isolation: Isolation,
    unit: impl FnOnce(&mut WriterState) -> bool,
) -> Result<bool, StoreError> {
    match isolation {
        Isolation::Shared => {
            let before = state.conn.total_changes();
            if unit(state) {
                return Ok(true);
            }
            // The unit may have touched caches before it failed; reload on demand.
            state.clear_caches();
            if state.conn.is_autocommit() {
                // Some errors (I/O, full disk) make SQLite roll back the transaction.
                return Err(StoreError::Backend(
                    "the write transaction was rolled back by SQLite".into(),
                ));
            }
            Ok(state.conn.total_changes() == before)
        }
        Isolation::PerJob => {
            exec(state, "SAVEPOINT job")?;
            if unit(state) {
                exec(state, "RELEASE job")?;
            } else {
                exec(state, "ROLLBACK TO job")?;
                exec(state, "RELEASE job")?;
                state.clear_caches();
            }
            Ok(true)
        }
    }
}

/// A failure that ended the transaction, as [`StoreError::StorageFull`] when the unit
/// that ended it failed on a full disk (SQLite then rolls back and says no more).
fn full_if(full: bool, e: StoreError) -> StoreError {
    match e {
        StoreError::Backend(detail) if full => StoreError::StorageFull(detail),
        other => other,
    }
}

fn run_in_transaction(
    state: &mut WriterState,
    batch: &mut [Box<dyn Job>],
    acks: &Acks,
    isolation: Isolation,
) -> Result<Outcome, StoreError> {
    exec(state, "BEGIN IMMEDIATE")?;
    // Acks first: they only remove entries, and a job queued after an ack must see it.
    for (device, up_to_seq) in acks {
        let mut full = false;
        let apply = |w: &mut WriterState| match w.ack(*device, *up_to_seq) {
            Ok(_) => true,
            Err(e) => {
                full = matches!(e, StoreError::StorageFull(_));
                tracing::warn!(error = %e, device = device.0, "acknowledgement not applied");
                false
            }
        };
        let ran = run_unit(state, isolation, apply);
        if !ran.map_err(|e| full_if(full, e))? {
            return Ok(Outcome::NeedsIsolation);
        }
    }
    for job in batch.iter_mut() {
        let ran = run_unit(state, isolation, |w| job.run(w));
        if !ran.map_err(|e| full_if(job.storage_full(), e))? {
            return Ok(Outcome::NeedsIsolation);
        }
    }
    exec(state, "COMMIT")?;
    Ok(Outcome::Committed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Inserts an invite, then succeeds or fails; records its runs and its answer.
    struct TestJob {
        code: &'static str,
        write_before_failing: bool,
        fail: bool,
        log: Arc<Mutex<Vec<(&'static str, &'static str)>>>,
    }

    impl Job for TestJob {
        fn run(&mut self, state: &mut WriterState) -> bool {
            self.log.lock().unwrap().push((self.code, "run"));
            if self.fail && !self.write_before_failing {
                return false;
            }
            state
                .conn
                .execute(
                    "INSERT INTO invites (code, expires_at_ms) VALUES (?1, 0)",
                    [self.code],
                )
                .unwrap();
            !self.fail
        }

        fn finish(self: Box<Self>, committed: Result<(), &StoreError>) {
            let answer = if committed.is_ok() && !self.fail {
                "ok"
            } else {
                "err"
            };
            self.log.lock().unwrap().push((self.code, answer));
        }
    }

    fn state() -> WriterState {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        WriterState::new(conn)
    }

    fn invites(state: &WriterState) -> Vec<String> {
        let mut stmt = state
            .conn
            .prepare("SELECT code FROM invites ORDER BY code")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn batch(
        jobs: &[(&'static str, bool, bool)],
        log: &Arc<Mutex<Vec<(&'static str, &'static str)>>>,
    ) -> Vec<Box<dyn Job>> {
        jobs.iter()
            .map(|&(code, write_before_failing, fail)| {
                Box::new(TestJob {
                    code,
                    write_before_failing,
                    fail,
                    log: Arc::clone(log),
                }) as Box<dyn Job>
            })
            .collect()
    }

    fn runs(log: &[(&str, &str)], code: &str) -> usize {
        log.iter().filter(|e| **e == (code, "run")).count()
    }

    #[test]
    fn a_failed_job_that_wrote_nothing_needs_no_second_pass() {
        let mut st = state();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut jobs = batch(
            &[("a", false, false), ("b", false, true), ("c", false, false)],
            &log,
        );
        run_batch(&mut st, &mut jobs, &mut Acks::new());
        assert_eq!(invites(&st), ["a", "c"]);
        let log = log.lock().unwrap();
        assert_eq!(
            (runs(&log, "a"), runs(&log, "b"), runs(&log, "c")),
            (1, 1, 1)
        );
        assert!(log.contains(&("a", "ok")) && log.contains(&("c", "ok")));
        assert!(log.contains(&("b", "err")));
    }

    #[test]
    fn a_failed_job_that_wrote_rolls_back_alone_in_a_second_pass() {
        let mut st = state();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut jobs = batch(
            &[("a", false, false), ("b", true, true), ("c", false, false)],
            &log,
        );
        run_batch(&mut st, &mut jobs, &mut Acks::new());
        // b's insert is undone; a and c are committed once, from the second pass.
        assert_eq!(invites(&st), ["a", "c"]);
        assert!(st.conn.is_autocommit());
        let log = log.lock().unwrap();
        assert_eq!(
            (runs(&log, "a"), runs(&log, "b"), runs(&log, "c")),
            (2, 2, 1)
        );
        assert!(log.contains(&("a", "ok")) && log.contains(&("c", "ok")));
        assert!(log.contains(&("b", "err")));
    }
}
