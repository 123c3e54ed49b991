//! The first bytes a relay or server reads after TLS: HTTP/1.x requests in front of
//! the secret path (decoy website answers, or the hand-over to the tunnel). Any input
//! ends the exchange without a panic; a hand-over carries a head that fits the input.
#![no_main]

use std::sync::OnceLock;

use hushwire_decoy::DecoySite;
use hushwire_decoy::http1::{Outcome, Timeouts, serve};
use libfuzzer_sys::fuzz_target;

fn site() -> &'static DecoySite {
    static SITE: OnceLock<DecoySite> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hushwire-fuzz-site-{}", std::process::id()));
        DecoySite::builtin_in(&dir).expect("writing the built-in site")
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let io = tokio::io::join(data, tokio::io::sink());
    let secret = "s3cr3tpathforthefuzzer";
    let outcome = runtime().block_on(serve(io, site(), Timeouts::default(), |head| {
        head.path().strip_prefix('/') == Some(secret)
    }));
    if let Outcome::Secret { head_len, head, .. } = outcome {
        assert!(head_len <= data.len());
        assert_eq!(head.path(), format!("/{secret}"));
    }
});
