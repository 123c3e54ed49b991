//! The server's TOML configuration file: parsing and validation never panic, and a
//! configuration that was accepted stays valid.
#![no_main]

use hushwire_server::ServerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ServerConfig::from_toml(text) {
        config
            .validate()
            .expect("an accepted config validates again");
        let _ = config.media.s3_location();
        let _ = config.retention_ms();
    }
});
