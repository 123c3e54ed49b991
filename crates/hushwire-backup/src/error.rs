//! The errors of reading and writing backups.

/// Everything reading or writing a backup can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The input does not start with the backup magic (`HWBACKUP`).
    #[error("not a Hushwire backup file")]
    NotABackup,
    /// A backup format version this build cannot read.
    #[error("backup format version {0} is not supported by this build (it reads version 1)")]
    UnsupportedVersion(u16),
    /// The recovery key does not open this backup (checked before anything is decrypted).
    #[error("wrong recovery key for this backup")]
    WrongKey,
    /// The header's checksum does not match: the file was modified or damaged.
    #[error("the backup's header was modified or damaged")]
    TamperedHeader,
    /// A chunk failed authentication: the file was modified, damaged, or cut inside this
    /// chunk (chunks are counted from 0).
    #[error("the backup was modified or damaged: chunk {chunk} failed authentication")]
    Tampered {
        /// The chunk's index (0 is the first one after the header).
        chunk: u64,
    },
    /// The file ends early: inside the header, or at a chunk boundary before the last
    /// chunk.
    #[error("the backup is truncated (it ends before its last chunk)")]
    Truncated,
    /// The decrypted payload is not a valid record stream (a record cut short, a record
    /// that does not decode). Only a buggy writer produces this: the payload is
    /// authenticated.
    #[error("malformed backup record: {0}")]
    Malformed(String),
    /// A record larger than [`crate::MAX_RECORD_BYTES`].
    #[error("a record of {0} bytes exceeds the limit of {max} bytes", max = crate::MAX_RECORD_BYTES)]
    RecordTooLarge(usize),
    /// More chunks than the nonce counter allows (about 256 TiB).
    #[error("the backup is too large for the format")]
    TooLarge,
    /// Text that is not a recovery key.
    #[error("invalid recovery key: {0}")]
    InvalidRecoveryKey(&'static str),
    /// Reading or writing the underlying file failed.
    #[error("backup I/O: {0}")]
    Io(#[from] std::io::Error),
}
