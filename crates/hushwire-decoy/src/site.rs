//! The decoy website: a static directory answered as nginx answers it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;

/// The page written into an empty site directory: a neutral personal page.
pub const BUILTIN_INDEX: &str = "<!DOCTYPE html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Notes</title>
<style>
body { max-width: 40em; margin: 4em auto; padding: 0 1em; font: 16px/1.6 Georgia, serif; color: #222; }
h1 { font-weight: normal; }
footer { margin-top: 4em; color: #777; font-size: 0.9em; }
</style>
</head>
<body>
<h1>Notes</h1>
<p>This site is being rebuilt. Older posts will be back soon.</p>
<footer>&copy; all rights reserved</footer>
</body>
</html>
";

/// What the decoy needs to know of one request.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The method, as sent.
    pub method: String,
    /// The request target (origin form `/path?query`, or absolute form).
    pub target: String,
    /// HTTP/1.0 (keep-alive only when asked for).
    pub http10: bool,
    /// HTTP/2 (no `Connection` header in the response).
    pub http2: bool,
    /// The `Host` header (or `:authority`).
    pub host: Option<String>,
    /// The `Connection` header's value, lower-cased.
    pub connection: Option<String>,
    /// `If-None-Match`.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<String>,
}

/// The [`RequestInfo`] of an `http` request (HTTP/2, or one hyper parsed).
pub fn info_from_http<B>(req: &http::Request<B>) -> RequestInfo {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    RequestInfo {
        method: req.method().as_str().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        http10: req.version() == http::Version::HTTP_10,
        http2: req.version() == http::Version::HTTP_2,
        host: header(http::header::HOST).or_else(|| req.uri().authority().map(|a| a.to_string())),
        connection: header(http::header::CONNECTION).map(|v| v.to_ascii_lowercase()),
        if_none_match: header(http::header::IF_NONE_MATCH),
        if_modified_since: header(http::header::IF_MODIFIED_SINCE),
    }
}

/// One response of the decoy site, headers in nginx's order.
#[derive(Debug, Clone)]
pub struct DecoyResponse {
    /// Status code.
    pub status: u16,
    /// nginx's reason phrase for it.
    pub reason: &'static str,
    /// Headers in order, names as nginx spells them (HTTP/2 lower-cases them).
    pub headers: Vec<(&'static str, String)>,
    /// The body (empty for HEAD, sent with the full `Content-Length`).
    pub body: Bytes,
    /// The connection closes after this response.
    pub close: bool,
}

impl DecoyResponse {
    /// The HTTP/1.1 bytes of this response (status line, headers, body).
    pub fn to_http1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).as_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// As an `http` response (for HTTP/2): lower-case names, no `Connection`.
    pub fn into_http(self) -> http::Response<Bytes> {
        let mut builder = http::Response::builder().status(self.status);
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("connection") {
                continue;
            }
            builder = builder.header(*name, value.as_str());
        }
        match builder.body(self.body) {
            Ok(resp) => resp,
            // Our own names and values are always valid; keep a plain 500 as the
            // impossible case's answer rather than panicking.
            Err(_) => {
                let mut resp = http::Response::new(Bytes::new());
                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                resp
            }
        }
    }
}

/// A static site served from a directory, with nginx's behaviour.
#[derive(Debug, Clone)]
pub struct DecoySite {
    root: PathBuf,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Not Allowed",
        408 => "Request Time-out",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        _ => "Internal Server Error",
    }
}

/// nginx's error page for `status`.
fn error_page(status: u16) -> String {
    let r = reason(status);
    format!(
        "<html>\r\n<head><title>{status} {r}</title></head>\r\n<body>\r\n<center><h1>{status} {r}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
}

/// The `Content-Type` nginx's stock mime.types gives an extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" | "shtml" => "text/html",
        "css" => "text/css",
        "xml" => "text/xml",
        "gif" => "image/gif",
        "jpeg" | "jpg" => "image/jpeg",
        "js" => "application/javascript",
        "atom" => "application/atom+xml",
        "rss" => "application/rss+xml",
        "txt" => "text/plain",
        "png" => "image/png",
        "svg" | "svgz" => "image/svg+xml",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "avif" => "image/avif",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Why a request target cannot be mapped (answered 400).
struct BadTarget;

/// Decodes and normalises a path like nginx: percent-decoding, merged slashes, `.` and
/// `..` resolved; `..` above the root is an error. Returns the segments and whether the
/// path ended with a slash.
fn normalise(path: &str) -> Result<(Vec<String>, bool), BadTarget> {
    let bytes = path.as_bytes();
    // Invalid escapes are a 400 in nginx.
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(BadTarget);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| BadTarget)?;
    if decoded.contains('\0') {
        return Err(BadTarget);
    }
    let trailing = decoded.ends_with('/');
    let mut segments: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadTarget);
                }
            }
            s => segments.push(s.to_string()),
        }
    }
    Ok((segments, trailing))
}

impl DecoySite {
    /// Serves `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Serves `dir`, first writing the built-in page into it if it has no `index.html`
    /// (an operator's own directory with an index is left untouched).
    pub fn builtin_in(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let index = dir.join("index.html");
        if !index.exists() {
            std::fs::write(&index, BUILTIN_INDEX)?;
        }
        Ok(Self::new(dir))
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn response(
        &self,
        req: &RequestInfo,
        status: u16,
        extra: Vec<(&'static str, String)>,
    ) -> DecoyResponse {
        let body = Bytes::from(error_page(status));
        let close = status == 400 || wants_close(req);
        let mut headers = vec![
            ("Server", "nginx".to_string()),
            ("Date", http_date(SystemTime::now())),
            ("Content-Type", "text/html".to_string()),
            ("Content-Length", body.len().to_string()),
        ];
        headers.extend(extra);
        headers.push(("Connection", connection_value(close)));
        let head = req.method == "HEAD";
        DecoyResponse {
            status,
            reason: reason(status),
            headers,
            body: if head { Bytes::new() } else { body },
            close,
        }
    }

    /// The response nginx would give a request that could not be parsed at all.
    pub fn bad_request(&self) -> DecoyResponse {
        self.response(&RequestInfo::default(), 400, Vec::new())
    }

    /// The response to one request.
    pub async fn respond(&self, req: &RequestInfo) -> DecoyResponse {
        let method_ok = !req.method.is_empty()
            && req.method.len() <= 32
            && req
                .method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-');
        if !method_ok || (!req.http10 && !req.http2 && req.host.is_none()) {
            return self.response(req, 400, Vec::new());
        }
        // Absolute form: drop scheme and authority.
        let mut target = req.target.as_str();
        for scheme in ["http://", "https://"] {
            if let Some(rest) = target
                .get(..scheme.len())
                .filter(|p| p.eq_ignore_ascii_case(scheme))
                .map(|_| &target[scheme.len()..])
            {
                target = rest.find('/').map_or("/", |i| &rest[i..]);
            }
        }
        if !target.starts_with('/') {
            return self.response(req, 400, Vec::new());
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let Ok((segments, trailing)) = normalise(path) else {
            return self.response(req, 400, Vec::new());
        };
        let mut file = self.root.clone();
        for s in &segments {
            file.push(s);
        }
        let meta = match tokio::fs::metadata(&file).await {
            Ok(m) => m,
            Err(_) => return self.response(req, 404, Vec::new()),
        };
        if meta.is_dir() {
            if !trailing && !segments.is_empty() {
                let host = req.host.clone().unwrap_or_else(|| "localhost".to_string());
                let mut location = format!("https://{host}{path}/");
                if let Some(q) = query {
                    location.push('?');
                    location.push_str(q);
                }
                return self.response(req, 301, vec![("Location", location)]);
            }
            file.push("index.html");
            match tokio::fs::metadata(&file).await {
                Ok(m) if m.is_file() => return self.file(req, &file, m).await,
                _ => return self.response(req, 403, Vec::new()),
            }
        }
        if trailing {
            return self.response(req, 404, Vec::new());
        }
        self.file(req, &file, meta).await
    }

    async fn file(&self, req: &RequestInfo, path: &Path, meta: std::fs::Metadata) -> DecoyResponse {
        if req.method != "GET" && req.method != "HEAD" {
            return self.response(req, 405, Vec::new());
        }
        let body = match tokio::fs::read(path).await {
            Ok(b) => Bytes::from(b),
            Err(_) => return self.response(req, 403, Vec::new()),
        };
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let secs = mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let etag = format!("\"{secs:x}-{:x}\"", body.len());
        let last_modified = http_date(mtime);
        let close = wants_close(req);
        let not_modified = req.if_none_match.as_deref() == Some(etag.as_str())
            || (req.if_none_match.is_none()
                && req.if_modified_since.as_deref() == Some(last_modified.as_str()));
        if not_modified {
            return DecoyResponse {
                status: 304,
                reason: reason(304),
                headers: vec![
                    ("Server", "nginx".to_string()),
                    ("Date", http_date(SystemTime::now())),
                    ("Last-Modified", last_modified),
                    ("Connection", connection_value(close)),
                    ("ETag", etag),
                ],
                body: Bytes::new(),
                close,
            };
        }
        DecoyResponse {
            status: 200,
            reason: reason(200),
            headers: vec![
                ("Server", "nginx".to_string()),
                ("Date", http_date(SystemTime::now())),
                ("Content-Type", content_type(path).to_string()),
                ("Content-Length", body.len().to_string()),
                ("Last-Modified", last_modified),
                ("Connection", connection_value(close)),
                ("ETag", etag),
                ("Accept-Ranges", "bytes".to_string()),
            ],
            body: if req.method == "HEAD" {
                Bytes::new()
            } else {
                body
            },
            close,
        }
    }
}

fn wants_close(req: &RequestInfo) -> bool {
    let conn = req.connection.as_deref().unwrap_or("");
    let has = |token: &str| conn.split(',').any(|t| t.trim() == token);
    if req.http10 {
        !has("keep-alive")
    } else {
        has("close")
    }
}

fn connection_value(close: bool) -> String {
    if close { "close" } else { "keep-alive" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> RequestInfo {
        RequestInfo {
            method: "GET".into(),
            target: target.into(),
            host: Some("example.org".into()),
            ..RequestInfo::default()
        }
    }

    #[tokio::test]
    async fn answers_like_nginx() {
        let dir = tempfile::tempdir().unwrap();
        let site = DecoySite::builtin_in(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let r = site.respond(&get("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, BUILTIN_INDEX.as_bytes());
        let names: Vec<_> = r.headers.iter().map(|h| h.0).collect();
        assert_eq!(
            names,
            [
                "Server",
                "Date",
                "Content-Type",
                "Content-Length",
                "Last-Modified",
                "Connection",
                "ETag",
                "Accept-Ranges"
            ]
        );
        let nf = site.respond(&get("/wp-login.php")).await;
        assert_eq!((nf.status, nf.body.len()), (404, 146));
        assert_eq!(site.respond(&get("/a/../../etc/passwd")).await.status, 400);
        assert_eq!(site.respond(&get("/%zz")).await.status, 400);
        assert_eq!(site.respond(&get("/sub")).await.status, 301);
        assert_eq!(site.respond(&get("/sub/")).await.status, 403);
        let mut post = get("/");
        post.method = "POST".into();
        assert_eq!(site.respond(&post).await.reason, "Not Allowed");
        let mut lower = get("/");
        lower.method = "get".into();
        assert!(site.respond(&lower).await.close);
        let etag = r.headers.iter().find(|h| h.0 == "ETag").unwrap().1.clone();
        let mut cond = get("/index.html");
        cond.if_none_match = Some(etag);
        assert_eq!(site.respond(&cond).await.status, 304);
    }
}
