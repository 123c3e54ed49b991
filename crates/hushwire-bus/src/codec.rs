//! The bytes of a notice on the wire.
//!
//! Both kinds start with a version byte ([`VERSION`]) and a big-endian `u32` count of
//! device ids, followed by that many big-endian `u64` device ids.
//!
//! - **wake** (`{prefix}.wake`): nothing follows the ids.
//! - **ephemeral** (`{prefix}.eph`): the rest of the message is the opaque signal (the
//!   server's encoded `EphemeralDelivery`: ciphertext and routing fields, never
//!   plaintext), at most [`MAX_SIGNAL_BYTES`].
//!
//! A notice holds at most [`MAX_DEVICES_PER_NOTICE`] ids; longer lists are split into
//! several notices by the sender. Decoding checks every length and refuses anything
//! else, so a stray or corrupt message on the subject is dropped, never trusted.

use bytes::{BufMut, Bytes, BytesMut};

/// Format version of a notice.
pub const VERSION: u8 = 1;
/// Device ids in one notice at most (64 KiB of ids).
pub const MAX_DEVICES_PER_NOTICE: usize = 8 * 1024;
/// Bytes of an ephemeral signal at most.
pub const MAX_SIGNAL_BYTES: usize = 16 * 1024;
const HEADER: usize = 1 + 4;

/// Why a received notice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header or its id list.
    #[error("notice truncated")]
    Truncated,
    /// An unknown format version.
    #[error("unknown notice version {0}")]
    Version(u8),
    /// More ids than a notice may hold, or none.
    #[error("bad device count {0}")]
    Count(u32),
    /// A wake notice with bytes after its ids.
    #[error("trailing bytes after the device ids")]
    Trailing,
    /// An ephemeral signal that is empty or larger than [`MAX_SIGNAL_BYTES`].
    #[error("bad signal length {0}")]
    Signal(usize),
}

/// Encodes ids (at most [`MAX_DEVICES_PER_NOTICE`]; the caller splits) and a tail.
pub(crate) fn encode(devices: &[u64], tail: &[u8]) -> Bytes {
    debug_assert!(devices.len() <= MAX_DEVICES_PER_NOTICE);
    let mut out = BytesMut::with_capacity(HEADER + devices.len() * 8 + tail.len());
    out.put_u8(VERSION);
    // At most MAX_DEVICES_PER_NOTICE (the caller splits), so it fits in a u32.
    out.put_u32(u32::try_from(devices.len()).unwrap_or(u32::MAX));
    for d in devices {
        out.put_u64(*d);
    }
    out.put_slice(tail);
    out.freeze()
}

/// Splits a notice into its device ids and the bytes after them.
fn split(msg: &[u8]) -> Result<(Vec<u64>, &[u8]), DecodeError> {
    let (&version, rest) = msg.split_first().ok_or(DecodeError::Truncated)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let (count, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(DecodeError::Truncated)?;
    let count = u32::from_be_bytes(*count);
    let n = usize::try_from(count).map_err(|_| DecodeError::Count(count))?;
    if n == 0 || n > MAX_DEVICES_PER_NOTICE {
        return Err(DecodeError::Count(count));
    }
    let ids_len = n * 8;
    if rest.len() < ids_len {
        return Err(DecodeError::Truncated);
    }
    let (ids, tail) = rest.split_at(ids_len);
    let devices = ids
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect();
    Ok((devices, tail))
}

/// Decodes a wake notice: the devices whose mailboxes have new entries.
pub fn decode_wake(msg: &[u8]) -> Result<Vec<u64>, DecodeError> {
    let (devices, tail) = split(msg)?;
    if !tail.is_empty() {
        return Err(DecodeError::Trailing);
    }
    Ok(devices)
}

/// Decodes an ephemeral notice: the devices it goes to and the signal.
pub fn decode_ephemeral(msg: &Bytes) -> Result<(Vec<u64>, Bytes), DecodeError> {
    let (devices, tail) = split(msg)?;
    if tail.is_empty() || tail.len() > MAX_SIGNAL_BYTES {
        return Err(DecodeError::Signal(tail.len()));
    }
    let signal = msg.slice(msg.len() - tail.len()..);
    Ok((devices, signal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let ids: Vec<u64> = (1..=1000).map(|i| i * 7919).collect();
        let wake = encode(&ids, &[]);
        assert_eq!(wake.len(), HEADER + 8000);
        assert_eq!(decode_wake(&wake), Ok(ids.clone()));
        let eph = encode(&ids[..3], b"opaque");
        assert_eq!(
            decode_ephemeral(&eph),
            Ok((ids[..3].to_vec(), Bytes::from_static(b"opaque")))
        );
        // A wake is not an ephemeral notice and the other way round.
        assert_eq!(decode_ephemeral(&wake), Err(DecodeError::Signal(0)));
        assert_eq!(decode_wake(&eph), Err(DecodeError::Trailing));
    }

    #[test]
    fn refuses_malformed_notices() {
        assert_eq!(decode_wake(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode_wake(&[2, 0, 0, 0, 1]), Err(DecodeError::Version(2)));
        assert_eq!(decode_wake(&[1, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(decode_wake(&[1, 0, 0, 0, 0]), Err(DecodeError::Count(0)));
        assert_eq!(
            decode_wake(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Count(u32::MAX))
        );
        assert_eq!(
            decode_wake(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9]),
            Err(DecodeError::Truncated)
        );
        let big = encode(&[5], &vec![0u8; MAX_SIGNAL_BYTES + 1]);
        assert_eq!(
            decode_ephemeral(&big),
            Err(DecodeError::Signal(MAX_SIGNAL_BYTES + 1))
        );
    }
}
