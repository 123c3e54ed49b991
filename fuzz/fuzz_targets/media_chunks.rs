//! Encrypted media chunks as downloaded from the blob store.
//!
//! 1. Arbitrary bytes opened as ciphertext (with a chunk size and declared size taken
//!    from the input) are refused with an error, never a panic and never plaintext.
//! 2. The input sealed and opened again round-trips, and one flipped bit anywhere in
//!    the ciphertext is refused.
#![no_main]

use hushwire_media::stream::{Expected, FileKey, NoncePrefix, Opener, open, seal};
use hushwire_media::{Digest, Sha256};
use libfuzzer_sys::fuzz_target;

fn key() -> (FileKey, NoncePrefix) {
    let key = FileKey::from_slice(&[7u8; 32]).expect("32-byte key");
    let nonce = NoncePrefix::from_slice(&[9u8; hushwire_media::stream::NONCE_PREFIX_BYTES])
        .expect("a full nonce prefix");
    (key, nonce)
}

fuzz_target!(|data: &[u8]| {
    let (key, nonce) = key();
    if data.len() >= 6 {
        // 1. Forged ciphertext.
        let chunk_size = u32::from_le_bytes([data[0], data[1], data[2], 0]);
        let declared = u64::from(u16::from_le_bytes([data[3], data[4]]));
        let body = &data[5..];
        if let Ok(mut opener) = Opener::new(&key, &nonce, chunk_size, declared) {
            let mut out = Vec::new();
            let result = opener
                .update(body, &mut out)
                .and_then(|()| opener.finish(&mut out));
            assert!(result.is_err(), "forged ciphertext must not open");
        }
    }
    // 2. Round trip and tamper detection.
    let mut sealed = Vec::new();
    let s = seal(data, &mut sealed, &key, &nonce).expect("sealing into memory");
    let expected = Expected {
        key: key.clone(),
        nonce: nonce.clone(),
        chunk_size: hushwire_media::stream::CHUNK_SIZE,
        plaintext_len: data.len() as u64,
        plaintext_sha256: Sha256::digest(data).into(),
    };
    let mut plain = Vec::new();
    open(sealed.as_slice(), &mut plain, &expected).expect("own ciphertext opens");
    assert_eq!(plain, data);
    assert_eq!(s.plaintext_len, data.len() as u64);
    if !sealed.is_empty() {
        let at = data.first().map_or(0, |b| usize::from(*b)) % sealed.len();
        sealed[at] ^= 1;
        let mut out = Vec::new();
        assert!(open(sealed.as_slice(), &mut out, &expected).is_err());
    }
});
