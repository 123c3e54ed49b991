//! The thread that changes the tree: inserting an epoch's entries (a VRF evaluation per
//! handle, then hashing up the tree) is seconds of CPU for a bulk epoch, such as the
//! first publication after thousands of registrations, or a node's replay of the log.
//!
//! On the server's runtime that work took a worker thread and its share of the core from
//! message delivery: with 10,000 devices at 6,000 msgs/s on one core, a publication of
//! the 10,000 freshly registered accounts during the measurement raised delivery p99
//! from 15 ms to 896 ms. Here it runs on one thread of its own, with its own
//! single-threaded runtime, at a lower CPU priority (nice [`NICE`], Linux): on an idle
//! core it runs at full speed; on a busy one the message path goes first and the epoch
//! takes longer. Only the in-memory tree is touched on this thread, never the store: a
//! pooled database connection opened here would be driven by this thread for everyone.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

/// The nice value of the tree thread (0 is the default; 19 the lowest priority). CFS
/// gives a nice-10 thread about a tenth of the core against one busy nice-0 thread.
pub const NICE: i32 = 10;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A handle to the tree thread. The thread ends when the handle is dropped.
#[derive(Debug)]
pub(crate) struct TreeWorker {
    /// `None` when the thread could not be started: work then runs on the caller's task.
    jobs: Option<mpsc::UnboundedSender<Job>>,
}

impl TreeWorker {
    pub(crate) fn start() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let started = std::thread::Builder::new()
            .name("hushwire-kt".into())
            .spawn(move || {
                lower_priority();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "no runtime for the key directory's tree thread");
                        return;
                    }
                };
                runtime.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        // A panicking job ends its task, not the thread; its caller
                        // sees the answer channel closed.
                        let _ = tokio::spawn(job).await;
                    }
                });
            });
        match started {
            Ok(_) => Self { jobs: Some(tx) },
            Err(e) => {
                tracing::warn!(error = %e, "the key directory's tree thread did not start; tree work runs on the server's runtime");
                Self { jobs: None }
            }
        }
    }

    /// Runs `work` on the tree thread and returns its output; `None` if the job was lost
    /// (it panicked). If the thread is gone, runs it here. Jobs run one at a time, in the
    /// order they came. If the caller is dropped, its job still runs to its end.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::pin(async move {
            let _ = tx.send(work.await);
        });
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::error::SendError(job)) = jobs.send(job) {
                    job.await;
                }
            }
            None => job.await,
        }
        rx.await.ok()
    }
}

#[cfg(test)]
impl TreeWorker {
    /// Holds the tree thread until the returned sender is dropped (or sent on): jobs
    /// queued meanwhile wait their turn, so a test can catch one before it runs.
    pub(crate) fn pause(&self) -> oneshot::Sender<()> {
        let (release, held) = oneshot::channel::<()>();
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Box::pin(async move {
                let _ = held.await;
            }));
        }
        release
    }
}

/// Lowers the calling thread's CPU priority to [`NICE`]. On Linux the nice value is per
/// thread (`setpriority(PRIO_PROCESS, tid)`); elsewhere nothing changes.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::debug!(error = %e, "could not lower the tree thread's priority");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_tree_thread_at_low_priority_and_a_panic_loses_only_its_job() {
        let worker = TreeWorker::start();
        let name = worker
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("hushwire-kt"));
        #[cfg(target_os = "linux")]
        {
            let nice = worker
                .run(async {
                    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
                })
                .await
                .unwrap();
            assert_eq!(nice, NICE, "the tree thread runs at a lower priority");
            let here =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            assert_ne!(here, NICE, "the caller's thread keeps its priority");
        }
        let lost: Option<()> = worker.run(async { panic!("boom") }).await;
        assert!(lost.is_none());
        let after: u32 = worker.run(async { 7 }).await.unwrap();
        assert_eq!(after, 7, "the thread outlives a panicking job");
    }
}
