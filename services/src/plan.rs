//! The data model as the read and write paths use it: per collection, its fields
//! grouped by how they are served, and validation of what clients send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::Fields;
use edgecache_config::{Collection, Field, FieldType, Freshness};
use serde_json::Value;

use crate::freshness::{self, Verdict};
use crate::origin::MaxStaleness;

/// A collection, prepared for serving.
#[derive(Debug)]
pub struct CollectionPlan {
    pub name: Arc<str>,
    pub schema: Collection,
    /// Fields of the strict class (read from the primary on every read).
    pub strict_fields: Vec<String>,
    /// The distinct classes of the other fields (and the collection default).
    relaxed_classes: Vec<Freshness>,
    /// Every field's class, by name (for `?explain=true`).
    classes: HashMap<String, Freshness>,
}

impl CollectionPlan {
    pub fn new(name: &str, schema: &Collection) -> Self {
        let mut strict_fields = Vec::new();
        let mut relaxed_classes = vec![schema.freshness];
        let mut classes = HashMap::new();
        for (field_name, field) in &schema.fields {
            let class = schema.freshness_of(field);
            classes.insert(field_name.clone(), class);
            match class {
                Freshness::Strict => strict_fields.push(field_name.clone()),
                other if !relaxed_classes.contains(&other) => relaxed_classes.push(other),
                _ => {}
            }
        }
        relaxed_classes.retain(|c| *c != Freshness::Strict);
        Self {
            name: name.into(),
            schema: schema.clone(),
            strict_fields,
            relaxed_classes,
            classes,
        }
    }

    pub fn has_strict(&self) -> bool {
        !self.strict_fields.is_empty()
    }

    pub fn class_of(&self, field: &str) -> Freshness {
        self.classes.get(field).copied().unwrap_or(self.schema.freshness)
    }

    /// The verdict for the non-strict fields of an entry of this age: the worst of
    /// their classes. With `strict_fields` off, strict fields are served like a plain
    /// TTL cache (`plain`), so they join this group.
    pub fn verdict(&self, age: Duration, swr: bool, strict_fields: bool, plain: Freshness) -> Verdict {
        let mut verdict = Verdict::Fresh;
        for class in &self.relaxed_classes {
            verdict = verdict.min(freshness::judge(*class, age, swr));
        }
        if !strict_fields && self.has_strict() {
            verdict = verdict.min(freshness::judge(plain, age, swr));
        }
        verdict
    }

    /// How far behind the primary an origin answer for the non-strict fields may be:
    /// the tightest of their classes. With `strict_fields` off, strict fields join
    /// them as `plain`.
    pub fn max_staleness(&self, strict_fields: bool, plain: Freshness) -> MaxStaleness {
        let plain = (!strict_fields && self.has_strict()).then_some(plain);
        self.relaxed_classes
            .iter()
            .copied()
            .chain(plain)
            .fold(MaxStaleness::ANY, |bound, class| MaxStaleness {
                fresh: bound.fresh.min(freshness::fresh_for(class)),
                on_error: bound.on_error.min(freshness::on_error_for(class)),
            })
    }

    /// Whether the non-strict fields may be served at this age when the origin fails.
    pub fn usable_on_error(&self, age: Duration) -> bool {
        self.relaxed_classes
            .iter()
            .all(|c| freshness::usable_on_error(*c, age))
    }

    fn field(&self, name: &str) -> Result<&Field, InvalidInput> {
        self.schema
            .fields
            .get(name)
            .ok_or_else(|| InvalidInput::UnknownField(name.to_owned()))
    }

    /// Checks one field's value: known field, right type, within bounds. `null` is
    /// accepted (a merge patch removes the field; a PUT stores no value).
    pub fn check_value(&self, name: &str, value: &Value) -> Result<(), InvalidInput> {
        let field = self.field(name)?;
        if !field.kind.admits(value) {
            return Err(InvalidInput::WrongType {
                field: name.to_owned(),
                expected: field.kind,
            });
        }
        if let Some(n) = value.as_f64() {
            if field.min.is_some_and(|min| n < min) || field.max.is_some_and(|max| n > max) {
                return Err(InvalidInput::OutOfRange {
                    field: name.to_owned(),
                    min: field.min,
                    max: field.max,
                });
            }
        }
        Ok(())
    }

    /// Validates a whole document (PUT) or a merge patch (PATCH): every top-level key
    /// a declared field, every value admitted. An `id` member must equal `id`, and is
    /// removed (the id is the path's).
    pub fn check_document(&self, id: &str, mut fields: Fields) -> Result<Fields, InvalidInput> {
        if let Some(body_id) = fields.remove("id") {
            if body_id.as_str() != Some(id) {
                return Err(InvalidInput::IdMismatch);
            }
        }
        for (name, value) in &fields {
            self.check_value(name, value)?;
        }
        Ok(fields)
    }

    /// The bounds of an integer field for an increment: the field's own, narrowed by
    /// what the request asks.
    pub fn increment_bounds(
        &self,
        name: &str,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Result<(Option<i64>, Option<i64>), InvalidInput> {
        let field = self.field(name)?;
        if field.kind != FieldType::Integer {
            return Err(InvalidInput::WrongType {
                field: name.to_owned(),
                expected: FieldType::Integer,
            });
        }
        let schema_min = field.min.map(|m| m.ceil() as i64);
        let schema_max = field.max.map(|m| m.floor() as i64);
        let min = match (schema_min, min) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let max = match (schema_max, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((min, max))
    }
}

/// Client input the data model rejects (422 unless noted).
#[derive(Debug, thiserror::Error)]
pub enum InvalidInput {
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("field `{field}` must be of type {}", expected.as_str())]
    WrongType { field: String, expected: FieldType },
    #[error("field `{field}` is out of range (min {min:?}, max {max:?})")]
    OutOfRange {
        field: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    #[error("the body's `id` differs from the id in the path")]
    IdMismatch,
}

/// Every collection of the node, by name.
#[derive(Debug, Default)]
pub struct Collections {
    plans: HashMap<Arc<str>, Arc<CollectionPlan>>,
}

impl Collections {
    pub fn new<'a>(schemas: impl IntoIterator<Item = (&'a String, &'a Collection)>) -> Self {
        let plans = schemas
            .into_iter()
            .map(|(name, schema)| {
                let plan = CollectionPlan::new(name, schema);
                (plan.name.clone(), Arc::new(plan))
            })
            .collect();
        Self { plans }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CollectionPlan>> {
        self.plans.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn documents_are_checked_field_by_field() {
        let plan = products();
        let ok = json!({"name": "cup", "stock": 3, "price": 1.5, "tags": ["a"]});
        assert!(plan.check_document("p1", ok.as_object().unwrap().clone()).is_ok());
        let unknown = json!({"colour": "red"});
        assert!(matches!(
            plan.check_document("p1", unknown.as_object().unwrap().clone()),
            Err(InvalidInput::UnknownField(f)) if f == "colour"
        ));
        let wrong = json!({"stock": "many"});
        assert!(matches!(
            plan.check_document("p1", wrong.as_object().unwrap().clone()),
            Err(InvalidInput::WrongType { .. })
        ));
        let negative = json!({"stock": -1});
        assert!(matches!(
            plan.check_document("p1", negative.as_object().unwrap().clone()),
            Err(InvalidInput::OutOfRange { .. })
        ));
        let other_id = json!({"id": "p2"});
        assert!(matches!(
            plan.check_document("p1", other_id.as_object().unwrap().clone()),
            Err(InvalidInput::IdMismatch)
        ));
    }

    #[test]
    fn an_origin_answer_is_bounded_by_the_tightest_non_strict_class() {
        // products: relaxed (ttl 60 s, stale-if-error 10 min), price bounded to 5 s.
        let plan = products();
        let plain = Freshness::Relaxed {
            ttl: Duration::from_secs(2),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        let bound = plan.max_staleness(true, plain);
        assert_eq!(bound.fresh, Duration::from_secs(5));
        assert_eq!(bound.on_error, Duration::from_secs(5));
        let plain_stock = plan.max_staleness(false, plain);
        assert_eq!(
            plain_stock.fresh,
            Duration::from_secs(2),
            "strict fields as plain"
        );
    }

    #[test]
    fn strict_fields_are_split_out() {
        let plan = products();
        assert_eq!(plan.strict_fields, vec!["stock".to_owned()]);
        assert_eq!(
            plan.increment_bounds("stock", Some(-5), None).unwrap(),
            (Some(0), None)
        );
        assert!(plan.increment_bounds("name", None, None).is_err());
    }
}
