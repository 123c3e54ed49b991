//! TLS settings of a common web server: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`,
//! session tickets — what nginx offers by default, so the handshake does not single
//! the server out.

use std::sync::Arc;

use rustls::server::ResolvesServerCert;

/// ALPN protocols offered, in nginx's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A rustls server configuration over `resolver` (aws-lc-rs provider).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(config)
}

/// Whether the handshake on `conn` chose HTTP/2 (`conn`: a `ServerConnection`, or the
/// session of any other rustls connection).
pub fn negotiated_h2(conn: &rustls::CommonState) -> bool {
    conn.alpn_protocol() == Some(b"h2")
}
