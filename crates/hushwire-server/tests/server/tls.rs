use crate::common::*;

#[tokio::test]
async fn self_signed_cert_is_created_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestServer::start_config(test_config(dir.path())).await;
    let cert_path = dir.path().join("tls/cert.pem");
    let key_path = dir.path().join("tls/key.pem");
    let cert_pem = std::fs::read(&cert_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode");
    }
    assert!(first.pin.starts_with("sha256:") && first.pin.len() == 71);

    // The pin is the SHA-256 of the served certificate's SPKI.
    let der = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let spki = spki_of(&der).unwrap();
    assert_eq!(hushwire_proto::identity::format_pin(spki), first.pin);

    // A pinned client gets through.
    let client = first.client();
    let mut alice = client.new_user("alice").await;
    let _ = &mut alice;
    first.stop().await;

    let second = TestServer::start_config(test_config(dir.path())).await;
    assert_eq!(second.pin, first.pin, "same pin after restart");
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        cert_pem,
        "cert not rewritten"
    );
    // The account survived the restart too.
    let resp = second
        .client()
        .register(&mut crate::common::Identity::new("alice"))
        .await;
    resp.expect_error(409, hushwire_proto::wire::ErrorCode::HandleTaken);
}

#[tokio::test]
async fn a_client_pinning_another_key_is_refused() {
    let server = TestServer::start().await;
    let wrong = format!("sha256:{}", "00".repeat(32));
    let tls = client_tls(&wrong);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn tls12_is_served_like_a_common_web_server() {
    let server = TestServer::start().await;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(pin_verifier(&server.pin))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    // nginx accepts TLS 1.2 by default; refusing it would set the server apart.
    assert!(r.is_ok(), "TLS 1.2 handshake must succeed");
}
