//! The plaintext header of an MLS message, which the server reads to order commits and
//! route messages: parsing never panics, is deterministic, and what it returns comes
//! from the input (a group id no longer than the input).
#![no_main]

use hushwire_proto::mls::{MlsHeader, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = parse_header(data);
    assert_eq!(first, parse_header(data));
    if let Ok(header) = first {
        let group_id = match &header {
            MlsHeader::Framed(f) => Some(&f.group_id),
            MlsHeader::GroupInfo { group_id, .. } => Some(group_id),
            _ => None,
        };
        if let Some(id) = group_id {
            assert!(id.len() <= data.len());
        }
    }
});
