//! Backup files (`hushwire backup restore FILE`).
//!
//! 1. Arbitrary bytes read as a backup under a fixed key are refused with an error (or,
//!    never in practice, read as records), never a panic.
//! 2. Records built from the input (kinds and bodies taken from it, so the JSON record
//!    decoders see arbitrary bodies) are written under the key and read back: the raw
//!    records round-trip, each decodes or is refused with an error, and one flipped bit
//!    anywhere in the file is refused.
#![no_main]

use std::io::Cursor;

use hushwire_backup::{BackupInfo, BackupReader, BackupWriter, RecoveryKey};
use libfuzzer_sys::fuzz_target;

fn read_raw(
    bytes: &[u8],
    key: &RecoveryKey,
) -> Result<Vec<(u8, Vec<u8>)>, hushwire_backup::BackupError> {
    let mut r = BackupReader::new(Cursor::new(bytes), key)?;
    let mut out = Vec::new();
    while let Some(raw) = r.next_raw()? {
        out.push(raw);
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let key = RecoveryKey::from_bytes([5u8; 32]);
    // 1. Forged file.
    if let Ok(r) = BackupReader::new(Cursor::new(data), &key) {
        for record in r {
            if record.is_err() {
                break;
            }
        }
    }
    // 2. Records from the input: a kind byte and a one-byte length, then the body.
    let mut records = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]).min(rest.len() - 2));
        records.push((kind, rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    let info = BackupInfo {
        created_at_ms: 1,
        media: false,
    };
    let mut w = BackupWriter::new(Vec::new(), &key, info).expect("writing into memory");
    for (kind, body) in &records {
        w.write_raw(*kind, body).expect("writing into memory");
    }
    let file = w.finish().expect("writing into memory");
    assert_eq!(
        read_raw(&file, &key).expect("an untouched backup reads"),
        records
    );
    let mut r = BackupReader::new(Cursor::new(&file), &key).expect("an untouched backup opens");
    for _ in 0..records.len() {
        let _decoded_or_refused = r.next_record();
    }
    let bit = data.first().map_or(0, |b| usize::from(*b)) * 8 + data.len();
    let mut flipped = file.clone();
    let at = bit % (flipped.len() * 8);
    flipped[at / 8] ^= 1 << (at % 8);
    assert!(
        read_raw(&flipped, &key).is_err(),
        "a flipped bit must be refused"
    );
});
