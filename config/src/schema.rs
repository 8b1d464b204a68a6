//! The data model: collections of documents with typed fields, each field with a
//! freshness class.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

    /// Whether `value` is of this type.
    pub fn admits(self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, value) {
            (_, Value::Null) | (FieldType::Json, _) => true,
            (FieldType::String, Value::String(_)) => true,
            (FieldType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (FieldType::Number, Value::Number(_)) => true,
            (FieldType::Boolean, Value::Bool(_)) => true,
            _ => false,
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
