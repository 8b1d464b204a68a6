//! The data model as the read and write paths use it: per collection, its fields
//! grouped by how they are served, and validation of what clients send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::Fields;
use edgecache_config::{Collection, Field, FieldType, Freshness, Unrepresentable};
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
    /// The classes that decide how the whole document is served: its fields' and the
    /// collection default.
    whole: Classes,
    /// Every field's class, by name (for `?explain=true`).
    classes: HashMap<String, Freshness>,
}

/// The freshness classes that decide how a group of fields is served — a whole
/// document, or the fields a projection (`?fields=`) names: whether one of them is
/// strict (read from the primary on every read), and the distinct classes of the
/// others.
#[derive(Debug, Clone, PartialEq)]
pub struct Classes {
    has_strict: bool,
    relaxed: Vec<Freshness>,
}

impl Classes {
    /// The classes of `classes` (strict ones set `has_strict`, the others are kept once
    /// each).
    pub fn of(classes: impl IntoIterator<Item = Freshness>) -> Self {
        let mut this = Self {
            has_strict: false,
            relaxed: Vec::new(),
        };
        for class in classes {
            match class {
                Freshness::Strict => this.has_strict = true,
                other if !this.relaxed.contains(&other) => this.relaxed.push(other),
                _ => {}
            }
        }
        this
    }

    /// Whether one of the fields is strict.
    pub fn has_strict(&self) -> bool {
        self.has_strict
    }

    /// The verdict for the non-strict fields of an entry of this age: the worst of
    /// their classes. With `strict_fields` off, strict fields are served like a plain
    /// TTL cache (`plain`), so they join this group.
    pub fn verdict(&self, age: Duration, swr: bool, strict_fields: bool, plain: Freshness) -> Verdict {
        let mut verdict = Verdict::Fresh;
        for class in &self.relaxed {
            verdict = verdict.min(freshness::judge(*class, age, swr));
        }
        if !strict_fields && self.has_strict {
            verdict = verdict.min(freshness::judge(plain, age, swr));
        }
        verdict
    }

    /// How far behind the primary an origin answer for the non-strict fields may be:
    /// the tightest of their classes. With `strict_fields` off, strict fields join
    /// them as `plain`.
    pub fn max_staleness(&self, strict_fields: bool, plain: Freshness) -> MaxStaleness {
        let plain = (!strict_fields && self.has_strict).then_some(plain);
        self.relaxed
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
        self.relaxed.iter().all(|c| freshness::usable_on_error(*c, age))
    }
}

impl CollectionPlan {
    pub fn new(name: &str, schema: &Collection) -> Self {
        let mut strict_fields = Vec::new();
        let mut classes = HashMap::new();
        for (field_name, field) in &schema.fields {
            let class = schema.freshness_of(field);
            classes.insert(field_name.clone(), class);
            if class == Freshness::Strict {
                strict_fields.push(field_name.clone());
            }
        }
        // The collection default counts for the document as a whole; a strict default
        // makes no field strict by itself.
        let whole = Classes::of(
            std::iter::once(schema.freshness)
                .filter(|c| *c != Freshness::Strict)
                .chain(classes.values().copied()),
        );
        Self {
            name: name.into(),
            schema: schema.clone(),
            strict_fields,
            whole,
            classes,
        }
    }

    /// The classes that decide how the whole document is served.
    pub fn classes(&self) -> &Classes {
        &self.whole
    }

    pub fn has_strict(&self) -> bool {
        self.whole.has_strict()
    }

    pub fn class_of(&self, field: &str) -> Freshness {
        self.classes.get(field).copied().unwrap_or(self.schema.freshness)
    }

    /// [`Classes::verdict`] of the whole document.
    pub fn verdict(&self, age: Duration, swr: bool, strict_fields: bool, plain: Freshness) -> Verdict {
        self.whole.verdict(age, swr, strict_fields, plain)
    }

    /// [`Classes::max_staleness`] of the whole document.
    pub fn max_staleness(&self, strict_fields: bool, plain: Freshness) -> MaxStaleness {
        self.whole.max_staleness(strict_fields, plain)
    }

    /// [`Classes::usable_on_error`] of the whole document.
    pub fn usable_on_error(&self, age: Duration) -> bool {
        self.whole.usable_on_error(age)
    }

    /// The class a cached absence (a 404) is kept under: the collection's own. A
    /// strict collection keeps none (every read of an absent item asks the primary),
    /// unless strict fields are off, when it is a plain TTL.
    fn absence_class(&self, strict_fields: bool, plain: Freshness) -> Freshness {
        match self.schema.freshness {
            Freshness::Strict if !strict_fields => plain,
            class => class,
        }
    }

    /// The verdict for a cached absence of this age ([`CollectionPlan::absence_class`]).
    pub fn absence_verdict(
        &self,
        age: Duration,
        swr: bool,
        strict_fields: bool,
        plain: Freshness,
    ) -> Verdict {
        freshness::judge(self.absence_class(strict_fields, plain), age, swr)
    }

    /// How long a cached absence is fresh.
    pub fn absence_fresh_for(&self, strict_fields: bool, plain: Freshness) -> Duration {
        freshness::fresh_for(self.absence_class(strict_fields, plain))
    }

    /// Whether a cached absence of this age may be served because the origin failed.
    pub fn absence_usable_on_error(&self, age: Duration, strict_fields: bool, plain: Freshness) -> bool {
        freshness::usable_on_error(self.absence_class(strict_fields, plain), age)
    }

    fn field(&self, name: &str) -> Result<&Field, InvalidInput> {
        self.schema
            .fields
            .get(name)
            .ok_or_else(|| InvalidInput::UnknownField(name.to_owned()))
    }

    /// Checks one field's value: known field, right type, a value every origin
    /// stores exactly, within bounds — and puts it into that canonical form
    /// ([`FieldType::canonicalize`]: `3` in a number field becomes `3.0`). `null` is
    /// accepted (a merge patch removes the field; a PUT stores no value).
    pub fn check_value(&self, name: &str, value: &mut Value) -> Result<(), InvalidInput> {
        let field = self.field(name)?;
        if !field.kind.admits(value) {
            return Err(InvalidInput::WrongType {
                field: name.to_owned(),
                expected: field.kind,
            });
        }
        field
            .kind
            .canonicalize(value)
            .map_err(|reason| InvalidInput::Unrepresentable {
                field: name.to_owned(),
                reason,
            })?;
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

    /// Validates a whole document (PUT) or a merge patch (PATCH), and returns it in
    /// canonical form: every top-level key a declared field, every value admitted
    /// ([`CollectionPlan::check_value`]). An `id` member must equal `id`, and is
    /// removed (the id is the path's); so are a document's `null` members (it stores
    /// no value for them), while a patch keeps them (they remove the field).
    pub fn check_document(&self, id: &str, mut fields: Fields, body: Body) -> Result<Fields, InvalidInput> {
        if let Some(body_id) = fields.remove("id") {
            if body_id.as_str() != Some(id) {
                return Err(InvalidInput::IdMismatch);
            }
        }
        for (name, value) in &mut fields {
            self.check_value(name, value)?;
        }
        if body == Body::Document {
            fields.retain(|_, value| !value.is_null());
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

/// What a write's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The whole document (PUT).
    Document,
    /// A JSON merge patch (RFC 7396) of it (PATCH).
    MergePatch,
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
    /// A value of the right type that not every origin could store exactly (an
    /// integer outside i64, U+0000 in a string, …): refused rather than altered.
    #[error("field `{field}` cannot be stored exactly: {reason}")]
    Unrepresentable {
        field: String,
        #[source]
        reason: Unrepresentable,
    },
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
    use edgecache_config::{Reason, MAX_JSON_DEPTH};
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
        assert!(plan
            .check_document("p1", ok.as_object().unwrap().clone(), Body::Document)
            .is_ok());
        let unknown = json!({"colour": "red"});
        assert!(matches!(
            plan.check_document("p1", unknown.as_object().unwrap().clone(), Body::Document),
            Err(InvalidInput::UnknownField(f)) if f == "colour"
        ));
        let wrong = json!({"stock": "many"});
        assert!(matches!(
            plan.check_document("p1", wrong.as_object().unwrap().clone(), Body::Document),
            Err(InvalidInput::WrongType { .. })
        ));
        let negative = json!({"stock": -1});
        assert!(matches!(
            plan.check_document("p1", negative.as_object().unwrap().clone(), Body::Document),
            Err(InvalidInput::OutOfRange { .. })
        ));
        let other_id = json!({"id": "p2"});
        assert!(matches!(
            plan.check_document("p1", other_id.as_object().unwrap().clone(), Body::Document),
            Err(InvalidInput::IdMismatch)
        ));
    }

    /// `body` checked as a document (PUT) of `products`.
    fn check(plan: &CollectionPlan, body: Value) -> Result<Fields, InvalidInput> {
        plan.check_document("p1", object(body), Body::Document)
    }

    fn object(body: Value) -> Fields {
        match body {
            Value::Object(fields) => fields,
            other => panic!("not an object: {other}"),
        }
    }

    /// The reason and JSON pointer of an unrepresentable `field`, or panics.
    fn unrepresentable(result: Result<Fields, InvalidInput>, field: &str) -> (Reason, String) {
        match result {
            Err(InvalidInput::Unrepresentable { field: f, reason }) if f == field => {
                (reason.reason, reason.pointer)
            }
            other => panic!("expected `{field}` to be unrepresentable, got {other:?}"),
        }
    }

    #[test]
    fn integer_fields_hold_i64_exactly() {
        let plan = products();
        let max = check(&plan, json!({"stock": i64::MAX})).unwrap();
        assert_eq!(max["stock"].as_i64(), Some(i64::MAX));
        for past in [i64::MAX as u64 + 1, u64::MAX] {
            let (reason, pointer) = unrepresentable(check(&plan, json!({"stock": past})), "stock");
            assert_eq!((reason, pointer.as_str()), (Reason::IntegerOutOfRange, ""));
        }
        // A float is of the wrong type, however integral (serde_json reads an integer
        // literal below i64::MIN as one).
        for float in [json!(1.5), json!(3.0), json!(-9.3e18)] {
            assert!(matches!(
                check(&plan, json!({"stock": float})),
                Err(InvalidInput::WrongType { .. })
            ));
        }
    }

    #[test]
    fn number_fields_hold_doubles_and_integers_become_theirs() {
        let plan = products();
        let three = check(&plan, json!({"price": 3})).unwrap();
        assert!(three["price"].is_f64());
        assert_eq!(three["price"].to_string(), "3.0");
        let two_53 = 1u64 << 53;
        let exact = check(&plan, json!({"price": two_53})).unwrap();
        assert_eq!(exact["price"].as_f64(), Some(two_53 as f64));
        let big = check(&plan, json!({"price": 10_000_000_000_000_000_000u64})).unwrap();
        assert_eq!(big["price"].as_f64(), Some(1e19));
        assert_eq!(
            unrepresentable(check(&plan, json!({"price": two_53 + 1})), "price").0,
            Reason::InexactDouble
        );
        // i64::MAX and u64::MAX round to 2^63 and 2^64: not the integer sent.
        for inexact in [json!(i64::MAX), json!(u64::MAX)] {
            let body = json!({"tags": null, "price": inexact});
            assert_eq!(
                unrepresentable(check(&plan, body), "price").0,
                Reason::InexactDouble
            );
        }
        let plan = CollectionPlan::new(
            "signed",
            &edgecache_config::Collection {
                freshness: Freshness::Strict,
                fields: [(
                    "x".to_owned(),
                    Field {
                        kind: FieldType::Number,
                        freshness: None,
                        min: None,
                        max: None,
                    },
                )]
                .into(),
                table: Default::default(),
                surrogate_keys: Vec::new(),
            },
        );
        let negative = -((two_53 + 1) as i64);
        assert_eq!(
            unrepresentable(
                plan.check_document("s", object(json!({"x": negative})), Body::Document),
                "x"
            )
            .0,
            Reason::InexactDouble
        );
        // Doubles keep every bit, the sign of zero too.
        for x in [-0.0, 1e308, f64::MAX, 5e-324, 1.0715660391465826e-75] {
            let checked = plan
                .check_document("s", object(json!({"x": x})), Body::Document)
                .unwrap();
            assert_eq!(checked["x"].as_f64().map(f64::to_bits), Some(x.to_bits()), "{x}");
        }
    }

    #[test]
    fn strings_hold_no_nul_anywhere() {
        let plan = products();
        let ok = check(
            &plan,
            json!({"name": "", "description": "😀 𝄞 ü", "tags": {"": "", "😀": ["𝄞"]}}),
        );
        assert!(ok.is_ok());
        let (reason, pointer) = unrepresentable(check(&plan, json!({"name": "a\u{0}b"})), "name");
        assert_eq!((reason, pointer.as_str()), (Reason::Nul, ""));
        let in_value = json!({"tags": {"a": [1, {"b/c~": "\u{0}"}]}});
        let (reason, pointer) = unrepresentable(check(&plan, in_value), "tags");
        assert_eq!((reason, pointer.as_str()), (Reason::Nul, "/a/1/b~1c~0"));
        let in_key = json!({"tags": {"ok": {"k\u{0}": 1}}});
        let error = check(&plan, in_key.clone()).unwrap_err().to_string();
        assert_eq!(
            error, "field `tags` cannot be stored exactly: the string holds U+0000 (at /ok/k\\0)",
            "the detail names the field and where, escaped"
        );
        let (reason, pointer) = unrepresentable(check(&plan, in_key), "tags");
        assert_eq!((reason, pointer.as_str()), (Reason::Nul, "/ok/k\u{0}"));
        // The same in a merge patch.
        let patch = plan.check_document("p1", object(json!({"tags": {"x": "\u{0}"}})), Body::MergePatch);
        assert_eq!(unrepresentable(patch, "tags").0, Reason::Nul);
    }

    #[test]
    fn json_fields_hold_i64_integers_and_no_negative_zero() {
        let plan = products();
        let past = json!({"tags": {"n": [i64::MAX as u64 + 1]}});
        let (reason, pointer) = unrepresentable(check(&plan, past), "tags");
        assert_eq!((reason, pointer.as_str()), (Reason::IntegerOutOfRange, "/n/0"));
        let edges = json!({"tags": [i64::MIN, i64::MAX, -0.0, 1e16, 1.0, 2, {"z": -0.0}]});
        let checked = check(&plan, edges).unwrap();
        assert_eq!(
            checked["tags"].to_string(),
            "[-9223372036854775808,9223372036854775807,0.0,1e+16,1.0,2,{\"z\":0.0}]"
        );
        assert!(checked["tags"][2].as_f64().is_some_and(|z| z.is_sign_positive()));
    }

    #[test]
    fn json_nesting_is_bounded() {
        let plan = products();
        let nest = |depth: usize| {
            let mut value = json!("core");
            for _ in 1..depth {
                value = json!([value]);
            }
            json!({"tags": value})
        };
        assert!(check(&plan, nest(MAX_JSON_DEPTH)).is_ok());
        assert_eq!(
            unrepresentable(check(&plan, nest(MAX_JSON_DEPTH + 1)), "tags").0,
            Reason::TooDeep
        );
        // serde_json refuses deeper bodies before the data model sees them.
        let body = format!("{}1{}", "[".repeat(MAX_JSON_DEPTH), "]".repeat(MAX_JSON_DEPTH));
        assert!(serde_json::from_str::<Value>(&body).is_err());
    }

    #[test]
    fn a_document_stores_no_nulls_and_a_patch_keeps_them() {
        let plan = products();
        let body = json!({"name": null, "stock": null, "tags": {"keep": null}, "price": 1});
        let document = plan
            .check_document("p1", object(body.clone()), Body::Document)
            .unwrap();
        assert_eq!(
            Value::Object(document),
            json!({"tags": {"keep": null}, "price": 1.0})
        );
        let patch = plan.check_document("p1", object(body), Body::MergePatch).unwrap();
        assert_eq!(
            Value::Object(patch),
            json!({"name": null, "stock": null, "tags": {"keep": null}, "price": 1.0})
        );
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
