//! The data model: collections of documents with typed fields, each field with a
//! freshness class.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// One collection of documents.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// The freshness class of fields that name none.
    pub freshness: Freshness,
    /// The fields a document may have; any other is rejected (422).
    pub fields: BTreeMap<String, Field>,
    /// Where the collection lives in a PostgreSQL origin.
    #[serde(default)]
    pub table: Table,
    /// Fields whose values are an item's tags (surrogate keys, as Fastly's
    /// `Surrogate-Key` and Varnish's xkey): a string, or an array of strings. `POST
    /// /admin/purge {"tag": …}` drops (or marks stale) every cached item tagged so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub surrogate_keys: Vec<String>,
}

/// The table of a collection in a PostgreSQL origin, so an existing schema can be
/// served. `edgecache migrate` creates it when absent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Table {
    /// The table's name; the collection's name when empty.
    pub name: String,
    /// The primary-key column holding the item id (text).
    pub key: String,
    /// The bigint column holding the item's version.
    pub version: String,
    /// The boolean column marking a deleted item (kept, so versions stay monotonic).
    pub tombstone: String,
    /// Field → column, for fields whose column has another name.
    pub columns: BTreeMap<String, String>,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            name: String::new(),
            key: "id".into(),
            version: "version".into(),
            tombstone: "deleted".into(),
            columns: BTreeMap::new(),
        }
    }
}

impl Collection {
    /// The freshness class in force for `field`.
    pub fn freshness_of(&self, field: &Field) -> Freshness {
        field.freshness.unwrap_or(self.freshness)
    }
}

/// One field of a collection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Overrides the collection's freshness class.
    #[serde(default)]
    pub freshness: Option<Freshness>,
    /// Lower bound of a numeric field, enforced on every write and increment.
    #[serde(default)]
    pub min: Option<f64>,
    /// Upper bound of a numeric field, enforced on every write and increment.
    #[serde(default)]
    pub max: Option<f64>,
}

/// The JSON type a field's values must have (`null` is accepted for any field and
/// clears it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    /// Any JSON value.
    Json,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Json => "json",
        }
    }

    /// Whether `value` is of this type. Whether every origin can store it exactly is
    /// the next question ([`FieldType::canonicalize`]).
    pub fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) | (FieldType::Json, _) => true,
            (FieldType::String, Value::String(_)) => true,
            (FieldType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (FieldType::Number, Value::Number(_)) => true,
            (FieldType::Boolean, Value::Bool(_)) => true,
            _ => false,
        }
    }

    /// Puts a value this type [admits](FieldType::admits) into the one form every
    /// origin stores and gives back exactly, or says why there is none. The value
    /// domain, by type:
    ///
    /// * `string`: any string without U+0000 (PostgreSQL `text` cannot hold it).
    /// * `integer`: an integer within i64 (PostgreSQL `bigint`).
    /// * `number`: a finite double, always written as one: an integer becomes its
    ///   double (`3` is `3.0`), unless the double is not exactly that integer
    ///   (2^53 + 1). PostgreSQL `double precision` keeps doubles, not integers.
    /// * `boolean`: either.
    /// * `json`: any JSON value nested at most [`MAX_JSON_DEPTH`] deep whose strings
    ///   and keys hold no U+0000 (PostgreSQL `jsonb` cannot hold it) and whose
    ///   integers are within i64, the one integer range of the API; a negative zero
    ///   becomes `0.0` (`jsonb` keeps numbers as `numeric`, which has no negative
    ///   zero).
    /// * `null` (any type): kept (it clears the field).
    ///
    /// Doubles outside `json` fields keep their sign and every bit. JSON text has no
    /// non-finite numbers, and serde_json refuses a literal past the double range, so
    /// a parsed value is always finite; a non-finite one is refused all the same. An
    /// integer literal past u64 reaches this already rounded to a double by serde_json
    /// (built without `arbitrary_precision`), and is taken as that double.
    ///
    /// Costs one pass over the value, allocating only to rewrite a number or to name
    /// where a refused value sits.
    pub fn canonicalize(self, value: &mut Value) -> Result<(), Unrepresentable> {
        match (self, &mut *value) {
            (FieldType::String, Value::String(s)) => no_nul(s),
            (FieldType::Integer, Value::Number(n)) if n.is_u64() && !n.is_i64() => {
                Err(Reason::IntegerOutOfRange.here())
            }
            (FieldType::Number, Value::Number(n)) => {
                let double = as_exact_double(n)?;
                if !n.is_f64() {
                    *n = double;
                }
                Ok(())
            }
            (FieldType::Json, json) => canonical_json(json, 1),
            _ => Ok(()),
        }
    }
}

/// The deepest nesting a `json` field's value may have (the value itself is depth 1,
/// a member of it 2, …). Request bodies never reach it: serde_json refuses to parse
/// 128 nested arrays and objects (its default recursion limit, which the API relies
/// on to bound a body's depth), so a body holds at most 127, the body's own object
/// among them. The bound is for values built
/// otherwise (the seed), and keeps the recursion of [`FieldType::canonicalize`]
/// shallow whatever the caller.
pub const MAX_JSON_DEPTH: usize = 128;

/// A value no origin can store exactly, and where in the field's value it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}", if pointer.is_empty() { String::new() } else { format!(" (at {})", pointer.escape_debug()) })]
pub struct Unrepresentable {
    pub reason: Reason,
    /// A JSON pointer (RFC 6901) into the field's value; empty for the value itself.
    pub pointer: String,
}

/// Why a value is outside the domain of [`FieldType::canonicalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("the integer is outside the 64-bit signed range")]
    IntegerOutOfRange,
    #[error("the integer has no exact double (a number field holds doubles)")]
    InexactDouble,
    #[error("the number is not finite")]
    NonFinite,
    #[error("the string holds U+0000")]
    Nul,
    #[error("the value is nested more than {MAX_JSON_DEPTH} deep")]
    TooDeep,
}

impl Reason {
    fn here(self) -> Unrepresentable {
        Unrepresentable {
            reason: self,
            pointer: String::new(),
        }
    }
}

impl Unrepresentable {
    /// The same problem, one level further out: under `token` (a key or an index).
    fn under(mut self, token: &str) -> Self {
        let token = token.replace('~', "~0").replace('/', "~1");
        self.pointer = format!("/{token}{}", self.pointer);
        self
    }
}

fn no_nul(s: &str) -> Result<(), Unrepresentable> {
    if s.contains('\0') {
        Err(Reason::Nul.here())
    } else {
        Ok(())
    }
}

/// The double that is exactly `n`, if there is one.
fn as_exact_double(n: &Number) -> Result<Number, Unrepresentable> {
    let double = match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => exact(i128::from(i))?,
        (None, Some(u), _) => exact(i128::from(u))?,
        (None, None, Some(f)) => f,
        (None, None, None) => return Err(Reason::NonFinite.here()),
    };
    Number::from_f64(double).ok_or(Reason::NonFinite.here())
}

/// `integer` as a double, if the double is exactly it. Compared in i128, where even
/// 2^63 and 2^64 (what i64::MAX and u64::MAX round to) are exact and distinct.
fn exact(integer: i128) -> Result<f64, Unrepresentable> {
    let double = integer as f64;
    if double as i128 == integer {
        Ok(double)
    } else {
        Err(Reason::InexactDouble.here())
    }
}

/// [`FieldType::canonicalize`] for a `json` value at `depth` (the field's value is 1).
fn canonical_json(value: &mut Value, depth: usize) -> Result<(), Unrepresentable> {
    if depth > MAX_JSON_DEPTH {
        return Err(Reason::TooDeep.here());
    }
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::String(s) => no_nul(s),
        Value::Number(n) => {
            if n.is_u64() && !n.is_i64() {
                return Err(Reason::IntegerOutOfRange.here());
            }
            match n.as_f64() {
                Some(f) if n.is_f64() && !f.is_finite() => Err(Reason::NonFinite.here()),
                Some(f) if n.is_f64() && f == 0.0 && f.is_sign_negative() => {
                    *n = Number::from_f64(0.0).ok_or(Reason::NonFinite.here())?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                canonical_json(item, depth + 1).map_err(|e| e.under(&i.to_string()))?;
            }
            Ok(())
        }
        Value::Object(members) => {
            for (key, member) in members.iter_mut() {
                no_nul(key).map_err(|e| e.under(key))?;
                canonical_json(member, depth + 1).map_err(|e| e.under(key))?;
            }
            Ok(())
        }
    }
}

/// How fresh a field must be when read, and from which tier it may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "class", rename_all = "snake_case", deny_unknown_fields)]
pub enum Freshness {
    /// From the primary on every read (stock counts, balances).
    Strict,
    /// From the cache or a replica no older than `max_staleness` (prices).
    Bounded {
        #[serde(with = "humantime_serde")]
        max_staleness: Duration,
    },
    /// From the cache within `ttl`; up to `stale_while_revalidate` past it, stale while
    /// one background refresh runs; up to `stale_if_error` past it, stale when the
    /// origin fails (descriptions).
    Relaxed {
        #[serde(with = "humantime_serde")]
        ttl: Duration,
        #[serde(with = "humantime_serde")]
        stale_while_revalidate: Duration,
        #[serde(with = "humantime_serde")]
        stale_if_error: Duration,
    },
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Strict => "strict",
            Freshness::Bounded { .. } => "bounded",
            Freshness::Relaxed { .. } => "relaxed",
        }
    }
}
