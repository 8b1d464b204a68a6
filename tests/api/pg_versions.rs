//! Versions from the database (issue 17): `edgecache migrate` installs a trigger that
//! keeps every row's version strictly increasing whoever writes it, so a change made
//! with psql is versioned like one made through edgecache.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_with, unique, Client};
use crate::pg::{cluster, collection, Cluster};

/// The row's version and tombstone as the primary has them.
fn row(pg: &Cluster, table: &str, id: &str) -> String {
    pg.psql(
        &pg.primary,
        &[&format!(
            "SELECT version || ' ' || deleted FROM {table} WHERE id = '{id}'"
        )],
    )
}

#[actix_web::test]
async fn writers_outside_edgecache_raise_versions_and_deletes_keep_them_monotonic() {
    let pg = cluster();
    let table = unique("ext").replace('-', "_");
    let settings = pg.settings(&collection(&table)).await;
    // A second migrate changes nothing and fails nothing.
    let settings_again = pg.settings(&collection(&table)).await;
    let triggers = format!(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname = 'edgecache_version'"
    );
    assert_eq!(pg.psql(&pg.primary, &[&triggers]), "1");
    let node = spawn_with(&settings);
    let path = format!("/v1/{table}/cup");
    let sql = |statement: &str| pg.psql(&pg.primary, &[statement]);

    // Created through edgecache at 1: the trigger does not raise it again.
    let put = Client::new()
        .put(&node, &path, json!({"title": "cup", "n": 1}))
        .await;
    assert_eq!((put.status.as_u16(), put.version()), (201, 1));
    assert_eq!(row(&pg, &table, "cup"), "1 false");

    // psql changes the title and leaves the version alone: raised to 2.
    sql(&format!("UPDATE {table} SET title = 'mug' WHERE id = 'cup'"));
    assert_eq!(row(&pg, &table, "cup"), "2 false");
    // edgecache's own write sets old + 1 and is not raised twice.
    let patch = Client::new().patch(&node, &path, json!({"n": 2})).await;
    assert_eq!(
        (patch.status.as_u16(), patch.version()),
        (200, 3),
        "{}",
        patch.body
    );
    assert_eq!(row(&pg, &table, "cup"), "3 false");
    // A writer that sets a lower version is raised above the old one.
    sql(&format!("UPDATE {table} SET n = 5, version = 1 WHERE id = 'cup'"));
    assert_eq!(row(&pg, &table, "cup"), "4 false");
    // A higher one is kept.
    sql(&format!(
        "UPDATE {table} SET n = 6, version = 10 WHERE id = 'cup'"
    ));
    assert_eq!(row(&pg, &table, "cup"), "10 false");

    // psql deletes it: the row stays as a tombstone one version up, fields cleared.
    sql(&format!("DELETE FROM {table} WHERE id = 'cup'"));
    assert_eq!(row(&pg, &table, "cup"), "11 true");
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM {table} WHERE id = 'cup' AND title IS NULL AND n IS NULL"
        )),
        "1"
    );
    let fresh = spawn_with(&settings_again);
    assert_eq!(Client::new().get(&fresh, &path).await.status, 404);
    // Deleting a tombstone changes nothing.
    sql(&format!("DELETE FROM {table} WHERE id = 'cup'"));
    assert_eq!(row(&pg, &table, "cup"), "11 true");

    // psql re-creates it, naming no version: above the tombstone's.
    sql(&format!(
        "INSERT INTO {table} (id, title, n) VALUES ('cup', 'bowl', 7)"
    ));
    assert_eq!(row(&pg, &table, "cup"), "12 false");
    let reread = spawn_with(&settings_again);
    let read = Client::new().get(&reread, &path).await;
    assert_eq!((read.status.as_u16(), read.version()), (200, 12));
    assert_eq!(read.body["title"], "bowl");

    // Deleted and re-created through edgecache: the same rule.
    let deleted = Client::new().send(&node, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(row(&pg, &table, "cup"), "13 true");
    let again = Client::new().put(&node, &path, json!({"title": "cup"})).await;
    assert_eq!(
        (again.status.as_u16(), again.version()),
        (201, 14),
        "{}",
        again.body
    );
    // psql inserting a brand-new id with version 0 starts at 1.
    sql(&format!(
        "INSERT INTO {table} (id, version, title) VALUES ('new', 0, 'x')"
    ));
    assert_eq!(row(&pg, &table, "new"), "1 false");
    // Over a live row an INSERT still conflicts, and a key never changes.
    assert!(pg
        .try_psql(
            &pg.primary,
            &[&format!("INSERT INTO {table} (id, title) VALUES ('new', 'y')")]
        )
        .is_err());
    let renamed = pg.try_psql(
        &pg.primary,
        &[&format!("UPDATE {table} SET id = 'old' WHERE id = 'new'")],
    );
    assert!(renamed.is_err_and(|e| e.contains("never changes")));
    for app in [node, fresh, reread] {
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_session_that_read_the_old_content_never_takes_the_new_for_the_same_version() {
    let pg = cluster();
    let table = unique("same").replace('-', "_");
    let settings = pg.settings(&collection(&table)).await;
    let node = spawn_with(&settings);
    let path = format!("/v1/{table}/doc");
    let mut user = Client::new();
    let put = user.put(&node, &path, json!({"title": "draft"})).await;
    assert_eq!(put.version(), 1);
    let read = user.get(&node, &path).await;
    assert_eq!((read.version(), read.body["title"].as_str()), (1, Some("draft")));

    // A back-office tool edits the document directly.
    pg.psql(
        &pg.primary,
        &[&format!("UPDATE {table} SET title = 'final' WHERE id = 'doc'")],
    );

    // The session still believes it saw version 1: a write conditional on it must
    // not overwrite the other writer's change as if nothing had happened.
    let reply = Client::new()
        .send_with(
            node.request(Method::PATCH, &path).header("if-match", "\"1\""),
            Some(("application/merge-patch+json", json!({"title": "mine"}))),
            &[],
        )
        .await;
    assert_eq!(reply.status, 412, "{}", reply.body);
    assert_eq!(reply.body["current_version"], 2, "{}", reply.body);
    // Whoever reads it from the database sees the other writer's content at 2.
    let fresh = spawn_with(&settings);
    let now = Client::new().get(&fresh, &path).await;
    assert_eq!((now.version(), now.body["title"].as_str()), (2, Some("final")));
    node.stop().await;
    fresh.stop().await;
}
