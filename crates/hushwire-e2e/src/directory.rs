//! Key transparency state of a profile: the server directory's pinned keys, the highest
//! signed root seen, and which contact keys were checked against the directory. The
//! proofs themselves are verified by `hushwire-client`; this module holds what must
//! survive restarts, each change in one transaction.

use rusqlite::{OptionalExtension, params};

use crate::store::{from_sql_u64, to_sql_u64};
use crate::{E2eError, Profile};

/// What a profile recorded about a contact's directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryCheck {
    /// The contact.
    pub handle: String,
    /// The account key checked.
    pub account_key: Vec<u8>,
    /// The epoch whose proof matched; `None` while the key was not published yet.
    pub epoch: Option<u64>,
    /// When.
    pub at_ms: u64,
}

/// The pinned VRF key, signing key, highest epoch and its root.
type PinRow = (Vec<u8>, Vec<u8>, i64, Vec<u8>);

impl Profile {
    /// Accepts a signed directory root (its signature already verified): pins the
    /// directory's VRF and signing keys on first use and records the highest epoch.
    /// Refused ([`E2eError::KeyDirectory`]) when the keys differ from the pinned ones, the
    /// epoch is lower than one seen before (a rollback), or the same epoch has another
    /// root hash (a fork). Epoch 0 (nothing published yet) only checks the keys.
    pub fn accept_directory_root(
        &self,
        vrf_key: &[u8],
        signing_key: &[u8],
        epoch: u64,
        root: &[u8],
    ) -> Result<(), E2eError> {
        // `&self`: the client checks roots while it holds the profile shared; the
        // connection is not used by anything else during this transaction.
        let tx = self.conn.unchecked_transaction()?;
        let pinned: Option<PinRow> = tx
            .query_row(
                "SELECT vrf_key, signing_key, epoch, root FROM directory_pin WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        match pinned {
            None => {
                tx.execute(
                    "INSERT INTO directory_pin (id, vrf_key, signing_key, epoch, root)
                     VALUES (1, ?1, ?2, ?3, ?4)",
                    params![vrf_key, signing_key, to_sql_u64(epoch)?, root],
                )?;
            }
            Some((vrf, signing, seen, seen_root)) => {
                let seen = from_sql_u64(seen);
                if vrf != vrf_key || signing != signing_key {
                    return Err(E2eError::KeyDirectory(
                        "the server's key directory keys changed".into(),
                    ));
                }
                if epoch < seen {
                    return Err(E2eError::KeyDirectory(format!(
                        "the server showed directory epoch {epoch} after epoch {seen} (rollback)"
                    )));
                }
                if epoch == seen && epoch > 0 && root != seen_root.as_slice() {
                    return Err(E2eError::KeyDirectory(format!(
                        "the server showed two different roots for directory epoch {epoch} (fork)"
                    )));
                }
                if epoch > seen {
                    tx.execute(
                        "UPDATE directory_pin SET epoch = ?1, root = ?2 WHERE id = 1",
                        params![to_sql_u64(epoch)?, root],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The highest directory epoch accepted so far (0 before any).
    pub fn directory_epoch(&self) -> Result<u64, E2eError> {
        let epoch: Option<i64> = self
            .conn
            .query_row("SELECT epoch FROM directory_pin WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(epoch.map_or(0, from_sql_u64))
    }

    /// The highest directory epoch accepted so far and its root hash (`None` before any
    /// signed root).
    pub fn directory_root(&self) -> Result<Option<(u64, Vec<u8>)>, E2eError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT epoch, root FROM directory_pin WHERE id = 1 AND epoch > 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(e, root)| (from_sql_u64(e), root)))
    }

    /// Records that `handle`'s `account_key` was checked against the directory at
    /// `epoch` (`None`: not published yet, to be checked again).
    pub fn record_directory_check(
        &self,
        handle: &str,
        account_key: &[u8],
        epoch: Option<u64>,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let epoch = epoch.map(to_sql_u64).transpose()?;
        self.conn.execute(
            "INSERT INTO directory_checks (handle, account_key, epoch, at_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (handle) DO UPDATE SET
                account_key = excluded.account_key, epoch = excluded.epoch,
                at_ms = excluded.at_ms",
            params![handle, account_key, epoch, to_sql_u64(now_ms)?],
        )?;
        Ok(())
    }

    /// Forgets the directory check recorded for `handle` (it is due again).
    pub fn forget_directory_check(&self, handle: &str) -> Result<(), E2eError> {
        self.conn.execute(
            "DELETE FROM directory_checks WHERE handle = ?1",
            params![handle],
        )?;
        Ok(())
    }

    /// The directory check recorded for `handle`, if any.
    pub fn directory_check(&self, handle: &str) -> Result<Option<DirectoryCheck>, E2eError> {
        let row: Option<(Vec<u8>, Option<i64>, i64)> = self
            .conn
            .query_row(
                "SELECT account_key, epoch, at_ms FROM directory_checks WHERE handle = ?1",
                params![handle],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(account_key, epoch, at_ms)| {
            Ok(DirectoryCheck {
                handle: handle.to_string(),
                account_key,
                epoch: epoch.map(from_sql_u64),
                at_ms: from_sql_u64(at_ms),
            })
        })
        .transpose()
    }

    /// Contacts whose key was not published in the directory when last checked.
    pub fn pending_directory_checks(&self) -> Result<Vec<String>, E2eError> {
        let mut stmt = self
            .conn
            .prepare("SELECT handle FROM directory_checks WHERE epoch IS NULL ORDER BY handle")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::Profile;

    fn profile() -> (tempfile::TempDir, Profile) {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path(), &crate::StoreKey::from_bytes([7; 32])).unwrap();
        (dir, p)
    }

    #[test]
    fn roots_pin_keys_and_refuse_rollback_and_forks() {
        let (_d, p) = profile();
        assert_eq!(p.directory_epoch().unwrap(), 0);
        p.accept_directory_root(b"vrf", b"sig", 0, b"r0").unwrap();
        p.accept_directory_root(b"vrf", b"sig", 3, b"r3").unwrap();
        assert_eq!(p.directory_epoch().unwrap(), 3);
        // Same epoch, same root: fine; newer: fine.
        p.accept_directory_root(b"vrf", b"sig", 3, b"r3").unwrap();
        p.accept_directory_root(b"vrf", b"sig", 5, b"r5").unwrap();
        let err = p
            .accept_directory_root(b"vrf", b"sig", 4, b"r4")
            .unwrap_err();
        assert!(err.to_string().contains("rollback"), "{err}");
        let err = p
            .accept_directory_root(b"vrf", b"sig", 5, b"other")
            .unwrap_err();
        assert!(err.to_string().contains("fork"), "{err}");
        let err = p
            .accept_directory_root(b"vrf2", b"sig", 6, b"r6")
            .unwrap_err();
        assert!(err.to_string().contains("keys changed"), "{err}");
        assert_eq!(p.directory_epoch().unwrap(), 5);
    }

    #[test]
    fn checks_are_recorded_and_pending_ones_listed() {
        let (_d, p) = profile();
        p.record_directory_check("bob", b"k1", None, 10).unwrap();
        p.record_directory_check("carol", b"k2", Some(4), 11)
            .unwrap();
        assert_eq!(
            p.pending_directory_checks().unwrap(),
            vec!["bob".to_string()]
        );
        p.record_directory_check("bob", b"k1", Some(5), 12).unwrap();
        assert!(p.pending_directory_checks().unwrap().is_empty());
        let check = p.directory_check("bob").unwrap().unwrap();
        assert_eq!((check.epoch, check.at_ms), (Some(5), 12));
        assert!(p.directory_check("dave").unwrap().is_none());
    }
}
