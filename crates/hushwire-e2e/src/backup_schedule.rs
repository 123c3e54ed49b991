//! Scheduled backups: the settings a daemon or app runs them by, kept in the profile
//! (whose database is encrypted at rest), with the recovery key they are written under.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use zeroize::Zeroizing;

use crate::store::{from_sql_u64, to_sql_u64};
use crate::{E2eError, Profile};

/// Length of a backup recovery key.
pub const BACKUP_KEY_BYTES: usize = 32;

/// When and where to back up.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupScheduleRow {
    /// The directory backups are written to.
    pub dir: PathBuf,
    /// Interval between backups.
    pub every_ms: u64,
    /// How many backup files to keep in `dir`.
    pub keep: u32,
    /// Whether media files are included.
    pub media: bool,
    /// The recovery key the backups are encrypted under.
    pub recovery_key: Zeroizing<[u8; BACKUP_KEY_BYTES]>,
    /// When the last scheduled backup was written.
    pub last_ms: Option<u64>,
}

impl std::fmt::Debug for BackupScheduleRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupScheduleRow")
            .field("dir", &self.dir)
            .field("every_ms", &self.every_ms)
            .field("keep", &self.keep)
            .field("media", &self.media)
            .field("recovery_key", &"<redacted>")
            .field("last_ms", &self.last_ms)
            .finish()
    }
}

impl Profile {
    /// The backup schedule, if one is set.
    pub fn backup_schedule(&self) -> Result<Option<BackupScheduleRow>, E2eError> {
        type Row = (String, i64, i64, bool, Vec<u8>, Option<i64>);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT dir, every_ms, keep, media, recovery_key, last_ms
                 FROM backup_schedule WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((dir, every_ms, keep, media, key, last_ms)) = row else {
            return Ok(None);
        };
        let key = Zeroizing::new(key);
        let recovery_key: [u8; BACKUP_KEY_BYTES] = key
            .as_slice()
            .try_into()
            .map_err(|_| E2eError::Storage("stored backup key is malformed".into()))?;
        Ok(Some(BackupScheduleRow {
            dir: PathBuf::from(dir),
            every_ms: from_sql_u64(every_ms),
            keep: u32::try_from(keep).unwrap_or(u32::MAX),
            media,
            recovery_key: Zeroizing::new(recovery_key),
            last_ms: last_ms.map(from_sql_u64),
        }))
    }

    /// Sets (or with `None` clears, forgetting its key) the backup schedule.
    pub fn set_backup_schedule(
        &mut self,
        schedule: Option<&BackupScheduleRow>,
    ) -> Result<(), E2eError> {
        match schedule {
            None => {
                self.conn
                    .execute("DELETE FROM backup_schedule WHERE id = 1", [])?;
            }
            Some(s) => {
                let dir = s.dir.to_str().ok_or_else(|| {
                    E2eError::Protocol("the backup directory is not UTF-8".into())
                })?;
                self.conn.execute(
                    "INSERT OR REPLACE INTO backup_schedule
                     (id, dir, every_ms, keep, media, recovery_key, last_ms)
                     VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        dir,
                        to_sql_u64(s.every_ms)?,
                        i64::from(s.keep),
                        s.media,
                        s.recovery_key.as_slice(),
                        s.last_ms.map(to_sql_u64).transpose()?,
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Records that a scheduled backup was written at `at_ms`.
    pub fn backup_done(&mut self, at_ms: u64) -> Result<(), E2eError> {
        self.conn.execute(
            "UPDATE backup_schedule SET last_ms = ?1 WHERE id = 1",
            params![to_sql_u64(at_ms)?],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn schedule_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Profile::open(dir.path(), &crate::StoreKey::from_bytes([9; 32])).unwrap();
        assert_eq!(p.backup_schedule().unwrap(), None);
        let row = BackupScheduleRow {
            dir: PathBuf::from("/backups"),
            every_ms: 86_400_000,
            keep: 7,
            media: true,
            recovery_key: Zeroizing::new([5; 32]),
            last_ms: None,
        };
        p.set_backup_schedule(Some(&row)).unwrap();
        assert_eq!(p.backup_schedule().unwrap().as_ref(), Some(&row));
        p.backup_done(1234).unwrap();
        assert_eq!(p.backup_schedule().unwrap().unwrap().last_ms, Some(1234));
        let shown = format!("{row:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("[5, 5"),
            "{shown}"
        );
        p.set_backup_schedule(None).unwrap();
        assert_eq!(p.backup_schedule().unwrap(), None);
    }
}
