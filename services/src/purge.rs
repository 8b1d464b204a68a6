//! A purge and its JSON: what `POST /admin/purge` asks, and the message that carries
//! it to every node — through the peers (`POST /cluster/purge`) and through the
//! PostgreSQL change feed, where it travels beside the item changes `{"c","i","v"}`:
//!
//! ```json
//! {"purge": {"collection": "products", "ids": ["p1"], "soft": true}, "id": "9f…", "node": "edge-1"}
//! ```
//!
//! The `purge` member tells it apart from an item change. `id` names one purge, so a
//! node that hears of it twice (from a peer and from the feed, or its own notification
//! coming back) applies it once. The same JSON is what the change feed's decoder reads
//! whichever transport carries it (`pg_notify` today, a logical-replication message
//! later).

use serde::{Deserialize, Serialize};

/// What to purge: by ids in a collection, a whole collection, or a tag (in one
/// collection, or in all); `soft` marks entries stale instead of dropping them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// The collection of `ids`, the collection to purge whole, or the one collection
    /// a `tag` is purged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Items of `collection` (at most `api.max_batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// A surrogate key: items whose `surrogate_keys` fields hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Mark stale (served within stale-while-revalidate while one refresh runs)
    /// instead of dropping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft: bool,
}

/// A purge's scope, once the request is checked ([`Purge::target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Ids {
        collection: &'a str,
        ids: &'a [String],
    },
    Collection(&'a str),
    Tag {
        tag: &'a str,
        collection: Option<&'a str>,
    },
}

/// Why a purge request names no scope (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeShapeError {
    #[error("a purge names `ids` (with a `collection`), a `collection`, or a `tag`")]
    NoScope,
    #[error("`ids` need the `collection` they belong to")]
    IdsWithoutCollection,
    #[error("a purge names `ids` or a `tag`, not both")]
    IdsAndTag,
    #[error("`ids` is empty: name at least one, or purge the whole collection")]
    NoIds,
    #[error("the tag is empty")]
    EmptyTag,
}

impl Purge {
    /// The scope this request names.
    pub fn target(&self) -> Result<Target<'_>, PurgeShapeError> {
        match (
            self.collection.as_deref(),
            self.ids.as_deref(),
            self.tag.as_deref(),
        ) {
            (_, Some(_), Some(_)) => Err(PurgeShapeError::IdsAndTag),
            (None, Some(_), None) => Err(PurgeShapeError::IdsWithoutCollection),
            (Some(_), Some([]), None) => Err(PurgeShapeError::NoIds),
            (Some(collection), Some(ids), None) => Ok(Target::Ids { collection, ids }),
            (_, None, Some("")) => Err(PurgeShapeError::EmptyTag),
            (collection, None, Some(tag)) => Ok(Target::Tag { tag, collection }),
            (Some(collection), None, None) => Ok(Target::Collection(collection)),
            (None, None, None) => Err(PurgeShapeError::NoScope),
        }
    }
}

/// One purge on its way to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeMessage {
    pub purge: Purge,
    /// Names the purge (16 hex digits, random): a node applies each id once.
    pub id: String,
    /// The node that took the request.
    pub node: String,
}

impl PurgeMessage {
    /// A new purge from `node`, with a fresh id.
    pub fn new(purge: Purge, node: &str) -> Self {
        Self {
            purge,
            id: format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0),
            node: node.to_owned(),
        }
    }

    /// The message's JSON.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a purge message serialises")
    }

    /// A message from its JSON.
    pub fn decode(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge(json: &str) -> Purge {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_three_scopes_and_what_is_refused() {
        let by_ids = purge(r#"{"collection": "products", "ids": ["p1", "p2"]}"#);
        assert_eq!(
            by_ids.target(),
            Ok(Target::Ids {
                collection: "products",
                ids: &["p1".to_owned(), "p2".to_owned()]
            })
        );
        assert_eq!(
            purge(r#"{"collection": "products", "soft": true}"#).target(),
            Ok(Target::Collection("products"))
        );
        assert_eq!(
            purge(r#"{"tag": "coffee"}"#).target(),
            Ok(Target::Tag {
                tag: "coffee",
                collection: None
            })
        );
        assert_eq!(purge("{}").target(), Err(PurgeShapeError::NoScope));
        assert_eq!(
            purge(r#"{"ids": ["p1"]}"#).target(),
            Err(PurgeShapeError::IdsWithoutCollection)
        );
        assert_eq!(
            purge(r#"{"collection": "c", "ids": ["p1"], "tag": "t"}"#).target(),
            Err(PurgeShapeError::IdsAndTag)
        );
        assert_eq!(
            purge(r#"{"collection": "c", "ids": []}"#).target(),
            Err(PurgeShapeError::NoIds)
        );
        assert_eq!(purge(r#"{"tag": ""}"#).target(), Err(PurgeShapeError::EmptyTag));
        assert!(
            serde_json::from_str::<Purge>(r#"{"tags": "x"}"#).is_err(),
            "unknown member"
        );
    }

    #[test]
    fn a_message_round_trips_and_is_not_an_item_change() {
        let message = PurgeMessage::new(purge(r#"{"tag": "coffee", "soft": true}"#), "edge-1");
        assert_eq!(message.id.len(), 16);
        let json = message.encode();
        assert!(
            json.starts_with(r#"{"purge":{"tag":"coffee","soft":true},"id":""#),
            "{json}"
        );
        assert_eq!(PurgeMessage::decode(&json).unwrap(), message);
        let hard = PurgeMessage::new(purge(r#"{"collection": "c"}"#), "n");
        assert!(!hard.encode().contains("soft"), "soft is left out when false");
        assert!(PurgeMessage::decode(r#"{"c": "products", "i": "p1", "v": 3}"#).is_err());
        assert_ne!(PurgeMessage::new(hard.purge.clone(), "n").id, hard.id);
    }
}
