//! A WebSocket frame from a client: decoding never panics, and whatever decodes
//! encodes back to bytes that decode to the same frame.
#![no_main]

use hushwire_proto::codec::{decode_client_frame, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_client_frame(data) {
        let again = decode_client_frame(&encode(&frame)).expect("re-encoded frame decodes");
        assert_eq!(frame, again);
    }
});
