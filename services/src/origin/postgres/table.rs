//! A collection's table: the SQL the origin runs on it and the conversion between
//! rows and documents. Identifiers come from validated configuration and are quoted
//! with `postgres_protocol`'s `escape_identifier` (libpq's `PQescapeIdentifier`).
//!
//! Every statement is built once, when the origin opens, and prepared once per
//! connection (deadpool-postgres' statement cache): a write sends one `Bind`/`Execute`
//! of a named statement, never a `Parse`.

use std::collections::HashMap;
use std::sync::Arc;

use edgecache_actors::{Fields, Version};
use edgecache_config::{Collection, FieldType};
use postgres_protocol::escape::escape_identifier as quote;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::feed::pgoutput::Watched;
use super::jsonb::Jsonb;
use crate::origin::OriginError;

/// One field's column.
#[derive(Debug, Clone)]
struct Column {
    field: String,
    name: String,
    kind: FieldType,
}

/// How a collection is stored, and the statements the origin runs on it.
#[derive(Debug)]
pub struct TableDef {
    pub collection: Arc<str>,
    /// The table's name unquoted (validated names need no quoting).
    pub table_name: String,
    /// How the logical change feed recognises the table's rows.
    pub watched: Watched,
    table: String,
    key: String,
    version: String,
    tombstone: String,
    columns: Vec<Column>,
    /// Whether writes notify the LISTEN/NOTIFY feed (`origin.change_feed = "notify"`):
    /// their statements then end with `pg_notify`, whose two parameters (channel,
    /// collection) come after all others ([`TableDef::notify_params`]).
    notify: bool,
    /// `SELECT version, tombstone, columns… FROM table WHERE key = $1`
    pub select: String,
    /// The same with `FOR UPDATE`.
    pub lock: String,
    /// `SELECT key, version FROM table WHERE key = ANY($1)`: the versions of several
    /// rows (the consistency checks).
    pub versions: String,
    /// See [`TableDef::update`].
    update: String,
    /// See [`TableDef::upsert`].
    upsert: String,
    /// See [`TableDef::increment`], by integer field.
    increments: HashMap<String, String>,
}

/// A row as read: its version and fields (`None`: absent or a tombstone).
pub struct Stored {
    pub version: Version,
    pub fields: Option<Fields>,
}

impl Stored {
    /// The version a precondition compares with: 0 for an absent item or a tombstone.
    pub fn visible(&self) -> Version {
        if self.fields.is_some() {
            self.version
        } else {
            Version(0)
        }
    }
}

impl TableDef {
    pub fn new(name: &str, collection: &Collection, notify: bool) -> Self {
        let t = &collection.table;
        let table_name = if t.name.is_empty() { name } else { &t.name }.to_owned();
        let table = quote(&table_name);
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
        let versions = format!("SELECT {key}, {version} FROM {table} WHERE {key} = ANY($1)");
        let mut def = Self {
            collection: name.into(),
            watched: Watched {
                collection: name.into(),
                key: t.key.clone(),
                version: t.version.clone(),
            },
            table_name,
            table,
            key,
            version,
            tombstone,
            columns,
            notify,
            select,
            versions,
            lock,
            update: String::new(),
            upsert: String::new(),
            increments: HashMap::new(),
        };
        def.update = def.build_update();
        def.upsert = def.build_upsert();
        def.increments = def
            .columns
            .iter()
            .filter(|c| c.kind == FieldType::Integer)
            .map(|c| (c.field.clone(), def.build_increment(c)))
            .collect();
        def
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

    /// One statement that replaces, patches or deletes an existing item: it checks
    /// the precondition on the row and raises the version in SQL (with the `notify`
    /// feed, it notifies too) — or changes nothing (the item is absent or a
    /// tombstone, or not at the version asked for). Committed on its own it is the
    /// whole write.
    ///
    /// `$1` key, `$2` the version the item must be at (NULL: any), `$3` whether the
    /// row becomes a tombstone; then per column, `$4 + 2i` whether to set it and
    /// `$5 + 2i` its value ([`TableDef::patch_params`]); then the
    /// [`TableDef::notify_params`]. Returns the row as [`TableDef::select`] does
    /// (then the notification's `void`).
    pub fn update(&self) -> &str {
        &self.update
    }

    fn build_update(&self) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (flag, value) = (4 + 2 * i, 5 + 2 * i);
                let (name, kind) = (&c.name, sql_type(c.kind));
                format!("{name} = CASE WHEN ${flag}::bool THEN ${value}::{kind} ELSE {name} END")
            })
            .collect();
        let returning: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let projected: Vec<String> = self.columns.iter().map(|c| format!("u.{}", c.name)).collect();
        format!(
            "WITH u AS (UPDATE {table} SET {version} = {version} + 1, {tombstone} = $3::bool, {sets} \
             WHERE {key} = $1::text AND NOT {tombstone} AND ($2::int8 IS NULL OR {version} = $2::int8) \
             RETURNING {version}, {tombstone}, {returning}) \
             SELECT u.{version}, u.{tombstone}, {projected}{notify} FROM u",
            notify = self.notify_sql(4 + 2 * self.columns.len(), "u"),
            table = self.table,
            version = self.version,
            tombstone = self.tombstone,
            key = self.key,
            sets = sets.join(", "),
            returning = returning.join(", "),
            projected = projected.join(", "),
        )
    }

    /// One statement that creates or replaces an item (a PUT without a version to
    /// match): it inserts the row at version 1, or raises the existing row's version
    /// in SQL and replaces its columns (with the `notify` feed, it notifies too).
    /// Committed on its own it is the whole write.
    ///
    /// `$1` key, `$2` create only (`If-None-Match: *`: an existing row is replaced
    /// only if it is a tombstone), `$3…` the columns ([`TableDef::values`]), then the
    /// [`TableDef::notify_params`]. Returns the new version, whether the item was
    /// created (absent or a tombstone before) (and the notification's `void`); no row when it changed nothing: create-only on a live item, or a row created
    /// by another transaction since this statement's snapshot (`old` did not lock it,
    /// so the statement leaves it alone and the caller runs it again).
    pub fn upsert(&self) -> &str {
        &self.upsert
    }

    fn build_upsert(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let params: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 3, sql_type(c.kind)))
            .collect();
        let sets: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{0} = excluded.{0}", c.name))
            .collect();
        format!(
            "WITH old AS MATERIALIZED (SELECT {tombstone} FROM {table} WHERE {key} = $1::text FOR UPDATE), \
             w AS (INSERT INTO {table} AS r ({key}, {version}, {tombstone}, {names}) \
             VALUES ($1::text, 1, false, {params}) \
             ON CONFLICT ({key}) DO UPDATE SET {version} = r.{version} + 1, {tombstone} = false, {sets} \
             WHERE EXISTS (SELECT 1 FROM old) AND (NOT $2::bool OR r.{tombstone}) \
             RETURNING r.{version}) \
             SELECT w.{version}, coalesce((SELECT o.{tombstone} FROM old o), true){notify} FROM w",
            notify = self.notify_sql(3 + self.columns.len(), "w"),
            table = self.table,
            version = self.version,
            tombstone = self.tombstone,
            key = self.key,
            names = names.join(", "),
            params = params.join(", "),
            sets = sets.join(", "),
        )
    }

    /// The parameters `$3…` of [`TableDef::upsert`] for `fields`.
    ///
    /// Every value must fit its column exactly, as the data model's canonical form
    /// guarantees (`plan::CollectionPlan::check_value`): a value that does not is an
    /// internal error, never a silent NULL or a rounded number.
    pub fn values(&self, fields: Option<&Fields>) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, OriginError> {
        self.columns
            .iter()
            .map(|c| self.param(c, fields.and_then(|f| f.get(&c.field))))
            .collect()
    }

    /// The parameters `$4…` of [`TableDef::update`] that set every column to
    /// `fields` (absent fields to NULL; `None`: every column NULL, for a tombstone).
    pub fn replace_params(
        &self,
        fields: Option<&Fields>,
    ) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, OriginError> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(2 * self.columns.len());
        for c in &self.columns {
            params.push(Box::new(true));
            params.push(self.param(c, fields.and_then(|f| f.get(&c.field)))?);
        }
        Ok(params)
    }

    /// The parameters `$4…` of [`TableDef::update`] that apply the merge patch
    /// `patch` column by column: its members set their columns (`null` clears one),
    /// the other columns keep their values. `None`: the patch merges an object into a
    /// `json` field, which RFC 7396 does member by member, recursively — the caller
    /// reads the item and merges it first.
    pub fn patch_params(
        &self,
        patch: &Fields,
    ) -> Result<Option<Vec<Box<dyn ToSql + Sync + Send>>>, OriginError> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(2 * self.columns.len());
        for c in &self.columns {
            let value = patch.get(&c.field);
            if c.kind == FieldType::Json && value.is_some_and(Value::is_object) {
                return Ok(None);
            }
            params.push(Box::new(value.is_some()));
            params.push(self.param(c, value)?);
        }
        Ok(Some(params))
    }

    /// `value` of column `c` as a parameter of its type (`None` or `null`: NULL).
    fn param(&self, c: &Column, value: Option<&Value>) -> Result<Box<dyn ToSql + Sync + Send>, OriginError> {
        let value = value.filter(|v| !v.is_null());
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
    }

    /// One statement that adds `$2` to an integer field within bounds `$4`/`$5`, if
    /// the item exists and (with `$3`) is at that version, and bumps the version
    /// (with the `notify` feed, `$6`/`$7` are the [`TableDef::notify_params`]) — or
    /// changes nothing.
    /// `None`: the field is not an integer field.
    ///
    /// The sum is checked in `numeric`, against the bounds and the bigint range, so a
    /// sum past i64 matches no row (the caller reports the crossed bound) instead of
    /// failing the statement with an int8 overflow. Only a row that passes all that
    /// computes the bigint sum in `SET`.
    pub fn increment(&self, field: &str) -> Option<&str> {
        self.increments.get(field).map(String::as_str)
    }

    fn build_increment(&self, column: &Column) -> String {
        let col = &column.name;
        let returning: Vec<String> = self.columns.iter().map(|c| format!("u.{}", c.name)).collect();
        let list: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        format!(
            "WITH u AS (UPDATE {table} SET {col} = {col} + $2::int8, {version} = {version} + 1 \
             WHERE {key} = $1::text AND NOT {tombstone} AND ($3::int8 IS NULL OR {version} = $3::int8) \
             AND {col} IS NOT NULL \
             AND {col}::numeric + $2::int8 BETWEEN {min} AND {max} \
             AND ($4::int8 IS NULL OR {col}::numeric + $2::int8 >= $4::int8) \
             AND ($5::int8 IS NULL OR {col}::numeric + $2::int8 <= $5::int8) \
             RETURNING {version}, {tombstone}, {list}) \
             SELECT u.{version}, u.{tombstone}, {cols}{notify} FROM u",
            notify = self.notify_sql(6, "u"),
            table = self.table,
            version = self.version,
            tombstone = self.tombstone,
            key = self.key,
            list = list.join(", "),
            cols = returning.join(", "),
            min = i64::MIN,
            max = i64::MAX,
        )
    }

    /// The `pg_notify` of the `notify` feed, appended to a write's projection of
    /// `row` (empty without it); `$first` is the channel, `$first + 1` the
    /// collection.
    fn notify_sql(&self, first: usize, row: &str) -> String {
        if !self.notify {
            return String::new();
        }
        format!(
            ", pg_notify(${first}::text, json_build_object('c', ${}::text, 'i', $1::text, 'v', {row}.{})::text)",
            first + 1,
            self.version
        )
    }

    /// The last two parameters of every write statement with the `notify` feed: the
    /// channel and the collection; none without it.
    pub fn notify_params(&self, channel: &str) -> Vec<Box<dyn ToSql + Sync + Send>> {
        if !self.notify {
            return Vec::new();
        }
        vec![
            Box::new(channel.to_owned()),
            Box::new(self.collection.to_string()),
        ]
    }

    /// The statements that create the table (or add missing columns).
    pub fn create(&self) -> Vec<String> {
        let mut statements = vec![format!(
            "CREATE TABLE IF NOT EXISTS {} ({} text PRIMARY KEY, {} bigint NOT NULL, {} boolean NOT NULL DEFAULT false)",
            self.table, self.key, self.version, self.tombstone
        )];
        for c in &self.columns {
            let kind = sql_type(c.kind);
            statements.push(format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {kind}",
                self.table, c.name
            ));
        }
        statements
    }

    /// The statements that install the version trigger (idempotent: `CREATE OR
    /// REPLACE`). It keeps the version strictly increasing whoever writes the row —
    /// edgecache, psql, a batch job:
    ///
    /// * an UPDATE that does not raise the version gets the old one + 1 (edgecache's
    ///   own writes set old + 1 and are left alone); the key never changes;
    /// * a DELETE becomes a tombstone one version up (the row stays, its fields
    ///   cleared), as edgecache's own deletes are; deleting a tombstone changes
    ///   nothing;
    /// * an INSERT over a tombstone replaces the tombstone and starts above its
    ///   version, so a re-created id never reuses a version; any other INSERT starts
    ///   at the version given, at least 1.
    ///
    /// TRUNCATE and `session_replication_role = replica` bypass row triggers.
    pub fn trigger(&self) -> Vec<String> {
        // Validated names are at most 63 bytes; PostgreSQL truncates longer ones.
        let function = quote(&format!("edgecache_version_{}", self.table_name));
        let cleared: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!(", {} = NULL", c.name))
            .collect();
        let body = format!(
            "DECLARE previous bigint; \
             BEGIN \
             IF TG_OP = 'UPDATE' THEN \
               IF NEW.{key} IS DISTINCT FROM OLD.{key} THEN \
                 RAISE EXCEPTION 'edgecache: the key of a row in {table_text} never changes (delete the row and insert another)'; \
               END IF; \
               IF NEW.{version} IS NULL OR NEW.{version} <= OLD.{version} THEN NEW.{version} := OLD.{version} + 1; END IF; \
               RETURN NEW; \
             ELSIF TG_OP = 'INSERT' THEN \
               SELECT t.{version} INTO previous FROM {table} t WHERE t.{key} = NEW.{key} AND t.{tombstone} FOR UPDATE; \
               IF FOUND THEN \
                 PERFORM set_config('edgecache.replacing_tombstone', 'on', true); \
                 DELETE FROM {table} t WHERE t.{key} = NEW.{key}; \
                 PERFORM set_config('edgecache.replacing_tombstone', '', true); \
                 NEW.{version} := greatest(coalesce(NEW.{version}, 0), previous + 1); \
               ELSE \
                 NEW.{version} := greatest(coalesce(NEW.{version}, 0), 1); \
               END IF; \
               RETURN NEW; \
             ELSE \
               IF current_setting('edgecache.replacing_tombstone', true) = 'on' THEN RETURN OLD; END IF; \
               IF NOT OLD.{tombstone} THEN \
                 UPDATE {table} t SET {tombstone} = true, {version} = OLD.{version} + 1{cleared} WHERE t.{key} = OLD.{key}; \
               END IF; \
               RETURN NULL; \
             END IF; \
             END",
            table = self.table,
            table_text = self.table_name,
            key = self.key,
            version = self.version,
            tombstone = self.tombstone,
            cleared = cleared.concat(),
        );
        vec![
            format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {}",
                dollar_quoted(&body)
            ),
            format!(
                "CREATE OR REPLACE TRIGGER edgecache_version BEFORE INSERT OR UPDATE OR DELETE ON {} \
                 FOR EACH ROW EXECUTE FUNCTION {function}()",
                self.table
            ),
        ]
    }

    /// Whether the table holds no row.
    pub fn is_empty_sql(&self) -> String {
        format!("SELECT NOT EXISTS (SELECT 1 FROM {})", self.table)
    }
}

/// `body` as a dollar-quoted string literal whose tag does not occur in it.
fn dollar_quoted(body: &str) -> String {
    let mut tag = String::from("$edgecache$");
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    format!("{tag}{body}{tag}")
}

/// The column type of a field type.
fn sql_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::String => "text",
        FieldType::Integer => "bigint",
        FieldType::Number => "double precision",
        FieldType::Boolean => "boolean",
        FieldType::Json => "jsonb",
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
        let def = TableDef::new("products", &settings.collections["products"], true);
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

    #[test]
    fn a_merge_patch_goes_column_by_column_unless_it_merges_an_object_into_json() {
        let settings = edgecache_config::load(&edgecache_config::Sources {
            dir: Some("/nonexistent".into()),
            skip_env: true,
            ..Default::default()
        })
        .unwrap();
        let def = TableDef::new("products", &settings.collections["products"], true);
        let columns = settings.collections["products"].fields.len();
        let patch = |v: Value| v.as_object().unwrap().clone();
        let flat = def.patch_params(&patch(
            serde_json::json!({"name": "x", "tags": [1], "price": null}),
        ));
        assert_eq!(
            flat.unwrap().unwrap().len(),
            2 * columns,
            "a flag and a value per column"
        );
        let nested = def.patch_params(&patch(serde_json::json!({"tags": {"a": 1}})));
        assert!(
            nested.unwrap().is_none(),
            "an object into a json field merges recursively"
        );
        assert_eq!(def.replace_params(None).unwrap().len(), 2 * columns);
        assert!(def.update().contains("\"name\" = CASE WHEN $"));
        assert!(def
            .update()
            .contains("WHERE \"id\" = $1::text AND NOT \"deleted\""));
        assert!(def.upsert().contains("ON CONFLICT (\"id\") DO UPDATE"));
        assert!(
            def.upsert().contains("FOR UPDATE"),
            "the existing row is locked first"
        );
        // Identifiers are quoted as libpq quotes them.
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }
}
