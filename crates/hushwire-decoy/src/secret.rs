//! Secrets that appear in URLs (the server's path prefix, a relay's tunnel path).

use rand_core_shim::fill;
use subtle::ConstantTimeEq;

/// Characters of a secret: URL-safe, no padding, nothing to escape.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A new random secret of `chars` URL-safe characters (6 bits each; 22 characters
/// hold 132 bits).
pub fn generate(chars: usize) -> String {
    let mut bytes = vec![0u8; chars];
    fill(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
        .collect()
}

/// Whether `candidate` equals `secret`, in time independent of where they differ.
pub fn matches(candidate: &str, secret: &str) -> bool {
    candidate.len() == secret.len() && bool::from(candidate.as_bytes().ct_eq(secret.as_bytes()))
}

/// Whether `s` looks like a secret from [`generate`] (length and alphabet).
pub fn is_well_formed(s: &str, min_chars: usize) -> bool {
    s.len() >= min_chars && s.len() <= 128 && s.bytes().all(|b| ALPHABET.contains(&b))
}

mod rand_core_shim {
    /// Fills `buf` from the operating system's CSPRNG (through rustls' provider, which
    /// every user of this crate has already).
    pub(super) fn fill(buf: &mut [u8]) {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if provider.secure_random.fill(buf).is_err() {
            // aws-lc's RNG does not fail in practice; fall back to the std hasher's
            // OS-seeded randomness rather than returning a predictable secret.
            use std::hash::{BuildHasher, Hasher};
            for chunk in buf.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(chunk.len());
                let v = h.finish().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_compare_exactly() {
        let a = generate(22);
        let b = generate(22);
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
        assert!(is_well_formed(&a, 16));
        assert!(matches(&a, &a.clone()));
        assert!(!matches(&a, &b));
        assert!(!matches(&a[..21], &a));
        assert!(!is_well_formed("a/b", 1));
    }
}
