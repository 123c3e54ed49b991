//! Column values, read from either side into one representation, their canonical
//! encoding and the order-independent table checksum.

use crate::MigrateError;
use crate::tables::Kind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

/// One column value, independent of the database it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    /// Appends the canonical encoding: a tag byte, then the value (integers as 8 bytes
    /// big-endian, strings and bytes length-prefixed).
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(b'n'),
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Bool(b) => {
                out.push(b'b');
                out.push(u8::from(*b));
            }
            Value::Text(s) => {
                out.push(b't');
                out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(b'x');
                out.extend_from_slice(&(b.len() as u64).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }

    /// Approximate size in memory, for bounding batches.
    pub fn weight(&self) -> usize {
        match self {
            Value::Text(s) => s.len() + 16,
            Value::Bytes(b) => b.len() + 16,
            _ => 16,
        }
    }

    /// Reads a SQLite value as a column of `kind`.
    pub fn from_sqlite(
        v: rusqlite::types::ValueRef<'_>,
        kind: Kind,
        table: &str,
        col: &str,
    ) -> Result<Self, MigrateError> {
        use rusqlite::types::ValueRef as R;
        let bad = |why: &str| MigrateError::SourceData(format!("{table}.{col}: {why}"));
        Ok(match (kind, v) {
            (Kind::OptI64, R::Null) => Value::Null,
            (Kind::I16 | Kind::I32 | Kind::I64 | Kind::OptI64, R::Integer(i)) => {
                let fits = match kind {
                    Kind::I16 => i16::try_from(i).is_ok(),
                    Kind::I32 => i32::try_from(i).is_ok(),
                    _ => true,
                };
                if !fits {
                    return Err(bad("integer out of the target column's range"));
                }
                Value::Int(i)
            }
            (Kind::Bool, R::Integer(i)) => Value::Bool(i != 0),
            (Kind::Text, R::Text(t)) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|_| bad("text is not UTF-8"))?
                    .to_owned(),
            ),
            (Kind::Bytes, R::Blob(b) | R::Text(b)) => Value::Bytes(b.to_vec()),
            _ => return Err(bad("unexpected type")),
        })
    }

    /// Reads column `i` of a PostgreSQL row as a column of `kind`.
    pub fn from_pg(
        row: &tokio_postgres::Row,
        i: usize,
        kind: Kind,
    ) -> Result<Self, tokio_postgres::Error> {
        Ok(match kind {
            Kind::I16 => Value::Int(i64::from(row.try_get::<_, i16>(i)?)),
            Kind::I32 => Value::Int(i64::from(row.try_get::<_, i32>(i)?)),
            Kind::I64 => Value::Int(row.try_get::<_, i64>(i)?),
            Kind::OptI64 => match row.try_get::<_, Option<i64>>(i)? {
                Some(v) => Value::Int(v),
                None => Value::Null,
            },
            Kind::Bool => Value::Bool(row.try_get::<_, bool>(i)?),
            Kind::Text => Value::Text(row.try_get::<_, String>(i)?),
            Kind::Bytes => Value::Bytes(row.try_get::<_, Vec<u8>>(i)?),
        })
    }

    /// The value as a PostgreSQL parameter for a column of `kind`.
    pub fn to_pg(&self, kind: Kind) -> Result<Box<dyn ToSql + Sync + Send>, MigrateError> {
        let bad = || MigrateError::SourceData(format!("value {self:?} for a {kind:?} column"));
        Ok(match (kind, self) {
            (Kind::I16, Value::Int(i)) => Box::new(i16::try_from(*i).map_err(|_| bad())?),
            (Kind::I32, Value::Int(i)) => Box::new(i32::try_from(*i).map_err(|_| bad())?),
            (Kind::I64, Value::Int(i)) => Box::new(*i),
            (Kind::OptI64, Value::Int(i)) => Box::new(Some(*i)),
            (Kind::OptI64, Value::Null) => Box::new(None::<i64>),
            (Kind::Bool, Value::Bool(b)) => Box::new(*b),
            (Kind::Text, Value::Text(s)) => Box::new(s.clone()),
            (Kind::Bytes, Value::Bytes(b)) => Box::new(b.clone()),
            _ => return Err(bad()),
        })
    }
}

/// Row count and order-independent checksum of a table: the sum (mod 2^128) of the
/// first 16 bytes of the SHA-256 of each row's canonical encoding. Equal multisets of
/// rows give equal sums whatever order they are read in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checksum {
    pub rows: u64,
    pub sum: u128,
}

impl Checksum {
    pub fn add(&mut self, row: &[Value]) {
        let mut buf = Vec::new();
        for v in row {
            v.encode(&mut buf);
        }
        let digest = Sha256::digest(&buf);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        self.sum = self.sum.wrapping_add(u128::from_be_bytes(first));
        self.rows += 1;
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_order_but_not_content() {
        let a = vec![Value::Int(1), Value::Text("x".into())];
        let b = vec![Value::Int(2), Value::Bytes(vec![1, 2])];
        let mut one = Checksum::default();
        one.add(&a);
        one.add(&b);
        let mut two = Checksum::default();
        two.add(&b);
        two.add(&a);
        assert_eq!(one, two);
        let mut three = Checksum::default();
        three.add(&a);
        three.add(&[Value::Int(2), Value::Bytes(vec![1, 3])]);
        assert_ne!(one.sum, three.sum);
        assert_eq!(three.rows, 2);
    }

    #[test]
    fn encoding_tells_types_and_boundaries_apart() {
        let enc = |row: &[Value]| {
            let mut c = Checksum::default();
            c.add(row);
            c.sum
        };
        assert_ne!(
            enc(&[Value::Text("ab".into()), Value::Text("c".into())]),
            enc(&[Value::Text("a".into()), Value::Text("bc".into())])
        );
        assert_ne!(
            enc(&[Value::Text("a".into())]),
            enc(&[Value::Bytes(b"a".to_vec())])
        );
        assert_ne!(enc(&[Value::Null]), enc(&[Value::Int(0)]));
        assert_ne!(enc(&[Value::Bool(false)]), enc(&[Value::Int(0)]));
    }
}
