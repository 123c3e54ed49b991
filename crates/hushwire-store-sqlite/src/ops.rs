//! Write operations, run on the writer thread inside a savepoint of a batch.
//!
//! [`WriterState`] owns the only read-write connection, so it may cache what only it
//! changes: group epochs, seqs and rosters, devices, and each device's last mailbox
//! seq. Caches are filled lazily from the database (so they are rebuilt after a
//! restart) and cleared whenever a job or a batch fails, since they may then describe
//! rolled-back changes.

use crate::conv::{DbResult, from_i64, to_i64};
use bytes::Bytes;
use hushwire_store::{
    Accepted, AddDevice, ClaimedKeyPackage, Delivered, DeviceAddr, DeviceId, DeviceRecord,
    Envelope, EnvelopeKind, NewAccount, NewDevice, NewKeyPackage, StoreError, Submission,
    SubmitKind, SubmitOutcome,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;

/// Caches are dropped wholesale past this many entries (a crude bound on memory).
const CACHE_LIMIT: usize = 200_000;

/// A group as the writer knows it.
#[derive(Debug, Clone)]
pub(crate) struct GroupState {
    epoch: u64,
    last_seq: u64,
    /// Member device ids, sorted.
    pub(crate) members: Vec<DeviceId>,
}

/// A device as the writer needs it for routing.
#[derive(Debug, Clone)]
pub(crate) struct DeviceInfo {
    pub(crate) addr: DeviceAddr,
    revoked: bool,
}

/// The writer's connection and caches.
pub(crate) struct WriterState {
    pub(crate) conn: Connection,
    groups: HashMap<Bytes, GroupState>,
    devices: HashMap<DeviceId, DeviceInfo>,
    addrs: HashMap<DeviceAddr, DeviceId>,
    /// Last mailbox seq handed out per device.
    seqs: HashMap<DeviceId, u64>,
    /// Blocks, disappearing messages and the WAL wipe (see `controls.rs`).
    pub(crate) controls: crate::controls::ControlsState,
}

impl WriterState {
    pub(crate) fn new(conn: Connection) -> Self {
        Self {
            conn,
            groups: HashMap::new(),
            devices: HashMap::new(),
            addrs: HashMap::new(),
            seqs: HashMap::new(),
            controls: crate::controls::ControlsState::default(),
        }
    }

    pub(crate) fn clear_caches(&mut self) {
        self.groups.clear();
        self.devices.clear();
        self.addrs.clear();
        self.seqs.clear();
        self.controls.clear_caches();
    }

    fn bound_caches(&mut self) {
        if self.groups.len() > CACHE_LIMIT {
            self.groups.clear();
        }
        if self.devices.len() > CACHE_LIMIT || self.addrs.len() > CACHE_LIMIT {
            self.devices.clear();
            self.addrs.clear();
        }
        if self.seqs.len() > CACHE_LIMIT {
            self.seqs.clear();
        }
        if self.controls.cache_len() > CACHE_LIMIT {
            self.controls.clear_caches();
        }
    }

    /// Checkpoints the WAL into the main file and closes the connection.
    pub(crate) fn close(self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the write connection failed");
        }
    }

    // --- lookups (cache first) -------------------------------------------------------

    pub(crate) fn device_info(&mut self, id: DeviceId) -> Result<Option<DeviceInfo>, StoreError> {
        if let Some(d) = self.devices.get(&id) {
            return Ok(Some(d.clone()));
        }
        let row = self
            .conn
            .prepare_cached("SELECT handle, device_no, revoked FROM devices WHERE id = ?1")
            .db()?
            .query_row([to_i64(id.0)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .optional()
            .db()?;
        Ok(row.map(|(handle, device_id, revoked)| {
            let info = DeviceInfo {
                addr: DeviceAddr { handle, device_id },
                revoked,
            };
            self.addrs.insert(info.addr.clone(), id);
            self.devices.insert(id, info.clone());
            info
        }))
    }

    fn device_id(&mut self, addr: &DeviceAddr) -> Result<Option<DeviceId>, StoreError> {
        if let Some(id) = self.addrs.get(addr) {
            return Ok(Some(*id));
        }
        let row = self
            .conn
            .prepare_cached("SELECT id, revoked FROM devices WHERE handle = ?1 AND device_no = ?2")
            .db()?
            .query_row(params![addr.handle, addr.device_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?))
            })
            .optional()
            .db()?;
        Ok(row.map(|(id, revoked)| {
            let id = DeviceId(from_i64(id));
            self.addrs.insert(addr.clone(), id);
            self.devices.insert(
                id,
                DeviceInfo {
                    addr: addr.clone(),
                    revoked,
                },
            );
            id
        }))
    }

    pub(crate) fn group_state(
        &mut self,
        group_id: &Bytes,
    ) -> Result<Option<GroupState>, StoreError> {
        if let Some(g) = self.groups.get(group_id) {
            return Ok(Some(g.clone()));
        }
        let row = self
            .conn
            .prepare_cached("SELECT epoch, last_seq FROM groups WHERE group_id = ?1")
            .db()?
            .query_row([group_id.as_ref()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
            .db()?;
        let Some((epoch, last_seq)) = row else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device FROM group_members WHERE group_id = ?1 ORDER BY device")
            .db()?;
        let members = stmt
            .query_map([group_id.as_ref()], |r| r.get::<_, i64>(0))
            .db()?
            .map(|r| r.map(|id| DeviceId(from_i64(id))))
            .collect::<Result<Vec<_>, _>>()
            .db()?;
        drop(stmt);
        let g = GroupState {
            epoch: from_i64(epoch),
            last_seq: from_i64(last_seq),
            members,
        };
        self.groups.insert(group_id.clone(), g.clone());
        Ok(Some(g))
    }

    /// Hands out the device's next mailbox seq.
    fn next_seq(&mut self, device: DeviceId) -> Result<u64, StoreError> {
        let last = match self.seqs.get(&device) {
            Some(s) => *s,
            None => {
                let last: i64 = self
                    .conn
                    .prepare_cached(
                        "SELECT max( \
                           coalesce((SELECT seq_floor FROM mailbox_floor WHERE device = ?1), 0), \
                           coalesce((SELECT max(seq) FROM mailbox WHERE device = ?1), 0))",
                    )
                    .db()?
                    .query_row([to_i64(device.0)], |r| r.get(0))
                    .db()?;
                from_i64(last)
            }
        };
        let next = last.saturating_add(1);
        self.seqs.insert(device, next);
        Ok(next)
    }

    // --- accounts --------------------------------------------------------------------

    pub(crate) fn create_account(&mut self, new: NewAccount) -> Result<DeviceRecord, StoreError> {
        let now = to_i64(new.now_ms);
        // The invite first: without a valid one, nothing says whether the handle is taken.
        // Only checked here, and consumed below once nothing else can fail, so that a
        // failing job changes nothing (see the writer's module docs).
        if let Some(code) = &new.invite {
            let valid = self
                .conn
                .prepare_cached(
                    "SELECT 1 FROM invites \
                     WHERE code = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2",
                )
                .db()?
                .exists(params![code, now])
                .db()?;
            if !valid {
                return Err(StoreError::InviteInvalid);
            }
        }
        let taken = self
            .conn
            .prepare_cached("SELECT 1 FROM accounts WHERE handle = ?1")
            .db()?
            .exists([&new.handle])
            .db()?;
        if taken {
            return Err(StoreError::HandleTaken);
        }
        if let Some(code) = &new.invite {
            // The writer is the only one: the invite checked above is still unused.
            self.conn
                .prepare_cached("UPDATE invites SET used_at_ms = ?2 WHERE code = ?1")
                .db()?
                .execute(params![code, now])
                .db()?;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO accounts (handle, account_key, created_at_ms) VALUES (?1, ?2, ?3)",
            )
            .db()?
            .execute(params![new.handle, new.account_key, now])
            .db()?;
        let device = self.insert_device(
            &new.handle,
            1,
            NewDevice {
                device_key: new.device_key,
                cert_created_at_ms: new.cert_created_at_ms,
                cert_signature: new.cert_signature,
            },
        )?;
        crate::directory::record_change(&self.conn, &new.handle)?;
        Ok(device)
    }

    fn insert_device(
        &mut self,
        handle: &str,
        device_no: u32,
        d: NewDevice,
    ) -> Result<DeviceRecord, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO devices (handle, device_no, device_key, cert_created_at_ms, \
                 cert_signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db()?
            .execute(params![
                handle,
                device_no,
                d.device_key,
                to_i64(d.cert_created_at_ms),
                d.cert_signature
            ])
            .db()?;
        let id = DeviceId(from_i64(self.conn.last_insert_rowid()));
        let addr = DeviceAddr {
            handle: handle.to_owned(),
            device_id: device_no,
        };
        self.addrs.insert(addr.clone(), id);
        self.devices.insert(
            id,
            DeviceInfo {
                addr: addr.clone(),
                revoked: false,
            },
        );
        self.seqs.insert(id, 0);
        self.bound_caches();
        Ok(DeviceRecord {
            id,
            addr,
            device_key: d.device_key,
            cert_created_at_ms: d.cert_created_at_ms,
            cert_signature: d.cert_signature,
            revoked: false,
        })
    }

    pub(crate) fn add_device(
        &mut self,
        handle: &str,
        d: NewDevice,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let last: Option<Option<u32>> = self
            .conn
            .prepare_cached(
                "SELECT (SELECT max(device_no) FROM devices WHERE handle = a.handle) \
                 FROM accounts a WHERE a.handle = ?1",
            )
            .db()?
            .query_row([handle], |r| r.get(0))
            .optional()
            .db()?;
        let Some(last) = last else {
            return Ok(None);
        };
        let next = last
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| StoreError::Invalid("device numbers exhausted".into()))?;
        self.insert_device(handle, next, d).map(Some)
    }

    pub(crate) fn add_device_within(
        &mut self,
        handle: &str,
        d: NewDevice,
        max_active: usize,
    ) -> Result<AddDevice, StoreError> {
        // The writer is the only one changing devices: these checks and the insert are
        // one atomic step.
        let row: Option<(bool, i64)> = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE handle = a.handle AND device_key = ?2), \
                        (SELECT count(*) FROM devices WHERE handle = a.handle AND revoked = 0) \
                 FROM accounts a WHERE a.handle = ?1",
            )
            .db()?
            .query_row(params![handle, d.device_key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()?;
        let Some((key_in_use, active)) = row else {
            return Ok(AddDevice::UnknownAccount);
        };
        if key_in_use {
            return Ok(AddDevice::KeyInUse);
        }
        if usize::try_from(active).unwrap_or(usize::MAX) >= max_active {
            return Ok(AddDevice::TooManyDevices);
        }
        Ok(match self.add_device(handle, d)? {
            Some(record) => AddDevice::Added(record),
            None => AddDevice::UnknownAccount,
        })
    }

    pub(crate) fn revoke_device(&mut self, addr: &DeviceAddr) -> Result<bool, StoreError> {
        let Some(id) = self.device_id(addr)? else {
            return Ok(false);
        };
        let changed = self
            .conn
            .prepare_cached("UPDATE devices SET revoked = 1 WHERE id = ?1 AND revoked = 0")
            .db()?
            .execute([to_i64(id.0)])
            .db()?;
        if changed == 0 {
            return Ok(false);
        }
        self.conn
            .prepare_cached("DELETE FROM key_packages WHERE device = ?1")
            .db()?
            .execute([to_i64(id.0)])
            .db()?;
        self.ack(id, u64::MAX)?;
        if let Some(d) = self.devices.get_mut(&id) {
            d.revoked = true;
        }
        Ok(true)
    }

    pub(crate) fn create_invite(
        &mut self,
        code: &str,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO invites (code, expires_at_ms) VALUES (?1, ?2) \
                 ON CONFLICT (code) DO NOTHING",
            )
            .db()?
            .execute(params![code, to_i64(expires_at_ms)])
            .db()?;
        if n == 0 {
            return Err(StoreError::Invalid("invite code exists already".into()));
        }
        Ok(())
    }

    // --- key packages ----------------------------------------------------------------

    pub(crate) fn add_key_packages(
        &mut self,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
    ) -> Result<u32, StoreError> {
        let count = u32::try_from(packages.len())
            .map_err(|_| StoreError::Invalid("too many key packages".into()))?;
        if self.device_info(device)?.is_none() {
            return Err(StoreError::Invalid(format!(
                "unknown device id {}",
                device.0
            )));
        }
        let dev = to_i64(device.0);
        for p in packages {
            if p.last_resort {
                self.conn
                    .prepare_cached(
                        "DELETE FROM key_packages \
                         WHERE device = ?1 AND ciphersuite = ?2 AND last_resort = 1",
                    )
                    .db()?
                    .execute(params![dev, p.ciphersuite])
                    .db()?;
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO key_packages (device, ciphersuite, last_resort, data) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .db()?
                .execute(params![dev, p.ciphersuite, p.last_resort, p.data.as_ref()])
                .db()?;
        }
        Ok(count)
    }

    pub(crate) fn claim_key_packages(
        &mut self,
        handle: &str,
        ciphersuite: u16,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        let devices: Vec<(i64, u32)> = self
            .conn
            .prepare_cached(
                "SELECT id, device_no FROM devices \
                 WHERE handle = ?1 AND revoked = 0 ORDER BY device_no",
            )
            .db()?
            .query_map([handle], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        let mut out = Vec::with_capacity(devices.len());
        for (dev, device_id) in devices {
            let one_time: Option<Vec<u8>> = self
                .conn
                .prepare_cached(
                    "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
                       WHERE device = ?1 AND ciphersuite = ?2 AND last_resort = 0 \
                       ORDER BY id LIMIT 1) \
                     RETURNING data",
                )
                .db()?
                .query_row(params![dev, ciphersuite], |r| r.get(0))
                .optional()
                .db()?;
            let data = match one_time {
                Some(d) => Some(d),
                None => self
                    .conn
                    .prepare_cached(
                        "SELECT data FROM key_packages \
                         WHERE device = ?1 AND ciphersuite = ?2 AND last_resort = 1 \
                         ORDER BY id DESC LIMIT 1",
                    )
                    .db()?
                    .query_row(params![dev, ciphersuite], |r| r.get(0))
                    .optional()
                    .db()?,
            };
            if let Some(data) = data {
                out.push(ClaimedKeyPackage {
                    device_id,
                    data: Bytes::from(data),
                });
            }
        }
        Ok(out)
    }

    // --- delivery --------------------------------------------------------------------

    pub(crate) fn submit(&mut self, sub: Submission) -> Result<SubmitOutcome, StoreError> {
        let sender = to_i64(sub.sender.0);
        // 1. Idempotency.
        let original = self
            .conn
            .prepare_cached(
                "SELECT group_seq, epoch FROM dedup WHERE message_id = ?2 AND sender = ?1",
            )
            .db()?
            .query_row(params![sender, &sub.message_id[..]], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
            .db()?;
        if let Some((group_seq, epoch)) = original {
            return Ok(SubmitOutcome::Accepted(Accepted {
                group_seq: from_i64(group_seq),
                epoch: from_i64(epoch),
                duplicate: true,
                deliveries: Vec::new(),
            }));
        }
        let sender_info = self.device_info(sub.sender)?.ok_or_else(|| {
            StoreError::Invalid(format!("unknown sender device id {}", sub.sender.0))
        })?;

        // 2. The group, or its creation.
        let is_commit = matches!(sub.kind, SubmitKind::Commit { .. });
        let (mut group, created) = match self.group_state(&sub.group_id)? {
            Some(g) => (g, false),
            None if is_commit && sub.epoch == 0 => (
                GroupState {
                    epoch: 0,
                    last_seq: 0,
                    members: vec![sub.sender],
                },
                true,
            ),
            None => return Ok(SubmitOutcome::UnknownGroup),
        };
        // 3. Membership (for a commit, of the sender's account).
        if group.members.binary_search(&sub.sender).is_err() {
            let mut account_member = false;
            if is_commit {
                for m in group.members.clone() {
                    if self
                        .device_info(m)?
                        .is_some_and(|d| d.addr.handle == sender_info.addr.handle)
                    {
                        account_member = true;
                        break;
                    }
                }
            }
            if !account_member {
                return Ok(SubmitOutcome::NotMember);
            }
        }

        let group_seq = group.last_seq.saturating_add(1);
        let mut new_members = None;
        let mut welcomes = Vec::new();
        let mut group_info = None;
        let kind;
        // Recipients of the message itself (sorted, deduplicated, sender excluded): the
        // roster before the message (for a commit, the old roster).
        let mut audience: Vec<DeviceId> = group.members.clone();
        // 4. Epoch fencing: commits, and application messages (so every device in the
        // roster, one added by the last commit too, can read them) unless the sender's
        // group diverged (`past_epoch_ok`).
        let fenced = match sub.kind {
            SubmitKind::Application => !sub.past_epoch_ok,
            SubmitKind::Proposal => false,
            SubmitKind::Commit { .. } => true,
        };
        if fenced && sub.epoch != group.epoch {
            return Ok(SubmitOutcome::StaleEpoch {
                current_epoch: group.epoch,
            });
        }
        match sub.kind {
            SubmitKind::Application => kind = EnvelopeKind::Application,
            SubmitKind::Proposal => kind = EnvelopeKind::Proposal,
            SubmitKind::Commit {
                roster,
                welcomes: w,
                group_info: gi,
            } => {
                kind = EnvelopeKind::Commit;
                let mut members = Vec::with_capacity(roster.len());
                for addr in &roster {
                    members.push(
                        self.device_id(addr)?
                            .ok_or_else(|| StoreError::UnknownDevice(addr.clone()))?,
                    );
                }
                members.sort_unstable();
                members.dedup();
                for out in w {
                    let mut to = Vec::with_capacity(out.recipients.len());
                    for addr in &out.recipients {
                        to.push(
                            self.device_id(addr)?
                                .ok_or_else(|| StoreError::UnknownDevice(addr.clone()))?,
                        );
                    }
                    to.sort_unstable();
                    to.dedup();
                    welcomes.push((out.payload, to));
                }
                // The audience stays the old roster: added devices get a Welcome.
                new_members = Some(members);
                group_info = gi;
                group.epoch = group.epoch.saturating_add(1);
            }
        }
        audience.retain(|d| *d != sub.sender);
        let mut audience = self.live(audience)?;
        if kind == EnvelopeKind::Application {
            // Accounts that blocked the sender get none of its messages.
            audience = self.without_blockers(&sender_info.addr.handle, audience)?;
        }

        // Group row and roster.
        let gid = sub.group_id.as_ref();
        if created {
            self.conn
                .prepare_cached(
                    "INSERT INTO groups (group_id, epoch, last_seq, created_at_ms) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .db()?
                .execute(params![
                    gid,
                    to_i64(group.epoch),
                    to_i64(group_seq),
                    to_i64(sub.now_ms)
                ])
                .db()?;
        } else {
            self.conn
                .prepare_cached("UPDATE groups SET epoch = ?2, last_seq = ?3 WHERE group_id = ?1")
                .db()?
                .execute(params![gid, to_i64(group.epoch), to_i64(group_seq)])
                .db()?;
        }
        if let Some(members) = new_members {
            let old: &[DeviceId] = if created { &[] } else { &group.members };
            for gone in old.iter().filter(|d| members.binary_search(d).is_err()) {
                self.conn
                    .prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND device = ?2")
                    .db()?
                    .execute(params![gid, to_i64(gone.0)])
                    .db()?;
            }
            for added in members.iter().filter(|d| old.binary_search(d).is_err()) {
                self.conn
                    .prepare_cached("INSERT INTO group_members (group_id, device) VALUES (?1, ?2)")
                    .db()?
                    .execute(params![gid, to_i64(added.0)])
                    .db()?;
            }
            group.members = members;
        }
        if let Some(gi) = group_info {
            self.conn
                .prepare_cached(
                    "INSERT INTO group_infos (group_id, epoch, data) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data",
                )
                .db()?
                .execute(params![gid, to_i64(group.epoch), gi.as_ref()])
                .db()?;
        }

        // Bodies and mailbox entries.
        let sender_addr = sender_info.addr;
        let mut deliveries = Vec::new();
        let envelope = |seq: u64, group_seq: u64, kind: EnvelopeKind, payload: &Bytes| Envelope {
            seq,
            message_id: sub.message_id,
            group_id: sub.group_id.clone(),
            group_seq,
            kind,
            sender: sender_addr.clone(),
            server_time_ms: sub.now_ms,
            payload: payload.clone(),
        };
        let mut bodies = vec![(kind, group_seq, sub.payload.clone(), audience)];
        for (payload, to) in welcomes {
            let to = self.live(to)?;
            let to = self.without_blockers(&sender_addr.handle, to)?;
            bodies.push((EnvelopeKind::Welcome, 0, payload, to));
        }
        for (kind, gseq, payload, to) in bodies {
            if to.is_empty() {
                continue;
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO messages (group_id, group_seq, sender, message_id, kind, \
                     server_time_ms, expires_at_ms, refcount, payload) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .db()?
                .execute(params![
                    gid,
                    to_i64(gseq),
                    sender,
                    &sub.message_id[..],
                    kind.code(),
                    to_i64(sub.now_ms),
                    to_i64(sub.expires_at_ms),
                    to_i64(to.len() as u64),
                    payload.as_ref()
                ])
                .db()?;
            let message = self.conn.last_insert_rowid();
            for device in to {
                let seq = self.next_seq(device)?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO mailbox (device, seq, message, expires_at_ms) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .db()?
                    .execute(params![
                        to_i64(device.0),
                        to_i64(seq),
                        message,
                        to_i64(sub.expires_at_ms)
                    ])
                    .db()?;
                if sub.disappearing {
                    self.record_timed(sub.expires_at_ms, device, seq, message)?;
                }
                deliveries.push(Delivered {
                    device,
                    envelope: envelope(seq, gseq, kind, &payload),
                });
            }
        }

        self.conn
            .prepare_cached(
                "INSERT INTO dedup (sender, message_id, group_seq, epoch, expires_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db()?
            .execute(params![
                sender,
                &sub.message_id[..],
                to_i64(group_seq),
                to_i64(group.epoch),
                to_i64(sub.expires_at_ms)
            ])
            .db()?;

        let epoch = group.epoch;
        group.last_seq = group_seq;
        self.groups.insert(sub.group_id.clone(), group);
        self.bound_caches();
        Ok(SubmitOutcome::Accepted(Accepted {
            group_seq,
            epoch,
            duplicate: false,
            deliveries,
        }))
    }

    /// `devices` without the revoked ones.
    fn live(&mut self, devices: Vec<DeviceId>) -> Result<Vec<DeviceId>, StoreError> {
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            match self.device_info(d)? {
                Some(info) if !info.revoked => out.push(d),
                _ => {}
            }
        }
        Ok(out)
    }

    // --- mailboxes -------------------------------------------------------------------

    pub(crate) fn ack(&mut self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        let dev = to_i64(device.0);
        let removed: Vec<(i64, i64)> = self
            .conn
            .prepare_cached(
                "DELETE FROM mailbox WHERE device = ?1 AND seq <= ?2 RETURNING seq, message",
            )
            .db()?
            .query_map(params![dev, to_i64(up_to_seq)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .db()?
            .collect::<Result<_, _>>()
            .db()?;
        let Some(max_seq) = removed.iter().map(|(s, _)| *s).max() else {
            return Ok(0);
        };
        // The floor matters only once the mailbox is empty: while an entry above
        // `max_seq` remains, max(mailbox.seq) already exceeds every removed seq, and the
        // ack (or sweep) that removes that entry records the floor then. If a seq above
        // `max_seq` was handed out (the cache knows), such an entry remains, or the sweep
        // that removed it raised the floor past it: no need to look.
        let handed_out_more = self
            .seqs
            .get(&device)
            .is_some_and(|last| to_i64(*last) > max_seq);
        let more = handed_out_more
            || self
                .conn
                .prepare_cached("SELECT 1 FROM mailbox WHERE device = ?1 AND seq > ?2 LIMIT 1")
                .db()?
                .exists(params![dev, max_seq])
                .db()?;
        if !more {
            self.raise_floor(dev, max_seq)?;
        }
        let mut refs: HashMap<i64, i64> = HashMap::with_capacity(removed.len());
        for (_, message) in &removed {
            *refs.entry(*message).or_default() += 1;
        }
        for (message, n) in refs {
            // Most bodies have exactly the references being dropped: delete outright.
            let deleted = self
                .conn
                .prepare_cached("DELETE FROM messages WHERE id = ?1 AND refcount <= ?2")
                .db()?
                .execute(params![message, n])
                .db()?;
            if deleted == 0 {
                self.conn
                    .prepare_cached("UPDATE messages SET refcount = refcount - ?2 WHERE id = ?1")
                    .db()?
                    .execute(params![message, n])
                    .db()?;
            }
        }
        Ok(removed.len() as u64)
    }

    /// Records that mailbox seqs up to `seq` of device `dev` were handed out and removed.
    pub(crate) fn raise_floor(&mut self, dev: i64, seq: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO mailbox_floor (device, seq_floor) VALUES (?1, ?2) \
                 ON CONFLICT (device) DO UPDATE SET seq_floor = max(seq_floor, excluded.seq_floor)",
            )
            .db()?
            .execute(params![dev, seq])
            .db()?;
        Ok(())
    }

    /// One bounded step of the retention sweep (see [`ExpireCursor`]): looks at up to
    /// `step` rows from the cursor on and deletes the expired ones. Steps run as
    /// separate jobs, so a large sweep never holds the writer for long.
    pub(crate) fn expire_step(
        &mut self,
        now_ms: u64,
        cursor: ExpireCursor,
        step: usize,
    ) -> Result<ExpireStep, StoreError> {
        let now = to_i64(now_ms);
        let limit = i64::try_from(step.max(1)).unwrap_or(i64::MAX);
        match cursor {
            ExpireCursor::Mailbox { device, seq } => {
                // Scans the primary key; no index on the expiry (see migration 0002).
                let rows: Vec<(i64, i64, i64)> = self
                    .conn
                    .prepare_cached(
                        "SELECT device, seq, expires_at_ms FROM mailbox \
                         WHERE (device, seq) > (?1, ?2) ORDER BY device, seq LIMIT ?3",
                    )
                    .db()?
                    .query_map(params![device, seq, limit], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .db()?
                    .collect::<Result<_, _>>()
                    .db()?;
                let Some(&(last_dev, last_seq, _)) = rows.last() else {
                    return Ok(ExpireStep {
                        next: Some(ExpireCursor::Messages { id: 0 }),
                        bodies: 0,
                    });
                };
                let mut floors: HashMap<i64, i64> = HashMap::new();
                for &(dev, seq, expires) in &rows {
                    if expires >= now {
                        continue;
                    }
                    self.conn
                        .prepare_cached("DELETE FROM mailbox WHERE device = ?1 AND seq = ?2")
                        .db()?
                        .execute(params![dev, seq])
                        .db()?;
                    let f = floors.entry(dev).or_insert(seq);
                    *f = (*f).max(seq);
                }
                for (dev, seq) in floors {
                    self.raise_floor(dev, seq)?;
                }
                let next = if rows.len() < step.max(1) {
                    ExpireCursor::Messages { id: 0 }
                } else {
                    ExpireCursor::Mailbox {
                        device: last_dev,
                        seq: last_seq,
                    }
                };
                Ok(ExpireStep {
                    next: Some(next),
                    bodies: 0,
                })
            }
            ExpireCursor::Messages { id } => {
                // Bodies whose retention ended go whatever their refcount: every mailbox
                // entry of a body shares its expiry and went in the previous steps.
                let rows: Vec<(i64, i64)> = self
                    .conn
                    .prepare_cached(
                        "SELECT id, expires_at_ms FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .db()?
                    .query_map(params![id, limit], |r| Ok((r.get(0)?, r.get(1)?)))
                    .db()?
                    .collect::<Result<_, _>>()
                    .db()?;
                let mut bodies = 0u64;
                for &(mid, expires) in &rows {
                    if expires < now {
                        bodies += self
                            .conn
                            .prepare_cached("DELETE FROM messages WHERE id = ?1")
                            .db()?
                            .execute([mid])
                            .db()? as u64;
                    }
                }
                let next = match rows.last() {
                    Some(&(last, _)) if rows.len() >= step.max(1) => {
                        ExpireCursor::Messages { id: last }
                    }
                    _ => ExpireCursor::Dedup,
                };
                Ok(ExpireStep {
                    next: Some(next),
                    bodies,
                })
            }
            ExpireCursor::Dedup => {
                let deleted = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM dedup WHERE (message_id, sender) IN \
                         (SELECT message_id, sender FROM dedup WHERE expires_at_ms < ?1 LIMIT ?2)",
                    )
                    .db()?
                    .execute(params![now, limit])
                    .db()?;
                Ok(ExpireStep {
                    next: (deleted >= step.max(1)).then_some(ExpireCursor::Dedup),
                    bodies: 0,
                })
            }
        }
    }
}

/// Where the retention sweep continues: mailbox entries (by primary key), then message
/// bodies (by id), then idempotency records (by their expiry index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpireCursor {
    /// After this (device, seq).
    Mailbox { device: i64, seq: i64 },
    /// After this message id.
    Messages { id: i64 },
    /// Expired idempotency records, oldest first.
    Dedup,
}

impl ExpireCursor {
    /// The start of a sweep.
    pub(crate) const START: Self = Self::Mailbox {
        device: i64::MIN,
        seq: i64::MIN,
    };
}

/// What one sweep step did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpireStep {
    /// Where to continue; `None` when the sweep is complete.
    pub(crate) next: Option<ExpireCursor>,
    /// Message bodies deleted in this step.
    pub(crate) bodies: u64,
}
