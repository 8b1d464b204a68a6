//! The row messages of pgoutput (protocol version 1, text format) that the logical
//! feed needs: Relation, Insert, Update, Delete and Truncate. Transaction bounds and
//! logical decoding messages come decoded from the replication client; pgoutput's
//! row messages it hands over as bytes, and only two columns of them matter here —
//! a row's key and version — so this small decoder reads them.
//!
//! Message formats: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.

use std::collections::HashMap;
use std::sync::Arc;

use edgecache_actors::Version;

use crate::origin::Change;

/// A table the node serves: its collection and the names of its key and version
/// columns.
#[derive(Debug, Clone)]
pub struct Watched {
    pub collection: Arc<str>,
    pub key: String,
    pub version: String,
}

/// A relation of the stream that is one of ours: where its key and version are.
#[derive(Debug)]
struct Relation {
    collection: Arc<str>,
    key: usize,
    version: usize,
}

/// A malformed message: the stream cannot be trusted past it.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(&'static str);

/// Decodes one replication session's row messages into changes. Relations are
/// announced again on every session, so a decoder lives as long as one session.
#[derive(Debug)]
pub struct Decoder {
    /// By table name.
    watched: HashMap<String, Watched>,
    /// By relation OID; `None`: announced, not ours.
    relations: HashMap<u32, Option<Relation>>,
    /// Whether this transaction deleted a row of ours that it did not write again.
    /// The version trigger turns a DELETE into a tombstone (an Update), and deletes
    /// a row itself only to replace a tombstone by a new row (an Insert of the same
    /// key follows); a delete that bypassed the trigger leaves no version to compare,
    /// so the whole cache goes at the commit.
    deleted: Vec<(Arc<str>, String)>,
}

/// A reader over a message's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes")))
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError("unterminated string"))?;
        let s = std::str::from_utf8(&self.0[..end]).map_err(|_| DecodeError("string not UTF-8"))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    /// TupleData: every column's value as text (`None`: NULL, or unchanged TOAST).
    fn tuple(&mut self) -> Result<Vec<Option<&'a str>>, DecodeError> {
        let columns = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(columns));
        for _ in 0..columns {
            values.push(match self.u8()? {
                b'n' | b'u' => None,
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    // Binary values are never asked for; a key or version sent
                    // that way reads as absent and the row is passed over.
                    std::str::from_utf8(bytes).ok()
                }
                _ => return Err(DecodeError("unknown column kind")),
            });
        }
        Ok(values)
    }
}

impl Decoder {
    pub fn new(watched: impl IntoIterator<Item = (String, Watched)>) -> Self {
        Self {
            watched: watched.into_iter().collect(),
            relations: HashMap::new(),
            deleted: Vec::new(),
        }
    }

    /// The change one row message announces, if it is about one of our rows.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Change>, DecodeError> {
        let mut r = Reader(data);
        match r.u8()? {
            b'R' => {
                let oid = r.u32()?;
                let _namespace = r.cstr()?;
                let name = r.cstr()?;
                let _replica_identity = r.u8()?;
                let count = r.u16()?;
                let mut names = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let _flags = r.u8()?;
                    names.push(r.cstr()?);
                    let _type = r.u32()?;
                    let _modifier = r.u32()?;
                }
                let relation = self.watched.get(name).and_then(|w| {
                    let at = |column: &str| names.iter().position(|n| *n == column);
                    Some(Relation {
                        collection: w.collection.clone(),
                        key: at(&w.key)?,
                        version: at(&w.version)?,
                    })
                });
                self.relations.insert(oid, relation);
                Ok(None)
            }
            b'I' => {
                let oid = r.u32()?;
                if r.u8()? != b'N' {
                    return Err(DecodeError("insert without a new tuple"));
                }
                self.row(oid, &mut r)
            }
            b'U' => {
                let oid = r.u32()?;
                let mut kind = r.u8()?;
                if kind == b'K' || kind == b'O' {
                    r.tuple()?;
                    kind = r.u8()?;
                }
                if kind != b'N' {
                    return Err(DecodeError("update without a new tuple"));
                }
                self.row(oid, &mut r)
            }
            b'D' => {
                let oid = r.u32()?;
                let _kind = r.u8()?;
                let old = r.tuple()?;
                if let Some(Some(relation)) = self.relations.get(&oid) {
                    if let Some(Some(key)) = old.get(relation.key) {
                        self.deleted
                            .push((relation.collection.clone(), (*key).to_owned()));
                    }
                }
                Ok(None)
            }
            b'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                let mut ours = false;
                for _ in 0..count {
                    ours |= matches!(self.relations.get(&r.u32()?), Some(Some(_)));
                }
                // A truncate leaves no versions behind: drop everything.
                Ok(ours.then_some(Change::Reset))
            }
            // Type and origin messages, and anything newer: nothing for the cache.
            _ => Ok(None),
        }
    }

    /// An inserted or updated row of relation `oid`: its key and new version.
    fn row(&mut self, oid: u32, r: &mut Reader<'_>) -> Result<Option<Change>, DecodeError> {
        let values = r.tuple()?;
        let Some(Some(relation)) = self.relations.get(&oid) else {
            return Ok(None);
        };
        let key = values.get(relation.key).copied().flatten();
        let version = values
            .get(relation.version)
            .copied()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok());
        let (Some(key), Some(version)) = (key, version) else {
            return Ok(None);
        };
        let collection = relation.collection.clone();
        self.deleted.retain(|(c, k)| !(*c == collection && k == key));
        Ok(Some(Change::Item {
            collection: collection.to_string(),
            id: key.to_owned(),
            version: Version(version),
        }))
    }

    /// The transaction committed: whether it deleted a row of ours that bypassed
    /// the version trigger (then nothing cached can be vouched for).
    pub fn commit(&mut self) -> bool {
        let bypassed = !self.deleted.is_empty();
        self.deleted.clear();
        bypassed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(oid: u32, name: &str, columns: &[&str]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(oid.to_be_bytes());
        m.extend(b"public\0");
        m.extend(name.as_bytes());
        m.push(0);
        m.push(b'd');
        m.extend((columns.len() as u16).to_be_bytes());
        for c in columns {
            m.push(0);
            m.extend(c.as_bytes());
            m.push(0);
            m.extend(25u32.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut m = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => m.push(b'n'),
                Some(v) => {
                    m.push(b't');
                    m.extend((v.len() as u32).to_be_bytes());
                    m.extend(v.as_bytes());
                }
            }
        }
        m
    }

    fn decoder() -> Decoder {
        Decoder::new([(
            "catalogue".to_owned(),
            Watched {
                collection: "products".into(),
                key: "sku".into(),
                version: "version".into(),
            },
        )])
    }

    fn item(change: Option<Change>) -> (String, String, u64) {
        match change {
            Some(Change::Item {
                collection,
                id,
                version,
            }) => (collection, id, version.0),
            other => panic!("not an item: {other:?}"),
        }
    }

    #[test]
    fn inserts_and_updates_of_our_tables_become_item_changes() {
        let mut d = decoder();
        let columns = ["name", "version", "deleted", "sku"];
        assert!(d.decode(&relation(7, "catalogue", &columns)).unwrap().is_none());
        assert!(d.decode(&relation(8, "elsewhere", &columns)).unwrap().is_none());

        let mut insert = vec![b'I'];
        insert.extend(7u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(tuple(&[Some("kettle"), Some("3"), Some("f"), Some("k1")]));
        assert_eq!(
            item(d.decode(&insert).unwrap()),
            ("products".into(), "k1".into(), 3)
        );

        // An update with the old key first (REPLICA IDENTITY FULL or a key change).
        let mut update = vec![b'U'];
        update.extend(7u32.to_be_bytes());
        update.push(b'O');
        update.extend(tuple(&[Some("kettle"), Some("3"), Some("f"), Some("k1")]));
        update.push(b'N');
        update.extend(tuple(&[None, Some("4"), Some("t"), Some("k1")]));
        assert_eq!(
            item(d.decode(&update).unwrap()),
            ("products".into(), "k1".into(), 4)
        );

        // Another table's rows are not ours.
        let mut other = vec![b'I'];
        other.extend(8u32.to_be_bytes());
        other.push(b'N');
        other.extend(tuple(&[Some("x"), Some("1"), Some("f"), Some("k1")]));
        assert!(d.decode(&other).unwrap().is_none());
        assert!(!d.commit());
    }

    #[test]
    fn a_delete_not_followed_by_the_same_row_and_a_truncate_clear_everything() {
        let mut d = decoder();
        d.decode(&relation(7, "catalogue", &["sku", "version"])).unwrap();
        let mut delete = vec![b'D', 0, 0, 0, 7, b'K'];
        delete.extend(tuple(&[Some("k1"), None]));
        assert!(d.decode(&delete).unwrap().is_none());
        // The trigger replacing a tombstone: the row comes back in the transaction.
        let mut insert = vec![b'I', 0, 0, 0, 7, b'N'];
        insert.extend(tuple(&[Some("k1"), Some("9")]));
        d.decode(&insert).unwrap();
        assert!(!d.commit(), "a replaced tombstone is an ordinary change");
        d.decode(&delete).unwrap();
        assert!(d.commit(), "a delete that bypassed the trigger");

        let mut truncate = vec![b'T'];
        truncate.extend(1u32.to_be_bytes());
        truncate.push(0);
        truncate.extend(7u32.to_be_bytes());
        assert!(matches!(d.decode(&truncate).unwrap(), Some(Change::Reset)));
        assert!(d.decode(&[b'I', 0]).is_err(), "truncated messages are errors");
    }
}
