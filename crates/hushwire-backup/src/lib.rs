//! Hushwire's end-to-end encrypted backup file (format version 1, specified in
//! `docs/backup-format.md`).
//!
//! A backup is a 139-byte header followed by STREAM chunks of XChaCha20-Poly1305 under a
//! key derived (HKDF-SHA256) from a [`RecoveryKey`]. The plaintext payload is a sequence
//! of typed, length-prefixed [`Record`]s. [`BackupWriter`] and [`BackupReader`] work over
//! any `std::io::Write` / `std::io::Read`, one chunk at a time, so a backup of any size
//! is never held in memory.
//!
//! Guarantees of the reader:
//! - a wrong recovery key is reported ([`BackupError::WrongKey`]) when the reader is
//!   built, before anything is decrypted;
//! - a modified byte anywhere is [`BackupError::TamperedHeader`] or
//!   [`BackupError::Tampered`] (a modified salt or key check cannot be told from a wrong
//!   key by design: both look like [`BackupError::WrongKey`] once the header checksum is
//!   fixed up);
//! - a file cut at a chunk boundary is [`BackupError::Truncated`] (the last chunk is
//!   flagged in its nonce); one cut inside a chunk fails that chunk's authentication.
//!
//! Records are returned only after the chunk holding them authenticated, but a caller
//! must treat a restore as all-or-nothing: an error may come after many good records.
//!
//! This crate does no network I/O.

mod error;
mod key;
mod records;

use std::io::{ErrorKind, Read, Write};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use error::BackupError;
pub use key::{RECOVERY_KEY_BYTES, RecoveryKey};
pub use records::{
    AccountRecord, AttachmentRecord, BlockedRecord, ContactDevice, ContactRecord,
    ConversationRecord, DeviceListRecord, DirectoryCheckRecord, DirectoryPinRecord,
    GroupChatRecord, GroupRecord, MediaEnd, MediaStart, MessageRecord, ReactionRecord,
    ReceiptRecord, Record, SettingRecord, TombstoneRecord, VerifiedRecord, kind,
};

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"HWBACKUP";
/// The format version this build writes.
pub const VERSION: u16 = 1;
/// Header length in format version 1.
pub const HEADER_BYTES: usize = 139;
/// Plaintext bytes per chunk (every chunk but the last holds exactly this many).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Poly1305 tag bytes per chunk.
pub const TAG_BYTES: usize = 16;
/// Largest record body.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Media bytes per `MediaData` record written by [`BackupWriter::write_media`].
pub const MEDIA_PIECE_BYTES: usize = 64 * 1024;
/// Header flag: media files are included.
pub const FLAG_MEDIA: u16 = 0x0001;

const SALT_BYTES: usize = 32;
const NONCE_PREFIX_BYTES: usize = 19;
const CHECK_BYTES: usize = 32;
/// Record framing: kind (1 byte) and body length (u32 big-endian).
const RECORD_HEAD_BYTES: usize = 5;

const INFO_CHECK: &[u8] = b"hushwire-backup v1 key check";
const INFO_PAYLOAD: &[u8] = b"hushwire-backup v1 payload key";

/// What the header says about a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// When the backup was made (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Whether media files are included.
    pub media: bool,
}

/// The two subkeys of a backup.
struct Keys {
    check: Zeroizing<[u8; CHECK_BYTES]>,
    payload: Zeroizing<[u8; 32]>,
}

fn derive(key: &RecoveryKey, salt: &[u8]) -> Result<Keys, BackupError> {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.expose());
    let mut check = Zeroizing::new([0u8; CHECK_BYTES]);
    let mut payload = Zeroizing::new([0u8; 32]);
    // 32-byte outputs of HKDF-SHA256 never exceed its limit.
    hk.expand(INFO_CHECK, check.as_mut())
        .map_err(|_| BackupError::Malformed("HKDF output length".into()))?;
    hk.expand(INFO_PAYLOAD, payload.as_mut())
        .map_err(|_| BackupError::Malformed("HKDF output length".into()))?;
    Ok(Keys { check, payload })
}

fn nonce(prefix: &[u8; NONCE_PREFIX_BYTES], counter: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..NONCE_PREFIX_BYTES].copy_from_slice(prefix);
    n[NONCE_PREFIX_BYTES..NONCE_PREFIX_BYTES + 4].copy_from_slice(&counter.to_be_bytes());
    n[23] = u8::from(last);
    XNonce::from(n)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ------------------------------------------------------------------ writer

/// Writes a backup: the header at once, then records, chunk by chunk.
///
/// Call [`BackupWriter::finish`] at the end: without it the file has no last chunk and
/// every reader refuses it as truncated.
pub struct BackupWriter<W: Write> {
    out: W,
    cipher: XChaCha20Poly1305,
    header: [u8; HEADER_BYTES],
    nonce_prefix: [u8; NONCE_PREFIX_BYTES],
    counter: u32,
    plain: Zeroizing<Vec<u8>>,
    records: u64,
    bytes: u64,
}

impl<W: Write> std::fmt::Debug for BackupWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter")
            .field("chunks", &self.counter)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup under `key`: writes the header (fresh random salt and nonce
    /// prefix).
    pub fn new(mut out: W, key: &RecoveryKey, info: BackupInfo) -> Result<Self, BackupError> {
        let mut salt = [0u8; SALT_BYTES];
        let mut nonce_prefix = [0u8; NONCE_PREFIX_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
        let keys = derive(key, &salt)?;
        let mut header = [0u8; HEADER_BYTES];
        header[0..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_be_bytes());
        let flags = if info.media { FLAG_MEDIA } else { 0 };
        header[10..12].copy_from_slice(&flags.to_be_bytes());
        header[12..16].copy_from_slice(&(CHUNK_BYTES as u32).to_be_bytes());
        header[16..24].copy_from_slice(&info.created_at_ms.to_be_bytes());
        header[24..56].copy_from_slice(&salt);
        header[56..75].copy_from_slice(&nonce_prefix);
        header[75..107].copy_from_slice(keys.check.as_ref());
        let sum = Sha256::digest(&header[..107]);
        header[107..139].copy_from_slice(&sum);
        out.write_all(&header)?;
        Ok(Self {
            out,
            cipher: XChaCha20Poly1305::new(keys.payload.as_ref().into()),
            header,
            nonce_prefix,
            counter: 0,
            plain: Zeroizing::new(Vec::with_capacity(CHUNK_BYTES)),
            records: 0,
            bytes: HEADER_BYTES as u64,
        })
    }

    fn seal(&mut self, last: bool) -> Result<(), BackupError> {
        let ct = self
            .cipher
            .encrypt(
                &nonce(&self.nonce_prefix, self.counter, last),
                Payload {
                    msg: &self.plain,
                    aad: &self.header,
                },
            )
            .map_err(|_| BackupError::Malformed("encryption failed".into()))?;
        self.out.write_all(&ct)?;
        self.bytes += ct.len() as u64;
        self.plain.clear();
        if !last {
            self.counter = self.counter.checked_add(1).ok_or(BackupError::TooLarge)?;
        }
        Ok(())
    }

    fn push(&mut self, mut data: &[u8]) -> Result<(), BackupError> {
        while !data.is_empty() {
            if self.plain.len() == CHUNK_BYTES {
                // More data follows: this chunk is not the last.
                self.seal(false)?;
            }
            let take = (CHUNK_BYTES - self.plain.len()).min(data.len());
            self.plain.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Appends one record.
    pub fn write_record(&mut self, record: &Record) -> Result<(), BackupError> {
        let body = Zeroizing::new(record.encode_body()?);
        self.write_raw(record.kind(), &body)
    }

    /// Appends one record of kind `kind` with an already encoded body.
    pub fn write_raw(&mut self, kind: u8, body: &[u8]) -> Result<(), BackupError> {
        if body.len() > MAX_RECORD_BYTES {
            return Err(BackupError::RecordTooLarge(body.len()));
        }
        let mut head = [0u8; RECORD_HEAD_BYTES];
        head[0] = kind;
        head[1..].copy_from_slice(&(body.len() as u32).to_be_bytes());
        self.push(&head)?;
        self.push(body)?;
        self.records += 1;
        Ok(())
    }

    /// Appends a media file read from `input`: a `MediaStart` (as given), `MediaData`
    /// pieces of at most [`MEDIA_PIECE_BYTES`], and a `MediaEnd` with its SHA-256.
    /// Fails if `input` does not hold exactly `start.size` bytes.
    pub fn write_media(
        &mut self,
        start: MediaStart,
        input: &mut dyn Read,
    ) -> Result<(), BackupError> {
        let size = start.size;
        self.write_record(&Record::MediaStart(start))?;
        let mut buf = Zeroizing::new(vec![0u8; MEDIA_PIECE_BYTES]);
        let mut hash = Sha256::new();
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            total += n as u64;
            if total > size {
                break;
            }
            hash.update(&buf[..n]);
            self.write_raw(kind::MEDIA_DATA, &buf[..n])?;
        }
        if total != size {
            return Err(BackupError::Io(std::io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "a media file changed while it was backed up ({total} bytes, expected {size})"
                ),
            )));
        }
        self.write_record(&Record::MediaEnd(MediaEnd {
            sha256: hash.finalize().to_vec(),
        }))
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes written to the output so far (header and sealed chunks).
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Writes the last chunk, flushes and returns the output.
    pub fn finish(mut self) -> Result<W, BackupError> {
        self.seal(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

// ------------------------------------------------------------------ reader

/// Reads a backup record by record. Holds one chunk and one record in memory.
pub struct BackupReader<R: Read> {
    input: R,
    info: BackupInfo,
    cipher: XChaCha20Poly1305,
    header: [u8; HEADER_BYTES],
    nonce_prefix: [u8; NONCE_PREFIX_BYTES],
    /// Index of the next chunk to open.
    counter: u64,
    /// The current chunk's plaintext and how much of it was consumed.
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
    /// The last chunk was opened: no more plaintext after `plain`.
    done: bool,
    /// A byte read ahead (to tell whether a full chunk is the last one).
    peeked: Option<u8>,
    sealed: Vec<u8>,
    records: u64,
}

impl<R: Read> std::fmt::Debug for BackupReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader")
            .field("info", &self.info)
            .field("chunk", &self.counter)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, BackupError> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

impl<R: Read> BackupReader<R> {
    /// Reads and checks the header, and checks `key` against it: a wrong key is
    /// [`BackupError::WrongKey`] here, before anything is decrypted.
    pub fn new(mut input: R, key: &RecoveryKey) -> Result<Self, BackupError> {
        let mut header = [0u8; HEADER_BYTES];
        let n = read_full(&mut input, &mut header[..10])?;
        if n < MAGIC.len() {
            return Err(if header[..n] == MAGIC[..n] {
                BackupError::Truncated
            } else {
                BackupError::NotABackup
            });
        }
        if &header[..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if n < 10 {
            return Err(BackupError::Truncated);
        }
        let version = u16::from_be_bytes([header[8], header[9]]);
        if version != VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        if read_full(&mut input, &mut header[10..])? < HEADER_BYTES - 10 {
            return Err(BackupError::Truncated);
        }
        if !ct_eq(&Sha256::digest(&header[..107]), &header[107..139]) {
            return Err(BackupError::TamperedHeader);
        }
        let flags = u16::from_be_bytes([header[10], header[11]]);
        if flags & !FLAG_MEDIA != 0 {
            return Err(BackupError::Malformed(format!(
                "unknown header flags {flags:#06x}"
            )));
        }
        let chunk = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
        if chunk as usize != CHUNK_BYTES {
            return Err(BackupError::Malformed(format!(
                "chunk size {chunk} (version 1 uses {CHUNK_BYTES})"
            )));
        }
        let mut created = [0u8; 8];
        created.copy_from_slice(&header[16..24]);
        let keys = derive(key, &header[24..56])?;
        if !ct_eq(keys.check.as_ref(), &header[75..107]) {
            return Err(BackupError::WrongKey);
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_BYTES];
        nonce_prefix.copy_from_slice(&header[56..75]);
        Ok(Self {
            input,
            info: BackupInfo {
                created_at_ms: u64::from_be_bytes(created),
                media: flags & FLAG_MEDIA != 0,
            },
            cipher: XChaCha20Poly1305::new(keys.payload.as_ref().into()),
            header,
            nonce_prefix,
            counter: 0,
            plain: Zeroizing::new(Vec::new()),
            pos: 0,
            done: false,
            peeked: None,
            sealed: vec![0u8; CHUNK_BYTES + TAG_BYTES],
            records: 0,
        })
    }

    /// What the header says.
    pub fn info(&self) -> BackupInfo {
        self.info
    }

    /// Records returned so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    fn open(&self, len: usize, last: bool) -> Option<Vec<u8>> {
        let counter = u32::try_from(self.counter).ok()?;
        self.cipher
            .decrypt(
                &nonce(&self.nonce_prefix, counter, last),
                Payload {
                    msg: &self.sealed[..len],
                    aad: &self.header,
                },
            )
            .ok()
    }

    /// Opens the next chunk into `plain`. Only called when `plain` is consumed and the
    /// last chunk was not opened yet.
    fn next_chunk(&mut self) -> Result<(), BackupError> {
        let full = CHUNK_BYTES + TAG_BYTES;
        let mut start = 0;
        if let Some(b) = self.peeked.take() {
            self.sealed[0] = b;
            start = 1;
        }
        let mut sealed = std::mem::take(&mut self.sealed);
        let n = start + read_full(&mut self.input, &mut sealed[start..full])?;
        self.sealed = sealed;
        let chunk = self.counter;
        if n == 0 {
            // The input ended right after a chunk that was not the last (or the header).
            return Err(BackupError::Truncated);
        }
        let plain = if n < full {
            // A short chunk can only be the last one.
            self.open(n, true).ok_or(BackupError::Tampered { chunk })?
        } else {
            let mut one = [0u8; 1];
            if read_full(&mut self.input, &mut one)? == 1 {
                self.peeked = Some(one[0]);
                self.open(n, false).ok_or(BackupError::Tampered { chunk })?
            } else if let Some(p) = self.open(n, true) {
                p
            } else if self.open(n, false).is_some() {
                // A valid chunk that is not the last, and nothing after it.
                return Err(BackupError::Truncated);
            } else {
                return Err(BackupError::Tampered { chunk });
            }
        };
        if self.peeked.is_none() {
            self.done = true;
        }
        self.plain = Zeroizing::new(plain);
        self.pos = 0;
        self.counter += 1;
        if self.counter > u64::from(u32::MAX) + 1 {
            return Err(BackupError::TooLarge);
        }
        Ok(())
    }

    /// Fills `out` from the payload; returns fewer bytes only at its end.
    fn read_plain(&mut self, out: &mut [u8]) -> Result<usize, BackupError> {
        let mut n = 0;
        while n < out.len() {
            if self.pos == self.plain.len() {
                if self.done {
                    break;
                }
                self.next_chunk()?;
                continue;
            }
            let take = (self.plain.len() - self.pos).min(out.len() - n);
            out[n..n + take].copy_from_slice(&self.plain[self.pos..self.pos + take]);
            self.pos += take;
            n += take;
        }
        Ok(n)
    }

    /// The next record, or `None` after the last one (the whole file authenticated,
    /// nothing missing).
    pub fn next_record(&mut self) -> Result<Option<Record>, BackupError> {
        match self.next_raw()? {
            None => Ok(None),
            Some((kind, body)) => Record::decode(kind, body).map(Some),
        }
    }

    /// The next record undecoded: its kind and body.
    pub fn next_raw(&mut self) -> Result<Option<(u8, Vec<u8>)>, BackupError> {
        let mut head = [0u8; RECORD_HEAD_BYTES];
        match self.read_plain(&mut head)? {
            0 => return Ok(None),
            RECORD_HEAD_BYTES => {}
            _ => {
                return Err(BackupError::Malformed(
                    "the payload ends inside a record".into(),
                ));
            }
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(BackupError::RecordTooLarge(len));
        }
        let mut body = vec![0u8; len];
        if self.read_plain(&mut body)? != len {
            return Err(BackupError::Malformed(
                "the payload ends inside a record".into(),
            ));
        }
        self.records += 1;
        Ok(Some((head[0], body)))
    }
}

impl<R: Read> Iterator for BackupReader<R> {
    type Item = Result<Record, BackupError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
