//! The app's files, embedded in the binary: hand-written HTML, CSS and JavaScript (no
//! build step, nothing fetched from elsewhere).

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const ICON_SVG: &str = include_str!("../assets/favicon.svg");

fn asset(body: &'static str, mime: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime)], body).into_response()
}

pub(crate) async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

pub(crate) async fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub(crate) async fn style() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

pub(crate) async fn icon() -> Response {
    asset(ICON_SVG, "image/svg+xml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_inline_code_in_the_page() {
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        // No inline event handlers (` onclick=` and the like).
        let bytes = INDEX_HTML.as_bytes();
        for (i, w) in bytes.windows(3).enumerate() {
            if w == b" on" {
                let rest: String = INDEX_HTML[i + 3..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let after = INDEX_HTML[i + 3 + rest.len()..].chars().next();
                assert!(
                    rest.is_empty() || after != Some('='),
                    "inline handler at {i}"
                );
            }
        }
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        // Nothing from elsewhere (the SVG namespace is a name, not a fetch).
        let js = APP_JS.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(!js.contains("http://") && !js.contains("https://"));
        assert!(!APP_JS.contains("eval("));
    }
}
