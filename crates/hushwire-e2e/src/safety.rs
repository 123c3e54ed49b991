//! Safety numbers: what two people compare (read aloud or by scanning a QR code) to be
//! sure nobody sits between them.
//!
//! Each side's half is Signal's numeric fingerprint over its account key: `h =
//! SHA-512(0x0000 || account key || handle)`, then 5,200 times `h = SHA-512(h || account
//! key)`; the first 30 bytes become six 5-digit groups (each 5-byte big-endian chunk
//! modulo 100,000). The safety number is both halves, the lower one first, so it reads the
//! same on both phones: 60 digits in 12 groups of 5. The account key signs every device
//! list, so the number covers every device of both accounts. The QR payload is version
//! byte 0 followed by both 32-byte fingerprints in the same order.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha512};

use crate::store::to_sql_u64;
use crate::{E2eError, Profile};

/// Iterations of the fingerprint hash (Signal's value).
const ITERATIONS: usize = 5200;

/// A conversation's safety number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    /// 60 digits in 12 groups of 5, separated by spaces.
    pub digits: String,
    /// What the QR code carries.
    pub qr_payload: Vec<u8>,
    /// The user marked this contact verified with the current key.
    pub verified: bool,
}

fn fingerprint(account_key: &[u8], handle: &str) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update([0u8, 0u8]);
    h.update(account_key);
    h.update(handle.as_bytes());
    let mut out: [u8; 64] = h.finalize().into();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(out);
        h.update(account_key);
        out = h.finalize().into();
    }
    out
}

fn digits(fp: &[u8; 64]) -> String {
    fp[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The safety number of two accounts (the same whichever side computes it).
pub fn safety_number(a: (&str, &[u8]), b: (&str, &[u8])) -> (String, Vec<u8>) {
    let fa = fingerprint(a.1, a.0);
    let fb = fingerprint(b.1, b.0);
    let (da, db) = (digits(&fa), digits(&fb));
    let (first, second, f1, f2) = if da <= db {
        (da, db, fa, fb)
    } else {
        (db, da, fb, fa)
    };
    let mut qr = vec![0u8];
    qr.extend_from_slice(&f1[..32]);
    qr.extend_from_slice(&f2[..32]);
    (format!("{first} {second}"), qr)
}

impl Profile {
    /// The safety number with `handle`, whose account must be known (learned).
    pub fn safety_number(&self, handle: &str) -> Result<SafetyNumber, E2eError> {
        let (me, _) = self.me()?;
        let theirs: Vec<u8> = self
            .conn
            .query_row(
                "SELECT account_key FROM accounts WHERE handle = ?1",
                params![handle],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| E2eError::NeedAccount(handle.to_string()))?;
        let (digits, qr_payload) = safety_number((&me.handle, &me.account_key), (handle, &theirs));
        let verified: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT account_key FROM verified WHERE handle = ?1",
                params![handle],
                |r| r.get(0),
            )
            .optional()?;
        Ok(SafetyNumber {
            digits,
            qr_payload,
            verified: verified.as_deref() == Some(theirs.as_slice()),
        })
    }

    /// Records that the user compared the safety number with `handle` (for its current
    /// account key). A later key change clears it until verified again.
    pub fn mark_verified(&mut self, handle: &str, now_ms: u64) -> Result<(), E2eError> {
        let theirs: Vec<u8> = self
            .conn
            .query_row(
                "SELECT account_key FROM accounts WHERE handle = ?1",
                params![handle],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| E2eError::NeedAccount(handle.to_string()))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO verified (handle, account_key, at_ms) VALUES (?1, ?2, ?3)",
            params![handle, theirs, to_sql_u64(now_ms)?],
        )?;
        Ok(())
    }
}

impl Profile {
    /// Accepts a contact's changed account key (`trust HANDLE`): forgets the old key, its
    /// devices, device list and verification, pins `account` and retires the 1:1
    /// conversation's groups (their leaves belong to the old key), so the next message
    /// starts a new group with the new devices. The history stays.
    pub fn trust(&mut self, account: &hushwire_proto::wire::AccountInfo) -> Result<(), E2eError> {
        let (me, keys) = self.me()?;
        let (me, keys) = (me.clone(), keys.clone());
        let handle = account.handle.clone();
        if handle == me.handle {
            return Err(E2eError::Protocol("this is your own account".into()));
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old: Option<Vec<u8>> = tx
            .query_row(
                "SELECT account_key FROM accounts WHERE handle = ?1",
                params![handle],
                |r| r.get(0),
            )
            .optional()?;
        if old.as_deref() != Some(account.account_key.as_ref()) {
            for sql in [
                "DELETE FROM accounts WHERE handle = ?1",
                "DELETE FROM devices WHERE handle = ?1",
                "DELETE FROM device_lists WHERE handle = ?1",
                "DELETE FROM verified WHERE handle = ?1",
                "UPDATE groups SET state = 'inactive' WHERE conversation = ?1 AND state = 'active'",
            ] {
                tx.execute(sql, params![handle])?;
            }
        }
        crate::profile::learn_account_in(&tx, Some(&keys), Some(&me.handle), account)?;
        tx.commit()?;
        self.fresh_accounts.insert(handle);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_on_both_sides_and_sixty_digits() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (n1, q1) = safety_number(("alice", &a), ("bob", &b));
        let (n2, q2) = safety_number(("bob", &b), ("alice", &a));
        assert_eq!(n1, n2);
        assert_eq!(q1, q2);
        assert_eq!(q1.len(), 65);
        let groups: Vec<&str> = n1.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
        );
    }

    #[test]
    fn changes_with_either_key() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let (n1, _) = safety_number(("alice", &a), ("bob", &b));
        let (n2, _) = safety_number(("alice", &a), ("bob", &c));
        let (n3, _) = safety_number(("alice", &c), ("bob", &b));
        assert_ne!(n1, n2);
        assert_ne!(n1, n3);
    }
}
