//! Several nodes on one store: the bus wiring and the mailbox poller.
//!
//! Without `bus.url` nothing here runs: [`bus`] gives [`hushwire_bus::Bus::local`] and
//! [`start`] spawns nothing.
//!
//! With a bus, [`start`] spawns two tasks (tracked, stopped on shutdown):
//! - the bus driver, whose [`Inbound`] handler turns a *wake* from another node into the
//!   woken flag of each named device connected here (the connection re-reads its
//!   mailbox) and an *ephemeral* notice into hub pushes;
//! - the poller: every `bus.poll_interval` it takes each connected device's cursor (the
//!   highest seq its connection sent), asks the store which of them have entries after
//!   it ([`hushwire_store::Mailboxes::devices_with_mail`], in batches of
//!   [`POLL_BATCH`], each bounded by [`POLL_TIMEOUT`]), and wakes those. This is what
//!   keeps delivery going, at that pace, when NATS is down or drops a notice. The same
//!   round asks which of those devices were revoked
//!   ([`hushwire_store::Accounts::revoked_devices`]) and closes their connections
//!   (1008 "device removed"): a device removed through another node is disconnected
//!   here within one interval (the bus has no notice kind for it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hushwire_proto::limits::MAX_EPHEMERAL_BYTES;
use hushwire_proto::wire;
use hushwire_store::DeviceId;
use prost::Message as _;

use crate::config::BusConfig;
use crate::{Server, ServerError};

/// Devices asked about per store call.
pub(crate) const POLL_BATCH: usize = 512;
/// Longest a poller store call may take before the round is abandoned.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// The bus for `config`: local without a URL, else NATS (not connected until [`start`]).
pub(crate) fn bus(
    config: &BusConfig,
) -> Result<(hushwire_bus::Bus, Option<hushwire_bus::Driver>), ServerError> {
    let Some(url) = &config.url else {
        return Ok((hushwire_bus::Bus::local(), None));
    };
    let (bus, driver) = hushwire_bus::Bus::nats(url, &config.subject_prefix).map_err(|e| {
        ServerError::Config(crate::ConfigError::Invalid {
            field: "bus",
            reason: e.to_string(),
        })
    })?;
    Ok((bus, Some(driver)))
}

/// Spawns the bus driver and the poller when a bus is configured (once per server).
pub(crate) fn start(server: &Server) {
    let shared = &server.shared;
    let driver = shared
        .bus_driver
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let Some(driver) = driver else { return };
    if let Some(url) = shared.config.bus.redacted_url() {
        tracing::info!(servers = %url, prefix = %shared.config.bus.subject_prefix, "bus: starting");
    }
    let inbound = Inbound {
        server: server.clone(),
    };
    let shutdown = shared.shutdown.clone();
    shared
        .tasks
        .spawn(async move { driver.run(inbound, shutdown.cancelled_owned()).await });
    shared.tasks.spawn(poll_loop(server.clone()));
}

/// Notices from the other nodes, applied to this node's hub.
struct Inbound {
    server: Server,
}

fn device_ids(ids: &[u64]) -> Vec<DeviceId> {
    ids.iter().map(|&d| DeviceId(d)).collect()
}

impl hushwire_bus::Handler for Inbound {
    fn wake(&self, devices: &[u64]) {
        self.server.shared.hub.wake(&device_ids(devices));
    }

    fn ephemeral(&self, devices: &[u64], signal: Bytes) {
        let Ok(delivery) = wire::EphemeralDelivery::decode(signal) else {
            tracing::debug!("bus: dropped an undecodable ephemeral signal");
            return;
        };
        if delivery.mls_message.len() > MAX_EPHEMERAL_BYTES {
            return;
        }
        self.server
            .shared
            .hub
            .push_ephemeral(&device_ids(devices), Arc::new(delivery), None);
    }
}

/// Wakes, every `bus.poll_interval`, the connected devices whose mailboxes hold
/// entries their connection has not sent.
async fn poll_loop(server: Server) {
    let shared = &server.shared;
    let interval = shared.config.bus.poll_interval;
    let mut cursors = Vec::new();
    let mut ids = Vec::new();
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.shutdown.cancelled() => return,
        }
        cursors.clear();
        shared.hub.cursors(&mut cursors);
        for batch in cursors.chunks(POLL_BATCH) {
            // Devices removed through another node: their connections here close.
            ids.clear();
            ids.extend(batch.iter().map(|(d, _)| *d));
            let revoked = tokio::time::timeout(POLL_TIMEOUT, shared.store.revoked_devices(&ids));
            let revoked = tokio::select! {
                r = revoked => r,
                () = shared.shutdown.cancelled() => return,
            };
            if let Ok(Ok(revoked)) = revoked
                && !revoked.is_empty()
            {
                let closed = shared.hub.remove(&revoked);
                tracing::debug!(closed, "bus: closed connections of removed devices");
            }
            let asked = tokio::time::timeout(POLL_TIMEOUT, shared.store.devices_with_mail(batch));
            let answer = tokio::select! {
                r = asked => r,
                () = shared.shutdown.cancelled() => return,
            };
            match answer {
                Ok(Ok(devices)) => {
                    if failing {
                        failing = false;
                        tracing::info!("bus: mailbox polling works again");
                    }
                    if !devices.is_empty() {
                        shared.hub.wake(&devices);
                    }
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "bus: mailbox polling failed; retrying next round");
                    }
                    failing = true;
                    break;
                }
                Err(_) => {
                    if !failing {
                        tracing::warn!("bus: mailbox polling timed out; retrying next round");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}
