//! Account reset ([`hushwire_store::Accounts::reset_account`]), on the writer thread.
//!
//! The account's devices are revoked as by `revoke_device`, then its rows move to a
//! tombstone account ([`hushwire_store::reset_tombstone_handle`]) so that every foreign
//! key (devices, device list, blobs) and every group roster (device ids) stays intact,
//! and the original account row goes: the handle is free again. The writer's caches
//! are dropped afterwards (device addresses and blockers changed); resets are rare.

use hushwire_store::{DeviceAddr, StoreError, reset_tombstone_handle};
use rusqlite::{OptionalExtension, params};

use crate::conv::DbResult;
use crate::ops::WriterState;

impl WriterState {
    pub(crate) fn reset_account(&mut self, handle: &str, now_ms: u64) -> Result<bool, StoreError> {
        let head: Option<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT account_key, created_at_ms FROM accounts WHERE handle = ?1")
            .db()?
            .query_row([handle], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()?;
        let Some((account_key, created_at_ms)) = head else {
            return Ok(false);
        };

        // Revoked as by revoke_device: key packages and waiting entries go.
        let live: Vec<u32> = self
            .conn
            .prepare_cached(
                "SELECT device_no FROM devices WHERE handle = ?1 AND revoked = 0 \
                 ORDER BY device_no",
            )
            .db()?
            .query_map([handle], |r| r.get(0))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        for device_id in live {
            self.revoke_device(&DeviceAddr {
                handle: handle.to_owned(),
                device_id,
            })?;
        }

        let mut attempt = 0u32;
        let tombstone = loop {
            let candidate = reset_tombstone_handle(handle, now_ms, attempt);
            let taken = self
                .conn
                .prepare_cached("SELECT 1 FROM accounts WHERE handle = ?1")
                .db()?
                .exists([&candidate])
                .db()?;
            if !taken {
                break candidate;
            }
            attempt = attempt
                .checked_add(1)
                .ok_or_else(|| StoreError::Backend("no free tombstone handle".into()))?;
        };
        self.conn
            .prepare_cached(
                "INSERT INTO accounts (handle, account_key, created_at_ms) VALUES (?1, ?2, ?3)",
            )
            .db()?
            .execute(params![tombstone, account_key, created_at_ms])
            .db()?;
        // The rows that refer to the account move to the tombstone.
        for sql in [
            "UPDATE devices SET handle = ?2 WHERE handle = ?1",
            "UPDATE device_lists SET handle = ?2 WHERE handle = ?1",
            "UPDATE blobs SET account = ?2 WHERE account = ?1",
            "UPDATE reports SET reporter = ?2 WHERE reporter = ?1",
            "UPDATE reports SET reported = ?2 WHERE reported = ?1",
        ] {
            self.conn
                .prepare_cached(sql)
                .db()?
                .execute(params![handle, tombstone])
                .db()?;
        }
        // Blocks by the account and of the handle go (a new person may take it); so do
        // the link sessions its devices opened (addressed by handle and number).
        for sql in [
            "DELETE FROM blocks WHERE blocker = ?1",
            "DELETE FROM blocks WHERE blocked = ?1",
            "DELETE FROM links WHERE owner_handle = ?1",
            "DELETE FROM accounts WHERE handle = ?1",
        ] {
            self.conn.prepare_cached(sql).db()?.execute([handle]).db()?;
        }
        crate::directory::record_change(&self.conn, handle)?;
        self.clear_caches();
        Ok(true)
    }
}
