//! A volunteer relay's link (`hushwire-relay://host:port?s=..&pin=..`), pasted by a
//! user: parsing never panics, and a parsed link prints back to a link that parses to
//! the same value.
#![no_main]

use hushwire_proto::relay_link::RelayLink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = RelayLink::parse(text) {
        let again = RelayLink::parse(&link.to_string()).expect("a printed link parses");
        assert!(again == link);
    }
});
