//! Conversions between Rust and SQLite values, and SQLite errors as store errors.

use hushwire_store::StoreError;

/// Stores a `u64` as SQLite's signed INTEGER, saturating at `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads back a value written by [`to_i64`]; negative values (never written) read as 0.
pub(crate) fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Maps SQLite failures to [`StoreError::Backend`], or [`StoreError::StorageFull`] for a
/// full disk. rusqlite's messages name the failure and sometimes the SQL, never bound
/// values, so no payload leaks into logs.
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| store_error(&e, e.to_string()))
    }
}

/// A SQLite failure as a store error with `detail` as its message: SQLITE_FULL (the disk
/// or the file system is full) is [`StoreError::StorageFull`], anything else
/// [`StoreError::Backend`].
pub(crate) fn store_error(e: &rusqlite::Error, detail: String) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        StoreError::StorageFull(detail)
    } else {
        StoreError::Backend(detail)
    }
}

/// The same failure again, for another caller of a failed batch: a full disk stays a full
/// disk, a closed store a closed store; anything else is a backend failure (with the
/// original message, not wrapped twice).
pub(crate) fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::StorageFull(detail) => StoreError::StorageFull(detail.clone()),
        StoreError::Backend(detail) => StoreError::Backend(detail.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn a_full_disk_is_storage_full_and_stays_so() {
        let full = store_error(&sqlite_error(rusqlite::ffi::SQLITE_FULL), "full".into());
        assert!(matches!(full, StoreError::StorageFull(ref d) if d == "full"));
        assert!(matches!(same_error(&full), StoreError::StorageFull(_)));
        let io = store_error(&sqlite_error(rusqlite::ffi::SQLITE_IOERR), "io".into());
        assert!(matches!(io, StoreError::Backend(ref d) if d == "io"));
        assert!(matches!(same_error(&io), StoreError::Backend(ref d) if d == "io"));
    }
}
