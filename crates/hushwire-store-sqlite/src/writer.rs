//! The single writer thread and its group commit.
//!
//! Callers send [`Job`]s over a bounded channel. The thread takes the first job, drains
//! up to `max_batch` more that are already waiting, and runs them all in one
//! `BEGIN IMMEDIATE … COMMIT`, each job inside its own `SAVEPOINT` so that a job that
//! fails rolls back alone. Only after the `COMMIT` (an fsync of the WAL with
//! `synchronous=FULL`) does any caller get its reply: an `Ok` is durable.

use crate::ops::WriterState;
use hushwire_store::StoreError;
use tokio::sync::{mpsc, oneshot};

/// One write operation, run on the writer thread inside a savepoint.
pub(crate) trait Job: Send {
    /// Runs the operation; returns whether it succeeded (its savepoint is kept).
    fn run(&mut self, state: &mut WriterState) -> bool;
    /// Replies to the caller once the batch's fate is known: `Ok` when the batch
    /// committed, else the commit's error.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
}

/// A [`Job`] made of a closure and the caller's reply channel.
pub(crate) struct FnJob<T, F> {
    f: Option<F>,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> FnJob<T, F> {
    pub(crate) fn new(f: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            f: Some(f),
            out: None,
            reply,
        }
    }
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send,
    F: FnOnce(&mut WriterState) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, state: &mut WriterState) -> bool {
        let out = match self.f.take() {
            Some(f) => f(state),
            None => Err(StoreError::Backend("write job ran twice".into())),
        };
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), &StoreError>) {
        let out = match (committed, self.out) {
            // A job that failed changed nothing: its own error stands.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), Some(Ok(_))) => Err(StoreError::Backend(e.to_string())),
            (Ok(()), None) => Err(StoreError::Backend("write job did not run".into())),
            (Err(e), None) => Err(StoreError::Backend(e.to_string())),
        };
        // The caller may have gone away (cancelled); the write stands regardless.
        let _ = self.reply.send(out);
    }
}

/// What the writer thread receives.
pub(crate) enum Msg {
    Job(Box<dyn Job>),
    /// Finish what is queued before this, checkpoint the WAL, close, then reply.
    Shutdown(oneshot::Sender<()>),
}

/// The writer thread's main loop. Returns when every sender is gone or on shutdown.
pub(crate) fn run(mut state: WriterState, mut rx: mpsc::Receiver<Msg>, max_batch: usize) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    let mut shutdown = None;
    while shutdown.is_none() {
        match rx.blocking_recv() {
            None => break,
            Some(Msg::Shutdown(reply)) => shutdown = Some(reply),
            Some(Msg::Job(job)) => batch.push(job),
        }
        while shutdown.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Shutdown(reply)) => shutdown = Some(reply),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&mut state, &mut batch);
        }
    }
    // Refuse what is still queued, then let go of the database.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Job(job) => job.finish(Err(&StoreError::Closed)),
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
        .map_err(|e| StoreError::Backend(format!("{sql}: {e}")))
}

/// Runs `batch` in one transaction and replies to every job.
fn run_batch(state: &mut WriterState, batch: &mut Vec<Box<dyn Job>>) {
    let result = run_in_transaction(state, batch);
    if result.is_err() {
        // The transaction is gone: caches may describe rolled-back changes.
        if !state.conn.is_autocommit() {
            let _ = state.conn.execute_batch("ROLLBACK");
        }
        state.clear_caches();
    }
    let committed = result.as_ref().map(|_| ());
    if let Err(e) = &committed {
        tracing::error!(error = %e, jobs = batch.len(), "write batch failed");
    }
    for job in batch.drain(..) {
        job.finish(committed);
    }
}

fn run_in_transaction(
    state: &mut WriterState,
    batch: &mut [Box<dyn Job>],
) -> Result<(), StoreError> {
    exec(state, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        exec(state, "SAVEPOINT job")?;
        if job.run(state) {
            exec(state, "RELEASE job")?;
        } else {
            exec(state, "ROLLBACK TO job")?;
            exec(state, "RELEASE job")?;
            // The job may have touched caches before it failed; reload from the
            // transaction's (rolled-back) view on demand.
            state.clear_caches();
        }
    }
    exec(state, "COMMIT")
}
