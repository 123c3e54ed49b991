//! The web app's gate: the access token (URL once, then an `HttpOnly` cookie), the
//! `Host` check against DNS rebinding, the `Origin` check against cross-site requests,
//! and the security headers every response carries.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use rand::RngCore;
use zeroize::Zeroizing;

/// The Content-Security-Policy of every response: only this origin's own scripts,
/// styles, images and connections; no inline code, no framing, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// The stricter policy of served media files (no scripts at all, even in an SVG opened
/// directly).
pub const MEDIA_CSP: &str = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; \
media-src 'self'; sandbox; frame-ancestors 'self'";

/// The secret that grants access to the app: 32 random bytes, hex-encoded.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A fresh random token from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(Zeroizing::new(hex::encode(bytes.as_ref())))
    }

    /// The token as text (for the printed URL and the cookie; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, compared in constant time.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

/// Compares two byte strings without an early exit (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The cookie's name: per port, so two apps on one machine do not overwrite each other's.
pub fn cookie_name(port: u16) -> String {
    format!("hushwire_{port}")
}

/// The `Set-Cookie` value that stores the token.
pub fn set_cookie(token: &Token, port: u16) -> String {
    format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/",
        cookie_name(port),
        token.expose()
    )
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No or a wrong token (401).
    Unauthorized,
    /// A `Host` that is not this app's loopback address (403).
    BadHost,
    /// An `Origin` of another site, or none where one is required (403).
    BadOrigin,
}

/// Whether `host` (the `Host` header) names this app: `127.0.0.1:PORT`,
/// `localhost:PORT` or `[::1]:PORT`, exactly.
pub fn host_ok(host: Option<&str>, port: u16) -> bool {
    let Some(host) = host else { return false };
    let host = host.trim();
    host.eq_ignore_ascii_case(&format!("127.0.0.1:{port}"))
        || host.eq_ignore_ascii_case(&format!("localhost:{port}"))
        || host.eq_ignore_ascii_case(&format!("[::1]:{port}"))
}

/// Whether `origin` (the `Origin` header) is this app's origin.
pub fn origin_ok(origin: &str, port: u16) -> bool {
    let origin = origin.trim();
    origin.eq_ignore_ascii_case(&format!("http://127.0.0.1:{port}"))
        || origin.eq_ignore_ascii_case(&format!("http://localhost:{port}"))
        || origin.eq_ignore_ascii_case(&format!("http://[::1]:{port}"))
}

/// The token a request carries: the cookie, else `Authorization: Bearer`, else the
/// `token` query parameter.
pub fn presented_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    port: u16,
) -> Option<&'a str> {
    let name = cookie_name(port);
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                return Some(v);
            }
        }
    }
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = auth.strip_prefix("Bearer ")
    {
        return Some(t.trim());
    }
    query.and_then(query_token)
}

/// The value of `token=` in a query string.
pub fn query_token(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Checks one request: the `Host` first, then the `Origin` (required on anything but
/// GET/HEAD and on the WebSocket), then the token.
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    websocket: bool,
    token: &Token,
    port: u16,
) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !host_ok(host, port) {
        return Err(Refusal::BadHost);
    }
    let needs_origin = websocket || !(method == Method::GET || method == Method::HEAD);
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        Some(Ok(origin)) if origin_ok(origin, port) => {}
        Some(_) => return Err(Refusal::BadOrigin),
        None if needs_origin => return Err(Refusal::BadOrigin),
        None => {}
    }
    // A browser tells where a request comes from even when it omits `Origin`.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(Refusal::BadOrigin);
    }
    match presented_token(headers, query, port) {
        Some(t) if token.matches(t) => Ok(()),
        _ => Err(Refusal::Unauthorized),
    }
}

/// Adds the security headers to a response.
pub fn add_headers(headers: &mut HeaderMap, media: bool) {
    let csp = if media { MEDIA_CSP } else { CSP };
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tokens_are_random_hex_and_compared_exactly() {
        let a = Token::generate();
        let b = Token::generate();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
        assert!(a.matches(a.expose()));
        assert!(!a.matches(b.expose()));
        assert!(!a.matches(&a.expose()[..63]));
        assert!(!a.matches(""));
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }

    #[test]
    fn host_must_be_this_loopback_port() {
        assert!(host_ok(Some("127.0.0.1:8080"), 8080));
        assert!(host_ok(Some("localhost:8080"), 8080));
        assert!(!host_ok(Some("127.0.0.1:8081"), 8080));
        assert!(!host_ok(Some("evil.example:8080"), 8080));
        assert!(!host_ok(Some("127.0.0.1"), 8080));
        assert!(!host_ok(Some("127.0.0.1:8080.evil.example"), 8080));
        assert!(!host_ok(None, 8080));
    }

    #[test]
    fn origin_must_be_this_app() {
        assert!(origin_ok("http://127.0.0.1:9000", 9000));
        assert!(origin_ok("http://localhost:9000", 9000));
        assert!(!origin_ok("https://127.0.0.1:9000", 9000));
        assert!(!origin_ok("http://127.0.0.1:9001", 9000));
        assert!(!origin_ok("http://evil.example", 9000));
        assert!(!origin_ok("null", 9000));
    }

    #[test]
    fn check_orders_host_origin_token() {
        let token = Token::generate();
        let cookie = format!("other=1; {}={}", cookie_name(7000), token.expose());
        let good = headers(&[("host", "127.0.0.1:7000"), ("cookie", &cookie)]);
        assert_eq!(
            check(&Method::GET, &good, None, false, &token, 7000),
            Ok(())
        );
        // A POST needs the Origin.
        assert_eq!(
            check(&Method::POST, &good, None, false, &token, 7000),
            Err(Refusal::BadOrigin)
        );
        let post = headers(&[
            ("host", "127.0.0.1:7000"),
            ("cookie", &cookie),
            ("origin", "http://127.0.0.1:7000"),
        ]);
        assert_eq!(
            check(&Method::POST, &post, None, false, &token, 7000),
            Ok(())
        );
        // The WebSocket needs it too.
        assert_eq!(
            check(&Method::GET, &good, None, true, &token, 7000),
            Err(Refusal::BadOrigin)
        );
        assert_eq!(check(&Method::GET, &post, None, true, &token, 7000), Ok(()));
        // A foreign origin is refused even with the cookie.
        let cross = headers(&[
            ("host", "127.0.0.1:7000"),
            ("cookie", &cookie),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            check(&Method::GET, &cross, None, false, &token, 7000),
            Err(Refusal::BadOrigin)
        );
        let cross_site = headers(&[
            ("host", "127.0.0.1:7000"),
            ("cookie", &cookie),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(
            check(&Method::GET, &cross_site, None, false, &token, 7000),
            Err(Refusal::BadOrigin)
        );
        // DNS rebinding: the right cookie under a foreign name.
        let rebound = headers(&[("host", "evil.example:7000"), ("cookie", &cookie)]);
        assert_eq!(
            check(&Method::GET, &rebound, None, false, &token, 7000),
            Err(Refusal::BadHost)
        );
        // No token, a wrong one, the cookie of another port.
        let none = headers(&[("host", "127.0.0.1:7000")]);
        assert_eq!(
            check(&Method::GET, &none, None, false, &token, 7000),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            check(&Method::GET, &none, Some("token=00"), false, &token, 7000),
            Err(Refusal::Unauthorized)
        );
        let q = format!("a=1&token={}", token.expose());
        assert_eq!(
            check(&Method::GET, &none, Some(&q), false, &token, 7000),
            Ok(())
        );
        let other_port = format!("{}={}", cookie_name(7001), token.expose());
        let wrong = headers(&[("host", "127.0.0.1:7000"), ("cookie", &other_port)]);
        assert_eq!(
            check(&Method::GET, &wrong, None, false, &token, 7000),
            Err(Refusal::Unauthorized)
        );
        let bearer = format!("Bearer {}", token.expose());
        let api = headers(&[("host", "localhost:7000"), ("authorization", &bearer)]);
        assert_eq!(check(&Method::GET, &api, None, false, &token, 7000), Ok(()));
    }

    #[test]
    fn cookie_and_headers_are_strict() {
        let token = Token::generate();
        let c = set_cookie(&token, 5000);
        assert!(c.starts_with("hushwire_5000="));
        assert!(c.contains("; HttpOnly"));
        assert!(c.contains("; SameSite=Strict"));
        assert!(c.contains("; Path=/"));
        let mut h = HeaderMap::new();
        add_headers(&mut h, false);
        let csp = h
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob: data:",
            "connect-src 'self'",
            "font-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive}");
        }
        assert!(!csp.contains("unsafe"));
        assert_eq!(h.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
        assert_eq!(h.get(header::REFERRER_POLICY).unwrap(), "no-referrer");
        let mut m = HeaderMap::new();
        add_headers(&mut m, true);
        assert!(
            m.get(header::CONTENT_SECURITY_POLICY)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
    }
}
