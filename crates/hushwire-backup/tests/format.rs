//! The backup format: round trips, wrong keys, tampering, truncation, versions, and the
//! committed v1 fixture (a backup made by an earlier release keeps restoring).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;
use std::path::PathBuf;

use hushwire_backup::*;

fn info() -> BackupInfo {
    BackupInfo {
        created_at_ms: 1_700_000_000_000,
        media: false,
    }
}

fn message(i: u32) -> Record {
    Record::Message(Box::new(MessageRecord {
        conversation: "bob".into(),
        id: {
            let mut id = vec![0x01; 16];
            id[12..].copy_from_slice(&i.to_be_bytes());
            id
        },
        sender: if i.is_multiple_of(2) { "alice" } else { "bob" }.into(),
        sender_device: 1,
        group_id: Some(vec![0xaa; 32]),
        sent_at_ms: 10_000 + u64::from(i),
        received_at_ms: (i % 2 == 1).then_some(20_000 + u64::from(i)),
        body: format!("message {i}: {}", "x".repeat((i as usize * 37) % 500)),
        outgoing: i.is_multiple_of(2),
        state: if i.is_multiple_of(2) { 1 } else { 2 },
        kind: 0,
        reply_to: None,
        edited_at_ms: None,
        expires_at_ms: None,
        view_once: 0,
        read_at_ms: None,
        reactions: vec![ReactionRecord {
            reactor: "bob".into(),
            emoji: "👍".into(),
            at_ms: 5,
        }],
        receipts: vec![],
        attachment: None,
    }))
}

fn account() -> Record {
    Record::Account(AccountRecord {
        handle: "alice".into(),
        account_key: vec![1; 32],
        account_secret: vec![2; 32],
        server_url: Some("https://127.0.0.1:1".into()),
        tls_pin: Some("sha256/abc".into()),
        directory_pin: None,
    })
}

fn records(n: u32) -> Vec<Record> {
    let mut out = vec![account()];
    out.push(Record::Conversation(ConversationRecord {
        name: "bob".into(),
        suite: 0x004F,
        created_at_ms: 1,
        expire_timer_ms: 0,
        request: false,
        group_chat: None,
        groups: vec![],
    }));
    out.extend((0..n).map(message));
    out.push(Record::Setting(SettingRecord {
        key: "read_receipts".into(),
        value: 1,
    }));
    out
}

fn write(key: &RecoveryKey, records: &[Record]) -> Vec<u8> {
    let mut w = BackupWriter::new(Vec::new(), key, info()).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap()
}

fn read_all(bytes: &[u8], key: &RecoveryKey) -> Result<Vec<Record>, BackupError> {
    let mut r = BackupReader::new(Cursor::new(bytes), key)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

/// Number of chunks of a backup of `len` bytes.
fn chunks(len: usize) -> usize {
    (len - HEADER_BYTES).div_ceil(CHUNK_BYTES + TAG_BYTES)
}

#[test]
fn round_trip_across_chunks() {
    let key = RecoveryKey::generate();
    let recs = records(2_000);
    let bytes = write(&key, &recs);
    assert!(chunks(bytes.len()) >= 5, "{} chunks", chunks(bytes.len()));
    let r = BackupReader::new(Cursor::new(&bytes), &key).unwrap();
    assert_eq!(r.info(), info());
    assert_eq!(read_all(&bytes, &key).unwrap(), recs);
    // The iterator gives the same.
    let it: Vec<Record> = BackupReader::new(Cursor::new(&bytes), &key)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(it, recs);
}

#[test]
fn empty_and_exact_chunk_payloads() {
    let key = RecoveryKey::generate();
    // No record at all: one empty last chunk.
    let bytes = write(&key, &[]);
    assert_eq!(bytes.len(), HEADER_BYTES + TAG_BYTES);
    assert_eq!(read_all(&bytes, &key).unwrap(), vec![]);
    // A payload of exactly one and two full chunks (the last chunk is full).
    for n in [1usize, 2] {
        let body = vec![7u8; n * CHUNK_BYTES - 5];
        let mut w = BackupWriter::new(Vec::new(), &key, info()).unwrap();
        w.write_raw(kind::MEDIA_DATA, &body).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + n * (CHUNK_BYTES + TAG_BYTES));
        assert_eq!(
            read_all(&bytes, &key).unwrap(),
            vec![Record::MediaData(body)]
        );
        // Cut at the last chunk boundary: truncated.
        if n == 2 {
            let cut = &bytes[..HEADER_BYTES + CHUNK_BYTES + TAG_BYTES];
            assert!(matches!(read_all(cut, &key), Err(BackupError::Truncated)));
        }
    }
}

#[test]
fn media_streams_in_pieces() {
    let key = RecoveryKey::generate();
    let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = BackupWriter::new(
        Vec::new(),
        &key,
        BackupInfo {
            created_at_ms: 1,
            media: true,
        },
    )
    .unwrap();
    let start = MediaStart {
        sender: "bob".into(),
        message_id: vec![3; 16],
        file_name: "cat.jpg".into(),
        size: file.len() as u64,
    };
    w.write_media(start.clone(), &mut Cursor::new(&file))
        .unwrap();
    let bytes = w.finish().unwrap();
    let mut r = BackupReader::new(Cursor::new(&bytes), &key).unwrap();
    assert!(r.info().media);
    assert_eq!(r.next_record().unwrap(), Some(Record::MediaStart(start)));
    let mut got = Vec::new();
    let end = loop {
        match r.next_record().unwrap() {
            Some(Record::MediaData(d)) => {
                assert!(d.len() <= MEDIA_PIECE_BYTES);
                got.extend(d);
            }
            Some(Record::MediaEnd(e)) => break e,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(got, file);
    use sha2::Digest as _;
    assert_eq!(end.sha256, sha2::Sha256::digest(&file).to_vec());
    assert_eq!(r.next_record().unwrap(), None);

    // A file whose size changed is refused.
    let mut w = BackupWriter::new(Vec::new(), &key, info()).unwrap();
    let start = MediaStart {
        sender: "bob".into(),
        message_id: vec![3; 16],
        file_name: "cat.jpg".into(),
        size: 10,
    };
    assert!(w.write_media(start, &mut Cursor::new(&file)).is_err());
}

#[test]
fn wrong_key_refused_before_decrypting() {
    let key = RecoveryKey::generate();
    let bytes = write(&key, &records(10));
    let other = RecoveryKey::generate();
    assert!(matches!(
        BackupReader::new(Cursor::new(&bytes), &other),
        Err(BackupError::WrongKey)
    ));
}

#[test]
fn every_tampered_byte_is_refused() {
    let key = RecoveryKey::generate();
    let bytes = write(&key, &records(800));
    let n = chunks(bytes.len());
    assert!(n >= 3);
    // Every header byte, the first and last bytes of every chunk, and a sample between.
    let mut positions: Vec<usize> = (0..HEADER_BYTES).collect();
    for c in 0..n {
        let start = HEADER_BYTES + c * (CHUNK_BYTES + TAG_BYTES);
        let end = (start + CHUNK_BYTES + TAG_BYTES).min(bytes.len());
        positions.extend([
            start,
            start + 1,
            (start + end) / 2,
            end - TAG_BYTES,
            end - 1,
        ]);
    }
    positions.extend((HEADER_BYTES..bytes.len()).step_by(4_099));
    for pos in positions {
        for flip in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[pos] ^= flip;
            let err = read_all(&bad, &key).expect_err(&format!("byte {pos} changed, accepted"));
            match (pos, &err) {
                (0..8, BackupError::NotABackup) => {}
                (8..10, BackupError::UnsupportedVersion(_)) => {}
                (10..HEADER_BYTES, BackupError::TamperedHeader) => {}
                (p, BackupError::Tampered { chunk }) if p >= HEADER_BYTES => {
                    assert_eq!(
                        *chunk as usize,
                        (p - HEADER_BYTES) / (CHUNK_BYTES + TAG_BYTES)
                    );
                }
                _ => panic!("byte {pos}: unexpected {err:?}"),
            }
        }
    }
}

#[test]
fn header_fixed_up_by_an_attacker_is_still_refused() {
    // Changing the created time and recomputing the unkeyed header checksum: every chunk
    // fails (the header is the chunks' associated data).
    let key = RecoveryKey::generate();
    let mut bytes = write(&key, &records(10));
    bytes[20] ^= 1;
    use sha2::Digest as _;
    let sum = sha2::Sha256::digest(&bytes[..107]);
    bytes[107..139].copy_from_slice(&sum);
    assert!(matches!(
        read_all(&bytes, &key),
        Err(BackupError::Tampered { chunk: 0 })
    ));
    // Swapping in another salt with a fixed-up checksum looks like a wrong key.
    let mut bytes = write(&key, &records(10));
    bytes[30] ^= 1;
    let sum = sha2::Sha256::digest(&bytes[..107]);
    bytes[107..139].copy_from_slice(&sum);
    assert!(matches!(read_all(&bytes, &key), Err(BackupError::WrongKey)));
}

#[test]
fn truncation_is_refused() {
    let key = RecoveryKey::generate();
    let bytes = write(&key, &records(800));
    let n = chunks(bytes.len());
    // At every chunk boundary (the header's end included): Truncated.
    for c in 0..n {
        let cut = HEADER_BYTES + c * (CHUNK_BYTES + TAG_BYTES);
        assert!(
            matches!(read_all(&bytes[..cut], &key), Err(BackupError::Truncated)),
            "cut after {c} chunks"
        );
    }
    // Inside the header: Truncated.
    for cut in [0usize, 3, 8, 9, 10, 50, HEADER_BYTES - 1] {
        let r = BackupReader::new(Cursor::new(&bytes[..cut]), &key);
        assert!(matches!(r, Err(BackupError::Truncated)), "cut at {cut}");
    }
    // Inside a chunk: that chunk fails.
    for c in 0..n {
        let cut = HEADER_BYTES + c * (CHUNK_BYTES + TAG_BYTES) + 100;
        if cut >= bytes.len() {
            continue;
        }
        assert!(
            matches!(read_all(&bytes[..cut], &key), Err(BackupError::Tampered { chunk }) if chunk as usize == c),
            "cut inside chunk {c}"
        );
    }
    // One byte short.
    assert!(read_all(&bytes[..bytes.len() - 1], &key).is_err());
    // Appended bytes.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(read_all(&longer, &key).is_err());
}

#[test]
fn bad_magic_and_unknown_version() {
    let key = RecoveryKey::generate();
    let bytes = write(&key, &records(3));
    assert!(matches!(
        BackupReader::new(
            Cursor::new(b"PK\x03\x04 not a backup at all".to_vec()),
            &key
        ),
        Err(BackupError::NotABackup)
    ));
    let mut v2 = bytes.clone();
    v2[8..10].copy_from_slice(&2u16.to_be_bytes());
    assert!(matches!(
        BackupReader::new(Cursor::new(&v2), &key),
        Err(BackupError::UnsupportedVersion(2))
    ));
}

#[test]
fn unknown_record_kinds_are_returned_for_skipping() {
    let key = RecoveryKey::generate();
    let mut w = BackupWriter::new(Vec::new(), &key, info()).unwrap();
    w.write_record(&account()).unwrap();
    w.write_raw(0x60, b"{\"future\":true}").unwrap();
    w.write_record(&message(1)).unwrap();
    let bytes = w.finish().unwrap();
    let got = read_all(&bytes, &key).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[1],
        Record::Unknown {
            kind: 0x60,
            body: b"{\"future\":true}".to_vec()
        }
    );
}

#[test]
fn secrets_are_redacted_in_debug() {
    let text = format!("{:?}", account());
    assert!(!text.contains("0202020202"), "{text}");
    assert!(text.contains("redacted"));
}

// ------------------------------------------------------------------ the v1 fixture

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// What `tests/fixtures/v1/backup.hwbackup` holds. NEVER change this or the file: they
/// are the promise that a backup written by release 1 keeps restoring.
fn fixture_records() -> Vec<Record> {
    let mut out = records(60);
    out.insert(
        2,
        Record::Contact(ContactRecord {
            handle: "bob".into(),
            account_key: vec![3; 32],
            devices: vec![ContactDevice {
                device_id: 1,
                device_key: vec![4; 32],
                created_at_ms: 1_000,
                listed: true,
            }],
            device_list: None,
            verified: Some(VerifiedRecord {
                account_key: vec![3; 32],
                at_ms: 2_000,
            }),
            directory_check: None,
        }),
    );
    out.insert(
        3,
        Record::Conversation(ConversationRecord {
            name: "#friends".into(),
            suite: 0x004F,
            created_at_ms: 3,
            expire_timer_ms: 86_400_000,
            request: false,
            group_chat: Some(GroupChatRecord {
                group_id: vec![0xbb; 32],
                recovery_key: Some(vec![0xcc; 32]),
                leaving: false,
                diverged_by: None,
            }),
            groups: vec![GroupRecord {
                group_id: vec![0xbb; 32],
                suite: 0x004F,
                state: "active".into(),
                created_at_ms: 3,
            }],
        }),
    );
    out.push(Record::Blocked(BlockedRecord {
        handle: "mallory".into(),
        at_ms: 9,
    }));
    out.push(Record::Tombstone(TombstoneRecord {
        sender: "bob".into(),
        id: vec![9; 16],
        at_ms: 10,
    }));
    out.push(Record::MediaStart(MediaStart {
        sender: "bob".into(),
        message_id: vec![1; 16],
        file_name: "note.txt".into(),
        size: 11,
    }));
    out.push(Record::MediaData(b"hello world".to_vec()));
    use sha2::Digest as _;
    out.push(Record::MediaEnd(MediaEnd {
        sha256: sha2::Sha256::digest(b"hello world").to_vec(),
    }));
    out
}

fn fixture_key() -> RecoveryKey {
    let text = std::fs::read_to_string(fixture_dir().join("recovery-key.txt")).unwrap();
    RecoveryKey::parse(text.trim()).unwrap()
}

/// The fixture's records round trip through a fresh backup under a new key. With
/// `HUSHWIRE_WRITE_BACKUP_FIXTURE=1` (only for a new format version's fixture
/// directory) the fresh backup and its key are also saved as that version's fixture.
#[test]
fn fixture_records_round_trip_and_can_be_saved_as_a_new_fixture() {
    let key = RecoveryKey::generate();
    let mut w = BackupWriter::new(
        Vec::new(),
        &key,
        BackupInfo {
            created_at_ms: 1_765_000_000_000,
            media: true,
        },
    )
    .unwrap();
    for r in fixture_records() {
        w.write_record(&r).unwrap();
    }
    let bytes = w.finish().unwrap();
    assert_eq!(read_all(&bytes, &key).unwrap(), fixture_records());
    if std::env::var_os("HUSHWIRE_WRITE_BACKUP_FIXTURE").is_none() {
        return;
    }
    let dir = fixture_dir();
    assert!(
        !dir.join("backup.hwbackup").exists(),
        "the v1 fixture exists: never rewrite a released version's fixture"
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("recovery-key.txt"), format!("{}\n", key.display())).unwrap();
    std::fs::write(dir.join("backup.hwbackup"), bytes).unwrap();
}

#[test]
fn v1_fixture_still_restores() {
    let bytes = std::fs::read(fixture_dir().join("backup.hwbackup")).unwrap();
    let key = fixture_key();
    let r = BackupReader::new(Cursor::new(&bytes), &key).unwrap();
    assert_eq!(
        r.info(),
        BackupInfo {
            created_at_ms: 1_765_000_000_000,
            media: true
        }
    );
    assert_eq!(read_all(&bytes, &key).unwrap(), fixture_records());
    // And it is refused under another key.
    assert!(matches!(
        BackupReader::new(Cursor::new(&bytes), &RecoveryKey::from_bytes([0; 32])),
        Err(BackupError::WrongKey)
    ));
}
