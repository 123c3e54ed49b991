//! The recovery key: 32 random bytes, shown to the user as 64 hex digits.

use rand::RngCore as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::BackupError;

/// Bytes in a recovery key.
pub const RECOVERY_KEY_BYTES: usize = 32;

/// The secret a backup is encrypted under: 32 random bytes, shown as 64 lowercase hex
/// characters. Zeroized on drop; its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryKey([u8; RECOVERY_KEY_BYTES]);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

impl RecoveryKey {
    /// A fresh random key (OS RNG).
    pub fn generate() -> Self {
        let mut bytes = [0u8; RECOVERY_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; RECOVERY_KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parses a key as the user typed it: 64 hex digits, any case, with or without
    /// spaces, tabs, newlines, dashes or underscores between them.
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        let mut bytes = [0u8; RECOVERY_KEY_BYTES];
        let mut nibbles = 0usize;
        for c in text.chars() {
            if c.is_whitespace() || c == '-' || c == '_' {
                continue;
            }
            let v = c
                .to_digit(16)
                .ok_or(BackupError::InvalidRecoveryKey("only hex digits 0-9, a-f"))?;
            if nibbles >= 2 * RECOVERY_KEY_BYTES {
                return Err(BackupError::InvalidRecoveryKey("more than 64 hex digits"));
            }
            // v < 16: the cast is lossless.
            let v = v as u8;
            let byte = &mut bytes[nibbles / 2];
            *byte = if nibbles.is_multiple_of(2) {
                v << 4
            } else {
                *byte | v
            };
            nibbles += 1;
        }
        if nibbles != 2 * RECOVERY_KEY_BYTES {
            bytes.zeroize();
            return Err(BackupError::InvalidRecoveryKey("it has 64 hex digits"));
        }
        Ok(Self(bytes))
    }

    /// The key as the user is shown it: 64 lowercase hex characters.
    pub fn display(&self) -> String {
        hex::encode(self.0)
    }

    /// The key in 8 groups of 8 characters separated by dashes (easier to copy by
    /// hand); [`RecoveryKey::parse`] accepts it.
    pub fn display_grouped(&self) -> String {
        let hex = self.display();
        let groups: Vec<&str> = (0..8).filter_map(|i| hex.get(i * 8..i * 8 + 8)).collect();
        groups.join("-")
    }

    /// The raw bytes. Never log them.
    pub fn expose(&self) -> &[u8; RECOVERY_KEY_BYTES] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn display_and_parse() {
        let k = RecoveryKey::generate();
        let shown = k.display();
        assert_eq!(shown.len(), 64);
        assert!(
            shown
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(RecoveryKey::parse(&shown).unwrap(), k);
        assert_eq!(RecoveryKey::parse(&shown.to_uppercase()).unwrap(), k);
        assert_eq!(RecoveryKey::parse(&k.display_grouped()).unwrap(), k);
        let spaced: String = shown
            .chars()
            .enumerate()
            .flat_map(|(i, c)| if i % 4 == 3 { vec![c, ' '] } else { vec![c] })
            .collect();
        assert_eq!(RecoveryKey::parse(&format!(" {spaced}\n")).unwrap(), k);
        assert!(RecoveryKey::parse(&shown[..62]).is_err());
        assert!(RecoveryKey::parse(&format!("{shown}0")).is_err());
        assert!(RecoveryKey::parse(&format!("{}g", &shown[..63])).is_err());
        assert!(RecoveryKey::parse("").is_err());
        assert_eq!(format!("{k:?}"), "RecoveryKey(<redacted>)");
    }
}
