//! Straight to the PostgreSQL primary (`--pg-url`), with no node in between: the
//! origin's state of the run's items before and after the run, and the connection the
//! busy rows are held on (see [`super::busy`]).
//!
//! The tables are found as `edgecache migrate` creates them by default: the table is
//! named after the collection, with the item id in `id`, the version in `version`, the
//! tombstone in `deleted` and each field in a column of its name. A collection mapped
//! to another table (`[collections.<name>.table]`) is not supported here.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

use super::history::{OpKind, OpRecord, POSTGRES_TARGET};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens one connection to `url`; its driver runs on the current runtime until the
/// client is dropped.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("parsing --pg-url")?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .context("connecting to --pg-url: timed out")?
        .context("connecting to --pg-url")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("loadgen: the PostgreSQL connection failed: {e}");
        }
    });
    Ok(client)
}

/// `"name"`, with any `"` doubled.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// One collection's items to read, and the field to keep of each.
pub struct Items<'a> {
    pub collection: &'a str,
    pub field: &'a str,
    pub ids: Vec<String>,
}

/// Reads `items` from the primary in one statement and returns one record per id, as
/// a read through a node would have recorded it: 200 with the version and
/// `{field: value}` (the field alone), or 404 `not-found` for an absent or deleted
/// item (a deleted one keeps its version). `session` and `epoch` name and time the
/// records.
pub async fn read_items(
    client: &tokio_postgres::Client,
    items: &Items<'_>,
    session: &str,
    epoch: Instant,
) -> anyhow::Result<Vec<OpRecord>> {
    let sql = format!(
        "SELECT id, version, deleted, to_jsonb({}) FROM {} WHERE id = ANY($1)",
        quote(items.field),
        quote(items.collection)
    );
    let start_ns = epoch.elapsed().as_nanos() as u64;
    let rows = client
        .query(&sql, &[&items.ids])
        .await
        .with_context(|| format!("reading {} from PostgreSQL", items.collection))?;
    let end_ns = epoch.elapsed().as_nanos() as u64;
    let mut found = std::collections::HashMap::new();
    for row in rows {
        let id: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let deleted: bool = row.try_get(2)?;
        let value: Option<Value> = row.try_get(3)?;
        found.insert(id, (version.max(0) as u64, deleted, value));
    }
    Ok(items
        .ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let mut record = OpRecord {
                session: session.to_owned(),
                index: index as u64,
                target: POSTGRES_TARGET.to_owned(),
                served_by: POSTGRES_TARGET.to_owned(),
                op: OpKind::Read,
                collection: items.collection.to_owned(),
                key: id.clone(),
                start_ns,
                end_ns,
                ..OpRecord::default()
            };
            match found.remove(id) {
                Some((version, false, value)) => {
                    record.status = Some(200);
                    record.version = Some(version);
                    record.value = Some(match value {
                        Some(v) => json!({ items.field: v }),
                        None => json!({}),
                    });
                }
                Some((version, true, _)) => {
                    record.status = Some(404);
                    record.version = Some(version);
                    record.problem = Some("not-found".into());
                }
                None => {
                    record.status = Some(404);
                    record.problem = Some("not-found".into());
                }
            }
            record
        })
        .collect())
}
