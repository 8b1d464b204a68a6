//! A collection's table: the SQL the origin runs on it and the conversion between
//! rows and documents. Identifiers come from validated configuration and are quoted.

use std::sync::Arc;

use edgecache_actors::{Fields, Version};
use edgecache_config::{Collection, FieldType};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::jsonb::Jsonb;
use crate::origin::OriginError;

/// One field's column.
#[derive(Debug, Clone)]
struct Column {
    field: String,
    name: String,
    kind: FieldType,
}

/// How a collection is stored.
#[derive(Debug)]
pub struct TableDef {
    pub collection: Arc<str>,
    table: String,
    key: String,
    version: String,
    tombstone: String,
    columns: Vec<Column>,
    /// `SELECT version, tombstone, columns… FROM table WHERE key = $1`
    pub select: String,
    /// The same with `FOR UPDATE`.
    pub lock: String,
}

/// A row as read: its version and fields (`None`: absent or a tombstone).
pub struct Stored {
    pub version: Version,
    pub fields: Option<Fields>,
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

impl TableDef {
    pub fn new(name: &str, collection: &Collection) -> Self {
        let t = &collection.table;
        let table = quote(if t.name.is_empty() { name } else { &t.name });
        let columns: Vec<Column> = collection
            .fields
            .iter()
            .map(|(field, f)| Column {
                field: field.clone(),
                name: quote(t.columns.get(field).map_or(field.as_str(), String::as_str)),
                kind: f.kind,
            })
            .collect();
        let (key, version, tombstone) = (quote(&t.key), quote(&t.version), quote(&t.tombstone));
        let list: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let projection = format!("{version}, {tombstone}, {}", list.join(", "));
        let select = format!("SELECT {projection} FROM {table} WHERE {key} = $1");
        let lock = format!("{select} FOR UPDATE");
        Self {
            collection: name.into(),
            table,
            key,
            version,
            tombstone,
            columns,
            select,
            lock,
        }
    }

    /// Reads a row of [`TableDef::select`], its columns starting at `offset`.
    pub fn stored(&self, row: &Row, offset: usize) -> Result<Stored, OriginError> {
        let bad = |e| OriginError::internal(format!("unreadable row in {}", self.table), e);
        let version: i64 = row.try_get(offset).map_err(bad)?;
        let deleted: bool = row.try_get(offset + 1).map_err(bad)?;
        let version = Version(version.max(0) as u64);
        if deleted {
            return Ok(Stored {
                version,
                fields: None,
            });
        }
        let mut fields = Fields::new();
        for (i, column) in self.columns.iter().enumerate() {
            let at = offset + 2 + i;
            let value = match column.kind {
                FieldType::String => row
                    .try_get::<_, Option<String>>(at)
                    .map_err(bad)?
                    .map(Value::from),
                FieldType::Integer => row.try_get::<_, Option<i64>>(at).map_err(bad)?.map(Value::from),
                FieldType::Number => row
                    .try_get::<_, Option<f64>>(at)
                    .map_err(bad)?
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number),
                FieldType::Boolean => row.try_get::<_, Option<bool>>(at).map_err(bad)?.map(Value::from),
                FieldType::Json => row.try_get::<_, Option<Value>>(at).map_err(bad)?,
            };
            if let Some(value) = value {
                fields.insert(column.field.clone(), value);
            }
        }
        Ok(Stored {
            version,
            fields: Some(fields),
        })
    }

    /// `UPDATE … SET version = $2, tombstone = $3, columns = $4… WHERE key = $1`
    pub fn update(&self) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ${}", c.name, i + 4))
            .collect();
        format!(
            "UPDATE {} SET {} = $2, {} = $3, {} WHERE {} = $1",
            self.table,
            self.version,
            self.tombstone,
            sets.join(", "),
            self.key
        )
    }

    /// `INSERT … ON CONFLICT DO NOTHING` with the parameters of [`TableDef::update`].
    pub fn insert(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let params: Vec<String> = (0..self.columns.len()).map(|i| format!("${}", i + 4)).collect();
        format!(
            "INSERT INTO {} ({}, {}, {}, {}) VALUES ($1, $2, $3, {}) ON CONFLICT ({}) DO NOTHING",
            self.table,
            self.key,
            self.version,
            self.tombstone,
            names.join(", "),
            params.join(", "),
            self.key
        )
    }

    /// The parameters `$4…` of [`TableDef::update`]/[`TableDef::insert`] for `fields`.
    ///
    /// Every value must fit its column exactly, as the data model's canonical form
    /// guarantees (`plan::CollectionPlan::check_value`): a value that does not is an
    /// internal error, never a silent NULL or a rounded number.
    pub fn values(&self, fields: Option<&Fields>) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, OriginError> {
        self.columns
            .iter()
            .map(|c| {
                let value = fields.and_then(|f| f.get(&c.field)).filter(|v| !v.is_null());
                let param: Box<dyn ToSql + Sync + Send> = match (c.kind, value) {
                    (FieldType::String, None) => Box::new(None::<String>),
                    (FieldType::String, Some(Value::String(s))) => Box::new(Some(s.clone())),
                    (FieldType::Integer, None) => Box::new(None::<i64>),
                    (FieldType::Integer, Some(Value::Number(n))) if n.is_i64() => Box::new(n.as_i64()),
                    (FieldType::Number, None) => Box::new(None::<f64>),
                    (FieldType::Number, Some(Value::Number(n))) if n.is_f64() => Box::new(n.as_f64()),
                    (FieldType::Boolean, None) => Box::new(None::<bool>),
                    (FieldType::Boolean, Some(Value::Bool(b))) => Box::new(Some(*b)),
                    (FieldType::Json, None) => Box::new(None::<Jsonb>),
                    (FieldType::Json, Some(v)) => Box::new(Some(Jsonb(v.clone()))),
                    (kind, Some(_)) => {
                        return Err(OriginError::Internal {
                            reason: format!(
                                "field `{}` of {} holds a value a {} column cannot store exactly",
                                c.field,
                                self.collection,
                                kind.as_str()
                            ),
                            source: None,
                        })
                    }
                };
                Ok(param)
            })
            .collect()
    }

    /// One statement that adds `$2` to an integer field within bounds `$4`/`$5`, if
    /// the item exists and (with `$3`) is at that version, bumps the version and
    /// notifies the change feed (`$6` channel) — or changes nothing.
    ///
    /// The sum is checked in `numeric`, against the bounds and the bigint range, so a
    /// sum past i64 matches no row (the caller reports the crossed bound) instead of
    /// failing the statement with an int8 overflow. Only a row that passes all that
    /// computes the bigint sum in `SET`.
    pub fn increment(&self, field: &str) -> Option<String> {
        let column = self
            .columns
            .iter()
            .find(|c| c.field == field && c.kind == FieldType::Integer)?;
        let col = &column.name;
        let returning: Vec<String> = self.columns.iter().map(|c| format!("u.{}", c.name)).collect();
        Some(format!(
            "WITH u AS (UPDATE {table} SET {col} = {col} + $2, {version} = {version} + 1 \
             WHERE {key} = $1 AND NOT {tombstone} AND ($3::int8 IS NULL OR {version} = $3) \
             AND {col} IS NOT NULL \
             AND {col}::numeric + $2::int8 BETWEEN {min} AND {max} \
             AND ($4::int8 IS NULL OR {col}::numeric + $2::int8 >= $4) \
             AND ($5::int8 IS NULL OR {col}::numeric + $2::int8 <= $5) RETURNING *) \
             SELECT u.{version}, u.{tombstone}, {cols}, \
             pg_notify($6, json_build_object('c', $7::text, 'i', $1::text, 'v', u.{version})::text) FROM u",
            table = self.table,
            version = self.version,
            tombstone = self.tombstone,
            key = self.key,
            cols = returning.join(", "),
            min = i64::MIN,
            max = i64::MAX,
        ))
    }

    /// The statements that create the table (or add missing columns).
    pub fn create(&self) -> Vec<String> {
        let mut statements = vec![format!(
            "CREATE TABLE IF NOT EXISTS {} ({} text PRIMARY KEY, {} bigint NOT NULL, {} boolean NOT NULL DEFAULT false)",
            self.table, self.key, self.version, self.tombstone
        )];
        for c in &self.columns {
            let kind = match c.kind {
                FieldType::String => "text",
                FieldType::Integer => "bigint",
                FieldType::Number => "double precision",
                FieldType::Boolean => "boolean",
                FieldType::Json => "jsonb",
            };
            statements.push(format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {kind}",
                self.table, c.name
            ));
        }
        statements
    }

    /// Whether the table holds no row.
    pub fn is_empty_sql(&self) -> String {
        format!("SELECT NOT EXISTS (SELECT 1 FROM {})", self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_quotes_identifiers_and_maps_columns() {
        let settings = edgecache_config::load(&edgecache_config::Sources {
            dir: Some("/nonexistent".into()),
            skip_env: true,
            overrides: Some(
                "[collections.products.table]\nname = \"catalogue\"\ncolumns = { stock = \"on_hand\" }\n"
                    .into(),
            ),
            ..Default::default()
        })
        .unwrap();
        let def = TableDef::new("products", &settings.collections["products"]);
        assert!(def.select.starts_with("SELECT \"version\", \"deleted\", "));
        assert!(def.select.contains("\"on_hand\""));
        assert!(def.select.ends_with("FROM \"catalogue\" WHERE \"id\" = $1"));
        assert!(def
            .increment("stock")
            .unwrap()
            .contains("\"on_hand\" = \"on_hand\" + $2"));
        assert!(def.increment("name").is_none(), "only integer fields increment");
        assert_eq!(
            def.values(None).unwrap().len(),
            settings.collections["products"].fields.len()
        );
        let increment = def.increment("stock").unwrap();
        assert!(
            increment.contains(
                "\"on_hand\"::numeric + $2::int8 BETWEEN -9223372036854775808 AND 9223372036854775807"
            ),
            "the sum is checked without int8 overflow: {increment}"
        );
    }
}
