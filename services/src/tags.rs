//! The cache's tag index: which cached items carry which tag (surrogate keys), so a
//! purge by tag finds them without scanning the cache.
//!
//! A collection names the fields whose values are its items' tags
//! (`collections.*.surrogate_keys`): a string is one tag, an array of strings several.
//! The index is fed on every insert into the cache and keeps at most
//! `cache.max_tag_entries` (tag, item) pairs. It is conservative in both directions:
//!
//! - a pair may outlive its entry (an eviction does not tell the index, and an item
//!   whose tags changed keeps its old ones until it is purged): a purge by tag then
//!   drops an entry it did not need to — an extra origin read;
//! - past the bound a collection's items are cached without their tags, and the
//!   collection is marked *overflowed*: a purge by tag then drops (or marks) the whole
//!   collection, since the index cannot say which of its items carry the tag. Purging
//!   the whole collection hard clears the mark (nothing of it is cached any more).
//!
//! One lock guards the index; it is taken only when an entry of a collection with
//! surrogate keys enters the cache (a fill or a write, never a hit) and by purges.

use std::collections::{HashMap, HashSet};

use edgecache_actors::{Fields, ItemKey};
use parking_lot::Mutex;
use serde_json::Value;

/// The tag index of one node's cache.
pub struct TagIndex {
    /// Collection → the fields holding its tags (only collections that have some).
    surrogate_keys: HashMap<String, Vec<String>>,
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_tag: HashMap<String, HashSet<ItemKey>>,
    /// (tag, item) pairs held.
    entries: usize,
    /// Collections some of whose cached items are not indexed (the bound was hit).
    overflowed: HashSet<String>,
}

/// What a purge by tag must act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tagged {
    /// The items the index knows carry the tag.
    pub items: Vec<ItemKey>,
    /// Collections the index cannot answer for: purge all of each.
    pub whole_collections: Vec<String>,
}

/// The tags in one field's value: a string, or the strings of an array.
fn tags_of(value: &Value) -> impl Iterator<Item = &str> {
    let (one, many) = match value {
        Value::String(s) => (Some(s.as_str()), None),
        Value::Array(items) => (None, Some(items.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

impl TagIndex {
    /// An index for the collections of `surrogate_keys` (collection → fields), of at
    /// most `max_entries` pairs.
    pub fn new(surrogate_keys: HashMap<String, Vec<String>>, max_entries: usize) -> Self {
        Self {
            surrogate_keys: surrogate_keys
                .into_iter()
                .filter(|(_, f)| !f.is_empty())
                .collect(),
            max_entries,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether `collection` has surrogate keys.
    pub fn tags_collection(&self, collection: &str) -> bool {
        self.surrogate_keys.contains_key(collection)
    }

    /// Records the tags of `fields`, cached under `key`.
    pub fn record(&self, key: &ItemKey, fields: &Fields) {
        let Some(tag_fields) = self.surrogate_keys.get(key.collection()) else {
            return;
        };
        let mut inner = self.inner.lock();
        for value in tag_fields.iter().filter_map(|f| fields.get(f)) {
            for tag in tags_of(value) {
                let known = inner.by_tag.get(tag).is_some_and(|items| items.contains(key));
                if known {
                    continue;
                }
                if inner.entries >= self.max_entries {
                    if inner.overflowed.insert(key.collection().to_owned()) {
                        tracing::warn!(
                            collection = key.collection(),
                            max = self.max_entries,
                            "tag index full: a purge by tag drops this whole collection"
                        );
                    }
                    return;
                }
                inner
                    .by_tag
                    .entry(tag.to_owned())
                    .or_default()
                    .insert(key.clone());
                inner.entries += 1;
            }
        }
    }

    /// Forgets the tags of `fields` for `key` (its entry left the cache).
    pub fn forget(&self, key: &ItemKey, fields: &Fields) {
        let Some(tag_fields) = self.surrogate_keys.get(key.collection()) else {
            return;
        };
        let mut inner = self.inner.lock();
        for value in tag_fields.iter().filter_map(|f| fields.get(f)) {
            for tag in tags_of(value) {
                inner.remove(tag, key);
            }
        }
    }

    /// What a purge of `tag` (in `collection`, or in every collection) acts on. A
    /// hard purge (`drop`) takes the items out of the index; a soft one leaves them
    /// (they stay cached, marked stale).
    pub fn tagged(&self, tag: &str, collection: Option<&str>, drop: bool) -> Tagged {
        let in_scope = |c: &str| collection.is_none_or(|wanted| wanted == c);
        let mut inner = self.inner.lock();
        let mut items: Vec<ItemKey> = inner
            .by_tag
            .get(tag)
            .map(|keys| {
                keys.iter()
                    .filter(|k| in_scope(k.collection()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        items.sort_unstable_by(|a, b| (a.collection(), a.id()).cmp(&(b.collection(), b.id())));
        if drop {
            for key in &items {
                inner.remove(tag, key);
            }
        }
        let mut whole_collections: Vec<String> =
            inner.overflowed.iter().filter(|c| in_scope(c)).cloned().collect();
        whole_collections.sort_unstable();
        Tagged {
            items,
            whole_collections,
        }
    }

    /// Forgets every item of `collection`, and its overflow: its entries were all
    /// dropped.
    pub fn forget_collection(&self, collection: &str) {
        let mut inner = self.inner.lock();
        let mut removed = 0;
        inner.by_tag.retain(|_, keys| {
            let before = keys.len();
            keys.retain(|k| k.collection() != collection);
            removed += before - keys.len();
            !keys.is_empty()
        });
        inner.entries -= removed;
        inner.overflowed.remove(collection);
    }

    /// Forgets everything (the cache was cleared).
    pub fn clear(&self) {
        *self.inner.lock() = Inner::default();
    }

    /// (tag, item) pairs held.
    pub fn len(&self) -> usize {
        self.inner.lock().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remove(&mut self, tag: &str, key: &ItemKey) {
        if let Some(keys) = self.by_tag.get_mut(tag) {
            if keys.remove(key) {
                self.entries -= 1;
            }
            if keys.is_empty() {
                self.by_tag.remove(tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn index(max: usize) -> TagIndex {
        TagIndex::new(
            [
                ("products".to_owned(), vec!["tags".to_owned(), "brand".to_owned()]),
                ("notes".to_owned(), vec![]),
            ]
            .into(),
            max,
        )
    }

    fn key(collection: &str, id: &str) -> ItemKey {
        ItemKey::new(collection.into(), id)
    }

    fn fields(value: Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn strings_and_arrays_of_strings_are_tags() {
        let index = index(100);
        assert!(index.tags_collection("products"));
        assert!(!index.tags_collection("notes"), "no surrogate keys");
        let p1 = key("products", "p1");
        index.record(
            &p1,
            &fields(json!({"tags": ["coffee", "kitchen", 3], "brand": "acme"})),
        );
        index.record(
            &key("products", "p2"),
            &fields(json!({"tags": "tea", "name": "coffee"})),
        );
        index.record(&key("notes", "n1"), &fields(json!({"tags": "coffee"})));
        assert_eq!(index.len(), 4);
        assert_eq!(index.tagged("coffee", None, false).items, vec![p1.clone()]);
        assert_eq!(
            index.tagged("acme", Some("products"), false).items,
            vec![p1.clone()]
        );
        assert!(index.tagged("acme", Some("carts"), false).items.is_empty());
        // Recording the same pairs again adds nothing.
        index.record(&p1, &fields(json!({"tags": ["coffee"]})));
        assert_eq!(index.len(), 4);
        // A hard purge takes the items out; a soft one leaves them.
        assert_eq!(index.tagged("kitchen", None, false).items.len(), 1);
        assert_eq!(index.tagged("kitchen", None, true).items.len(), 1);
        assert!(index.tagged("kitchen", None, true).items.is_empty());
        index.forget(&p1, &fields(json!({"tags": ["coffee"], "brand": "acme"})));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn past_its_bound_a_tag_purge_takes_the_whole_collection() {
        let index = index(2);
        index.record(&key("products", "p1"), &fields(json!({"tags": ["a", "b"]})));
        assert!(index.tagged("a", None, false).whole_collections.is_empty());
        index.record(&key("products", "p2"), &fields(json!({"tags": ["a"]})));
        assert_eq!(index.len(), 2, "bounded");
        let tagged = index.tagged("a", None, false);
        assert_eq!(tagged.items, vec![key("products", "p1")]);
        assert_eq!(
            tagged.whole_collections,
            vec!["products".to_owned()],
            "p2 is not indexed: the whole collection must go"
        );
        assert!(index
            .tagged("a", Some("carts"), false)
            .whole_collections
            .is_empty());
        // Once the collection was dropped whole, the index answers for it again.
        index.forget_collection("products");
        assert!(index.is_empty());
        assert!(index.tagged("a", None, false).whole_collections.is_empty());
    }
}
