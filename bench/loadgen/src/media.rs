//! `media` mode: attachment throughput and memory.
//!
//! - **Throughput**: a file (1 GiB by default) sent end to end — `Client::send_file`
//!   (STREAM encryption + hashes + upload in parts) and `Client::download_attachment`
//!   (download + hash + decryption + verification + saving) — against the same bytes
//!   moved without end-to-end encryption through the same server stack and client HTTP
//!   code: a blob created with the raw file's size, its parts PUT straight from the file,
//!   then downloaded into a file. Both run in this process against a `hushwire serve`
//!   child process on loopback, alternating, `--repeat` times.
//! - **Memory**: a larger file (2 GiB by default) sent and received by `hushwire send
//!   --file` and `hushwire receive` child processes. Their peak RSS (`VmHWM`, polled) is
//!   compared with the same commands moving a 1 KiB file; the server's peak (its
//!   `VmHWM` reset through `/proc/PID/clear_refs` before each transfer) with its RSS
//!   before it.
//!
//! Every file lives in a temporary directory under `--files-dir` and is deleted at the
//! end; every loop is bounded by the file size and every wait by a deadline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hushwire_client::api::signing_time_ms;
use hushwire_client::{
    ApiClient, ApiRequest, Client, ClientOptions, Event, ProfileSigner, SendFileOptions,
};
use hushwire_proto::wire;
use rand::{RngCore, SeedableRng};

use crate::procfs;
use crate::server::{ServerOpts, ServerProcess};

/// The throw-away profiles' passphrase (they live in a temporary directory).
const LOADGEN_PASSPHRASE: &str = "hushwire loadgen";

const MIB: u64 = 1024 * 1024;

/// Options of the `media` mode.
#[derive(Debug, Args)]
pub struct MediaArgs {
    /// Size of the throughput file, MiB.
    #[arg(long, default_value_t = 1024)]
    throughput_mib: u64,
    /// Size of the memory run's file, MiB (0 skips the memory run).
    #[arg(long, default_value_t = 2048)]
    memory_mib: u64,
    /// Throughput measurements of each kind (alternating end-to-end and plain).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Where the temporary files go (deleted afterwards).
    #[arg(long, default_value = "/tmp")]
    files_dir: PathBuf,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    procfs::round1(bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Flushes every dirty page to disk (`sync`), so that each timed phase starts without
/// the previous one's writeback (on a disk that sustains ~360 MB/s, the blobs and files
/// of a 1 GiB round would otherwise throttle whichever phase comes next).
fn settle_disk() -> Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// Writes `mib` MiB of random bytes.
fn random_file(path: &Path, mib: u64, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn signed(client: &Client, req: ApiRequest) -> Result<ApiRequest> {
    let signer = ProfileSigner::new(client.profile())?;
    Ok(req.sign(client.endpoint(), &signer, signing_time_ms())?)
}

/// The same bytes without end-to-end encryption: a blob of the raw file's size in the
/// conversation's group, its parts read from the file and PUT.
async fn plain_upload(alice: &Client, api: &ApiClient, path: &Path) -> Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let size = std::fs::metadata(path)?.len();
    let group_id = alice
        .profile()
        .send_group_id("bob")?
        .context("no group with bob")?;
    let created: wire::BlobCreated = api
        .call(signed(
            alice,
            ApiRequest::create_blob(&wire::CreateBlob {
                size,
                group_id: group_id.into(),
            }),
        )?)
        .await?;
    let part_size = u64::from(created.part_size);
    let mut file = std::fs::File::open(path)?;
    let parts = size.div_ceil(part_size);
    for index in 0..parts {
        let len = (size - index * part_size).min(part_size);
        let mut part = vec![0u8; usize::try_from(len)?];
        file.read_exact(&mut part)?;
        let index = u32::try_from(index)?;
        let req = signed(
            alice,
            ApiRequest::put_blob_part(&created.blob_id, index, part),
        )?;
        let _: wire::BlobStatus = api.call_with_timeout(req, Duration::from_secs(120)).await?;
    }
    Ok((created.blob_id.to_vec(), started.elapsed()))
}

/// Downloads a blob as it is into `path` (fsynced at the end if `durable`).
async fn plain_download(
    bob: &Client,
    api: &ApiClient,
    blob_id: &[u8],
    path: &Path,
    durable: bool,
) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = api
        .open_stream(signed(bob, ApiRequest::download_blob(blob_id, 0))?)
        .await?;
    let mut out = std::io::BufWriter::with_capacity(
        MIB as usize,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.next_chunk())
        .await
        .context("the download stalled")?
    {
        out.write_all(&chunk?)?;
    }
    out.flush()?;
    if durable {
        out.get_ref().sync_all()?;
    }
    Ok(started.elapsed())
}

/// One end-to-end send and receive; returns (upload, download) durations. `durable`:
/// the received file is fsynced before it gets its name (the client's default).
async fn e2e_round(
    alice: &mut Client,
    bob: &mut Client,
    path: &Path,
    dl: &Path,
    durable: bool,
) -> Result<(Duration, Duration)> {
    bob.set_durable_downloads(durable);
    settle_disk()?;
    let started = Instant::now();
    let id = alice
        .send_file("bob", path, &SendFileOptions::default())
        .await?;
    let upload = started.elapsed();
    alice
        .flush_outbox(Duration::from_secs(60), &mut |_| {})
        .await?;
    let mut got = None;
    bob.sync(Duration::from_secs(60), &mut |e| {
        if let Event::Attachment(m, _) = e {
            got = Some((m.from, m.id));
        }
    })
    .await?;
    let (from, mid) = got.context("bob did not get the attachment")?;
    if mid != id {
        bail!("bob got message {mid}, not {id}");
    }
    settle_disk()?;
    let started = Instant::now();
    let saved = bob.download_attachment(&from, &mid, dl).await?;
    let download = started.elapsed();
    std::fs::remove_file(&saved)?;
    Ok((upload, download))
}

/// Runs a `hushwire` command, polling its and the server's peak RSS; returns the
/// command's and the server's `VmHWM` in KiB.
fn run_measured(
    bin: &Path,
    profile: &Path,
    args: &[&str],
    server_pid: u32,
    limit: Duration,
) -> Result<(u64, u64)> {
    // The server's peak restarts from its current RSS.
    std::fs::write(format!("/proc/{server_pid}/clear_refs"), "5")
        .context("resetting the server's VmHWM (clear_refs)")?;
    let mut child = Command::new(bin)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("HUSHWIRE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + limit;
    let mut peak = 0;
    loop {
        if let Ok(m) = procfs::mem(child.id()) {
            peak = peak.max(m.vm_hwm_kib);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("hushwire {args:?} failed ({status}): {err}");
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("hushwire {args:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let server = procfs::mem(server_pid)?.vm_hwm_kib;
    Ok((peak, server))
}

/// The whole mode; prints the report.
pub async fn run_mode(server_opts: &ServerOpts, a: &MediaArgs, json: bool) -> Result<()> {
    let load_before = procfs::loadavg();
    let work = tempfile::Builder::new()
        .prefix("hushwire-media-bench-")
        .tempdir_in(&a.files_dir)
        .with_context(|| format!("creating a directory in {}", a.files_dir.display()))?;
    let server = ServerProcess::start(server_opts, Duration::from_secs(60))?;
    let (alice_dir, bob_dir) = (work.path().join("alice"), work.path().join("bob"));
    for (dir, handle) in [(&alice_dir, "alice"), (&bob_dir, "bob")] {
        hushwire_client::register(
            dir,
            handle,
            &server.url,
            Some(&server.pin),
            None,
            ClientOptions::default().with_passphrase(LOADGEN_PASSPHRASE),
        )
        .await?;
    }
    let mut alice = Client::open(
        &alice_dir,
        ClientOptions::default().with_passphrase(LOADGEN_PASSPHRASE),
    )?;
    let mut bob = Client::open(
        &bob_dir,
        ClientOptions::default().with_passphrase(LOADGEN_PASSPHRASE),
    )?;
    alice.queue_text("bob", "hello")?;
    alice
        .flush_outbox(Duration::from_secs(60), &mut |_| {})
        .await?;
    bob.sync(Duration::from_secs(60), &mut |_| {}).await?;
    let api_a = ApiClient::new(alice.endpoint().clone())?;
    let api_b = ApiClient::new(bob.endpoint().clone())?;

    // ------------------------------------------------------------ throughput
    let file = work.path().join("throughput.bin");
    random_file(&file, a.throughput_mib, 1)?;
    let size = a.throughput_mib * MIB;
    let dl = work.path().join("downloads");
    std::fs::create_dir_all(&dl)?;
    let mut e2e_up = vec![];
    let mut e2e_down = vec![];
    let mut e2e_down_volatile = vec![];
    let mut plain_up = vec![];
    let mut plain_down = vec![];
    let mut plain_down_durable = vec![];
    for round in 0..a.repeat.max(1) {
        let (u, d) = e2e_round(&mut alice, &mut bob, &file, &dl, true).await?;
        eprintln!(
            "round {round}: e2e up {:.2} s, down {:.2} s (durable)",
            secs(u),
            secs(d)
        );
        e2e_up.push(mib_per_s(size, u));
        e2e_down.push(mib_per_s(size, d));
        let (u, d) = e2e_round(&mut alice, &mut bob, &file, &dl, false).await?;
        eprintln!(
            "round {round}: e2e up {:.2} s, down {:.2} s (not fsynced)",
            secs(u),
            secs(d)
        );
        e2e_up.push(mib_per_s(size, u));
        e2e_down_volatile.push(mib_per_s(size, d));
        settle_disk()?;
        let (blob, u) = plain_upload(&alice, &api_a, &file).await?;
        let target = dl.join("plain.bin");
        settle_disk()?;
        let d = plain_download(&bob, &api_b, &blob, &target, false).await?;
        std::fs::remove_file(&target)?;
        settle_disk()?;
        let dd = plain_download(&bob, &api_b, &blob, &target, true).await?;
        std::fs::remove_file(&target)?;
        eprintln!(
            "round {round}: plain up {:.2} s, down {:.2} s, {:.2} s fsynced",
            secs(u),
            secs(d),
            secs(dd)
        );
        plain_up.push(mib_per_s(size, u));
        plain_down.push(mib_per_s(size, d));
        plain_down_durable.push(mib_per_s(size, dd));
    }
    std::fs::remove_file(&file)?;
    let eu = median(e2e_up.clone());
    let ed = median(e2e_down.clone());
    let edv = median(e2e_down_volatile.clone());
    let pu = median(plain_up.clone());
    let pd = median(plain_down.clone());
    let pdd = median(plain_down_durable.clone());
    // Send + receive as one transfer: the file's total time up and down.
    let both = |up: f64, down: f64| 2.0 / (1.0 / up + 1.0 / down);
    let cost = |e: f64, p: f64| procfs::round1((1.0 - e / p) * 100.0);

    // ------------------------------------------------------------ memory
    let mut memory = serde_json::Value::Null;
    if a.memory_mib > 0 {
        let bin = server_opts.bin.clone();
        drop(alice);
        drop(bob);
        let tiny = work.path().join("tiny.bin");
        std::fs::write(&tiny, vec![7u8; 1024])?;
        let big = work.path().join("memory.bin");
        random_file(&big, a.memory_mib, 2)?;
        let dl_dir = work.path().join("mem-downloads");
        let dl_arg = dl_dir.to_string_lossy().into_owned();
        let limit = Duration::from_secs(600 + a.memory_mib);
        let idle_server = procfs::mem(server.pid)?.vm_rss_kib;
        let (send_tiny, _) = run_measured(
            &bin,
            &alice_dir,
            &["send", "bob", "--file", &tiny.to_string_lossy()],
            server.pid,
            limit,
        )?;
        let (recv_tiny, _) = run_measured(
            &bin,
            &bob_dir,
            &["receive", "--json", "--download-dir", &dl_arg],
            server.pid,
            limit,
        )?;
        let before_up = procfs::mem(server.pid)?.vm_rss_kib;
        let (send_big, server_up) = run_measured(
            &bin,
            &alice_dir,
            &["send", "bob", "--file", &big.to_string_lossy()],
            server.pid,
            limit,
        )?;
        let before_down = procfs::mem(server.pid)?.vm_rss_kib;
        let (recv_big, server_down) = run_measured(
            &bin,
            &bob_dir,
            &["receive", "--json", "--download-dir", &dl_arg],
            server.pid,
            limit,
        )?;
        let saved = dl_dir.join("memory.bin");
        let saved_len = std::fs::metadata(&saved).map(|m| m.len()).unwrap_or(0);
        if saved_len != a.memory_mib * MIB {
            bail!("the memory run's file arrived with {saved_len} bytes");
        }
        let kib_to_mib = |k: u64| procfs::round1(k as f64 / 1024.0);
        memory = serde_json::json!({
            "file_mib": a.memory_mib,
            "client_send_peak_mib": kib_to_mib(send_big),
            "client_send_baseline_mib": kib_to_mib(send_tiny),
            "client_send_above_baseline_mib": kib_to_mib(send_big.saturating_sub(send_tiny)),
            "client_receive_peak_mib": kib_to_mib(recv_big),
            "client_receive_baseline_mib": kib_to_mib(recv_tiny),
            "client_receive_above_baseline_mib": kib_to_mib(recv_big.saturating_sub(recv_tiny)),
            "server_idle_rss_mib": kib_to_mib(idle_server),
            "server_upload_peak_mib": kib_to_mib(server_up),
            "server_upload_above_before_mib": kib_to_mib(server_up.saturating_sub(before_up)),
            "server_download_peak_mib": kib_to_mib(server_down),
            "server_download_above_before_mib": kib_to_mib(server_down.saturating_sub(before_down)),
        });
    }
    server.stop(Duration::from_secs(10)).await?;
    drop(work);

    let report = serde_json::json!({
        "mode": "media",
        "file_mib": a.throughput_mib,
        "repeat": a.repeat,
        "e2e_upload_mib_s": e2e_up,
        "e2e_download_mib_s": e2e_down,
        "plain_upload_mib_s": plain_up,
        "plain_download_mib_s": plain_down,
        "e2e_download_not_fsynced_mib_s": e2e_down_volatile,
        "plain_download_fsynced_mib_s": plain_down_durable,
        "median": {
            "e2e_upload_mib_s": eu,
            "e2e_download_mib_s": ed,
            "e2e_download_not_fsynced_mib_s": edv,
            "plain_upload_mib_s": pu,
            "plain_download_mib_s": pd,
            "plain_download_fsynced_mib_s": pdd,
            "e2e_send_receive_mib_s": procfs::round1(both(eu, ed)),
            "plain_send_receive_mib_s": procfs::round1(both(pu, pd)),
        },
        "e2e_cost_percent": {
            "upload": cost(eu, pu),
            "download_vs_plain": cost(ed, pd),
            "download_vs_plain_fsynced": cost(ed, pdd),
            "download_not_fsynced_vs_plain": cost(edv, pd),
            "send_receive": cost(both(eu, ed), both(pu, pd)),
            "send_receive_both_fsynced": cost(both(eu, ed), both(pu, pdd)),
            "send_receive_neither_fsynced": cost(both(eu, edv), both(pu, pd)),
        },
        "memory": memory,
        "loadavg_before": load_before,
        "loadavg_after": procfs::loadavg(),
    });
    if json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
