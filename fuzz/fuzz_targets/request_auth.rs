//! The request-signature header of authenticated HTTP routes and a certificate pin:
//! parsing never panics, and a parsed header formats back to one that parses equal.
#![no_main]

use hushwire_proto::identity::{RequestAuth, parse_pin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(auth) = RequestAuth::parse(text) {
        let again = RequestAuth::parse(&auth.to_header()).expect("a formatted header parses");
        assert_eq!(again, auth);
    }
    if let Some(pin) = parse_pin(text) {
        let hex: String = pin.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_pin(&format!("sha256:{hex}")), Some(pin));
    }
});
