//! Starting and stopping the `hushwire serve` process under test.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// The `hushwire` binary.
    pub bin: PathBuf,
    /// `taskset -c CPU` for the server, if set.
    pub cpu: Option<String>,
    /// Where the temporary data directory is made (default: the system temp dir).
    pub data_parent: Option<PathBuf>,
    /// `max_connections` in the bench config.
    pub max_connections: usize,
    /// Keep the data directory (and the server log) after the run.
    pub keep_data: bool,
}

/// The bench configuration: rate limits lifted (every device registers from 127.0.0.1),
/// room for ~20k connections, a 1 TiB blob quota (the media mode moves many GiB).
/// Everything else is the server's default (durable writes).
fn bench_config(max_connections: usize) -> String {
    format!(
        "# Written by hushwire-loadgen: registration/claim limits lifted for the bench.\n\
         max_connections = {max_connections}\n\
         [rate_limits]\n\
         registrations_per_ip_per_minute = 10000000\n\
         claims_per_device_per_minute = 10000000\n\
         submits_per_device_per_minute = 10000000\n\
         [media]\n\
         quota_bytes = 1099511627776\n"
    )
}

/// A running `hushwire serve` child process. Dropping it kills the process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    /// The server's pid (taskset execs the server, so this is the server itself).
    pub pid: u32,
    /// The base URL it printed.
    pub url: String,
    /// The certificate pin it printed.
    pub pin: String,
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the server on 127.0.0.1 (free port) with a fresh data directory and waits
    /// (at most `timeout`) for its `url:` and `pin:` lines.
    pub fn start(opts: &ServerOpts, timeout: Duration) -> Result<Self> {
        if !opts.bin.exists() {
            bail!(
                "server binary {} not found (build it with `cargo build --release -p hushwire`, or pass --server-bin)",
                opts.bin.display()
            );
        }
        let dir = match &opts.data_parent {
            Some(p) => tempfile::Builder::new()
                .prefix("hushwire-bench-")
                .tempdir_in(p),
            None => tempfile::Builder::new().prefix("hushwire-bench-").tempdir(),
        }
        .context("creating the server's data directory")?;
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, bench_config(opts.max_connections))
            .context("writing the bench config")?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).context("creating the server log")?;
        let mut cmd = match &opts.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu).arg(&opts.bin);
                c
            }
            None => Command::new(&opts.bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                log_file.try_clone().context("duplicating the log handle")?,
            ));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel::<String>();
        // Forwards stdout lines until the url and pin are read, then keeps draining the
        // pipe into the log so the server never blocks on a full pipe. Ends at EOF.
        std::thread::spawn(move || {
            let mut log_file = log_file;
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                let _ = writeln!(log_file, "{line}");
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            child: Some(child),
            pid,
            url: String::new(),
            pin: String::new(),
            dir: Some(dir),
            log,
        };
        let deadline = Instant::now() + timeout;
        while server.url.is_empty() || server.pin.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("url: ") {
                        server.url = u.trim().to_string();
                    } else if let Some(p) = line.strip_prefix("pin: ") {
                        server.pin = p.trim().to_string();
                    }
                }
                Err(_) => {
                    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                    bail!(
                        "the server did not print its url and pin within {timeout:?}; its output:\n{log}"
                    );
                }
            }
        }
        if opts.keep_data
            && let Some(dir) = server.dir.take()
        {
            let kept = dir.keep();
            eprintln!("server data kept in {}", kept.display());
        }
        Ok(server)
    }

    /// The server's log file (stderr and stdout).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops the server with SIGTERM (graceful), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("server did not stop within {grace:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
