//! Bounded decoding of protobuf frames with typed errors.

use prost::Message;

use crate::limits::MAX_FRAME_BYTES;
use crate::wire::{ClientFrame, ServerFrame};

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is larger than the limit for its kind.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The input is not a valid protobuf message of the expected type.
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    /// A required field is missing (for example a frame without a body).
    #[error("missing field: {0}")]
    Missing(&'static str),
}

/// Decodes any protobuf message, refusing inputs over `limit` bytes.
pub fn decode_bounded<M: Message + Default>(bytes: &[u8], limit: usize) -> Result<M, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    M::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes a frame a client sent, requiring a body.
pub fn decode_client_frame(bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    let frame: ClientFrame = decode_bounded(bytes, MAX_FRAME_BYTES)?;
    if frame.body.is_none() {
        return Err(DecodeError::Missing("ClientFrame.body"));
    }
    Ok(frame)
}

/// Decodes a frame the server sent, requiring a body.
pub fn decode_server_frame(bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    let frame: ServerFrame = decode_bounded(bytes, MAX_FRAME_BYTES)?;
    if frame.body.is_none() {
        return Err(DecodeError::Missing("ServerFrame.body"));
    }
    Ok(frame)
}

/// Encodes any protobuf message to a fresh buffer.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

/// Field number of the `bytes padding` field every `ClientFrame`/`ServerFrame` may
/// carry (wire.proto reserves it). Decoders skip it like any unknown field.
pub const PADDING_FIELD: u32 = 15;

/// The size buckets frames are padded to: powers of two from 256 bytes to 64 KiB, then
/// eight buckets per doubling up to [`MAX_FRAME_BYTES`] (64, 72, 80, … 128, 144, … KiB),
/// so large frames — commits of big groups — grow by at most 12.5% rather than nearly
/// doubling. An observer of the encrypted stream sees only which bucket a frame fell
/// into.
pub fn frame_bucket(len: usize) -> Option<usize> {
    const FIRST: usize = 256;
    const LAST_POWER: usize = 64 * 1024;
    let bucket = if len <= FIRST {
        FIRST
    } else if len <= LAST_POWER {
        len.next_power_of_two()
    } else {
        // 2^high < len <= 2^(high+1); steps of 2^high / 8.
        let high = usize::BITS - 1 - (len - 1).leading_zeros();
        let step = (1usize << high) / 8;
        len.div_ceil(step).checked_mul(step)?
    };
    (bucket <= MAX_FRAME_BYTES).then_some(bucket)
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Encodes a frame padded with a `padding` field (15) so that its size is a
/// [`frame_bucket`]. A frame too close to [`MAX_FRAME_BYTES`] to be padded is returned
/// unpadded.
pub fn encode_padded<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut want = len + 2;
    while let Some(target) = frame_bucket(want) {
        // target = len + 1 (tag) + varint_len(n) + n
        for vl in 1..=4 {
            let Some(n) = target.checked_sub(len + 1 + vl) else {
                continue;
            };
            if varint_len(n) == vl {
                let mut out = Vec::with_capacity(target);
                // Encoding into a Vec cannot fail; fall back to unpadded if it did.
                if msg.encode(&mut out).is_err() {
                    return msg.encode_to_vec();
                }
                prost::encoding::encode_key(
                    PADDING_FIELD,
                    prost::encoding::WireType::LengthDelimited,
                    &mut out,
                );
                prost::encoding::encode_varint(n as u64, &mut out);
                out.resize(target, 0);
                return out;
            }
        }
        want = target + 1;
    }
    msg.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ping, client_frame};

    #[test]
    fn round_trip_client_frame() {
        let f = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::Ping(Ping { client_time_ms: 9 })),
        };
        let back = decode_client_frame(&encode(&f)).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn padded_frames_fill_buckets_and_decode_unchanged() {
        for text_len in [
            0usize, 1, 100, 230, 240, 253, 254, 255, 256, 1000, 5000, 70_000,
        ] {
            let f = ServerFrame {
                request_id: 3,
                body: Some(crate::wire::server_frame::Body::Error(crate::wire::Error {
                    code: 1,
                    message: "x".repeat(text_len),
                })),
            };
            let bytes = encode_padded(&f);
            let bucket = frame_bucket(f.encoded_len() + 2).unwrap();
            assert!(
                bytes.len() == bucket || bytes.len() == frame_bucket(bucket + 1).unwrap(),
                "{text_len}: {} not a bucket",
                bytes.len()
            );
            assert_eq!(Some(bytes.len()), frame_bucket(bytes.len()));
            assert_eq!(decode_server_frame(&bytes).unwrap(), f);
        }
        let c = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::Ping(Ping { client_time_ms: 9 })),
        };
        let bytes = encode_padded(&c);
        assert_eq!(bytes.len(), 256);
        assert_eq!(decode_client_frame(&bytes).unwrap(), c);
        assert_eq!(frame_bucket(300), Some(512));
        assert_eq!(frame_bucket(65_537), Some(73_728));
        assert_eq!(frame_bucket(84_700), Some(90_112));
        assert_eq!(frame_bucket(131_072), Some(131_072));
        assert_eq!(frame_bucket(131_073), Some(147_456));
        assert_eq!(frame_bucket(MAX_FRAME_BYTES), Some(MAX_FRAME_BYTES));
        // Every bucket is its own bucket, and buckets only grow.
        let mut last = 0;
        for len in (1..=MAX_FRAME_BYTES).step_by(997) {
            let b = frame_bucket(len).unwrap();
            assert!(b >= len && b >= last && frame_bucket(b) == Some(b));
            assert!(len <= 256 || b - len <= len / 8 || b <= 64 * 1024);
            last = b;
        }
        assert_eq!(frame_bucket(MAX_FRAME_BYTES + 1), None);
    }

    #[test]
    fn rejects_oversized_and_garbage() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            decode_client_frame(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_client_frame(&[0xff, 0xff, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode_client_frame(&[]),
            Err(DecodeError::Missing("ClientFrame.body"))
        );
    }
}
