//! The bus against a real NATS server (`HUSHWIRE_TEST_NATS_URL`, skipped visibly when
//! unset) and against a closed port (NATS down; needs nothing).

// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hushwire_bus::{Bus, Handler};
use tokio::sync::{Notify, oneshot};

const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Recorder {
    wakes: Mutex<Vec<Vec<u64>>>,
    signals: Mutex<Vec<(Vec<u64>, Bytes)>>,
    changed: Notify,
}

#[derive(Clone, Default)]
struct Shared(Arc<Recorder>);

impl Handler for Shared {
    fn wake(&self, devices: &[u64]) {
        self.0.wakes.lock().unwrap().push(devices.to_vec());
        self.0.changed.notify_one();
    }
    fn ephemeral(&self, devices: &[u64], signal: Bytes) {
        self.0
            .signals
            .lock()
            .unwrap()
            .push((devices.to_vec(), signal));
        self.0.changed.notify_one();
    }
}

impl Shared {
    /// Waits until `done` holds (checked after every notice), within TIMEOUT.
    async fn until(&self, done: impl Fn(&Recorder) -> bool) {
        tokio::time::timeout(TIMEOUT, async {
            while !done(&self.0) {
                self.0.changed.notified().await;
            }
        })
        .await
        .expect("timed out waiting for notices");
    }
}

struct Node {
    bus: Bus,
    seen: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn start(url: &str, prefix: &str) -> Node {
    let (bus, driver) = Bus::nats(url, prefix).unwrap();
    let seen = Shared::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(driver.run(seen.clone(), async move {
        let _ = stopped.await;
    }));
    Node {
        bus,
        seen,
        stop: Some(stop),
        task,
    }
}

impl Node {
    async fn ready(&self) {
        tokio::time::timeout(TIMEOUT, async {
            while !self.bus.stats().ready {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("bus never became ready");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("driver did not stop")
            .unwrap();
    }
}

fn nats_url() -> Option<String> {
    match std::env::var("HUSHWIRE_TEST_NATS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: HUSHWIRE_TEST_NATS_URL unset");
            None
        }
    }
}

fn random_prefix() -> String {
    format!("hwtest.{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn a_thousand_device_fan_out_is_one_notice_and_signals_cross() {
    let Some(url) = nats_url() else { return };
    let prefix = random_prefix();
    let a = start(&url, &prefix);
    let b = start(&url, &prefix);
    a.ready().await;
    b.ready().await;

    let devices: Vec<u64> = (1..=1000).collect();
    a.bus.wake(&devices);
    b.seen.until(|r| !r.wakes.lock().unwrap().is_empty()).await;
    assert_eq!(*b.seen.0.wakes.lock().unwrap(), vec![devices.clone()]);
    assert_eq!(a.bus.stats().published, 1);

    b.bus.ephemeral(&[7, 9], b"opaque ciphertext");
    a.seen
        .until(|r| !r.signals.lock().unwrap().is_empty())
        .await;
    assert_eq!(
        *a.seen.0.signals.lock().unwrap(),
        vec![(vec![7, 9], Bytes::from_static(b"opaque ciphertext"))]
    );
    // no_echo: neither node heard its own notice (each received exactly one).
    b.bus.wake(&[42]);
    a.seen.until(|r| !r.wakes.lock().unwrap().is_empty()).await;
    assert_eq!(*a.seen.0.wakes.lock().unwrap(), vec![vec![42]]);
    assert_eq!(b.seen.0.signals.lock().unwrap().len(), 0);
    assert_eq!(a.bus.stats().received, 2);

    // More than one notice's worth of ids is split, not truncated.
    let many: Vec<u64> = (1..=(hushwire_bus::MAX_DEVICES_PER_NOTICE as u64 + 5)).collect();
    a.bus.wake(&many);
    b.seen.until(|r| r.wakes.lock().unwrap().len() == 3).await;
    let got: Vec<u64> = b.seen.0.wakes.lock().unwrap()[1..].concat();
    assert_eq!(got, many);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn other_prefixes_are_not_heard() {
    let Some(url) = nats_url() else { return };
    let (p1, p2) = (random_prefix(), random_prefix());
    let a = start(&url, &p1);
    let b = start(&url, &p1);
    let x = start(&url, &p2);
    let y = start(&url, &p2);
    for n in [&a, &b, &x, &y] {
        n.ready().await;
    }
    // Two rounds: a notice heard across prefixes would show up by the second one.
    for round in 0..2u64 {
        a.bus.wake(&[10 + round]);
        x.bus.wake(&[20 + round]);
        let n = round as usize + 1;
        b.seen.until(|r| r.wakes.lock().unwrap().len() >= n).await;
        y.seen.until(|r| r.wakes.lock().unwrap().len() >= n).await;
    }
    assert_eq!(*b.seen.0.wakes.lock().unwrap(), vec![vec![10], vec![11]]);
    assert_eq!(*y.seen.0.wakes.lock().unwrap(), vec![vec![20], vec![21]]);
    assert!(a.seen.0.wakes.lock().unwrap().is_empty());
    assert!(x.seen.0.wakes.lock().unwrap().is_empty());
    for n in [a, b, x, y] {
        n.stop().await;
    }
}

#[tokio::test]
async fn nats_down_drops_notices_without_blocking_and_stops_cleanly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = start(&format!("nats://user:pw@127.0.0.1:{port}"), "hw");
    for _ in 0..(hushwire_bus::OUTBOX * 2) {
        node.bus.wake(&[1, 2, 3]);
    }
    node.bus
        .ephemeral(&[1], &vec![0u8; hushwire_bus::MAX_SIGNAL_BYTES + 1]);
    tokio::time::timeout(TIMEOUT, async {
        while node.bus.stats().dropped < (hushwire_bus::OUTBOX * 2 + 1) as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every notice is dropped while NATS is down");
    let stats = node.bus.stats();
    assert!(!stats.ready);
    assert_eq!(stats.published, 0);
    node.stop().await;
}

#[test]
fn local_bus_does_nothing() {
    let bus = Bus::local();
    assert!(!bus.is_clustered());
    bus.wake(&[1, 2]);
    bus.ephemeral(&[1], b"x");
    assert_eq!(bus.stats(), hushwire_bus::BusStats::default());
    assert!(Bus::nats("http://x", "hw").is_err());
    assert!(Bus::nats("nats://x", "a.*").is_err());
}
