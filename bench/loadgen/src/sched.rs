//! The pure parts: the open-loop schedule and the stamp each synthetic ciphertext carries.
//!
//! Latency is measured from the *intended* send time (when the schedule says a message
//! is due), not from when it was actually written, so a stall anywhere (server, kernel or
//! generator) shows up in the figures instead of silently lowering the offered rate
//! (no coordinated omission).

/// Marks a ciphertext made by this generator.
pub const STAMP_MAGIC: [u8; 4] = *b"HWLG";
/// Bytes of the stamp at the end of every ciphertext: magic, intended time, message number.
pub const STAMP_LEN: usize = 4 + 8 + 8;

/// What a delivered message carries back to the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Intended send time, nanoseconds since the generator's base instant.
    pub intended_ns: u64,
    /// Position in the schedule.
    pub msg_no: u64,
}

/// An opaque "ciphertext" of `len` bytes (at least [`STAMP_LEN`]) ending with the stamp.
pub fn ciphertext(len: usize, stamp: Stamp) -> Vec<u8> {
    let len = len.max(STAMP_LEN);
    let mut out = Vec::with_capacity(len);
    // Padding that does not compress to nothing; its content is irrelevant to the server.
    out.extend((0..len - STAMP_LEN).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7)));
    out.extend_from_slice(&STAMP_MAGIC);
    out.extend_from_slice(&stamp.intended_ns.to_be_bytes());
    out.extend_from_slice(&stamp.msg_no.to_be_bytes());
    out
}

/// Reads the stamp from the end of a delivered payload (the MLS message ends with the
/// ciphertext). `None` for payloads this generator did not make.
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    let start = payload.len().checked_sub(STAMP_LEN)?;
    let tail = payload.get(start..)?;
    let (magic, rest) = tail.split_at(4);
    if magic != STAMP_MAGIC {
        return None;
    }
    let (t, n) = rest.split_at(8);
    Some(Stamp {
        intended_ns: u64::from_be_bytes(t.try_into().ok()?),
        msg_no: u64::from_be_bytes(n.try_into().ok()?),
    })
}

/// Marks a text payload made by this generator (XMPP bodies, MQTT payloads).
pub const TEXT_MAGIC: &str = "HWLG";
/// Characters of the text stamp: magic, run nonce, recipient, intended time, message
/// number (lowercase hex, fixed width).
pub const TEXT_STAMP_LEN: usize = 4 + 16 + 8 + 16 + 16;

/// What a text payload carries: the run it belongs to, its recipient and its stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextStamp {
    /// The generator run (messages of an earlier run are not counted).
    pub nonce: u64,
    /// The recipient's connection index.
    pub to: u32,
    /// Intended time and message number.
    pub stamp: Stamp,
}

/// A printable payload of `len` characters (at least [`TEXT_STAMP_LEN`]) that ends with
/// the text stamp: safe as XML character data and as MQTT payload bytes alike.
pub fn text_payload(len: usize, t: TextStamp) -> String {
    let len = len.max(TEXT_STAMP_LEN);
    let mut out = String::with_capacity(len);
    out.extend((0..len - TEXT_STAMP_LEN).map(|i| char::from(b'a' + (i % 26) as u8)));
    out.push_str(TEXT_MAGIC);
    out.push_str(&format!(
        "{:016x}{:08x}{:016x}{:016x}",
        t.nonce, t.to, t.stamp.intended_ns, t.stamp.msg_no
    ));
    out
}

/// Reads the text stamp at the end of a payload; `None` if it is not one of ours.
pub fn read_text_stamp(payload: &[u8]) -> Option<TextStamp> {
    let start = payload.len().checked_sub(TEXT_STAMP_LEN)?;
    let tail = std::str::from_utf8(payload.get(start..)?).ok()?;
    let rest = tail.strip_prefix(TEXT_MAGIC)?;
    let hex = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = rest.get(r)?;
        // from_str_radix accepts a leading '+'; the stamp never has one.
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok()
    };
    Some(TextStamp {
        nonce: hex(0..16)?,
        to: u32::try_from(hex(16..24)?).ok()?,
        stamp: Stamp {
            intended_ns: hex(24..40)?,
            msg_no: hex(40..56)?,
        },
    })
}

/// A constant-rate schedule: message `k` is due at `start_ns + k / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start_ns: u64,
    rate: u64,
    total: u64,
}

const NS: u128 = 1_000_000_000;

impl Schedule {
    /// `rate` messages per second (at least 1) for `duration_ns`.
    pub fn new(start_ns: u64, rate: u64, duration_ns: u64) -> Self {
        let rate = rate.max(1);
        let total = u64::try_from(u128::from(duration_ns) * u128::from(rate) / NS).unwrap_or(0);
        Self {
            start_ns,
            rate,
            total,
        }
    }

    /// How many messages the schedule holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When message `k` is due.
    pub fn intended_ns(&self, k: u64) -> u64 {
        let offset = u128::from(k) * NS / u128::from(self.rate);
        self.start_ns
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// The index of the first message not yet due at `now_ns` (capped at `total`): every
    /// message before it is due.
    pub fn due_end(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = u128::from(now_ns - self.start_ns);
        // k is due iff k * NS / rate <= elapsed (integer division, as in intended_ns).
        let due = (elapsed * u128::from(self.rate)) / NS + 1;
        let mut end = u64::try_from(due).unwrap_or(u64::MAX).min(self.total);
        // Correct the rounding of the closed form against intended_ns (at most a step).
        while end < self.total && self.intended_ns(end) <= now_ns {
            end += 1;
        }
        while end > 0 && self.intended_ns(end - 1) > now_ns {
            end -= 1;
        }
        end
    }
}

/// Least-squares fit `y = a + b x`; returns `(a, b)`, or `None` with fewer than two
/// distinct x.
pub fn linear_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    Some((my - b * mx, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_at_the_end_of_any_payload() {
        let stamp = Stamp {
            intended_ns: 123_456_789_012,
            msg_no: 42,
        };
        for len in [0, STAMP_LEN, 100, 1000] {
            let ct = ciphertext(len, stamp);
            assert_eq!(ct.len(), len.max(STAMP_LEN));
            let mut payload = b"mls header bytes".to_vec();
            payload.extend_from_slice(&ct);
            assert_eq!(read_stamp(&payload), Some(stamp));
        }
        assert_eq!(read_stamp(b"short"), None);
        let mut ct = ciphertext(100, stamp);
        ct[100 - STAMP_LEN] ^= 1;
        assert_eq!(read_stamp(&ct), None);
    }

    #[test]
    fn text_stamp_round_trip() {
        let t = TextStamp {
            nonce: 0xdead_beef_0123_4567,
            to: 9_999,
            stamp: Stamp {
                intended_ns: 987_654_321_000,
                msg_no: 77,
            },
        };
        for len in [0, TEXT_STAMP_LEN, 100, 300] {
            let p = text_payload(len, t);
            assert_eq!(p.len(), len.max(TEXT_STAMP_LEN));
            assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(read_text_stamp(p.as_bytes()), Some(t));
        }
        let p = text_payload(100, t);
        assert_eq!(read_text_stamp(&p.as_bytes()[..99]), None);
        let mut bad = p.clone().into_bytes();
        bad[100 - TEXT_STAMP_LEN] = b'X';
        assert_eq!(read_text_stamp(&bad), None);
        let plus = p.replacen(&format!("{:016x}", t.nonce), "+eadbeef01234567", 1);
        assert_eq!(read_text_stamp(plus.as_bytes()), None);
    }

    #[test]
    fn schedule_is_evenly_spaced_and_bounded() {
        let s = Schedule::new(1_000, 4, 2_000_000_000);
        assert_eq!(s.total(), 8);
        assert_eq!(s.intended_ns(0), 1_000);
        assert_eq!(s.intended_ns(1), 1_000 + 250_000_000);
        assert_eq!(s.intended_ns(7), 1_000 + 1_750_000_000);
        assert_eq!(s.due_end(0), 0);
        assert_eq!(s.due_end(999), 0);
        assert_eq!(s.due_end(1_000), 1);
        assert_eq!(s.due_end(1_000 + 250_000_000 - 1), 1);
        assert_eq!(s.due_end(1_000 + 250_000_000), 2);
        assert_eq!(s.due_end(u64::MAX / 2), 8);
    }

    #[test]
    fn due_end_matches_intended_times_at_odd_rates() {
        for rate in [1, 3, 7, 999, 20_000, 33_333] {
            let s = Schedule::new(17, rate, 1_500_000_000);
            for now in (0..1_600_000_000u64).step_by(7_919_111) {
                let end = s.due_end(now);
                assert!(end <= s.total());
                if end > 0 {
                    assert!(s.intended_ns(end - 1) <= now);
                }
                if end < s.total() {
                    assert!(s.intended_ns(end) > now);
                }
            }
        }
    }

    #[test]
    fn fits_a_line() {
        let (a, b) = linear_fit(&[(0.0, 10.0), (1.0, 12.0), (2.0, 14.0)]).unwrap();
        assert!((a - 10.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9);
        assert!(linear_fit(&[(1.0, 1.0)]).is_none());
        assert!(linear_fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }
}
