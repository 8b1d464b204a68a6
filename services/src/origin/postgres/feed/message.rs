//! edgecache's own feed messages: one decoder for the payload of a NOTIFY (the
//! `notify` feed) and of a logical decoding message with prefix [`PREFIX`] (the
//! `logical` feed, sent with `pg_logical_emit_message(false, 'edgecache', <json>)`),
//! so whatever a node publishes through the feed reaches every node's sink as the
//! same [`Change`] whichever feed carries it.

use edgecache_actors::Version;
use serde::Deserialize;

use crate::origin::Change;
use crate::purge::PurgeMessage;

/// The prefix of edgecache's logical decoding messages; others are not ours.
pub const PREFIX: &str = "edgecache";

/// `{"c": collection, "i": id, "v": version}`: the item was written at `v`.
#[derive(Deserialize)]
struct Item {
    c: String,
    i: String,
    v: u64,
}

/// The change a feed message announces: an item's `{"c","i","v"}`, or a purge
/// ([`PurgeMessage`]).
pub fn decode(payload: &str) -> Result<Change, serde_json::Error> {
    match serde_json::from_str::<Item>(payload) {
        Ok(item) => Ok(Change::Item {
            collection: item.c,
            id: item.i,
            version: Version(item.v),
        }),
        Err(not_an_item) => PurgeMessage::decode(payload)
            .map(Change::Purge)
            .map_err(|_| not_an_item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_message_becomes_an_item_change() {
        let change = decode(r#"{"c":"products","i":"p1","v":7}"#).unwrap();
        assert!(matches!(
            change,
            Change::Item { ref collection, ref id, version: Version(7) } if collection == "products" && id == "p1"
        ));
        assert!(decode("{}").is_err());
        assert!(decode("not json").is_err());
    }
}
