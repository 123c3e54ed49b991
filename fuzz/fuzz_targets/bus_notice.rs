//! A notice from another server node over NATS (wake-ups and ephemeral signals):
//! decoding never panics; a decoded wake accounts for every byte; a decoded signal is
//! a suffix of the notice.
#![no_main]

use bytes::Bytes;
use hushwire_bus::codec::{decode_ephemeral, decode_wake};
use hushwire_bus::{MAX_DEVICES_PER_NOTICE, MAX_SIGNAL_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(devices) = decode_wake(data) {
        assert!(devices.len() <= MAX_DEVICES_PER_NOTICE);
        assert!(devices.len() * 8 <= data.len());
    }
    let msg = Bytes::copy_from_slice(data);
    if let Ok((devices, signal)) = decode_ephemeral(&msg) {
        assert!(devices.len() <= MAX_DEVICES_PER_NOTICE);
        assert!(!signal.is_empty() && signal.len() <= MAX_SIGNAL_BYTES);
        assert!(data.ends_with(&signal));
    }
});
