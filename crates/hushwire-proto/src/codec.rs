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
