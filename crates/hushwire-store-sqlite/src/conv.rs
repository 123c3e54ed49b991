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

/// Maps SQLite failures to [`StoreError::Backend`]. rusqlite's messages name the
/// failure and sometimes the SQL, never bound values, so no payload leaks into logs.
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend(e.to_string()))
    }
}
