//! Heap held by the server per idle, authenticated WebSocket connection (TLS included).
//!
//! The server runs on its own runtime whose threads are marked; a counting allocator
//! tags every block allocated on a marked thread and tracks the live total of tagged
//! blocks, so client-side allocations in the same process are not counted. Kernel
//! socket buffers are not heap and are not included.
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

thread_local! {
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}
static LIVE: AtomicI64 = AtomicI64::new(0);
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
                LIVE.fetch_add(size as i64, Ordering::Relaxed);
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

const CONNECTIONS: usize = 200;

#[test]
fn heap_per_idle_websocket() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
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
    config.rate_limits.registrations_per_ip_per_minute = 100_000;
    let server = server_rt.block_on(TestServer::start_config(config));
    let client = server.client();

    let users: Vec<Identity> = client_rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..=CONNECTIONS {
            v.push(client.new_user(&format!("user{i}")).await);
        }
        v
    });

    let settle = |want: u64| {
        client_rt.block_on(async {
            // Wait until every connection task is parked (the counts settle), bounded.
            for _ in 0..200 {
                let s = server.server.stats();
                if s.devices_online == want && s.connections == want {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
        LIVE.load(Ordering::Relaxed)
    };

    // Warm-up connection: lazily initialised state is not per connection.
    let mut warm = client_rt.block_on(async {
        let mut ws = client.login(&users[0]).await;
        ws.backlog().await;
        ws
    });
    let before = settle(1);

    let mut conns = Vec::new();
    client_rt.block_on(async {
        for u in &users[1..] {
            let mut ws = client.login(u).await;
            ws.backlog().await;
            conns.push(ws);
        }
    });
    let after = settle(CONNECTIONS as u64 + 1);
    let per_conn = (after - before) / CONNECTIONS as i64;
    println!(
        "server heap: {before} B with 1 connection, {after} B with {} ({per_conn} B per idle WebSocket)",
        CONNECTIONS + 1
    );

    // Still working after the measurement.
    client_rt.block_on(async {
        warm.ping().await;
        conns[0].ping().await;
    });
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} B per idle connection exceeds the 16 KiB target"
    );
    drop(conns);
    drop(warm);
    let mut server = server;
    client_rt.block_on(async {});
    server_rt.block_on(server.stop());
}
