//! One profile's Hushwire client as a long-running service: the shared core of the
//! terminal app (`hushwire chat`), the local web app (`hushwire app`) and the JSON-RPC
//! daemon (`hushwire daemon`).
//!
//! [`hushwire_client::Client`] futures are not `Send` (the profile is one SQLite
//! connection), so the service runs the client on a thread of its own, with a
//! current-thread Tokio runtime. That thread receives live (reconnecting by itself with
//! backoff) and runs commands between receives:
//!
//! - [`Service::with`] runs any closure on the client and returns its result: every front
//!   end uses the client library directly, so no protocol or storage logic is written
//!   twice. A running live wait is cancelled for it and resumed afterwards (what was
//!   stored is acknowledged later; the server redelivers anything unacknowledged, and the
//!   profile skips what it has).
//! - [`Service::subscribe`] gives every [`Event`] the client reports (messages, receipts,
//!   typing, group changes, ...) plus the service's own [`ServiceEvent`]s.
//!
//! Dropping every [`Service`] handle (or [`Service::shutdown`]) stops the thread after the
//! current command; the client then acknowledges what it stored and disconnects.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use hushwire_client::{Client, ClientError, ClientOptions, Event};

mod commands;
pub use commands::{Command, Outcome, ViewOnce, parse_timer, timer_text};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A boxed, non-`Send` future borrowing the client.
pub type ClientFuture<'a, R> = Pin<Box<dyn Future<Output = R> + 'a>>;

type Job = Box<dyn for<'a> FnOnce(&'a mut Client) -> ClientFuture<'a, ()> + Send>;

/// How long one live wait lasts before the loop checks in (commands interrupt it anyway).
const LIVE_WAIT: Duration = Duration::from_secs(25);
/// Bound for one network operation of the live loop.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for slow subscribers before they miss some (they see `Lagged`).
const EVENT_BUFFER: usize = 4096;

/// Why the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The profile could not be opened (not registered, damaged, ...).
    #[error("cannot open the profile: {0}")]
    Open(#[source] ClientError),
    /// The service thread is gone (shut down or panicked).
    #[error("the client service stopped")]
    Stopped,
    /// The service thread could not be started.
    #[error("cannot start the client thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the service itself reports, next to the client's events.
#[derive(Debug, Clone, PartialEq, Eq)]
// Nearly every event is a client event: boxing it would allocate for each one to save
// space in the rare `Connection` one.
#[allow(clippy::large_enum_variant)]
pub enum ServiceEvent {
    /// Something the client reported.
    Client(Event),
    /// Connected to the server and caught up with the mailbox (`true`), or the
    /// connection is down and the service retries (`false`, with the reason).
    Connection {
        /// Whether the live connection works.
        online: bool,
        /// Why it is down.
        reason: Option<String>,
    },
}

/// Settings of a [`Service`].
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Client settings.
    pub client: ClientOptions,
    /// Receive live (keep a connection and store what arrives). Off: only commands run.
    pub live: bool,
    /// Where received files are saved (default: the profile's `media` directory).
    pub download_dir: Option<PathBuf>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            live: true,
            download_dir: None,
        }
    }
}

/// A handle to a running client service. Cheap to clone; every clone talks to the same
/// thread.
#[derive(Clone)]
pub struct Service {
    jobs: mpsc::UnboundedSender<Job>,
    events: broadcast::Sender<ServiceEvent>,
    online: watch::Receiver<bool>,
    profile_dir: PathBuf,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("profile_dir", &self.profile_dir)
            .field("online", &*self.online.borrow())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Opens the registered profile in `profile_dir` and starts its thread.
    pub fn start(profile_dir: &Path, options: ServiceOptions) -> Result<Self, ServiceError> {
        Self::start_subscribed(profile_dir, options).map(|(s, _)| s)
    }

    /// Like [`Service::start`], with a subscription made before the client thread runs:
    /// it sees every event from the first on (the daemon's durable queue needs that).
    pub fn start_subscribed(
        profile_dir: &Path,
        options: ServiceOptions,
    ) -> Result<(Self, broadcast::Receiver<ServiceEvent>), ServiceError> {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let first = events.subscribe();
        let (online_tx, online_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), ClientError>>();
        let dir = profile_dir.to_path_buf();
        let events_tx = events.clone();
        std::thread::Builder::new()
            .name("hushwire-client".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ClientError::Protocol(format!(
                            "cannot start a runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut client = match Client::open(&dir, options.client.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    client.set_auto_download(Some(
                        options
                            .download_dir
                            .clone()
                            .unwrap_or_else(|| dir.join("media")),
                    ));
                    let _ = ready_tx.send(Ok(()));
                    run(&mut client, jobs_rx, events_tx, online_tx, options.live).await;
                    client.disconnect().await;
                });
            })
            .map_err(ServiceError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((
                Self {
                    jobs: jobs_tx,
                    events,
                    online: online_rx,
                    profile_dir: profile_dir.to_path_buf(),
                },
                first,
            )),
            Ok(Err(e)) => Err(ServiceError::Open(e)),
            Err(_) => Err(ServiceError::Stopped),
        }
    }

    /// Runs `f` on the client, between live waits, and returns its result.
    ///
    /// ```no_run
    /// # async fn demo(service: hushwire_service::Service) -> Result<(), Box<dyn std::error::Error>> {
    /// let names = service
    ///     .with(|client| Box::pin(async move {
    ///         client.profile().conversations().map(|c| c.len())
    ///     }))
    ///     .await??;
    /// # Ok(()) }
    /// ```
    pub async fn with<R, F>(&self, f: F) -> Result<R, ServiceError>
    where
        R: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> ClientFuture<'a, R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<R>();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let r = f(client).await;
                let _ = tx.send(r);
            })
        });
        self.jobs.send(job).map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// Every event from now on. A subscriber that falls more than 4,096 events behind
    /// gets `RecvError::Lagged` and misses some (a durable consumer, like the daemon,
    /// keeps its own queue).
    pub fn subscribe(&self) -> broadcast::Receiver<ServiceEvent> {
        self.events.subscribe()
    }

    /// Whether the live connection is up (changes are observable with `changed()`).
    pub fn online(&self) -> watch::Receiver<bool> {
        self.online.clone()
    }

    /// The profile directory.
    pub fn profile_dir(&self) -> &Path {
        &self.profile_dir
    }

    /// An emitter for closures run with [`Service::with`]: what it is given reaches every
    /// subscriber, like the live loop's events.
    pub fn emitter(&self) -> Emitter {
        Emitter(self.events.clone())
    }

    /// Queues `text` for `to` (a handle or `#GROUP`) and sends it; returns the message id.
    /// Queued messages survive an unreachable server and go out with the next flush.
    pub async fn send_text(&self, to: &str, text: &str) -> Result<String, ClientError> {
        let (to, text) = (to.to_string(), text.to_string());
        let emitter = self.emitter();
        self.with(move |c| {
            Box::pin(async move {
                let id = c.queue_text(&to, &text)?;
                c.flush_outbox(NETWORK_TIMEOUT, &mut |e| emitter.emit(e))
                    .await?;
                Ok(id)
            })
        })
        .await
        .map_err(stopped)?
    }

    /// Stops the thread after the current command.
    pub async fn shutdown(self) {
        let _ = self.with(|_| Box::pin(async {})).await;
        drop(self.jobs);
    }
}

fn stopped(e: ServiceError) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Hands events to a [`Service`]'s subscribers (see [`Service::emitter`]).
#[derive(Clone, Debug)]
pub struct Emitter(broadcast::Sender<ServiceEvent>);

impl Emitter {
    /// Reports a client event to every subscriber.
    pub fn emit(&self, event: Event) {
        let _ = self.0.send(ServiceEvent::Client(event));
    }
}

async fn run(
    client: &mut Client,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: broadcast::Sender<ServiceEvent>,
    online: watch::Sender<bool>,
    live: bool,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        // Commands first.
        while let Ok(job) = jobs.try_recv() {
            job(client).await;
        }
        // A scheduled backup (`hushwire backup schedule`), when due.
        match client.run_due_backup(commands::unix_ms()) {
            Ok(Some(path)) => tracing::info!(file = %path.display(), "scheduled backup written"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "scheduled backup failed; retried later"),
        }
        if !live {
            match jobs.recv().await {
                Some(job) => {
                    job(client).await;
                    continue;
                }
                None => return,
            }
        }
        let mut emit = |e: Event| {
            let _ = events.send(ServiceEvent::Client(e));
        };
        tokio::select! {
            biased;
            job = jobs.recv() => match job {
                Some(job) => job(client).await,
                None => return,
            },
            // Offline, the first receive only catches up (no wait), so that "online" is
            // reported as soon as the mailbox is drained, not after a whole live wait.
            result = client.receive(
                if *online.borrow() { LIVE_WAIT } else { Duration::ZERO },
                NETWORK_TIMEOUT,
                &mut emit,
            ) => match result {
                Ok(_) => {
                    backoff = Duration::from_millis(500);
                    if !*online.borrow() {
                        let _ = online.send(true);
                        let _ = events.send(ServiceEvent::Connection { online: true, reason: None });
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "live receive failed; retrying");
                    if *online.borrow() || backoff == Duration::from_millis(500) {
                        let _ = online.send(false);
                        let _ = events.send(ServiceEvent::Connection {
                            online: false,
                            reason: Some(e.to_string()),
                        });
                    }
                    // Wait before retrying, but run commands meanwhile.
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            job = jobs.recv() => match job {
                                Some(job) => job(client).await,
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use hushwire_tests::{TestServer, register};

    /// The test profiles' passphrase (`hushwire_tests::PASSPHRASE`).
    fn test_options() -> ServiceOptions {
        ServiceOptions {
            client: hushwire_tests::options(),
            ..ServiceOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_run_and_live_messages_arrive() {
        let tmp = tempfile::tempdir().unwrap();
        let server = TestServer::start(&tmp.path().join("server")).await;
        let mut alice = register(tmp.path(), &server, "alice").await;
        let bob = register(tmp.path(), &server, "bob").await;
        drop(bob);
        let service = Service::start(&tmp.path().join("bob"), test_options()).unwrap();
        let mut events = service.subscribe();
        hushwire_tests::send(&mut alice, "bob", "hello service").await;
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(ServiceEvent::Client(Event::Message(m))) = events.recv().await {
                    return m;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got.text, "hello service");
        // A command while the live wait runs.
        let id = service
            .send_text("alice", "hi from the service")
            .await
            .unwrap();
        assert!(!id.is_empty());
        let texts: Vec<String> = hushwire_tests::receive(&mut alice)
            .await
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert!(texts.contains(&"hi from the service".into()), "{texts:?}");
        let n = service
            .with(|c| Box::pin(async move { c.profile().conversations().unwrap().len() }))
            .await
            .unwrap();
        assert_eq!(n, 1);
        service.shutdown().await;
        server.stop().await;
    }

    /// Every conversation command through the service, checked on the other client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conversation_commands_reach_the_other_client() {
        use hushwire_e2e::{DeleteScope, E2eError};
        let tmp = tempfile::tempdir().unwrap();
        let server = TestServer::start(&tmp.path().join("server")).await;
        let mut alice = register(tmp.path(), &server, "alice").await;
        drop(register(tmp.path(), &server, "bob").await);
        let options = ServiceOptions {
            live: false,
            ..test_options()
        };
        let bob = Service::start(&tmp.path().join("bob"), options).unwrap();
        let sync =
            || bob.with(|c| Box::pin(async move { c.sync(NETWORK_TIMEOUT, &mut |_| {}).await }));
        let hello = hushwire_tests::send(&mut alice, "bob", "hello bob").await;
        sync().await.unwrap().unwrap();
        let request = || bob.with(|c| Box::pin(async move { c.profile().is_request("alice") }));
        assert!(request().await.unwrap().unwrap());
        bob.command(Command::Accept {
            handle: "alice".into(),
        })
        .await
        .unwrap();
        assert!(!request().await.unwrap().unwrap());

        // Reply, edit, react: alice sees the current state.
        let reply = bob
            .command(Command::Reply {
                id: hello.clone(),
                text: "hi alise".into(),
            })
            .await
            .unwrap();
        let reply_id = reply.id.expect("a reply has an id");
        assert!(reply.pending.is_none() && reply.failures.is_empty());
        bob.command(Command::Edit {
            id: reply_id.clone(),
            text: "hi alice".into(),
        })
        .await
        .unwrap();
        bob.command(Command::React {
            id: hello.clone(),
            emoji: "👍".into(),
        })
        .await
        .unwrap();
        hushwire_tests::receive(&mut alice).await;
        let got = alice.profile().history("bob").unwrap();
        let r = got
            .iter()
            .find(|m| m.id == reply_id)
            .expect("the reply arrived");
        assert_eq!(r.text, "hi alice");
        assert!(r.edited_at_ms.is_some());
        assert_eq!(r.reply_to.as_deref(), Some(hello.as_str()));
        let reactions = alice.profile().reactions("bob").unwrap();
        assert_eq!(reactions[&hello][0].emoji, "👍");

        // Only the author edits; someone else's message is deleted here only.
        let err = bob
            .command(Command::Edit {
                id: hello.clone(),
                text: "forged".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::E2e(E2eError::NotAuthorized(_))),
            "{err}"
        );
        let own = bob
            .command(Command::Delete {
                id: reply_id.clone(),
            })
            .await
            .unwrap();
        assert_eq!(own.scope, Some(DeleteScope::Everyone));
        let theirs = bob
            .command(Command::Delete { id: hello.clone() })
            .await
            .unwrap();
        assert_eq!(theirs.scope, Some(DeleteScope::ForMe));
        hushwire_tests::receive(&mut alice).await;
        let ids: Vec<String> = alice
            .profile()
            .history("bob")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert!(!ids.contains(&reply_id), "deleted for everyone");
        assert!(ids.contains(&hello), "alice keeps her own message");

        // The timer is agreed in the conversation.
        bob.command(Command::Timer {
            conversation: "alice".into(),
            timer_ms: parse_timer("1h").unwrap(),
        })
        .await
        .unwrap();
        hushwire_tests::receive(&mut alice).await;
        assert_eq!(alice.profile().timer("bob").unwrap(), 3_600_000);

        // Settings and blocking.
        bob.command(Command::ReadReceipts(false)).await.unwrap();
        let on = bob
            .with(|c| Box::pin(async move { c.profile().read_receipts() }))
            .await
            .unwrap()
            .unwrap();
        assert!(!on);
        bob.command(Command::Block {
            handle: "alice".into(),
        })
        .await
        .unwrap();
        let blocked = || bob.with(|c| Box::pin(async move { c.profile().blocked() }));
        assert_eq!(blocked().await.unwrap().unwrap(), vec!["alice".to_string()]);
        bob.command(Command::Unblock {
            handle: "alice".into(),
        })
        .await
        .unwrap();
        assert!(blocked().await.unwrap().unwrap().is_empty());

        // An unknown message is an error, and changes nothing.
        assert!(
            bob.command(Command::Delete { id: "nope".into() })
                .await
                .is_err()
        );
        bob.shutdown().await;
        server.stop().await;
    }

    /// Linking in three steps: while the session waits for the new device the service
    /// goes on receiving (only opening and finishing hold the client), and what arrived
    /// meanwhile is in the new device's history.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn linking_keeps_the_service_receiving() {
        let tmp = tempfile::tempdir().unwrap();
        let server = TestServer::start(&tmp.path().join("server")).await;
        drop(register(tmp.path(), &server, "alice").await);
        let mut bob = register(tmp.path(), &server, "bob").await;
        let service = Service::start(&tmp.path().join("alice"), test_options()).unwrap();
        let mut events = service.subscribe();
        let pending = service
            .with(|c| Box::pin(async move { c.open_link(Duration::from_secs(120)).await }))
            .await
            .unwrap()
            .unwrap();
        let code = pending.code().encode();
        let waiting = tokio::spawn(async move {
            let request = pending.wait_for_device().await;
            (pending, request)
        });

        hushwire_tests::send(&mut bob, "alice", "while linking").await;
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Ok(ServiceEvent::Client(Event::Message(m))) = events.recv().await
                    && m.text == "while linking"
                {
                    return;
                }
            }
        })
        .await
        .expect("the service received while the link session waited");
        assert!(!waiting.is_finished(), "no device has answered yet");

        let laptop = tmp.path().join("alice-laptop");
        let existing = async {
            let (pending, request) = waiting.await.unwrap();
            let request = request.unwrap();
            assert_eq!(request.name, "laptop");
            service
                .with(move |c| {
                    Box::pin(
                        async move { c.finish_link(pending, request, true, &mut |_| {}).await },
                    )
                })
                .await
                .unwrap()
        };
        let mut ignore = |_| {};
        let new = hushwire_client::join_by_link(
            &laptop,
            &code,
            "laptop",
            hushwire_tests::options(),
            Duration::from_secs(120),
            &mut ignore,
        );
        let (report, joined) = tokio::join!(existing, new);
        let report = report.unwrap();
        joined.unwrap();
        assert_eq!(report.name, "laptop");
        let laptop = Client::open(&laptop, hushwire_tests::options()).unwrap();
        let texts: Vec<String> = laptop
            .profile()
            .history("bob")
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert!(texts.contains(&"while linking".to_string()), "{texts:?}");
        service.shutdown().await;
        server.stop().await;
    }
}
