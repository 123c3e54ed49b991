//! The MIME type of a file being sent: from its magic bytes, else its extension, else
//! `application/octet-stream`.

/// How many leading bytes [`detect_mime`] looks at.
pub const SNIFF_BYTES: usize = 8192;

/// The fallback type.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The MIME type of a file whose first bytes are `head` (up to [`SNIFF_BYTES`]) and
/// whose name is `file_name`. The content wins over the name: a PNG called `x.jpg` is
/// `image/png`.
pub fn detect_mime(head: &[u8], file_name: &str) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    mime_guess::from_path(file_name)
        .first_raw()
        .unwrap_or(OCTET_STREAM)
        .to_string()
}

/// Whether `mime` is a syntactically plausible `type/subtype` (what a receiver accepts
/// from a sender before showing it; anything else is shown as `application/octet-stream`).
pub fn is_plausible_mime(mime: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match mime.split_once('/') {
        Some((t, sub)) => ok(t) && ok(sub),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_wins_then_extension_then_octet_stream() {
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
        assert_eq!(detect_mime(&png, "holiday.jpg"), "image/png");
        assert_eq!(detect_mime(&[0xFF, 0xD8, 0xFF, 0xE0], "x"), "image/jpeg");
        assert_eq!(detect_mime(b"hello world", "notes.txt"), "text/plain");
        assert_eq!(detect_mime(b"\x00\x01\x02", "blob"), OCTET_STREAM);
        assert_eq!(detect_mime(b"", ""), OCTET_STREAM);
    }

    #[test]
    fn plausible_mime_types() {
        assert!(is_plausible_mime("image/jpeg"));
        assert!(is_plausible_mime("application/vnd.ms-excel"));
        assert!(!is_plausible_mime("image"));
        assert!(!is_plausible_mime("text/html; charset=utf-8"));
        assert!(!is_plausible_mime("a/b\n"));
        assert!(!is_plausible_mime("/x"));
    }
}
