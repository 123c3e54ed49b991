//! Test support (feature `moto`, and this crate's own tests): a local S3 server, moto
//! (`pip install 'moto[server]'`, done by `scripts/test-tools.sh`), started on a free
//! 127.0.0.1 port and killed when dropped.
//!
//! [`MotoServer::start`] returns `Ok(None)` after printing a visible "skipped" line when
//! moto is not installed, unless the environment variable `CI` is set: then a missing
//! moto is an error, so CI cannot pass by skipping.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::s3::{S3Credentials, S3Settings};

/// How long moto may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Ports tried when moto fails to start (another process took the free port).
const START_ATTEMPTS: usize = 3;

/// Access key moto accepts (it does not check signatures against real accounts).
pub const ACCESS_KEY_ID: &str = "hushwire-test";
/// Secret moto accepts.
pub const SECRET_ACCESS_KEY: &str = "hushwire-test-secret";

/// A running moto S3 server, killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
}

/// How moto is launched.
enum Launcher {
    Module,
    Script,
}

fn launcher() -> Option<Launcher> {
    let quiet = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if quiet(Command::new("python3").args(["-c", "import moto.server"])) {
        return Some(Launcher::Module);
    }
    if quiet(Command::new("moto_server").arg("--help")) {
        return Some(Launcher::Script);
    }
    None
}

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

impl MotoServer {
    /// Starts moto and waits until it answers. `Ok(None)`: not installed and `CI`
    /// unset (a "skipped" line was printed).
    pub fn start() -> Result<Option<Self>, String> {
        let Some(launcher) = launcher() else {
            if std::env::var_os("CI").is_some() {
                return Err(
                    "moto is not installed (CI is set, so S3 tests may not skip): run \
                     scripts/test-tools.sh"
                        .into(),
                );
            }
            eprintln!(
                "skipped: moto (local S3) not installed; run scripts/test-tools.sh \
                 (pip install 'moto[server]')"
            );
            return Ok(None);
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let mut cmd = match launcher {
                Launcher::Module => {
                    let mut c = Command::new("python3");
                    c.args(["-m", "moto.server"]);
                    c
                }
                Launcher::Script => Command::new("moto_server"),
            };
            let child = cmd
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start moto: {e}"))?;
            let mut server = Self { child, port };
            match server.wait_ready() {
                Ok(()) => return Ok(Some(server)),
                Err(e) => last = e,
            }
            // `server` drops here: the failed process is killed and reaped.
        }
        Err(format!("moto did not start: {last}"))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto exited with {status}"));
            }
            if let Ok((200..=299, _)) = self.raw("GET", "/") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One unsigned HTTP/1.1 request; the status code and body.
    fn raw(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.take(1 << 20)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {text:.80}"))?;
        Ok((code, text))
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a name unique in this process (moto accepts unsigned
    /// bucket creation) and returns the name.
    pub fn create_bucket(&self) -> Result<String, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hushwire-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        match self.raw("PUT", &format!("/{name}"))? {
            (200..=299, _) => Ok(name),
            (code, body) => Err(format!("creating bucket {name}: HTTP {code}: {body:.200}")),
        }
    }

    /// Settings that reach this server.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint()),
            allow_http: true,
            credentials: Some(S3Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None)),
        }
    }

    /// An AWS-style credentials file's text that reaches this server.
    pub fn credentials_file(&self) -> String {
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY_ID}\n\
             aws_secret_access_key = {SECRET_ACCESS_KEY}\nregion = us-east-1\n\
             endpoint_url = {}\nallow_http = true\n",
            self.endpoint()
        )
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
