//! The attachment format: round trips of any size, the size formula, and every kind of
//! tampering (flipped bytes, truncation, reordering, chunk swaps, appended data, another
//! file's blob, a wrong key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hushwire_media::stream::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, chunk_count};
use hushwire_media::{
    CHUNK_SIZE, Expected, FileKey, MediaError, NoncePrefix, Opener, Sealed, Sealer, SealingReader,
    TAG_BYTES, ciphertext_len, ciphertext_len_with, open, plaintext_len_of, seal,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const CS: usize = CHUNK_SIZE as usize;
const SEALED: usize = CS + TAG_BYTES as usize;

fn keys(seed: u64) -> (FileKey, NoncePrefix) {
    let mut rng = StdRng::seed_from_u64(seed);
    (FileKey::generate(&mut rng), NoncePrefix::generate(&mut rng))
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn seal_all(plain: &[u8], key: &FileKey, nonce: &NoncePrefix) -> (Vec<u8>, Sealed) {
    let mut out = Vec::new();
    let sealed = seal(plain, &mut out, key, nonce).unwrap();
    (out, sealed)
}

fn expected(plain: &[u8], key: &FileKey, nonce: &NoncePrefix) -> Expected {
    Expected {
        key: key.clone(),
        nonce: *nonce,
        chunk_size: CHUNK_SIZE,
        plaintext_len: plain.len() as u64,
        plaintext_sha256: Sha256::digest(plain).into(),
    }
}

fn open_all(ct: &[u8], exp: &Expected) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    open(ct, &mut out, exp).map(|_| out)
}

/// Sizes at and around every boundary that matters.
fn boundary_sizes() -> Vec<usize> {
    let mut sizes = vec![0, 1, 2, 15, 16, 17];
    for k in 1..=3 {
        for d in [-1i64, 0, 1] {
            sizes.push((k * CS as i64 + d) as usize);
        }
    }
    sizes
}

#[test]
fn round_trip_at_chunk_boundaries() {
    for (i, len) in boundary_sizes().into_iter().enumerate() {
        let (key, nonce) = keys(i as u64);
        let plain = data(len, 100 + i as u64);
        let (ct, sealed) = seal_all(&plain, &key, &nonce);
        assert_eq!(ct.len() as u64, ciphertext_len(len as u64), "len {len}");
        assert_eq!(sealed.ciphertext_len, ct.len() as u64);
        assert_eq!(sealed.plaintext_len, len as u64);
        assert_eq!(
            sealed.plaintext_sha256,
            <[u8; 32]>::from(Sha256::digest(&plain))
        );
        assert_eq!(
            sealed.ciphertext_sha256,
            <[u8; 32]>::from(Sha256::digest(&ct))
        );
        assert_eq!(
            open_all(&ct, &expected(&plain, &key, &nonce)).unwrap(),
            plain
        );
        assert_eq!(
            plaintext_len_of(ct.len() as u64, CHUNK_SIZE),
            Some(len as u64)
        );
    }
}

#[test]
fn empty_file_is_one_empty_final_chunk() {
    let (key, nonce) = keys(1);
    let (ct, sealed) = seal_all(b"", &key, &nonce);
    assert_eq!(ct.len(), TAG_BYTES as usize);
    assert_eq!(
        sealed.plaintext_sha256,
        <[u8; 32]>::from(Sha256::digest(b""))
    );
    assert_eq!(open_all(&ct, &expected(b"", &key, &nonce)).unwrap(), b"");
    // Nothing at all is not an empty file.
    assert!(matches!(
        open_all(b"", &expected(b"", &key, &nonce)),
        Err(MediaError::Truncated)
    ));
}

#[test]
fn size_formula() {
    assert_eq!(ciphertext_len(0), 16);
    assert_eq!(ciphertext_len(1), 17);
    assert_eq!(ciphertext_len(65_536), 65_552);
    assert_eq!(ciphertext_len(65_537), 65_537 + 32);
    let two_gib = 2u64 << 30;
    assert_eq!(ciphertext_len(two_gib), two_gib + 16 * 32_768);
    assert_eq!(chunk_count(0, CHUNK_SIZE), 1);
    assert_eq!(chunk_count(65_536, CHUNK_SIZE), 1);
    assert_eq!(chunk_count(65_537, CHUNK_SIZE), 2);
    // Ciphertext sizes no plaintext has.
    for bad in [0u64, 1, 15, SEALED as u64 + 1, SEALED as u64 + 16] {
        assert_eq!(plaintext_len_of(bad, CHUNK_SIZE), None, "{bad}");
    }
    assert_eq!(ciphertext_len_with(10, MIN_CHUNK_SIZE - 1), None);
    assert_eq!(ciphertext_len_with(10, MAX_CHUNK_SIZE + 1), None);
    assert_eq!(ciphertext_len_with(u64::MAX, CHUNK_SIZE), None);
}

#[test]
fn sealing_reader_matches_sealer_and_resumes_deterministically() {
    for (i, len) in boundary_sizes().into_iter().enumerate() {
        let (key, nonce) = keys(7);
        let plain = data(len, i as u64);
        let (ct, sealed) = seal_all(&plain, &key, &nonce);
        // Pulled in odd-sized parts.
        let mut r = SealingReader::new(plain.as_slice(), len as u64, &key, &nonce);
        assert_eq!(r.ciphertext_len(), ct.len() as u64);
        let mut out = Vec::new();
        while r.fill(&mut out, 10_007).unwrap() > 0 {}
        assert_eq!(out, ct, "len {len}");
        assert_eq!(r.finish().unwrap(), sealed);
        // Skipping a prefix then filling yields the same suffix (a resumed upload).
        let mut r = SealingReader::new(plain.as_slice(), len as u64, &key, &nonce);
        let skip = ct.len() / 2;
        assert_eq!(r.skip(skip).unwrap(), skip);
        assert_eq!(r.position(), skip as u64);
        let mut rest = Vec::new();
        while r.fill(&mut rest, 4096).unwrap() > 0 {}
        assert_eq!(rest, ct[skip..]);
        assert_eq!(r.finish().unwrap(), sealed);
    }
}

#[test]
fn sealing_reader_refuses_a_changed_source() {
    let (key, nonce) = keys(3);
    let plain = data(3 * CS, 3);
    // Shorter than declared.
    let mut r = SealingReader::new(&plain[..CS], plain.len() as u64, &key, &nonce);
    let mut out = Vec::new();
    let err = loop {
        match r.fill(&mut out, 1 << 20) {
            Ok(0) => panic!("accepted a short file"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(err, MediaError::SourceChanged(_)), "{err}");
    // Longer than declared.
    let mut r = SealingReader::new(plain.as_slice(), CS as u64, &key, &nonce);
    let err = r.fill(&mut Vec::new(), 1 << 20).unwrap_err();
    assert!(matches!(err, MediaError::SourceChanged(_)), "{err}");
    // finish before the end.
    let mut r = SealingReader::new(plain.as_slice(), plain.len() as u64, &key, &nonce);
    r.fill(&mut Vec::new(), 10).unwrap();
    assert!(matches!(r.finish(), Err(MediaError::Incomplete)));
}

#[test]
fn every_tampering_is_detected() {
    let (key, nonce) = keys(9);
    let plain = data(3 * CS + 100, 9);
    let (ct, _) = seal_all(&plain, &key, &nonce);
    let exp = expected(&plain, &key, &nonce);

    // A flipped bit anywhere: first byte, a tag, the last byte.
    for pos in [0, CS + 3, SEALED - 1, SEALED + 10, ct.len() - 1] {
        let mut t = ct.clone();
        t[pos] ^= 0x01;
        let err = open_all(&t, &exp).unwrap_err();
        assert!(
            matches!(err, MediaError::Tampered { .. }),
            "pos {pos}: {err}"
        );
    }
    // Truncated at a chunk boundary (a valid-looking shorter stream).
    let err = open_all(&ct[..2 * SEALED], &exp).unwrap_err();
    assert!(matches!(err, MediaError::Truncated), "{err}");
    // Truncated inside a chunk, or to less than a tag.
    let err = open_all(&ct[..2 * SEALED + 50], &exp).unwrap_err();
    assert!(matches!(err, MediaError::Tampered { chunk: 2 }), "{err}");
    let err = open_all(&ct[..SEALED + 5], &exp).unwrap_err();
    assert!(matches!(err, MediaError::Truncated), "{err}");
    // Two chunks swapped.
    let mut t = ct.clone();
    let (a, b) = t.split_at_mut(SEALED);
    a.swap_with_slice(&mut b[..SEALED]);
    let err = open_all(&t, &exp).unwrap_err();
    assert!(matches!(err, MediaError::Tampered { chunk: 0 }), "{err}");
    // A chunk duplicated over the next.
    let mut t = ct.clone();
    t.copy_within(0..SEALED, SEALED);
    assert!(matches!(
        open_all(&t, &exp),
        Err(MediaError::Tampered { chunk: 1 })
    ));
    // A chunk dropped from the middle.
    let mut t = ct[..SEALED].to_vec();
    t.extend_from_slice(&ct[2 * SEALED..]);
    assert!(matches!(
        open_all(&t, &exp),
        Err(MediaError::Tampered { chunk: 1 })
    ));
    // Data appended after the final chunk.
    let mut t = ct.clone();
    t.extend_from_slice(&ct[..SEALED]);
    let err = open_all(&t, &exp).unwrap_err();
    assert!(matches!(err, MediaError::Tampered { chunk: 3 }), "{err}");
    // ... and after a full final chunk, where the chunk boundaries stay aligned.
    let aligned = data(2 * CS, 11);
    let (mut t, _) = seal_all(&aligned, &key, &nonce);
    t.extend_from_slice(&ct[..SEALED]);
    let err = open_all(&t, &expected(&aligned, &key, &nonce)).unwrap_err();
    assert!(matches!(err, MediaError::TrailingData), "{err}");
    // Another file's blob (another key), even of the same size.
    let (key2, nonce2) = keys(10);
    let (other, _) = seal_all(&data(plain.len(), 10), &key2, &nonce2);
    assert!(matches!(
        open_all(&other, &exp),
        Err(MediaError::Tampered { chunk: 0 })
    ));
    // The right blob under the wrong nonce.
    let mut wrong = exp.clone();
    wrong.nonce = nonce2;
    assert!(matches!(
        open_all(&ct, &wrong),
        Err(MediaError::Tampered { chunk: 0 })
    ));
    // A correct ciphertext whose message declares another plaintext hash or size.
    let mut wrong = exp.clone();
    wrong.plaintext_sha256[0] ^= 1;
    assert!(matches!(
        open_all(&ct, &wrong),
        Err(MediaError::HashMismatch("plaintext"))
    ));
    let mut wrong = exp.clone();
    wrong.plaintext_len -= 1;
    assert!(matches!(
        open_all(&ct, &wrong),
        Err(MediaError::SizeMismatch { .. })
    ));
    let mut wrong = exp;
    wrong.plaintext_len += 1;
    assert!(matches!(
        open_all(&ct, &wrong),
        Err(MediaError::SizeMismatch { .. })
    ));
}

#[test]
fn keys_are_redacted() {
    let (key, _) = keys(5);
    let shown = format!("{key:?}");
    assert_eq!(shown, "FileKey(<redacted>)");
    let exp = Expected {
        key,
        nonce: keys(6).1,
        chunk_size: CHUNK_SIZE,
        plaintext_len: 1,
        plaintext_sha256: [0; 32],
    };
    assert!(!format!("{exp:?}").contains("key"));
    assert!(FileKey::from_slice(&[1; 31]).is_none());
    assert!(NoncePrefix::from_slice(&[1; 24]).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any size round-trips, fed in any split, and the sizes follow the formula.
    #[test]
    fn prop_round_trip(len in prop_oneof![0usize..300, (0usize..4).prop_flat_map(|k| (k * CS).saturating_sub(2)..k * CS + 3), 0usize..(3 * CS)],
                       split in 1usize..70_000, seed in any::<u64>()) {
        let (key, nonce) = keys(seed);
        let plain = data(len, seed ^ 0x55);
        let mut ct = Vec::new();
        let mut sealer = Sealer::new(&key, &nonce);
        for part in plain.chunks(split) {
            sealer.update(part, &mut ct).unwrap();
        }
        let sealed = sealer.finish(&mut ct).unwrap();
        prop_assert_eq!(ct.len() as u64, ciphertext_len(len as u64));
        prop_assert_eq!(sealed.ciphertext_len, ct.len() as u64);
        let mut out = Vec::new();
        let mut opener = Opener::new(&key, &nonce, CHUNK_SIZE, len as u64).unwrap();
        for part in ct.chunks(split.max(1) * 3 / 2 + 1) {
            opener.update(part, &mut out).unwrap();
        }
        let opened = opener.finish(&mut out).unwrap();
        prop_assert_eq!(&out, &plain);
        prop_assert_eq!(opened.plaintext_sha256, sealed.plaintext_sha256);
        prop_assert_eq!(plaintext_len_of(ct.len() as u64, CHUNK_SIZE), Some(len as u64));
    }

    /// Any single flipped bit is detected, whatever the size.
    #[test]
    fn prop_any_bit_flip_is_detected(len in 0usize..(2 * CS + 10), pos in any::<prop::sample::Index>(),
                                     bit in 0u8..8, seed in any::<u64>()) {
        let (key, nonce) = keys(seed);
        let plain = data(len, seed);
        let (mut ct, _) = seal_all(&plain, &key, &nonce);
        let i = pos.index(ct.len());
        ct[i] ^= 1 << bit;
        prop_assert!(open_all(&ct, &expected(&plain, &key, &nonce)).is_err());
    }

    /// Any truncation (by at least one byte) is detected.
    #[test]
    fn prop_any_truncation_is_detected(len in 0usize..(2 * CS + 10), cut in any::<prop::sample::Index>(), seed in any::<u64>()) {
        let (key, nonce) = keys(seed);
        let plain = data(len, seed);
        let (ct, _) = seal_all(&plain, &key, &nonce);
        let keep = cut.index(ct.len());
        prop_assert!(open_all(&ct[..keep], &expected(&plain, &key, &nonce)).is_err());
    }
}

/// An opener resumed from a plaintext prefix (a download interrupted after some chunks)
/// continues exactly where a fresh one would have been: same output, same hashes, and the
/// ciphertext offset to continue from.
#[test]
fn resumed_opener_continues_an_interrupted_download() {
    for len in [CS + 1, 2 * CS, 3 * CS + 7, 5 * CS] {
        let (key, nonce) = keys(len as u64);
        let plain = data(len, 77);
        let (ct, sealed) = seal_all(&plain, &key, &nonce);
        let chunks = hushwire_media::chunk_count(len as u64, CHUNK_SIZE);
        for k in 0..chunks {
            let prefix_len = k as usize * CS;
            let (mut opener, resumed) = Opener::resume(
                &key,
                &nonce,
                CHUNK_SIZE,
                len as u64,
                &plain[..prefix_len],
                prefix_len as u64,
            )
            .unwrap();
            assert_eq!(resumed.plaintext_len, prefix_len as u64);
            let offset = resumed.ciphertext_len as usize;
            assert_eq!(offset, k as usize * SEALED);
            let mut out = plain[..prefix_len].to_vec();
            opener.update(&ct[offset..], &mut out).unwrap();
            let opened = opener.finish(&mut out).unwrap();
            assert_eq!(out, plain, "len {len}, k {k}");
            assert_eq!(opened.plaintext_sha256, sealed.plaintext_sha256);
            let mut h = resumed.ciphertext_hash;
            h.update(&ct[offset..]);
            assert_eq!(<[u8; 32]>::from(h.finalize()), sealed.ciphertext_sha256);
        }
        // A prefix that is not whole chunks, or holds the final chunk, is refused.
        assert!(Opener::resume(&key, &nonce, CHUNK_SIZE, len as u64, &plain[..10], 10).is_err());
        let all = chunks * CS as u64;
        assert!(
            Opener::resume(
                &key,
                &nonce,
                CHUNK_SIZE,
                len as u64,
                &plain[..],
                all.min(len as u64)
            )
            .is_err()
        );
        // A modified prefix yields another ciphertext hash (the download then fails its
        // check instead of producing a wrong file).
        let mut bad = plain[..CS].to_vec();
        bad[5] ^= 1;
        let (_, resumed) =
            Opener::resume(&key, &nonce, CHUNK_SIZE, len as u64, &bad[..], CS as u64).unwrap();
        let mut h = resumed.ciphertext_hash;
        h.update(&ct[SEALED..]);
        assert_ne!(<[u8; 32]>::from(h.finalize()), sealed.ciphertext_sha256);
    }
}
