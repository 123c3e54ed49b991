//! Hushwire's attachment format, on the sender's and the receiver's device. No network
//! I/O: byte slices, `std::io::Read`/`Write`, and an RNG passed in.
//!
//! - [`stream`]: the ciphertext — STREAM over XChaCha20-Poly1305 in 64 KiB chunks
//!   ([`Sealer`]/[`SealingReader`] to encrypt, [`Opener`]/[`open`] to decrypt), with
//!   SHA-256 of the plaintext and of the ciphertext computed on the way, and the
//!   ciphertext size as a pure function of the plaintext size ([`ciphertext_len`]).
//! - [`thumbnail`]: image previews (small JPEG + original dimensions), decoding bounded
//!   by [`DecodeLimits`].
//! - [`mime`]: the MIME type from magic bytes, else the extension.
//! - [`name`]: making a sender's file name safe to save under ([`sanitize_file_name`]).
//!
//! The file key ([`FileKey`]) is zeroized on drop and never printed.

pub mod mime;
pub mod name;
pub mod stream;
pub mod thumbnail;

pub use mime::detect_mime;
pub use name::{numbered_name, sanitize_file_name};
/// The hash the attachment format uses (its state appears in [`ResumedPrefix`]).
pub use sha2::{Digest, Sha256};
pub use stream::{
    CHUNK_SIZE, Expected, FileKey, NONCE_PREFIX_BYTES, NoncePrefix, Opened, Opener, ResumedPrefix,
    Sealed, Sealer, SealingReader, TAG_BYTES, chunk_count, ciphertext_len, ciphertext_len_with,
    open, plaintext_len_of, seal,
};
pub use thumbnail::{DecodeLimits, Preview, ThumbnailError, can_thumbnail, make_preview};

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// A chunk failed authentication: the ciphertext was modified, reordered, or is
    /// another file's (wrong key).
    #[error(
        "attachment chunk {chunk} failed authentication (tampered, reordered or the wrong file)"
    )]
    Tampered {
        /// The chunk's index.
        chunk: u64,
    },
    /// The ciphertext ends early (cut at or inside a chunk).
    #[error("attachment ciphertext is truncated")]
    Truncated,
    /// Data follows the final chunk.
    #[error("attachment ciphertext has data after its final chunk")]
    TrailingData,
    /// The plaintext is not the size the message declared.
    #[error("attachment size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Declared.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A SHA-256 differs from the message's ("plaintext" or "ciphertext").
    #[error("attachment {0} SHA-256 does not match the message")]
    HashMismatch(&'static str),
    /// The chunk size is outside what receivers accept.
    #[error("unsupported chunk size {0}")]
    BadChunkSize(u32),
    /// More chunks than the 32-bit STREAM counter allows.
    #[error("file too large for the attachment format")]
    TooLarge,
    /// The source file changed while (or since) it was being sealed.
    #[error("the file changed while it was being sent: {0}")]
    SourceChanged(String),
    /// `finish` before every byte was read.
    #[error("the ciphertext was not read to its end")]
    Incomplete,
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
