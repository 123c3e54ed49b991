//! Conversions between Rust and PostgreSQL values, database errors as store errors, the
//! statement helpers every module uses, and the retrying transaction runner.

use deadpool_postgres::GenericClient;
use hushwire_store::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// Statements this process sent (each one protocol round trip unless pipelined),
/// `BEGIN`/`COMMIT`/`ROLLBACK` included.
pub(crate) static STATEMENTS: AtomicU64 = AtomicU64::new(0);
/// Transactions this process committed.
pub(crate) static COMMITS: AtomicU64 = AtomicU64::new(0);

/// Counts `n` statements sent.
pub(crate) fn count_statements(n: u64) {
    STATEMENTS.fetch_add(n, Ordering::Relaxed);
}

/// Query parameters, as tokio-postgres takes them.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Stores a `u64` as BIGINT, saturating at `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads back a value written by [`to_i64`]; negative values (never written) read as 0.
pub(crate) fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads back a u32 stored as BIGINT; out-of-range values (never written) are an error.
pub(crate) fn to_u32(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("stored value {v} is not a u32")))
}

/// A database failure as [`StoreError::Backend`], or [`StoreError::StorageFull`] when
/// PostgreSQL is out of disk (SQLSTATE 53100: nothing of the write was kept, and it may
/// succeed once space is freed). Only the server's primary message and SQLSTATE are
/// kept: never the DETAIL (which may quote key values) nor bound values.
/// Connection-level errors name the failure, never the connection string.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    classify(e.code(), describe(&e))
}

fn classify(code: Option<&SqlState>, text: String) -> StoreError {
    if code == Some(&SqlState::DISK_FULL) {
        StoreError::StorageFull(text)
    } else {
        StoreError::Backend(text)
    }
}

pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} (SQLSTATE {})", db.message(), db.code().code()),
        None if e.is_closed() => "postgres: connection closed".to_owned(),
        None => format!("postgres: {e}"),
    }
}

/// Whether the whole transaction may simply run again: a deadlock victim or a
/// serialization failure (nothing was committed).
pub(crate) fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// How a transaction body fails.
#[derive(Debug)]
pub(crate) enum TxError {
    /// The database failed (retried when [`retryable`]).
    Db(tokio_postgres::Error),
    /// A domain error: the transaction is rolled back and the error returned.
    Store(StoreError),
    /// A concurrent transaction won a race (a unique insert found its row taken): roll
    /// back and run again, when the outcome will be read from that winner's rows.
    Retry,
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Attempts of one transaction before a conflict is reported as a backend error.
pub(crate) const MAX_TX_ATTEMPTS: u32 = 8;

/// Runs `$body` (an expression using `$tx: &Transaction`, returning
/// `Result<T, TxError>`) in a transaction on a pooled connection of `$store`; commits
/// on `Ok`, rolls back on `Err`. Deadlocks, serialization failures and
/// [`TxError::Retry`] run the body again in a new transaction, at most
/// [`MAX_TX_ATTEMPTS`] times. Evaluates to `Result<T, StoreError>`.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut client = $store.client().await?;
            // BEGIN, then COMMIT or ROLLBACK.
            $crate::conv::count_statements(2);
            let $tx = client
                .transaction()
                .await
                .map_err($crate::conv::backend)?;
            let result: Result<_, $crate::conv::TxError> = async { $body }.await;
            let failure = match result {
                Ok(value) => match $tx.commit().await {
                    Ok(()) => {
                        $crate::conv::COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break Ok(value);
                    }
                    Err(e) => $crate::conv::TxError::Db(e),
                },
                Err(e) => {
                    // Best effort: a broken connection is dropped by the pool anyway.
                    let _ = $tx.rollback().await;
                    e
                }
            };
            match failure {
                $crate::conv::TxError::Db(e)
                    if $crate::conv::retryable(&e) && attempt < $crate::conv::MAX_TX_ATTEMPTS =>
                {
                    tracing::debug!(attempt, error = %$crate::conv::describe(&e), "transaction conflict; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt))).await;
                }
                $crate::conv::TxError::Retry if attempt < $crate::conv::MAX_TX_ATTEMPTS => {}
                $crate::conv::TxError::Retry => {
                    break Err(hushwire_store::StoreError::Backend(
                        "transaction kept losing a race; gave up".into(),
                    ));
                }
                $crate::conv::TxError::Db(e) => break Err($crate::conv::backend(e)),
                $crate::conv::TxError::Store(e) => break Err(e),
            }
        }
    }};
}
pub(crate) use in_tx;

async fn prepare<C: GenericClient>(c: &C, sql: &str) -> Result<Statement, tokio_postgres::Error> {
    count_statements(1);
    c.prepare_cached(sql).await
}

/// Every row of a (cached) statement.
pub(crate) async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let stmt = prepare(c, sql).await?;
    c.query(&stmt, params).await
}

/// At most one row of a (cached) statement.
pub(crate) async fn row_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let stmt = prepare(c, sql).await?;
    c.query_opt(&stmt, params).await
}

/// Exactly one row of a (cached) statement.
pub(crate) async fn row_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, tokio_postgres::Error> {
    let stmt = prepare(c, sql).await?;
    c.query_one(&stmt, params).await
}

/// Rows affected by a (cached) statement.
pub(crate) async fn exec<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let stmt = prepare(c, sql).await?;
    c.execute(&stmt, params).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_storage_full_and_other_failures_are_backend_errors() {
        assert!(matches!(
            classify(
                Some(&SqlState::DISK_FULL),
                "postgres: could not extend file".into()
            ),
            StoreError::StorageFull(_)
        ));
        for code in [
            Some(&SqlState::UNIQUE_VIOLATION),
            Some(&SqlState::T_R_DEADLOCK_DETECTED),
            None,
        ] {
            assert!(matches!(classify(code, "x".into()), StoreError::Backend(_)));
        }
    }
}
