//! The connection hub: which device is connected where, and live pushes to it.
//!
//! One entry per device (a new login replaces the old connection). A push appends an
//! `Arc<Envelope>` to the connection's small bounded queue (never blocking) and wakes
//! it. When the queue is full the envelope is dropped and the connection is flagged
//! *lagged*; it then re-reads its mailbox from the store, so a slow consumer costs a
//! fixed amount of memory and loses nothing.
//!
//! Ordering is restored by the connection (see `ws`): it sends only the seq it expects
//! next and re-fetches on a gap.
//!
//! The queue is a `VecDeque` behind the connection's own lock, in the same allocation
//! as its flags, and it frees its slots whenever it is drained: an idle connection's
//! entry holds no queue memory. (A tokio `mpsc` channel would cost every connection
//! about 600 bytes for its channel state and first 32-slot block, idle or not.)
//!
//! Ephemeral signals (typing, presence) go through the same queue but are never
//! stored: one that finds the queue full is simply dropped.
//!
//! With several nodes (see `cluster`), [`Hub::push`] tells whether the device is
//! connected here so only the others are announced on the bus; a node's [`Hub::wake`]
//! makes the named connections re-read their mailboxes (the *woken* flag, handled like
//! *lagged*); each connection publishes the highest seq it sent (`delivered`) so the
//! poller can tell which ones have something new in the store.
//!
//! A removed (revoked) device's connection is told to close through its *removed* flag
//! ([`Hub::remove`]), by the node that revoked it or by the cluster poller elsewhere.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hushwire_proto::wire;
use hushwire_store::{DeviceId, Envelope};
use tokio::sync::Notify;

/// Envelopes queued per connection before it falls back to the store. Each slot is one
/// pointer.
pub(crate) const PUSH_QUEUE: usize = 32;

/// Out-of-band signals to one connection.
pub(crate) struct Signals {
    /// Pushes were dropped: re-read the mailbox.
    pub(crate) lagged: AtomicBool,
    /// A newer connection of the same device took over: close.
    pub(crate) replaced: AtomicBool,
    /// The device was removed from its account (revoked): close with 1008.
    pub(crate) removed: AtomicBool,
    /// Another node stored entries for this device (or the poller saw some): re-read
    /// the mailbox.
    pub(crate) woken: AtomicBool,
    /// Highest mailbox seq the connection sent (the poller's cursor).
    pub(crate) delivered: AtomicU64,
    /// Wakes the connection after setting a flag or queueing a push.
    pub(crate) notify: Notify,
    /// Pushes not yet taken by the connection (at most [`PUSH_QUEUE`]); `None` once the
    /// connection has ended.
    queue: Mutex<Option<VecDeque<Arc<Push>>>>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            lagged: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            notify: Notify::new(),
            queue: Mutex::new(Some(VecDeque::new())),
        }
    }
}

/// Why [`Signals::enqueue`] refused a push.
enum Refused {
    Full,
    Closed,
}

impl Signals {
    fn queue(&self) -> std::sync::MutexGuard<'_, Option<VecDeque<Arc<Push>>>> {
        // Each critical section is one queue operation; a poisoned queue is consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `push` and wakes the connection.
    fn enqueue(&self, push: Push) -> Result<(), Refused> {
        {
            let mut queue = self.queue();
            let Some(queue) = queue.as_mut() else {
                return Err(Refused::Closed);
            };
            if queue.len() >= PUSH_QUEUE {
                return Err(Refused::Full);
            }
            queue.push_back(Arc::new(push));
        }
        self.notify.notify_one();
        Ok(())
    }
}

/// What a connection's queue carries (behind one pointer, so a slot stays small).
pub(crate) enum Push {
    /// A mailbox entry.
    Envelope(Envelope),
    /// An ephemeral signal, shared by every device it goes to.
    Ephemeral(Arc<wire::EphemeralDelivery>),
}

struct Slot {
    conn_id: u64,
    signals: Arc<Signals>,
}

/// Connected devices.
#[derive(Default)]
pub(crate) struct Hub {
    slots: Mutex<HashMap<DeviceId, Slot>>,
    next_conn: AtomicU64,
}

/// A connection's end of the hub: its queue and signals. Unregister with
/// [`Hub::unregister`] when the connection ends.
pub(crate) struct Registration {
    pub(crate) conn_id: u64,
    pub(crate) signals: Arc<Signals>,
}

impl Registration {
    /// The oldest queued push, if any. The queue's slots are freed once it is empty.
    pub(crate) fn try_recv(&self) -> Option<Arc<Push>> {
        let mut queue = self.signals.queue();
        let queue = queue.as_mut()?;
        let push = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        push
    }
}

impl Drop for Registration {
    /// Pushes that come after this (before the hub entry is gone) are refused, and the
    /// queued ones freed: their entries stay in the mailbox.
    fn drop(&mut self) {
        self.signals.queue().take();
    }
}

impl Hub {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Slot>> {
        // Every critical section is a single map operation; a poisoned map is consistent.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `device`'s new connection, telling a previous one to close.
    pub(crate) fn register(&self, device: DeviceId) -> Registration {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::default());
        let old = self.slots().insert(
            device,
            Slot {
                conn_id,
                signals: Arc::clone(&signals),
            },
        );
        if let Some(old) = old {
            old.signals.replaced.store(true, Ordering::Release);
            old.signals.notify.notify_one();
        }
        Registration { conn_id, signals }
    }

    /// Removes `device`'s entry if it still belongs to connection `conn_id`.
    pub(crate) fn unregister(&self, device: DeviceId, conn_id: u64) {
        let mut slots = self.slots();
        if slots.get(&device).is_some_and(|s| s.conn_id == conn_id) {
            slots.remove(&device);
        }
    }

    /// Pushes an envelope to `device` if it is connected. Never blocks. Returns whether
    /// a live connection here took care of it (false: not connected to this node).
    pub(crate) fn push(&self, device: DeviceId, envelope: Envelope) -> bool {
        let slots = self.slots();
        let Some(slot) = slots.get(&device) else {
            return false;
        };
        match slot.signals.enqueue(Push::Envelope(envelope)) {
            Ok(()) => true,
            Err(Refused::Full) => {
                slot.signals.lagged.store(true, Ordering::Release);
                slot.signals.notify.notify_one();
                true
            }
            // The connection is ending; its entries stay in the mailbox (the device
            // may be connecting to another node).
            Err(Refused::Closed) => false,
        }
    }

    /// Makes the connections of those of `devices` connected here re-read their
    /// mailboxes. Never blocks. Returns how many were connected.
    pub(crate) fn wake(&self, devices: &[DeviceId]) -> usize {
        let slots = self.slots();
        let mut woken = 0;
        for device in devices {
            if let Some(slot) = slots.get(device) {
                slot.signals.woken.store(true, Ordering::Release);
                slot.signals.notify.notify_one();
                woken += 1;
            }
        }
        woken
    }

    /// Tells the connection of each of `devices` connected here that its device was
    /// removed (revoked): it closes with 1008 "device removed". Never blocks. Returns
    /// how many were connected.
    pub(crate) fn remove(&self, devices: &[DeviceId]) -> usize {
        let slots = self.slots();
        let mut removed = 0;
        for device in devices {
            if let Some(slot) = slots.get(device) {
                slot.signals.removed.store(true, Ordering::Release);
                slot.signals.notify.notify_one();
                removed += 1;
            }
        }
        removed
    }

    /// Appends each connected device and the highest seq its connection sent.
    pub(crate) fn cursors(&self, out: &mut Vec<(DeviceId, u64)>) {
        let slots = self.slots();
        out.reserve(slots.len());
        out.extend(
            slots
                .iter()
                .map(|(d, s)| (*d, s.signals.delivered.load(Ordering::Acquire))),
        );
    }

    /// Pushes an ephemeral signal to each of `devices` that is connected. Never blocks;
    /// a full queue drops it (it is not stored anywhere). Returns how many took it.
    /// With `absent`, the devices not connected here are appended to it.
    pub(crate) fn push_ephemeral(
        &self,
        devices: &[DeviceId],
        signal: Arc<wire::EphemeralDelivery>,
        mut absent: Option<&mut Vec<DeviceId>>,
    ) -> usize {
        let slots = self.slots();
        let mut sent = 0;
        for device in devices {
            match slots.get(device) {
                Some(slot) => {
                    if slot
                        .signals
                        .enqueue(Push::Ephemeral(Arc::clone(&signal)))
                        .is_ok()
                    {
                        sent += 1;
                    }
                }
                None => {
                    if let Some(absent) = absent.as_deref_mut() {
                        absent.push(*device);
                    }
                }
            }
        }
        sent
    }

    /// Connected devices.
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hushwire_store::{DeviceAddr, EnvelopeKind};

    fn env(seq: u64) -> Envelope {
        Envelope {
            seq,
            message_id: [0; 16],
            group_id: Bytes::from_static(b"g"),
            group_seq: seq,
            kind: EnvelopeKind::Application,
            sender: DeviceAddr {
                handle: "abc".into(),
                device_id: 1,
            },
            server_time_ms: 0,
            payload: Bytes::new(),
        }
    }

    fn seq_of(p: &Push) -> Option<u64> {
        match p {
            Push::Envelope(e) => Some(e.seq),
            Push::Ephemeral(_) => None,
        }
    }

    #[test]
    fn full_queue_flags_lag_and_replacement_is_signalled() {
        let hub = Hub::default();
        let d = DeviceId(7);
        let first = hub.register(d);
        for seq in 1..=PUSH_QUEUE as u64 + 1 {
            hub.push(d, env(seq));
        }
        assert!(first.signals.lagged.load(Ordering::Acquire));
        assert_eq!(first.try_recv().and_then(|p| seq_of(&p)), Some(1));

        let second = hub.register(d);
        assert!(first.signals.replaced.load(Ordering::Acquire));
        // The old connection's unregister must not remove the new entry.
        hub.unregister(d, first.conn_id);
        assert_eq!(hub.len(), 1);
        hub.unregister(d, second.conn_id);
        assert_eq!(hub.len(), 0);
        assert!(!hub.push(d, env(99))); // nobody connected: no-op
    }

    #[test]
    fn a_drained_queue_holds_no_slots_and_an_ended_connection_refuses_pushes() {
        let hub = Hub::default();
        let d = DeviceId(5);
        let reg = hub.register(d);
        assert!(hub.push(d, env(1)));
        assert!(hub.push(d, env(2)));
        assert_eq!(reg.try_recv().and_then(|p| seq_of(&p)), Some(1));
        assert_eq!(reg.try_recv().and_then(|p| seq_of(&p)), Some(2));
        assert!(reg.try_recv().is_none());
        let capacity = reg.signals.queue().as_ref().map(VecDeque::capacity);
        assert_eq!(capacity, Some(0), "a drained queue keeps no slots");
        let signals = Arc::clone(&reg.signals);
        drop(reg);
        // The connection ended but its hub entry is not removed yet: the push is not
        // taken here (its entry stays in the mailbox), and nothing is held for it.
        assert!(!hub.push(d, env(3)));
        assert!(signals.queue().is_none());
        hub.unregister(d, 0);
        assert_eq!(hub.len(), 0);
    }

    #[test]
    fn wake_flags_connected_devices_and_cursors_follow_delivered() {
        let hub = Hub::default();
        let (a, b) = (DeviceId(1), DeviceId(2));
        let ra = hub.register(a);
        assert!(hub.push(a, env(1)));
        assert!(!hub.push(b, env(1)));
        ra.signals.delivered.store(7, Ordering::Release);
        assert_eq!(hub.wake(&[a, b]), 1);
        assert!(ra.signals.woken.load(Ordering::Acquire));
        assert!(!ra.signals.lagged.load(Ordering::Acquire));
        let mut cursors = Vec::new();
        hub.cursors(&mut cursors);
        assert_eq!(cursors, vec![(a, 7)]);
        assert_eq!(hub.remove(&[b, a]), 1);
        assert!(ra.signals.removed.load(Ordering::Acquire));
    }

    #[test]
    fn ephemeral_goes_to_connected_devices_and_full_queues_drop_it() {
        let hub = Hub::default();
        let (a, b, c) = (DeviceId(1), DeviceId(2), DeviceId(3));
        let ra = hub.register(a);
        let rb = hub.register(b);
        for seq in 1..=PUSH_QUEUE as u64 {
            hub.push(b, env(seq));
        }
        let signal = Arc::new(wire::EphemeralDelivery::default());
        // c is not connected, b's queue is full: only a gets it, and b is not lagged.
        let mut absent = Vec::new();
        assert_eq!(hub.push_ephemeral(&[a, b, c], signal, Some(&mut absent)), 1);
        assert_eq!(absent, vec![c]);
        assert!(matches!(ra.try_recv().as_deref(), Some(Push::Ephemeral(_))));
        assert!(!rb.signals.lagged.load(Ordering::Acquire));
    }
}
