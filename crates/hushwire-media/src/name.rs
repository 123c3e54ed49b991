//! File names chosen by a sender are hostile input on the receiving device:
//! [`sanitize_file_name`] turns any of them into one plain file name that cannot leave
//! the download directory, hide itself, spoof its extension or hit a reserved name.

/// The name used when nothing usable is left.
pub const FALLBACK_NAME: &str = "attachment";

/// Longest sanitized name, in bytes (common file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;

/// Characters Windows forbids in names (also replaced on Unix, so names stay portable).
const FORBIDDEN: &[char] = &['<', '>', ':', '"', '|', '?', '*'];

/// Names Windows reserves for devices, with or without an extension.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn is_invisible_or_control(c: char) -> bool {
    c.is_control()
        // Bidirectional overrides and isolates ("gpj.exe" shown as "exe.jpg").
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        || c == '\u{200E}'
        || c == '\u{200F}'
        || c == '\u{061C}'
        // Zero-width characters and the BOM.
        || ('\u{200B}'..='\u{200D}').contains(&c)
        || c == '\u{FEFF}'
}

/// A safe file name for `name`: the last path component only (both `/` and `\`
/// separate), without control, bidirectional-override or zero-width characters,
/// Windows-forbidden characters replaced by `_`, no leading dots (no hidden files, no
/// `..`), no trailing dots or spaces, reserved device names prefixed with `_`, at most
/// [`MAX_NAME_BYTES`] bytes (the extension kept). Empty → [`FALLBACK_NAME`].
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out: String = last
        .chars()
        .filter(|c| !is_invisible_or_control(*c))
        .map(|c| if FORBIDDEN.contains(&c) { '_' } else { c })
        .collect();
    let trimmed = out
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    out = trimmed.to_string();
    if out.is_empty() {
        return FALLBACK_NAME.to_string();
    }
    let stem = out.split('.').next().unwrap_or_default();
    if RESERVED
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem.trim_end()))
    {
        out.insert(0, '_');
    }
    if out.len() > MAX_NAME_BYTES {
        out = shorten(&out, MAX_NAME_BYTES);
    }
    out
}

/// Cuts `name` to at most `max` bytes on a character boundary, keeping a short extension.
fn shorten(name: &str, max: usize) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= 16 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let budget = max.saturating_sub(ext.len());
    let mut cut = budget.min(stem.len());
    while cut > 0 && !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = stem[..cut].trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    if stem.is_empty() {
        return FALLBACK_NAME.to_string();
    }
    format!("{stem}{ext}")
}

/// The `n`-th alternative of a sanitized name when it is taken: `photo.jpg` →
/// `photo (2).jpg`; `archive.tar.gz` → `archive (2).tar.gz`; `n` ≤ 1 gives `name`.
pub fn numbered_name(name: &str, n: u32) -> String {
    if n <= 1 {
        return name.to_string();
    }
    let split = name.find('.').filter(|&i| i > 0).unwrap_or(name.len());
    let (stem, ext) = name.split_at(split);
    format!("{stem} ({n}){ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_separators_are_removed() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(sanitize_file_name("/abs/path/x.txt"), "x.txt");
        assert_eq!(sanitize_file_name(".."), FALLBACK_NAME);
        assert_eq!(sanitize_file_name("."), FALLBACK_NAME);
        assert_eq!(sanitize_file_name("dir/"), FALLBACK_NAME);
        assert_eq!(sanitize_file_name(""), FALLBACK_NAME);
        assert_eq!(sanitize_file_name("   "), FALLBACK_NAME);
    }

    #[test]
    fn hidden_control_and_spoofing_characters() {
        assert_eq!(sanitize_file_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_file_name("a\nb\r\tc\0.txt"), "abc.txt");
        assert_eq!(
            sanitize_file_name("invoice\u{202E}gpj.exe"),
            "invoicegpj.exe"
        );
        assert_eq!(sanitize_file_name("x\u{200B}y.pdf"), "xy.pdf");
        assert_eq!(sanitize_file_name("what?.txt"), "what_.txt");
        assert_eq!(sanitize_file_name("a:b|c*.d"), "a_b_c_.d");
        assert_eq!(sanitize_file_name("trailing. . "), "trailing");
        assert_eq!(sanitize_file_name("Ünïcødé 写真.jpg"), "Ünïcødé 写真.jpg");
    }

    #[test]
    fn reserved_names_are_prefixed() {
        assert_eq!(sanitize_file_name("CON"), "_CON");
        assert_eq!(sanitize_file_name("nul.txt"), "_nul.txt");
        assert_eq!(sanitize_file_name("com1.tar.gz"), "_com1.tar.gz");
        assert_eq!(sanitize_file_name("console.txt"), "console.txt");
    }

    #[test]
    fn long_names_keep_their_extension() {
        let long = format!("{}.jpeg", "é".repeat(300));
        let s = sanitize_file_name(&long);
        assert!(s.len() <= MAX_NAME_BYTES, "{}", s.len());
        assert!(s.ends_with(".jpeg"));
        assert!(s.starts_with('é'));
    }

    #[test]
    fn numbered_alternatives() {
        assert_eq!(numbered_name("photo.jpg", 1), "photo.jpg");
        assert_eq!(numbered_name("photo.jpg", 2), "photo (2).jpg");
        assert_eq!(numbered_name("archive.tar.gz", 3), "archive (3).tar.gz");
        assert_eq!(numbered_name("README", 2), "README (2)");
    }
}
