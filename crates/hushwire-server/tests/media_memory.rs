//! Server heap while a large blob is uploaded and downloaded (media): it must stay
//! bounded by a few parts, whatever the blob's size.
//!
//! Same counting allocator as `memory.rs`: only blocks allocated on the server runtime's
//! threads (its blocking pool included, where file I/O runs) are counted, and the peak
//! of their live total is tracked. The size moved is `HUSHWIRE_MEDIA_MEMORY_MIB`
//! (default 64 MiB) in 4 MiB parts; the client side of the test buffers the download,
//! which is not counted. Kernel buffers and the page cache are not heap.
#![allow(unsafe_code)]
// A GlobalAlloc must be an `unsafe impl`; this one only forwards to System.
// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "server/common.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

use common::*;
use hushwire_proto::wire;
use prost::Message as _;

thread_local! {
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}
static LIVE: AtomicI64 = AtomicI64::new(0);
/// Highest `LIVE` seen since the last reset.
static PEAK: AtomicI64 = AtomicI64::new(0);
const TAG: u64 = 1 << 63;

struct Counting;

// Each block gets a header of `align` (>= 16) bytes in front; its last 8 bytes hold the
// user size, with TAG set when the block was allocated on a server thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(16);
        let Ok(outer) = Layout::from_size_align(layout.size() + align, align) else {
            return std::ptr::null_mut();
        };
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let tagged = SERVER_THREAD.try_with(Cell::get).unwrap_or(false);
        let size = layout.size() as u64;
        unsafe {
            let user = base.add(align);
            (user.sub(8) as *mut u64).write(if tagged { size | TAG } else { size });
            if tagged {
                let now = LIVE.fetch_add(size as i64, Ordering::Relaxed) + size as i64;
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let align = layout.align().max(16);
        unsafe {
            let word = (ptr.sub(8) as *const u64).read();
            if word & TAG != 0 {
                LIVE.fetch_sub((word & !TAG) as i64, Ordering::Relaxed);
            }
            let outer = Layout::from_size_align_unchecked(layout.size() + align, align);
            System.dealloc(ptr.sub(align), outer);
        }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn heap_stays_bounded_while_moving_a_large_blob() {
    let mib: u64 = std::env::var("HUSHWIRE_MEDIA_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
        .clamp(8, 2048);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| SERVER_THREAD.with(|c| c.set(true)))
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.media.quota_bytes = 4 << 30;
    let part = config.media.part_size as usize;
    let server = server_rt.block_on(TestServer::start_config(config));
    let c = server.client();
    let size = mib << 20;

    let (alice, bob, id) = client_rt.block_on(async {
        let alice = c.new_user("alice").await;
        let bob = c.new_user("bob").await;
        let mut ws = c.login(&alice).await;
        ws.backlog().await;
        let mut commit = commit(b"g", 0, 1, &[&alice, &bob]);
        commit.welcomes = vec![wire::WelcomeOut {
            welcome: welcome_bytes(),
            recipients: vec![bob.addr()],
        }];
        accepted(ws.submit(1, commit).await);
        let body = wire::CreateBlob {
            size,
            group_id: bytes::Bytes::from_static(b"g"),
        }
        .encode_to_vec();
        let created: wire::BlobCreated = c.signed(&alice, "POST", "/v1/blobs", body).await.decode();
        let id: String = created.blob_id.iter().map(|b| format!("{b:02x}")).collect();
        (alice, bob, id)
    });
    // Lazily initialised state (TLS, pools, caches) is not what is measured.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let idle = LIVE.load(Ordering::Relaxed);
    PEAK.store(idle, Ordering::Relaxed);

    let started = std::time::Instant::now();
    let mut data = vec![0u8; part];
    client_rt.block_on(async {
        for index in 0..size.div_ceil(part as u64) {
            // Cheap distinct content per part; the server never looks at it.
            data.fill((index % 251) as u8);
            let len = (size - index * part as u64).min(part as u64) as usize;
            let path = format!("/v1/blobs/{id}/parts/{index}");
            let s: wire::BlobStatus = c
                .signed(&alice, "PUT", &path, data[..len].to_vec())
                .await
                .decode();
            assert_eq!(s.complete, index + 1 == size.div_ceil(part as u64));
        }
    });
    let upload = started.elapsed();
    let upload_peak = PEAK.load(Ordering::Relaxed) - idle;
    let started = std::time::Instant::now();
    let got = client_rt.block_on(c.signed(&bob, "GET", &format!("/v1/blobs/{id}"), vec![]));
    let download = started.elapsed();
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len() as u64, size);
    assert!(
        got.body
            .chunks(part)
            .enumerate()
            .all(|(i, p)| p.iter().all(|b| *b == (i % 251) as u8))
    );
    let peak = PEAK.load(Ordering::Relaxed) - idle;
    println!(
        "media: {mib} MiB in {} parts of {} KiB: upload {:.2} s, download {:.2} s; \
         server heap peak above idle: {:.1} MiB during upload, {:.1} MiB overall",
        size.div_ceil(part as u64),
        part / 1024,
        upload.as_secs_f64(),
        download.as_secs_f64(),
        upload_peak as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
    );
    assert!(
        peak <= 64 << 20,
        "server heap peaked {peak} B above idle while moving {mib} MiB"
    );
    let mut server = server;
    server_rt.block_on(server.stop());
}
