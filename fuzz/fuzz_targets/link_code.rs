//! A device-link code as typed or scanned: parsing never panics, and a code that parses
//! encodes back to a code that parses to the same value.
#![no_main]

use hushwire_proto::link::LinkCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = LinkCode::decode(text) {
        let again = LinkCode::decode(&code.encode()).expect("an encoded code parses");
        assert!(again == code);
    }
});
