//! The attachment ciphertext: STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015) over
//! XChaCha20-Poly1305, with the 32-bit big-endian counter and last-chunk flag of
//! `aead_stream::StreamBE32`.
//!
//! # Format
//! The plaintext is cut into chunks of `chunk_size` bytes ([`CHUNK_SIZE`] = 64 KiB when
//! sending); the last chunk holds the rest and is never empty unless the whole file is
//! (an empty file is one empty final chunk). Chunk `i` is sealed with the nonce
//! `nonce_prefix (19 bytes) || i (u32 big-endian) || last (1 byte: 1 for the final
//! chunk, else 0)`, no associated data, and a 16-byte tag appended. The ciphertext is the
//! sealed chunks concatenated, so its size is a pure function of the plaintext size
//! ([`ciphertext_len`]):
//!
//! ```text
//! chunks(p)  = max(1, ceil(p / chunk_size))
//! ciphertext = p + 16 * chunks(p)
//! ```
//!
//! Because the position and the last flag are in the nonce, a reordered, duplicated,
//! dropped or swapped chunk fails authentication, a stream cut at a chunk boundary
//! fails (its new last chunk was not sealed as last), and data appended after the final
//! chunk fails too. A blob swapped for another file fails at its first chunk (another
//! key), and its SHA-256 differs from the one in the message anyway.

use std::io::{Read, Write};

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::MediaError;

/// Plaintext bytes per chunk when sending.
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// The smallest chunk size a receiver accepts.
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
/// The largest chunk size a receiver accepts (it holds one chunk in memory).
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Poly1305 tag bytes per chunk.
pub const TAG_BYTES: u32 = 16;
/// File key bytes.
pub const KEY_BYTES: usize = 32;
/// STREAM nonce prefix bytes (XChaCha20's 24-byte nonce minus the 5-byte counter+flag).
pub const NONCE_PREFIX_BYTES: usize = 19;

type Primitive = StreamBE32<XChaCha20Poly1305>;

/// The number of chunks of a `plaintext_len`-byte file.
pub fn chunk_count(plaintext_len: u64, chunk_size: u32) -> u64 {
    let cs = u64::from(chunk_size.max(1));
    plaintext_len.div_ceil(cs).max(1)
}

/// The ciphertext size of a `plaintext_len`-byte file with `chunk_size`-byte chunks;
/// `None` on overflow or a chunk size outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub fn ciphertext_len_with(plaintext_len: u64, chunk_size: u32) -> Option<u64> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return None;
    }
    let chunks = chunk_count(plaintext_len, chunk_size);
    if chunks > u64::from(u32::MAX) {
        return None; // the STREAM counter is 32 bits
    }
    plaintext_len.checked_add(chunks.checked_mul(u64::from(TAG_BYTES))?)
}

/// The ciphertext size of a `plaintext_len`-byte file with the sending chunk size
/// ([`CHUNK_SIZE`]): `p + 16 * max(1, ceil(p / 65536))`.
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    // CHUNK_SIZE is within bounds and u64 plaintexts below 2^63 cannot overflow here;
    // saturate rather than panic for absurd inputs.
    ciphertext_len_with(plaintext_len, CHUNK_SIZE).unwrap_or(u64::MAX)
}

/// The plaintext size a `ciphertext_len`-byte ciphertext decrypts to, or `None` if no
/// plaintext has that ciphertext size (e.g. a truncated blob).
pub fn plaintext_len_of(ciphertext_len: u64, chunk_size: u32) -> Option<u64> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return None;
    }
    let sealed = u64::from(chunk_size) + u64::from(TAG_BYTES);
    let full = ciphertext_len / sealed;
    let rem = ciphertext_len % sealed;
    let tag = u64::from(TAG_BYTES);
    let p = if full == 0 {
        rem.checked_sub(tag)?
    } else if rem == 0 {
        full * u64::from(chunk_size)
    } else if rem > tag {
        full * u64::from(chunk_size) + (rem - tag)
    } else {
        return None;
    };
    (ciphertext_len_with(p, chunk_size)? == ciphertext_len).then_some(p)
}

/// A file's 32-byte encryption key: fresh and random for every file. Zeroized on drop;
/// `Debug` shows no key bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct FileKey([u8; KEY_BYTES]);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

impl FileKey {
    /// A fresh key from a cryptographically secure RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut key = [0u8; KEY_BYTES];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// A key from stored or received bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let key: [u8; KEY_BYTES] = bytes.try_into().ok()?;
        Some(Self(key))
    }

    /// The raw key, for the message that carries it and the local store.
    pub fn expose(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

/// The STREAM nonce prefix: random per file (not secret).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NoncePrefix([u8; NONCE_PREFIX_BYTES]);

impl NoncePrefix {
    /// A fresh random prefix.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut nonce = [0u8; NONCE_PREFIX_BYTES];
        rng.fill_bytes(&mut nonce);
        Self(nonce)
    }

    /// A prefix from stored or received bytes; `None` unless exactly 19 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_PREFIX_BYTES] {
        &self.0
    }
}

fn primitive(key: &FileKey, nonce: &NoncePrefix) -> Primitive {
    let aead = XChaCha20Poly1305::new(&key.0.into());
    Primitive::from_aead(aead, &nonce.0.into())
}

fn digest(h: Sha256) -> [u8; 32] {
    h.finalize().into()
}

/// What sealing a whole file produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes.
    pub plaintext_len: u64,
    /// Ciphertext bytes (= [`ciphertext_len`] of the plaintext length).
    pub ciphertext_len: u64,
    /// SHA-256 of the plaintext.
    pub plaintext_sha256: [u8; 32],
    /// SHA-256 of the ciphertext.
    pub ciphertext_sha256: [u8; 32],
}

/// What opening a whole ciphertext produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Plaintext bytes written.
    pub plaintext_len: u64,
    /// Ciphertext bytes read.
    pub ciphertext_len: u64,
    /// SHA-256 of the plaintext written.
    pub plaintext_sha256: [u8; 32],
}

/// Push-style encryption of a stream of unknown length: feed plaintext with
/// [`Sealer::update`], end with [`Sealer::finish`]. Holds at most one chunk.
pub struct Sealer {
    stream: Primitive,
    position: u32,
    chunk_size: usize,
    buf: Vec<u8>,
    plain_hash: Sha256,
    cipher_hash: Sha256,
    plain_len: u64,
    cipher_len: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("position", &self.position)
            .field("plaintext_len", &self.plain_len)
            .finish_non_exhaustive()
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl Sealer {
    /// A sealer with the sending chunk size ([`CHUNK_SIZE`]).
    pub fn new(key: &FileKey, nonce: &NoncePrefix) -> Self {
        let chunk_size = CHUNK_SIZE as usize;
        Self {
            stream: primitive(key, nonce),
            position: 0,
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_BYTES as usize),
            plain_hash: Sha256::new(),
            cipher_hash: Sha256::new(),
            plain_len: 0,
            cipher_len: 0,
        }
    }

    fn seal_buf(&mut self, last: bool, out: &mut dyn Write) -> Result<(), MediaError> {
        if !last && self.position == u32::MAX {
            return Err(MediaError::TooLarge);
        }
        self.plain_hash.update(&self.buf);
        self.plain_len += self.buf.len() as u64;
        self.stream
            .encrypt_in_place(self.position, last, b"", &mut self.buf)
            .map_err(|_| MediaError::TooLarge)?;
        self.cipher_hash.update(&self.buf);
        self.cipher_len += self.buf.len() as u64;
        out.write_all(&self.buf)?;
        self.buf.clear();
        self.position = self.position.wrapping_add(1);
        Ok(())
    }

    /// Encrypts `input`, writing every chunk known not to be the last to `out`.
    pub fn update(&mut self, mut input: &[u8], out: &mut dyn Write) -> Result<(), MediaError> {
        while !input.is_empty() {
            if self.buf.len() == self.chunk_size {
                // More data follows, so this full chunk is not the last.
                self.seal_buf(false, out)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Seals the final chunk (possibly empty, for an empty file) and returns the sizes
    /// and hashes.
    pub fn finish(mut self, out: &mut dyn Write) -> Result<Sealed, MediaError> {
        self.seal_buf(true, out)?;
        Ok(Sealed {
            plaintext_len: self.plain_len,
            ciphertext_len: self.cipher_len,
            plaintext_sha256: digest(std::mem::take(&mut self.plain_hash)),
            ciphertext_sha256: digest(std::mem::take(&mut self.cipher_hash)),
        })
    }
}

/// Encryption of a source of KNOWN length (a file being uploaded), pulled chunk by
/// chunk: [`SealingReader::fill`] appends ciphertext to a part buffer. The source must
/// hold exactly the declared number of bytes: a file that shrank or grew since it was
/// measured is [`MediaError::SourceChanged`], never a silently different upload.
///
/// STREAM is deterministic for a key and nonce, so re-running it over the same file
/// yields the same ciphertext: an interrupted upload resumes by sealing again and
/// skipping the parts the server already has.
pub struct SealingReader<R> {
    src: R,
    stream: Primitive,
    position: u32,
    chunk_size: usize,
    remaining: u64,
    total: u64,
    /// The current sealed chunk and how much of it was handed out.
    buf: Vec<u8>,
    buf_pos: usize,
    done: bool,
    plain_hash: Sha256,
    cipher_hash: Sha256,
    plain_len: u64,
    cipher_len: u64,
}

impl<R> std::fmt::Debug for SealingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingReader")
            .field("position", &self.position)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<R> Drop for SealingReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl<R: Read> SealingReader<R> {
    /// Seals the `plaintext_len` bytes `src` holds, with the sending chunk size.
    pub fn new(src: R, plaintext_len: u64, key: &FileKey, nonce: &NoncePrefix) -> Self {
        let chunk_size = CHUNK_SIZE as usize;
        Self {
            src,
            stream: primitive(key, nonce),
            position: 0,
            chunk_size,
            remaining: plaintext_len,
            total: ciphertext_len(plaintext_len),
            buf: Vec::with_capacity(chunk_size + TAG_BYTES as usize),
            buf_pos: 0,
            done: false,
            plain_hash: Sha256::new(),
            cipher_hash: Sha256::new(),
            plain_len: 0,
            cipher_len: 0,
        }
    }

    /// The ciphertext size this reader produces in total.
    pub fn ciphertext_len(&self) -> u64 {
        self.total
    }

    fn next_chunk(&mut self) -> Result<(), MediaError> {
        let n = usize::try_from(self.remaining.min(self.chunk_size as u64))
            .map_err(|_| MediaError::TooLarge)?;
        self.buf.clear();
        self.buf.resize(n, 0);
        self.src.read_exact(&mut self.buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                MediaError::SourceChanged("the file is shorter than when it was measured".into())
            } else {
                MediaError::Io(e)
            }
        })?;
        self.remaining -= n as u64;
        let last = self.remaining == 0;
        if last {
            let mut probe = [0u8; 1];
            loop {
                match self.src.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {
                        return Err(MediaError::SourceChanged(
                            "the file is longer than when it was measured".into(),
                        ));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(MediaError::Io(e)),
                }
            }
        } else if self.position == u32::MAX {
            return Err(MediaError::TooLarge);
        }
        self.plain_hash.update(&self.buf);
        self.plain_len += n as u64;
        self.stream
            .encrypt_in_place(self.position, last, b"", &mut self.buf)
            .map_err(|_| MediaError::TooLarge)?;
        self.cipher_hash.update(&self.buf);
        self.cipher_len += self.buf.len() as u64;
        self.position = self.position.wrapping_add(1);
        self.buf_pos = 0;
        self.done = last;
        Ok(())
    }

    /// Appends up to `max` ciphertext bytes to `out`; returns how many (0 at the end).
    pub fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> Result<usize, MediaError> {
        let mut written = 0;
        while written < max {
            if self.buf_pos == self.buf.len() {
                if self.done {
                    break;
                }
                self.next_chunk()?;
            }
            let take = (self.buf.len() - self.buf_pos).min(max - written);
            out.extend_from_slice(&self.buf[self.buf_pos..self.buf_pos + take]);
            self.buf_pos += take;
            written += take;
        }
        Ok(written)
    }

    /// Discards up to `max` ciphertext bytes (still sealing and hashing them); returns
    /// how many. Used to step over parts the server already holds.
    pub fn skip(&mut self, max: usize) -> Result<usize, MediaError> {
        let mut skipped = 0;
        while skipped < max {
            if self.buf_pos == self.buf.len() {
                if self.done {
                    break;
                }
                self.next_chunk()?;
            }
            let take = (self.buf.len() - self.buf_pos).min(max - skipped);
            self.buf_pos += take;
            skipped += take;
        }
        Ok(skipped)
    }

    /// SHA-256 of the ciphertext sealed so far (whole chunks, including any not yet
    /// handed out by `fill`). Used to check, on resume, that the file is unchanged.
    pub fn ciphertext_sha256_so_far(&self) -> [u8; 32] {
        digest(self.cipher_hash.clone())
    }

    /// Ciphertext bytes handed out (by `fill` or `skip`) so far.
    pub fn position(&self) -> u64 {
        self.cipher_len - (self.buf.len() - self.buf_pos) as u64
    }

    /// Once every byte was handed out: the sizes and hashes.
    pub fn finish(mut self) -> Result<Sealed, MediaError> {
        if !self.done || self.buf_pos != self.buf.len() {
            return Err(MediaError::Incomplete);
        }
        Ok(Sealed {
            plaintext_len: self.plain_len,
            ciphertext_len: self.cipher_len,
            plaintext_sha256: digest(std::mem::take(&mut self.plain_hash)),
            ciphertext_sha256: digest(std::mem::take(&mut self.cipher_hash)),
        })
    }
}

/// Push-style decryption: feed ciphertext with [`Opener::update`] (any split), end with
/// [`Opener::finish`]. Plaintext reaches `out` only after its chunk authenticated; a
/// chunk held back (it might be the last) is checked at `finish`.
pub struct Opener {
    stream: Primitive,
    position: u32,
    sealed_chunk: usize,
    buf: Vec<u8>,
    plain_hash: Sha256,
    plain_len: u64,
    cipher_len: u64,
    max_plaintext: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("position", &self.position)
            .field("plaintext_len", &self.plain_len)
            .finish_non_exhaustive()
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl Opener {
    /// An opener for `chunk_size`-byte chunks that refuses to produce more than
    /// `max_plaintext` bytes (the size the message declared).
    pub fn new(
        key: &FileKey,
        nonce: &NoncePrefix,
        chunk_size: u32,
        max_plaintext: u64,
    ) -> Result<Self, MediaError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(MediaError::BadChunkSize(chunk_size));
        }
        let sealed_chunk = (chunk_size + TAG_BYTES) as usize;
        Ok(Self {
            stream: primitive(key, nonce),
            position: 0,
            sealed_chunk,
            buf: Vec::with_capacity(sealed_chunk),
            plain_hash: Sha256::new(),
            plain_len: 0,
            cipher_len: 0,
            max_plaintext,
        })
    }

    /// An opener that continues after `prefix`: plaintext of the first chunks it (or an
    /// earlier opener of the same file) wrote, e.g. a download interrupted by a killed
    /// process. The chunks are sealed again — STREAM is deterministic for a key and nonce
    /// — which restores the plaintext hash and yields the ciphertext they came from: its
    /// length and a SHA-256 state over it, so a download resumes with the ciphertext that
    /// follows (`Range`) and still checks the whole ciphertext's hash. `prefix` must hold
    /// whole chunks; the final chunk is never part of a prefix.
    pub fn resume(
        key: &FileKey,
        nonce: &NoncePrefix,
        chunk_size: u32,
        max_plaintext: u64,
        mut prefix: impl Read,
        prefix_len: u64,
    ) -> Result<(Self, ResumedPrefix), MediaError> {
        let mut opener = Self::new(key, nonce, chunk_size, max_plaintext)?;
        let cs = u64::from(chunk_size);
        let chunks = prefix_len / cs;
        if !prefix_len.is_multiple_of(cs) || chunks >= chunk_count(max_plaintext, chunk_size) {
            return Err(MediaError::SizeMismatch {
                expected: chunks.saturating_sub(1) * cs,
                actual: prefix_len,
            });
        }
        let mut cipher_hash = Sha256::new();
        let mut buf: Vec<u8> = Vec::with_capacity(opener.sealed_chunk);
        for _ in 0..chunks {
            buf.clear();
            buf.resize(chunk_size as usize, 0);
            prefix.read_exact(&mut buf).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    MediaError::Truncated
                } else {
                    MediaError::Io(e)
                }
            })?;
            opener.plain_hash.update(&buf);
            opener
                .stream
                .encrypt_in_place(opener.position, false, b"", &mut buf)
                .map_err(|_| MediaError::TooLarge)?;
            cipher_hash.update(&buf);
            opener.position = opener.position.checked_add(1).ok_or(MediaError::TooLarge)?;
        }
        buf.zeroize();
        opener.plain_len = prefix_len;
        opener.cipher_len = chunks * u64::from(chunk_size + TAG_BYTES);
        let resumed = ResumedPrefix {
            plaintext_len: prefix_len,
            ciphertext_len: opener.cipher_len,
            ciphertext_hash: cipher_hash,
        };
        Ok((opener, resumed))
    }

    fn open_buf(&mut self, last: bool, out: &mut dyn Write) -> Result<(), MediaError> {
        let chunk = u64::from(self.position);
        if self.buf.len() < TAG_BYTES as usize {
            return Err(MediaError::Truncated);
        }
        if self
            .stream
            .decrypt_in_place(self.position, last, b"", &mut self.buf)
            .is_err()
        {
            return Err(self.classify_failure(last, chunk));
        }
        self.plain_len += self.buf.len() as u64;
        if self.plain_len > self.max_plaintext {
            return Err(MediaError::SizeMismatch {
                expected: self.max_plaintext,
                actual: self.plain_len,
            });
        }
        self.plain_hash.update(&self.buf);
        out.write_all(&self.buf)?;
        self.buf.zeroize();
        self.buf.clear();
        if !last {
            if self.position == u32::MAX {
                return Err(MediaError::TooLarge);
            }
            self.position += 1;
        }
        Ok(())
    }

    /// After a chunk failed: tell a cut or extended stream from a forged chunk by trying
    /// the other value of the last flag (the buffer still holds the ciphertext).
    fn classify_failure(&self, last: bool, chunk: u64) -> MediaError {
        let mut probe = self.buf.clone();
        let other = self
            .stream
            .decrypt_in_place(self.position, !last, b"", &mut probe)
            .is_ok();
        probe.zeroize();
        match (other, last) {
            // A chunk sealed as non-final where the stream ends: it was cut.
            (true, true) => MediaError::Truncated,
            // The final chunk, with more data after it.
            (true, false) => MediaError::TrailingData,
            (false, _) => MediaError::Tampered { chunk },
        }
    }

    /// Decrypts what `input` completes, writing authenticated plaintext to `out`.
    pub fn update(&mut self, mut input: &[u8], out: &mut dyn Write) -> Result<(), MediaError> {
        self.cipher_len += input.len() as u64;
        while !input.is_empty() {
            if self.buf.len() == self.sealed_chunk {
                self.open_buf(false, out)?;
            }
            let take = (self.sealed_chunk - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Authenticates the final chunk and returns the sizes and plaintext hash.
    pub fn finish(mut self, out: &mut dyn Write) -> Result<Opened, MediaError> {
        self.open_buf(true, out)?;
        Ok(Opened {
            plaintext_len: self.plain_len,
            ciphertext_len: self.cipher_len,
            plaintext_sha256: digest(std::mem::take(&mut self.plain_hash)),
        })
    }
}

/// What [`Opener::resume`] reconstructed from a plaintext prefix.
#[derive(Clone)]
pub struct ResumedPrefix {
    /// Plaintext bytes in the prefix.
    pub plaintext_len: u64,
    /// Ciphertext bytes they were decrypted from: where the download continues.
    pub ciphertext_len: u64,
    /// SHA-256 state over that ciphertext: feed it the rest to check the whole.
    pub ciphertext_hash: Sha256,
}

impl std::fmt::Debug for ResumedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumedPrefix")
            .field("plaintext_len", &self.plaintext_len)
            .field("ciphertext_len", &self.ciphertext_len)
            .finish_non_exhaustive()
    }
}

/// Seals everything `src` yields into `dst` (buffers of 64 KiB).
pub fn seal<R: Read, W: Write>(
    mut src: R,
    mut dst: W,
    key: &FileKey,
    nonce: &NoncePrefix,
) -> Result<Sealed, MediaError> {
    let mut sealer = Sealer::new(key, nonce);
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        sealer.update(&buf[..n], &mut dst)?;
    }
    buf.zeroize();
    let sealed = sealer.finish(&mut dst)?;
    dst.flush()?;
    Ok(sealed)
}

/// What a received attachment promises about its ciphertext and plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct Expected {
    /// The file key.
    pub key: FileKey,
    /// The STREAM nonce prefix.
    pub nonce: NoncePrefix,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Plaintext size.
    pub plaintext_len: u64,
    /// SHA-256 of the plaintext.
    pub plaintext_sha256: [u8; 32],
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected")
            .field("chunk_size", &self.chunk_size)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

/// Opens the ciphertext `src` yields into `dst` and checks the plaintext's size and
/// SHA-256 against `expected`. On any error the caller must discard what reached `dst`.
pub fn open<R: Read, W: Write>(
    mut src: R,
    mut dst: W,
    expected: &Expected,
) -> Result<Opened, MediaError> {
    let mut opener = Opener::new(
        &expected.key,
        &expected.nonce,
        expected.chunk_size,
        expected.plaintext_len,
    )?;
    let mut buf = vec![0u8; (expected.chunk_size + TAG_BYTES) as usize];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        opener.update(&buf[..n], &mut dst)?;
    }
    let opened = opener.finish(&mut dst)?;
    dst.flush()?;
    if opened.plaintext_len != expected.plaintext_len {
        return Err(MediaError::SizeMismatch {
            expected: expected.plaintext_len,
            actual: opened.plaintext_len,
        });
    }
    if opened.plaintext_sha256 != expected.plaintext_sha256 {
        return Err(MediaError::HashMismatch("plaintext"));
    }
    Ok(opened)
}
