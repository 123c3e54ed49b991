//! Accounts, devices, invites and KeyPackages.

use crate::conv::{TxError, exec, from_i64, row_opt, rows, to_i64, to_u32};
use crate::mailbox;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Transaction};
use hushwire_store::{
    AccountRecord, AddDevice, ClaimedKeyPackage, DeviceAddr, DeviceId, DeviceRecord,
    KeyPackageStock, NewAccount, NewDevice, NewKeyPackage, StoreError,
};
use tokio_postgres::Row;

const DEVICE_COLUMNS: &str =
    "id, handle, device_no, device_key, cert_created_at_ms, cert_signature, revoked";

fn device_row(r: &Row) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: DeviceId(from_i64(r.get(0))),
        addr: DeviceAddr {
            handle: r.get(1),
            device_id: to_u32(r.get(2))?,
        },
        device_key: r.get(3),
        cert_created_at_ms: from_i64(r.get(4)),
        cert_signature: r.get(5),
        revoked: r.get(6),
    })
}

pub(crate) async fn create_account(
    tx: &Transaction<'_>,
    new: &NewAccount,
) -> Result<DeviceRecord, TxError> {
    let now = to_i64(new.now_ms);
    // The invite first: without a valid one, nothing says whether the handle is taken.
    // A registration that then fails (a taken handle) rolls back, invite use included.
    // Two registrations with one invite: the second waits on the row lock, then finds
    // it used.
    if let Some(code) = &new.invite {
        let used = exec(
            tx,
            "UPDATE invites SET used_at_ms = $2 \
             WHERE code = $1 AND used_at_ms IS NULL AND expires_at_ms > $2",
            &[code, &now],
        )
        .await?;
        if used != 1 {
            return Err(StoreError::InviteInvalid.into());
        }
    }
    if row_opt(
        tx,
        "SELECT 1 FROM accounts WHERE handle = $1",
        &[&new.handle],
    )
    .await?
    .is_some()
    {
        return Err(StoreError::HandleTaken.into());
    }
    // A concurrent registration of the same handle makes this wait for it, then insert
    // nothing.
    let inserted = exec(
        tx,
        "INSERT INTO accounts (handle, account_key, created_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (handle) DO NOTHING",
        &[&new.handle, &new.account_key, &now],
    )
    .await?;
    if inserted == 0 {
        return Err(StoreError::HandleTaken.into());
    }
    let device = insert_device(
        tx,
        &new.handle,
        1,
        &NewDevice {
            device_key: new.device_key.clone(),
            cert_created_at_ms: new.cert_created_at_ms,
            cert_signature: new.cert_signature.clone(),
        },
    )
    .await?;
    crate::directory::record_change(tx, &new.handle).await?;
    Ok(device)
}

async fn insert_device(
    tx: &Transaction<'_>,
    handle: &str,
    device_no: u32,
    d: &NewDevice,
) -> Result<DeviceRecord, TxError> {
    let row = rows(
        tx,
        "WITH d AS (\
           INSERT INTO devices (handle, device_no, device_key, cert_created_at_ms, cert_signature) \
           VALUES ($1, $2, $3, $4, $5) RETURNING id), \
         s AS (INSERT INTO mailbox_seqs (device) SELECT id FROM d) \
         SELECT id FROM d",
        &[
            &handle,
            &i64::from(device_no),
            &d.device_key,
            &to_i64(d.cert_created_at_ms),
            &d.cert_signature,
        ],
    )
    .await?;
    let id: i64 = row
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::Backend("device insert returned no id".into()))?;
    Ok(DeviceRecord {
        id: DeviceId(from_i64(id)),
        addr: DeviceAddr {
            handle: handle.to_owned(),
            device_id: device_no,
        },
        device_key: d.device_key.clone(),
        cert_created_at_ms: d.cert_created_at_ms,
        cert_signature: d.cert_signature.clone(),
        revoked: false,
    })
}

pub(crate) async fn add_device(
    tx: &Transaction<'_>,
    handle: &str,
    d: &NewDevice,
) -> Result<Option<DeviceRecord>, TxError> {
    if !lock_account(tx, handle).await? {
        return Ok(None);
    }
    let last: Option<i64> = crate::conv::row_one(
        tx,
        "SELECT max(device_no) FROM devices WHERE handle = $1",
        &[&handle],
    )
    .await?
    .get(0);
    let next = to_u32(last.unwrap_or(0))?
        .checked_add(1)
        .ok_or_else(|| StoreError::Invalid("device numbers exhausted".into()))?;
    insert_device(tx, handle, next, d).await.map(Some)
}

/// Locks the account row, which serializes device additions (NO KEY: devices' foreign
/// key checks on it go on meanwhile). Returns whether the account exists. What is read
/// about its devices must be read by later statements: at READ COMMITTED they see every
/// addition committed before the lock was granted, whereas subqueries of the locking
/// statement would see its start-time snapshot.
async fn lock_account(tx: &Transaction<'_>, handle: &str) -> Result<bool, TxError> {
    Ok(row_opt(
        tx,
        "SELECT 1 FROM accounts WHERE handle = $1 FOR NO KEY UPDATE",
        &[&handle],
    )
    .await?
    .is_some())
}

pub(crate) async fn add_device_within(
    tx: &Transaction<'_>,
    handle: &str,
    d: &NewDevice,
    max_active: usize,
) -> Result<AddDevice, TxError> {
    if !lock_account(tx, handle).await? {
        return Ok(AddDevice::UnknownAccount);
    }
    let row = crate::conv::row_one(
        tx,
        "SELECT max(device_no), coalesce(bool_or(device_key = $2), false), \
                count(*) FILTER (WHERE NOT revoked) \
         FROM devices WHERE handle = $1",
        &[&handle, &d.device_key],
    )
    .await?;
    let (last, key_in_use, active): (Option<i64>, bool, i64) = (row.get(0), row.get(1), row.get(2));
    if key_in_use {
        return Ok(AddDevice::KeyInUse);
    }
    if usize::try_from(active).unwrap_or(usize::MAX) >= max_active {
        return Ok(AddDevice::TooManyDevices);
    }
    let next = to_u32(last.unwrap_or(0))?
        .checked_add(1)
        .ok_or_else(|| StoreError::Invalid("device numbers exhausted".into()))?;
    insert_device(tx, handle, next, d)
        .await
        .map(AddDevice::Added)
}

pub(crate) async fn revoke_device(
    tx: &Transaction<'_>,
    addr: &DeviceAddr,
) -> Result<bool, TxError> {
    let Some(row) = row_opt(
        tx,
        "UPDATE devices SET revoked = true \
         WHERE handle = $1 AND device_no = $2 AND NOT revoked RETURNING id",
        &[&addr.handle, &i64::from(addr.device_id)],
    )
    .await?
    else {
        return Ok(false);
    };
    let id: i64 = row.get(0);
    exec(tx, "DELETE FROM key_packages WHERE device = $1", &[&id]).await?;
    mailbox::ack(tx, id, i64::MAX).await?;
    Ok(true)
}

pub(crate) async fn create_invite(
    tx: &Transaction<'_>,
    code: &str,
    expires_at_ms: u64,
) -> Result<(), TxError> {
    let n = exec(
        tx,
        "INSERT INTO invites (code, expires_at_ms) VALUES ($1, $2) ON CONFLICT (code) DO NOTHING",
        &[&code, &to_i64(expires_at_ms)],
    )
    .await?;
    if n == 0 {
        return Err(StoreError::Invalid("invite code exists already".into()).into());
    }
    Ok(())
}

pub(crate) async fn account<C: GenericClient>(
    c: &C,
    handle: &str,
) -> Result<Option<AccountRecord>, TxError> {
    // One statement: one snapshot.
    let rs = rows(
        c,
        "SELECT a.account_key, a.created_at_ms, d.id, d.handle, d.device_no, d.device_key, \
                d.cert_created_at_ms, d.cert_signature, d.revoked, l.version, l.data \
         FROM accounts a LEFT JOIN devices d ON d.handle = a.handle \
         LEFT JOIN device_lists l ON l.handle = a.handle \
         WHERE a.handle = $1 ORDER BY d.device_no",
        &[&handle],
    )
    .await?;
    let Some(first) = rs.first() else {
        return Ok(None);
    };
    let mut devices = Vec::with_capacity(rs.len());
    for r in &rs {
        if r.get::<_, Option<i64>>(2).is_some() {
            devices.push(DeviceRecord {
                id: DeviceId(from_i64(r.get(2))),
                addr: DeviceAddr {
                    handle: r.get(3),
                    device_id: to_u32(r.get(4))?,
                },
                device_key: r.get(5),
                cert_created_at_ms: from_i64(r.get(6)),
                cert_signature: r.get(7),
                revoked: r.get(8),
            });
        }
    }
    let device_list = match (
        first.get::<_, Option<i64>>(9),
        first.get::<_, Option<Vec<u8>>>(10),
    ) {
        (Some(version), Some(data)) => Some(hushwire_store::StoredDeviceList {
            version: from_i64(version),
            data: Bytes::from(data),
        }),
        _ => None,
    };
    Ok(Some(AccountRecord {
        handle: handle.to_owned(),
        account_key: first.get(0),
        created_at_ms: from_i64(first.get(1)),
        devices,
        device_list,
    }))
}

pub(crate) async fn device<C: GenericClient>(
    c: &C,
    addr: &DeviceAddr,
) -> Result<Option<DeviceRecord>, TxError> {
    let row = row_opt(
        c,
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE handle = $1 AND device_no = $2"),
        &[&addr.handle, &i64::from(addr.device_id)],
    )
    .await?;
    Ok(row.as_ref().map(device_row).transpose()?)
}

// --- key packages ----------------------------------------------------------------------

pub(crate) async fn add_key_packages(
    tx: &Transaction<'_>,
    device: DeviceId,
    packages: &[NewKeyPackage],
) -> Result<u32, TxError> {
    let count = u32::try_from(packages.len())
        .map_err(|_| StoreError::Invalid("too many key packages".into()))?;
    let dev = to_i64(device.0);
    if row_opt(tx, "SELECT 1 FROM devices WHERE id = $1", &[&dev])
        .await?
        .is_none()
    {
        return Err(StoreError::Invalid(format!("unknown device id {}", device.0)).into());
    }
    // A new last-resort package replaces the previous one of its ciphersuite, so only
    // the batch's last one per ciphersuite is kept.
    let mut suites = Vec::new();
    let mut flags = Vec::new();
    let mut datas: Vec<&[u8]> = Vec::new();
    let mut lr_suites: Vec<i32> = Vec::new();
    for (i, p) in packages.iter().enumerate() {
        let suite = i32::from(p.ciphersuite);
        if p.last_resort {
            let later = packages[i + 1..]
                .iter()
                .any(|q| q.last_resort && q.ciphersuite == p.ciphersuite);
            if later {
                continue;
            }
            lr_suites.push(suite);
        }
        suites.push(suite);
        flags.push(p.last_resort);
        datas.push(p.data.as_ref());
    }
    if !lr_suites.is_empty() {
        exec(
            tx,
            "DELETE FROM key_packages \
             WHERE device = $1 AND last_resort AND ciphersuite = ANY($2::integer[])",
            &[&dev, &lr_suites],
        )
        .await?;
    }
    if !suites.is_empty() {
        exec(
            tx,
            "INSERT INTO key_packages (device, ciphersuite, last_resort, data) \
             SELECT $1::bigint, s, l, d FROM unnest($2::integer[], $3::boolean[], $4::bytea[]) \
               WITH ORDINALITY AS p(s, l, d, i) ORDER BY i",
            &[&dev, &suites, &flags, &datas],
        )
        .await?;
    }
    Ok(count)
}

pub(crate) async fn claim_key_packages(
    tx: &Transaction<'_>,
    handle: &str,
    ciphersuite: u16,
) -> Result<Vec<ClaimedKeyPackage>, TxError> {
    let suite = i32::from(ciphersuite);
    // Per live device: the oldest one-time package, deleted as it is handed out (SKIP
    // LOCKED: concurrent claims take different ones), else the last-resort package.
    let rs = rows(
        tx,
        "WITH devs AS (SELECT id, device_no FROM devices WHERE handle = $1 AND NOT revoked), \
         pick AS (\
           SELECT (SELECT k.id FROM key_packages k \
                   WHERE k.device = devs.id AND k.ciphersuite = $2 AND NOT k.last_resort \
                   ORDER BY k.id LIMIT 1 FOR UPDATE SKIP LOCKED) AS kid \
           FROM devs), \
         taken AS (DELETE FROM key_packages WHERE id IN (SELECT kid FROM pick) \
                   RETURNING device, data) \
         SELECT devs.device_no, coalesce(t.data, \
                  (SELECT k.data FROM key_packages k \
                   WHERE k.device = devs.id AND k.ciphersuite = $2 AND k.last_resort \
                   ORDER BY k.id DESC LIMIT 1)) \
         FROM devs LEFT JOIN taken t ON t.device = devs.id \
         ORDER BY devs.device_no",
        &[&handle, &suite],
    )
    .await?;
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        if let Some(data) = r.get::<_, Option<Vec<u8>>>(1) {
            out.push(ClaimedKeyPackage {
                device_id: to_u32(r.get(0))?,
                data: Bytes::from(data),
            });
        }
    }
    Ok(out)
}

pub(crate) async fn key_package_stock<C: GenericClient>(
    c: &C,
    device: DeviceId,
    ciphersuite: u16,
) -> Result<KeyPackageStock, TxError> {
    let r = crate::conv::row_one(
        c,
        "SELECT count(*) FILTER (WHERE NOT last_resort), coalesce(bool_or(last_resort), false) \
         FROM key_packages WHERE device = $1 AND ciphersuite = $2",
        &[&to_i64(device.0), &i32::from(ciphersuite)],
    )
    .await?;
    let available: i64 = r.get(0);
    Ok(KeyPackageStock {
        available: u32::try_from(available).unwrap_or(u32::MAX),
        has_last_resort: r.get(1),
    })
}
