//! A bench session: the server (started or given), registered devices, open connections.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hushwire_client::Endpoint;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::devices::{self, Cmd, ConnHandle, Device, Shared};
use crate::server::{ServerOpts, ServerProcess};

/// Where the server is and how the generator behaves; shared by every mode.
#[derive(Debug, Clone)]
pub struct SessionOpts {
    /// Start this server (ignored when `url` is set).
    pub server: ServerOpts,
    /// Target a running server instead.
    pub url: Option<String>,
    /// Further nodes of that deployment (devices spread round-robin over all).
    pub also_urls: Vec<String>,
    /// Its pin.
    pub pin: Option<String>,
    /// Its pid, for CPU/RSS figures.
    pub server_pid: Option<u32>,
    /// Registrations in flight.
    pub register_concurrency: usize,
    /// Connection handshakes in flight.
    pub connect_concurrency: usize,
    /// Synthetic ciphertext bytes per message.
    pub payload_bytes: usize,
    /// Ack after this many envelopes...
    pub ack_every: u64,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// Encrypt and decrypt every message with OpenMLS in the generator.
    pub real_mls: bool,
}

/// A live session.
pub struct Session {
    /// The server process, when this generator started it.
    pub server: Option<ServerProcess>,
    /// The server's pid, when known.
    pub server_pid: Option<u32>,
    /// The endpoint registrations use, and the connections of devices `i` with
    /// `i % (1 + others.len()) == 0`.
    pub endpoint: Endpoint,
    /// The other nodes' endpoints (device `i` uses `others[i % (1 + len) - 1]`).
    pub others: Vec<Endpoint>,
    /// Handle and group-id prefix of this run.
    pub prefix: String,
    /// Registered devices.
    pub devices: Vec<Device>,
    /// Open connections (the first `conns.len()` devices).
    pub conns: Vec<ConnHandle>,
    /// Connection tasks.
    pub tasks: JoinSet<Result<()>>,
    /// State shared with the tasks.
    pub shared: Arc<Shared>,
    connect_concurrency: usize,
}

/// Seconds since `t`, for progress lines.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

impl Session {
    /// Starts (or targets) the server, registers `n_devices` devices and connects the
    /// first `connect` of them by `deadline`. Connection tasks end by themselves at
    /// `task_deadline`.
    pub async fn start(
        opts: &SessionOpts,
        n_devices: usize,
        connect: usize,
        deadline: Instant,
        task_deadline: Instant,
    ) -> Result<Self> {
        let nonce: u64 = rand::random();
        let prefix = format!("lg{:08x}", nonce & 0xffff_ffff);
        let (server, url, pin, server_pid) = match &opts.url {
            Some(url) => (None, url.clone(), opts.pin.clone(), opts.server_pid),
            None => {
                let s = ServerProcess::start(&opts.server, Duration::from_secs(60))?;
                eprintln!(
                    "server pid {} at {} (log {})",
                    s.pid,
                    s.url,
                    s.log_path().display()
                );
                let (url, pin, pid) = (s.url.clone(), Some(s.pin.clone()), Some(s.pid));
                (Some(s), url, pin, pid)
            }
        };
        let endpoint = Endpoint::new(&url, pin.as_deref())
            .context("server URL or pin")?
            .with_connect_timeout(Duration::from_secs(30));
        let others = opts
            .also_urls
            .iter()
            .map(|u| {
                Endpoint::new(u, pin.as_deref())
                    .map(|e| e.with_connect_timeout(Duration::from_secs(30)))
                    .context("--also-url")
            })
            .collect::<Result<Vec<_>>>()?;
        if !others.is_empty() {
            eprintln!("{} nodes: devices spread round-robin", others.len() + 1);
        }
        let t = Instant::now();
        let devices = devices::register_all(
            &endpoint,
            &prefix,
            n_devices,
            opts.register_concurrency,
            deadline,
        )
        .await?;
        eprintln!(
            "registered {n_devices} devices in {:.1} s ({:.0}/s)",
            secs(t),
            n_devices as f64 / secs(t).max(1e-3)
        );
        let mut shared = Shared::new(
            nonce,
            opts.payload_bytes,
            opts.ack_every,
            opts.ack_delay,
            task_deadline,
        )?;
        if opts.real_mls {
            let t = Instant::now();
            shared.mls = Some(devices::RealMls::create(&devices, &prefix)?);
            eprintln!(
                "created {} MLS groups in memory in {:.1} s",
                n_devices / 2,
                secs(t)
            );
        }
        let shared = Arc::new(shared);
        let mut session = Self {
            server,
            server_pid,
            endpoint,
            others,
            prefix,
            devices,
            conns: Vec::new(),
            tasks: JoinSet::new(),
            shared,
            connect_concurrency: opts.connect_concurrency,
        };
        if connect > 0 {
            session.connect_up_to(connect, deadline).await?;
        }
        Ok(session)
    }

    /// Connects devices until `n` are connected and each has received `drained`.
    pub async fn connect_up_to(&mut self, n: usize, deadline: Instant) -> Result<()> {
        let n = n.min(self.devices.len());
        if n <= self.conns.len() {
            return Ok(());
        }
        let t = Instant::now();
        let from = self.conns.len();
        let new = self.open(&(from..n).collect::<Vec<_>>(), deadline).await?;
        self.conns.extend(new);
        let c = &self.shared.c;
        // Bounded by the deadline.
        while c.drained.load(Ordering::Relaxed) < n as u64 {
            if Instant::now() >= deadline {
                bail!(
                    "only {} of {n} connections finished their backlog",
                    c.drained.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "connected devices {from}..{n} in {:.1} s ({:.0}/s)",
            secs(t),
            (n - from) as f64 / secs(t).max(1e-3)
        );
        Ok(())
    }

    /// Opens and authenticates connections for devices `indices` and starts their tasks;
    /// the handles come back in the order of `indices`.
    async fn open(&mut self, indices: &[usize], deadline: Instant) -> Result<Vec<ConnHandle>> {
        let ctx = devices::ConnectCtx {
            endpoint: &self.endpoint,
            others: &self.others,
            devices: &self.devices,
            prefix: &self.prefix,
            concurrency: self.connect_concurrency,
            shared: &self.shared,
        };
        devices::connect_all(&ctx, indices, &mut self.tasks, deadline).await
    }

    /// Closes the connections of devices `indices` (normal close) and waits, bounded by
    /// `deadline`, until their tasks have finished closing.
    pub async fn close(&mut self, indices: &[usize], deadline: Instant) -> Result<()> {
        let c = &self.shared.c;
        let want = c.closed.load(Ordering::Relaxed) + indices.len() as u64;
        for &i in indices {
            let conn = self
                .conns
                .get(i)
                .context("closing a device that is not connected")?;
            let _ = conn.tx.send(Cmd::Close);
        }
        // Bounded by the deadline.
        while c.closed.load(Ordering::Relaxed) < want {
            if Instant::now() >= deadline {
                bail!(
                    "closing timed out: {} of {} connections closed",
                    indices.len() as u64 + c.closed.load(Ordering::Relaxed) - want,
                    indices.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Opens new connections for devices `indices` (their handles replace the old ones)
    /// and returns once every one is authenticated; their backlogs may still be arriving.
    pub async fn reconnect(&mut self, indices: &[usize], deadline: Instant) -> Result<()> {
        let new = self.open(indices, deadline).await?;
        for (&i, handle) in indices.iter().zip(new) {
            let slot = self
                .conns
                .get_mut(i)
                .context("reconnecting an unknown device")?;
            *slot = handle;
        }
        Ok(())
    }

    /// Pairs the connected devices into two-device groups.
    pub async fn setup_groups(&self, deadline: Instant) -> Result<()> {
        let t = Instant::now();
        devices::setup_groups(
            &self.conns,
            &self.devices,
            &self.prefix,
            &self.shared,
            deadline,
        )
        .await?;
        eprintln!(
            "created {} groups in {:.1} s",
            self.conns.len() / 2,
            secs(t)
        );
        Ok(())
    }

    /// Closes every connection (bounded wait) and stops the server if we started it.
    pub async fn finish(mut self) -> Result<()> {
        for c in &self.conns {
            let _ = c.tx.send(Cmd::Close);
        }
        let until = Instant::now() + Duration::from_secs(15);
        // At most one join per task, bounded by `until`.
        while let Ok(Some(_)) = tokio::time::timeout_at(until, self.tasks.join_next()).await {}
        self.tasks.abort_all();
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_secs(20)).await?;
        }
        Ok(())
    }
}
