//! The plaintext header of an RFC 9420 `MLSMessage`: all the server reads of a conversation.
//!
//! The parser reads only as far as the fields it returns and never allocates more than
//! the input it was given. Ciphertext after the header is not inspected.

/// First bytes of a *sealed* GroupInfo (`Submit.group_info` of group chats): then a
/// 24-byte nonce and the XChaCha20-Poly1305 ciphertext of an `MLSMessage(GroupInfo)`.
/// The server stores it opaquely; only members hold the key.
pub const SEALED_GROUP_INFO_MAGIC: &[u8; 5] = b"HWGI\x01";

/// Smallest well-formed sealed GroupInfo: magic, nonce and the 16-byte tag.
pub const SEALED_GROUP_INFO_MIN_BYTES: usize = SEALED_GROUP_INFO_MAGIC.len() + 24 + 16;

/// RFC 9420 wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `mls_public_message` (1).
    PublicMessage,
    /// `mls_private_message` (2).
    PrivateMessage,
    /// `mls_welcome` (3).
    Welcome,
    /// `mls_group_info` (4).
    GroupInfo,
    /// `mls_key_package` (5).
    KeyPackage,
}

/// RFC 9420 content types of framed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application` (1).
    Application,
    /// `proposal` (2).
    Proposal,
    /// `commit` (3).
    Commit,
}

/// The header fields of a framed (public or private) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedHeader {
    /// Public or private message.
    pub wire_format: WireFormat,
    /// The group the message belongs to.
    pub group_id: Vec<u8>,
    /// The epoch the message was sent in.
    pub epoch: u64,
    /// Application, proposal or commit.
    pub content_type: ContentType,
}

/// What the header of an `MLSMessage` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlsHeader {
    /// A public or private message inside a group.
    Framed(FramedHeader),
    /// A Welcome, with its ciphersuite.
    Welcome {
        /// The ciphersuite code point.
        ciphersuite: u16,
    },
    /// A GroupInfo, with the group it describes.
    GroupInfo {
        /// The ciphersuite code point.
        ciphersuite: u16,
        /// The group's id.
        group_id: Vec<u8>,
        /// The group's epoch.
        epoch: u64,
    },
    /// A KeyPackage, with its ciphersuite.
    KeyPackage {
        /// The ciphersuite code point.
        ciphersuite: u16,
    },
}

/// Why an `MLSMessage` header could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MlsHeaderError {
    /// The input ended before the header did.
    #[error("MLS message truncated")]
    Truncated,
    /// The protocol version is not MLS 1.0.
    #[error("unsupported MLS protocol version {0}")]
    Version(u16),
    /// Unknown wire format.
    #[error("unknown MLS wire format {0}")]
    WireFormat(u16),
    /// Unknown content type.
    #[error("unknown MLS content type {0}")]
    ContentType(u8),
    /// Unknown sender type in a public message.
    #[error("unknown MLS sender type {0}")]
    SenderType(u8),
    /// A variable-length integer is invalid or not minimally encoded.
    #[error("invalid MLS variable-length integer")]
    VarInt,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MlsHeaderError> {
        if self.buf.len() < n {
            return Err(MlsHeaderError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MlsHeaderError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MlsHeaderError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, MlsHeaderError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, MlsHeaderError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// RFC 9420 section 2.1.2 variable-length integer.
    fn varint(&mut self) -> Result<usize, MlsHeaderError> {
        let first = self.u8()?;
        let (len, value) = match first >> 6 {
            0 => (1, u32::from(first & 0x3f)),
            1 => (2, u32::from(first & 0x3f)),
            2 => (4, u32::from(first & 0x3f)),
            _ => return Err(MlsHeaderError::VarInt),
        };
        let mut value = value;
        for b in self.take(len - 1)? {
            value = (value << 8) | u32::from(*b);
        }
        let minimal = match len {
            1 => true,
            2 => value >= 64,
            _ => value >= 16384,
        };
        if !minimal {
            return Err(MlsHeaderError::VarInt);
        }
        usize::try_from(value).map_err(|_| MlsHeaderError::VarInt)
    }
    fn opaque(&mut self) -> Result<&'a [u8], MlsHeaderError> {
        let n = self.varint()?;
        self.take(n)
    }
}

fn content_type(v: u8) -> Result<ContentType, MlsHeaderError> {
    match v {
        1 => Ok(ContentType::Application),
        2 => Ok(ContentType::Proposal),
        3 => Ok(ContentType::Commit),
        other => Err(MlsHeaderError::ContentType(other)),
    }
}

/// Reads the plaintext header of a TLS-serialized `MLSMessage`.
pub fn parse_header(bytes: &[u8]) -> Result<MlsHeader, MlsHeaderError> {
    let mut r = Reader { buf: bytes };
    let version = r.u16()?;
    if version != 1 {
        return Err(MlsHeaderError::Version(version));
    }
    match r.u16()? {
        1 => {
            let group_id = r.opaque()?.to_vec();
            let epoch = r.u64()?;
            match r.u8()? {
                1 | 2 => {
                    r.u32()?;
                }
                3 | 4 => {}
                other => return Err(MlsHeaderError::SenderType(other)),
            }
            r.opaque()?; // authenticated_data
            let content_type = content_type(r.u8()?)?;
            Ok(MlsHeader::Framed(FramedHeader {
                wire_format: WireFormat::PublicMessage,
                group_id,
                epoch,
                content_type,
            }))
        }
        2 => {
            let group_id = r.opaque()?.to_vec();
            let epoch = r.u64()?;
            let content_type = content_type(r.u8()?)?;
            Ok(MlsHeader::Framed(FramedHeader {
                wire_format: WireFormat::PrivateMessage,
                group_id,
                epoch,
                content_type,
            }))
        }
        3 => Ok(MlsHeader::Welcome {
            ciphersuite: r.u16()?,
        }),
        4 => {
            let _version = r.u16()?;
            let ciphersuite = r.u16()?;
            let group_id = r.opaque()?.to_vec();
            let epoch = r.u64()?;
            Ok(MlsHeader::GroupInfo {
                ciphersuite,
                group_id,
                epoch,
            })
        }
        5 => {
            let _version = r.u16()?;
            Ok(MlsHeader::KeyPackage {
                ciphersuite: r.u16()?,
            })
        }
        other => Err(MlsHeaderError::WireFormat(other)),
    }
}

/// Builds the bytes of a syntactically valid `PrivateMessage` with the given header and
/// opaque ciphertext. Used by the load generator and tests, which exercise the server
/// without running MLS; real clients get these bytes from OpenMLS.
pub fn synthetic_private_message(
    group_id: &[u8],
    epoch: u64,
    content_type: ContentType,
    ciphertext: &[u8],
) -> Vec<u8> {
    fn put_opaque(out: &mut Vec<u8>, v: &[u8]) {
        let n = v.len();
        if n < 64 {
            out.push(n as u8);
        } else if n < 16384 {
            out.extend_from_slice(&((n as u16) | 0x4000).to_be_bytes());
        } else {
            out.extend_from_slice(&((n as u32 & 0x3fff_ffff) | 0x8000_0000).to_be_bytes());
        }
        out.extend_from_slice(v);
    }
    let mut out = Vec::with_capacity(32 + group_id.len() + ciphertext.len());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&2u16.to_be_bytes());
    put_opaque(&mut out, group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(match content_type {
        ContentType::Application => 1,
        ContentType::Proposal => 2,
        ContentType::Commit => 3,
    });
    put_opaque(&mut out, b"");
    put_opaque(&mut out, &[0u8; 16]);
    put_opaque(&mut out, ciphertext);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_round_trip() {
        for len in [0usize, 63, 64, 16383, 16384] {
            let ct = vec![7u8; len];
            let m = synthetic_private_message(b"group-1", 42, ContentType::Commit, &ct);
            let h = parse_header(&m).unwrap();
            assert_eq!(
                h,
                MlsHeader::Framed(FramedHeader {
                    wire_format: WireFormat::PrivateMessage,
                    group_id: b"group-1".to_vec(),
                    epoch: 42,
                    content_type: ContentType::Commit,
                })
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_header(&[]), Err(MlsHeaderError::Truncated));
        assert_eq!(parse_header(&[0, 2, 0, 2]), Err(MlsHeaderError::Version(2)));
        assert_eq!(
            parse_header(&[0, 1, 0, 9]),
            Err(MlsHeaderError::WireFormat(9))
        );
        // non-minimal varint (length 5 encoded in two bytes)
        assert_eq!(
            parse_header(&[0, 1, 0, 2, 0x40, 5]),
            Err(MlsHeaderError::VarInt)
        );
        // truncated group id
        assert_eq!(
            parse_header(&[0, 1, 0, 2, 10, 1, 2]),
            Err(MlsHeaderError::Truncated)
        );
        let mut m = synthetic_private_message(b"g", 1, ContentType::Application, b"x");
        m[2 + 2 + 2 + 8] = 9;
        assert_eq!(parse_header(&m), Err(MlsHeaderError::ContentType(9)));
    }

    #[test]
    fn never_panics_on_random_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..64);
            let mut v: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
            if v.len() >= 4 {
                v[0] = 0;
                v[1] = 1;
                v[2] = 0;
                v[3] = rng.gen_range(0..7);
            }
            let _ = parse_header(&v);
        }
    }
}
