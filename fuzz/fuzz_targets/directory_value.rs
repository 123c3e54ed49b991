//! A key-directory leaf value, as served by the directory and checked by clients:
//! decoding never panics and round-trips through encoding byte for byte.
#![no_main]

use hushwire_proto::directory::DirectoryValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = DirectoryValue::decode(data) {
        assert_eq!(value.encode(), data);
    }
});
