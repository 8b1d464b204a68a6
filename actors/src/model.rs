//! The small vocabulary shared by sessions, the cache and the origins: item keys,
//! per-item versions, origin-wide commit positions and documents.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use compact_str::CompactString;

/// A per-item version: every committed write of an item gives it a higher one.
/// `Version(0)` is an item that was never written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

/// An origin-wide commit position: every commit gets a higher one (a WAL LSN for
/// PostgreSQL, a commit counter for the embedded store). A read reflects every commit
/// at or below the position it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The stable 64-bit hash of an item that tokens carry (FNV-1a over
/// `collection/id`): the same on every node and every build, unlike `std`'s hasher.
/// Two items sharing a hash only ever cost an extra origin read, never a stale one:
/// a watermark can only be raised by a collision, and the primary satisfies any.
pub fn item_hash(collection: &str, id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in collection.bytes().chain([b'/']).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// One item: a collection name and an id, with its stable hash computed once.
///
/// The id is stored inline when short (up to 24 bytes, most ids), so a cache look-up
/// compares it without following a pointer to another allocation: on a hit that was
/// a cache miss of its own. Collection names are shared (`Arc`) and compared by
/// address first.
#[derive(Clone)]
pub struct ItemKey {
    hash: u64,
    collection: Arc<str>,
    id: CompactString,
}

impl ItemKey {
    pub fn new(collection: Arc<str>, id: &str) -> Self {
        Self {
            hash: item_hash(&collection, id),
            collection,
            id: CompactString::new(id),
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn collection(&self) -> &str {
        &self.collection
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The borrowed form, for look-ups that must not allocate.
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            hash: self.hash,
            collection: &self.collection,
            id: &self.id,
        }
    }
}

/// Equal strings, comparing addresses first (collection names are shared).
fn same_str(a: &str, b: &str) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

impl PartialEq for ItemKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.id == other.id && same_str(&self.collection, &other.collection)
    }
}

impl Eq for ItemKey {}

impl Hash for ItemKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

/// A borrowed [`ItemKey`]: hashes and compares like one, so a cache look-up from a
/// request path needs no allocation.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    pub hash: u64,
    pub collection: &'a str,
    pub id: &'a str,
}

impl<'a> KeyRef<'a> {
    pub fn new(collection: &'a str, id: &'a str) -> Self {
        Self {
            hash: item_hash(collection, id),
            collection,
            id,
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl quick_cache::Equivalent<ItemKey> for KeyRef<'_> {
    fn equivalent(&self, key: &ItemKey) -> bool {
        self.hash == key.hash && self.id == key.id.as_str() && same_str(self.collection, &key.collection)
    }
}

/// The fields of a document, without its id.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// An item as some tier has it: its version, the origin position the read reflects,
/// and its fields (`None`: the item does not exist, or was deleted at `version`).
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub version: Version,
    pub position: Position,
    pub fields: Option<Arc<Fields>>,
}

impl Doc {
    pub fn exists(&self) -> bool {
        self.fields.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_hash_is_stable_and_separates_collection_from_id() {
        // Pinned: tokens issued by one build must verify on the next. FNV-1a 64 of
        // "products/p1", and of "/" alone below.
        assert_eq!(item_hash("products", "p1"), 0xd118_63bf_afc6_a909);
        assert_eq!(
            item_hash("", ""),
            (0xcbf2_9ce4_8422_2325_u64 ^ u64::from(b'/')).wrapping_mul(0x0000_0100_0000_01b3)
        );
        assert_ne!(item_hash("a", "b/c"), item_hash("a", "bc"));
        assert_ne!(item_hash("products", "p1"), item_hash("profiles", "p1"));
    }

    #[test]
    fn key_ref_is_equivalent_to_its_key() {
        use quick_cache::Equivalent;
        let key = ItemKey::new("products".into(), "p1");
        assert!(KeyRef::new("products", "p1").equivalent(&key));
        assert!(!KeyRef::new("products", "p2").equivalent(&key));
        assert_eq!(key.as_ref().hash, KeyRef::new("products", "p1").hash);
    }
}
