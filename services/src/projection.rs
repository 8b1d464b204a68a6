//! Field projection (`?fields=name,description`): a read that answers only some of a
//! document's fields, served by the classes of those fields alone.
//!
//! The cache keeps whole documents, one entry per item; a projection is cut from
//! whatever the read path serves. Only the projected fields' freshness classes decide
//! the tiers: a product read without its strict `stock` never reads the primary for
//! it, and is served from the cache or a replica while the primary is down. The
//! session's need is per item, not per field, so a projection never asks less of a
//! source than a whole read would (docs/decisions/0006).

use crate::cache::document_json;
use crate::plan::{Classes, CollectionPlan};
use bytes::Bytes;
use edgecache_actors::Doc;

/// The fields a read answers, and the classes that decide how it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// Declared fields, each once, in the collection's (alphabetical) order.
    fields: Vec<String>,
    classes: Classes,
}

/// Why a list of fields is no projection of a collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// A name the collection does not declare (422 `unknown-projection-field`).
    #[error("the collection has no field `{0}` to project")]
    UnknownField(String),
    /// The list names nothing (400).
    #[error("`fields` names no field: leave it out to read the whole document")]
    Empty,
}

impl Projection {
    /// The projection of `plan` on `names`. A name given twice counts once; `id` is
    /// always answered, and may be named; anything else the collection does not
    /// declare is refused.
    pub fn new<'a>(
        plan: &CollectionPlan,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ProjectionError> {
        let mut fields: Vec<String> = Vec::new();
        let mut named = false;
        for name in names {
            named = true;
            if name == "id" {
                continue;
            }
            if !plan.schema.fields.contains_key(name) {
                return Err(ProjectionError::UnknownField(name.to_owned()));
            }
            fields.push(name.to_owned());
        }
        if !named {
            return Err(ProjectionError::Empty);
        }
        fields.sort_unstable();
        fields.dedup();
        let classes = Classes::of(fields.iter().map(|f| plan.class_of(f)));
        Ok(Self { fields, classes })
    }

    /// The projected fields (without `id`).
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    pub fn contains(&self, field: &str) -> bool {
        self.fields.binary_search_by(|f| f.as_str().cmp(field)).is_ok()
    }

    /// The classes of the projected fields: they alone decide the tiers.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// Whether the projection names a strict field (then the primary is read).
    pub fn reads_strict(&self) -> bool {
        self.classes.has_strict()
    }

    /// The projected fields joined by commas, as `Cache-Status` and `explain` name
    /// the projection.
    pub fn describe(&self) -> String {
        self.fields.join(",")
    }

    /// `{"id": id, …the projected fields the document has}`; empty for an absent one.
    pub fn cut(&self, id: &str, doc: &Doc) -> Bytes {
        match &doc.fields {
            Some(fields) => Bytes::from(document_json(
                id,
                fields.iter().filter(|(name, _)| self.contains(name)),
            )),
            None => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use edgecache_actors::{Position, Version};
    use edgecache_config::Freshness;
    use serde_json::json;

    use super::*;

    fn products() -> CollectionPlan {
        let settings = edgecache_config::load(&edgecache_config::Sources {
            skip_env: true,
            dir: Some("/nonexistent".into()),
            ..Default::default()
        })
        .unwrap();
        CollectionPlan::new("products", &settings.collections["products"])
    }

    #[test]
    fn only_the_projected_fields_decide_the_classes() {
        let plan = products();
        let page = Projection::new(&plan, ["name", "description"]).unwrap();
        assert!(!page.reads_strict(), "no stock: no primary read");
        // Both relaxed (ttl 60 s): a 20 s old copy is fresh, which the whole
        // document (price bounded to 5 s) is not.
        let plain = Freshness::Strict;
        let age = Duration::from_secs(20);
        assert_eq!(
            page.classes().verdict(age, true, true, plain),
            crate::freshness::Verdict::Fresh
        );
        assert_eq!(
            plan.verdict(age, true, true, plain),
            crate::freshness::Verdict::Expired
        );
        assert_eq!(
            page.classes().max_staleness(true, plain).fresh,
            Duration::from_secs(60)
        );
        let with_stock = Projection::new(&plan, ["stock", "name"]).unwrap();
        assert!(with_stock.reads_strict());
    }

    #[test]
    fn names_are_checked_deduplicated_and_ordered() {
        let plan = products();
        let p = Projection::new(&plan, ["price", "name", "price", "id"]).unwrap();
        assert_eq!(p.fields(), ["name", "price"]);
        assert_eq!(p.describe(), "name,price");
        assert_eq!(
            Projection::new(&plan, ["name", "colour"]),
            Err(ProjectionError::UnknownField("colour".into()))
        );
        assert_eq!(Projection::new(&plan, []), Err(ProjectionError::Empty));
        let only_id = Projection::new(&plan, ["id"]).unwrap();
        assert!(only_id.fields().is_empty());
    }

    #[test]
    fn a_projection_is_cut_from_the_whole_document() {
        let plan = products();
        let p = Projection::new(&plan, ["name", "tags"]).unwrap();
        let fields = json!({"name": "cup", "stock": 3, "tags": ["a"], "price": 1.5});
        let doc = Doc {
            version: Version(2),
            position: Position(9),
            fields: Some(Arc::new(fields.as_object().unwrap().clone())),
        };
        assert_eq!(
            &p.cut("p1", &doc)[..],
            br#"{"id":"p1","name":"cup","tags":["a"]}"#
        );
        let absent = Doc { fields: None, ..doc };
        assert!(p.cut("p1", &absent).is_empty());
    }
}
