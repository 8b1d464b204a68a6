//! One value domain on both origins: the same requests, full of edge values, sent to a
//! node over the embedded store and to a node over PostgreSQL get the same statuses
//! and problem types, and both origins then hold exactly what they acknowledged — read
//! back through fresh nodes (nothing from a cache) and, for PostgreSQL, from the row.

use std::collections::BTreeMap;

use edgecache_config::{OriginSettings, Settings};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_with, unique, Store, TestApp};
use crate::pg::cluster;

/// The collection of this test (and its PostgreSQL table): one field of each type,
/// and a bounded counter. Long windows, so the writing nodes serve what they cached.
fn edges(name: &str) -> String {
    format!(
        r#"
[collections.{name}]
freshness = {{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }}
[collections.{name}.fields]
s = {{ type = "string" }}
i = {{ type = "integer" }}
x = {{ type = "number" }}
b = {{ type = "boolean" }}
j = {{ type = "json" }}
c = {{ type = "integer", min = -10, max = 10 }}
"#
    )
}

const COLLECTION: &str = "domain_edges";

/// A request of the sequence: on which item, what, and the answer both origins must
/// give (status, and the problem type of an error).
struct Step {
    item: &'static str,
    method: Method,
    /// The body as sent (raw text, so that it can hold what `json!` cannot write).
    body: String,
    status: u16,
    problem: Option<&'static str>,
}

fn put(item: &'static str, body: Value, status: u16, problem: Option<&'static str>) -> Step {
    raw(item, Method::PUT, body.to_string(), status, problem)
}

fn patch(item: &'static str, body: Value, status: u16, problem: Option<&'static str>) -> Step {
    raw(item, Method::PATCH, body.to_string(), status, problem)
}

fn inc(item: &'static str, body: Value, status: u16, problem: Option<&'static str>) -> Step {
    raw(item, Method::POST, body.to_string(), status, problem)
}

fn raw(item: &'static str, method: Method, body: String, status: u16, problem: Option<&'static str>) -> Step {
    Step {
        item,
        method,
        body,
        status,
        problem,
    }
}

const UNREPRESENTABLE: Option<&str> = Some("unrepresentable-value");
const BOUND: Option<&str> = Some("bound-crossed");
const WRONG_TYPE: Option<&str> = Some("wrong-type");

/// A JSON value nested `depth` arrays deep around a string.
fn nested(depth: usize) -> String {
    format!("{}\"core\"{}", "[".repeat(depth), "]".repeat(depth))
}

/// The whole sequence, in order (later steps build on the items earlier ones wrote).
fn steps() -> Vec<Step> {
    let past_i64 = i64::MAX as u64 + 1;
    let two_53 = 1u64 << 53;
    vec![
        // Edges that both origins can hold.
        put(
            "a",
            json!({"s": "", "i": i64::MAX, "x": -0.0, "b": false,
                   "j": {"": "", "emoji 😀": "𝄞😀", "none": null, "nested": {"list": [1, 2.5, "x", {}]}}}),
            201,
            None,
        ),
        put("b", json!({"i": i64::MIN, "x": 1e308, "s": "😀"}), 201, None),
        // Integers outside i64 in an integer field.
        put("c", json!({"i": past_i64}), 422, UNREPRESENTABLE),
        put("c", json!({"i": u64::MAX}), 422, UNREPRESENTABLE),
        raw(
            "c",
            Method::PUT,
            r#"{"i": -9223372036854775809}"#.into(),
            422,
            WRONG_TYPE,
        ),
        put("c", json!({"i": 1.5}), 422, WRONG_TYPE),
        raw(
            "c",
            Method::PUT,
            r#"{"x": 1e400}"#.into(),
            400,
            Some("malformed-json"),
        ),
        // Number fields: integers become their double, unless it is not exact.
        put("d", json!({"x": two_53 + 1}), 422, UNREPRESENTABLE),
        put("d", json!({"x": -((two_53 + 1) as i64)}), 422, UNREPRESENTABLE),
        put("d", json!({"x": 3}), 201, None),
        put("d", json!({"x": two_53}), 200, None),
        put("d", json!({"x": 10_000_000_000_000_000_000u64}), 200, None),
        // U+0000 in a string field, and in a json field's key and value.
        put("e", json!({"s": "nul\u{0}byte"}), 422, UNREPRESENTABLE),
        put("e", json!({"j": {"k\u{0}": 1}}), 422, UNREPRESENTABLE),
        put("e", json!({"j": ["ok", {"v": "\u{0}"}]}), 422, UNREPRESENTABLE),
        // Integers outside i64 inside a json field.
        put("e", json!({"j": {"n": past_i64}}), 422, UNREPRESENTABLE),
        // Floats in a json field: large, integral, negative zero, tiny.
        put(
            "e",
            json!({"j": {"f": 1e16, "g": 1.5e300, "h": -0.0, "m": 0.1, "t": 1e-7, "u": 1e19,
                         "w": -1e19, "z": [1.0, 2, -3], "big": 1e308}}),
            201,
            None,
        ),
        // Doubles that a best-effort parse does not read back exactly.
        put(
            "f",
            json!({"x": 1.0715660391465826e-75, "j": [1.0715660391465826e-75, -1.6039646154281832e143]}),
            201,
            None,
        ),
        put("g", json!({"x": f64::MAX, "i": 0}), 201, None),
        put("g", json!({"x": 5e-324}), 200, None),
        put("g", json!({"x": 2.2250738585072014e-308, "s": ""}), 200, None),
        // A PUT stores no value for a null field.
        put("h", json!({"s": "x", "i": null, "j": null}), 201, None),
        // Nesting: deep but parseable, and past serde_json's recursion limit.
        raw(
            "q",
            Method::PUT,
            format!(r#"{{"j": {}}}"#, nested(100)),
            201,
            None,
        ),
        raw(
            "r",
            Method::PUT,
            format!(r#"{{"j": {}}}"#, nested(200)),
            400,
            Some("malformed-json"),
        ),
        // Merge patches: null removes, objects merge, numbers canonical.
        patch(
            "a",
            json!({"s": null, "x": 7, "j": {"nested": {"list": null, "added": "😀"}, "none": null}}),
            200,
            None,
        ),
        patch("a", json!({"j": {"bad\u{0}": 1}}), 422, UNREPRESENTABLE),
        patch("a", json!({"x": two_53 + 1}), 422, UNREPRESENTABLE),
        // Increments to the i64 edge and past it (a.i is i64::MAX).
        inc("a", json!({"field": "i", "by": 1}), 409, BOUND),
        inc("a", json!({"field": "i", "by": i64::MAX}), 409, BOUND),
        inc("a", json!({"field": "i", "by": -1}), 200, None),
        inc("a", json!({"field": "i", "by": 1, "max": i64::MAX}), 200, None),
        inc("a", json!({"field": "i", "by": 1, "max": i64::MAX}), 409, BOUND),
        inc("a", json!({"field": "i", "by": i64::MIN}), 200, None),
        inc("a", json!({"field": "i", "by": i64::MIN}), 409, BOUND),
        // b.i is i64::MIN.
        inc("b", json!({"field": "i", "by": -1}), 409, BOUND),
        inc("b", json!({"field": "i", "by": -1, "min": i64::MIN}), 409, BOUND),
        inc("b", json!({"field": "i", "by": i64::MIN, "min": 0}), 409, BOUND),
        inc("b", json!({"field": "i", "by": i64::MAX}), 200, None),
        // A counter with the schema's bounds [-10, 10], narrowed by the request's.
        put("p", json!({"c": 10}), 201, None),
        inc("p", json!({"field": "c", "by": 1}), 409, BOUND),
        inc("p", json!({"field": "c", "by": i64::MAX}), 409, BOUND),
        inc("p", json!({"field": "c", "by": -21}), 409, BOUND),
        inc("p", json!({"field": "c", "by": -21, "min": i64::MIN}), 409, BOUND),
        inc("p", json!({"field": "c", "by": -5, "min": 6}), 409, BOUND),
        inc("p", json!({"field": "c", "by": -4, "min": 6}), 200, None),
        inc("p", json!({"field": "c", "by": 4, "max": 9}), 409, BOUND),
        inc("p", json!({"field": "c", "by": 4}), 200, None),
        inc("p", json!({"field": "c", "by": i64::MIN}), 409, BOUND),
        // Increments of what is not an integer.
        inc("p", json!({"field": "x", "by": 1}), 422, WRONG_TYPE),
        inc("p", json!({"field": "i", "by": 1}), 422, Some("not-an-integer")),
        inc("h", json!({"field": "i", "by": 1}), 422, Some("not-an-integer")),
    ]
}

/// One answer, as the client sees it.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    problem: Option<String>,
    etag: String,
    /// The body's text (for a document: exactly the bytes the node sent).
    body: String,
}

async fn call(app: &TestApp, method: Method, path: &str, body: Option<String>) -> Answer {
    let content_type = if method == Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let mut request = app.request(method, path);
    if let Some(body) = body {
        request = request.header("content-type", content_type).body(body);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let etag = header("etag");
    let is_problem = header("content-type") == "application/problem+json";
    let body = response.text().await.expect("a body");
    let problem = is_problem.then(|| {
        serde_json::from_str::<Value>(&body).expect("a problem document")["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:problem:edgecache:")
            .to_owned()
    });
    Answer {
        status,
        problem,
        etag,
        body,
    }
}

fn path(ids: &BTreeMap<&str, String>, item: &str, method: &Method) -> String {
    let id = &ids[item];
    if *method == Method::POST {
        format!("/v1/{COLLECTION}/{id}/increment")
    } else {
        format!("/v1/{COLLECTION}/{id}")
    }
}

/// Settings of a PostgreSQL node that reads only the primary (the replica replays
/// 300 ms late; a read-back must see the last write).
fn primary_only(settings: &Settings) -> Settings {
    let mut settings = settings.clone();
    if let OriginSettings::Postgres(pg) = &mut settings.origin {
        pg.replicas.clear();
    }
    settings
}

/// A connection of the test's own to the primary.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the primary accepts a connection");
    actix_web::rt::spawn(connection);
    client
}

/// The row of `id` as PostgreSQL holds it, every column read as text (not through the
/// origin's conversions), as the document it stands for.
async fn row(client: &tokio_postgres::Client, id: &str) -> Option<Value> {
    let sql = format!(
        "SELECT s, i::text, x::text, b::text, j::text, c::text FROM \"{COLLECTION}\" \
         WHERE id = $1 AND NOT deleted"
    );
    let row = client
        .query_opt(&sql, &[&id])
        .await
        .expect("the row is readable")?;
    let mut doc = serde_json::Map::new();
    doc.insert("id".into(), json!(id));
    let text = |i: usize| row.get::<_, Option<String>>(i);
    if let Some(s) = text(0) {
        doc.insert("s".into(), json!(s));
    }
    if let Some(i) = text(1) {
        doc.insert("i".into(), json!(i.parse::<i64>().expect("an int8")));
    }
    if let Some(x) = text(2) {
        let x: f64 = x.parse().expect("a float8");
        doc.insert("x".into(), json!(x));
    }
    if let Some(b) = text(3) {
        doc.insert("b".into(), json!(b == "true"));
    }
    if let Some(j) = text(4) {
        doc.insert("j".into(), serde_json::from_str(&j).expect("jsonb text"));
    }
    if let Some(c) = text(5) {
        doc.insert("c".into(), json!(c.parse::<i64>().expect("an int8")));
    }
    Some(Value::Object(doc))
}

#[actix_web::test]
async fn both_origins_accept_reject_and_store_the_same_values() {
    let pg = cluster();
    let extra = edges(COLLECTION);
    let store = Store::new();
    let embedded = spawn_app(&store, &extra);
    let settings = pg.settings(&extra).await;
    let postgres = spawn_with(&settings);

    let run = unique("d");
    let steps = steps();
    let ids: BTreeMap<&str, String> = steps
        .iter()
        .map(|s| (s.item, format!("{run}-{}", s.item)))
        .collect();

    // Every request to both; every difference and every unexpected answer is kept, so
    // one run shows them all.
    let mut failures = Vec::new();
    // The body of each item's last successful write: what the origin acknowledged.
    let mut acknowledged: BTreeMap<&str, String> = BTreeMap::new();
    for (n, step) in steps.iter().enumerate() {
        let path = path(&ids, step.item, &step.method);
        let e = call(&embedded, step.method.clone(), &path, Some(step.body.clone())).await;
        let p = call(&postgres, step.method.clone(), &path, Some(step.body.clone())).await;
        let what = format!(
            "step {n}: {} {} {}",
            step.method,
            step.item,
            step.body.chars().take(160).collect::<String>()
        );
        if e != p {
            failures.push(format!("{what}\n  embedded {e:?}\n  postgres {p:?}"));
        }
        let expected = (step.status, step.problem.map(str::to_owned));
        for (origin, answer) in [("embedded", &e), ("postgres", &p)] {
            if (answer.status, answer.problem.clone()) != expected {
                failures.push(format!(
                    "{what}\n  {origin} answered {answer:?}, expected {expected:?}"
                ));
            }
        }
        if (200..300).contains(&e.status) {
            acknowledged.insert(step.item, e.body.clone());
        }
    }

    // The canonical forms, as acknowledged.
    let ack = |item: &str| -> Value {
        acknowledged.get(item).map_or(Value::Null, |body| {
            serde_json::from_str(body).expect("a document")
        })
    };
    let checks = [
        ("d", "x", "1e+19", "an integer in a number field is its double"),
        (
            "a",
            "x",
            "7.0",
            "an integer in a merge patch of a number field too",
        ),
        (
            "f",
            "x",
            "1.0715660391465826e-75",
            "a double is acknowledged exactly as sent",
        ),
        (
            "e",
            "j",
            r#"{"big":1e+308,"f":1e+16,"g":1.5e+300,"h":0.0,"m":0.1,"t":1e-7,"u":1e+19,"w":-1e+19,"z":[1.0,2,-3]}"#,
            "floats in a json field stay floats; negative zero is zero there",
        ),
        ("h", "i", "absent", "a PUT stores no value for a null field"),
    ];
    for (item, field, want, why) in checks {
        let got = ack(item).get(field).map_or("absent".into(), Value::to_string);
        if got != want {
            failures.push(format!(
                "{why}: {item}.{field} acknowledged as {got}, expected {want}"
            ));
        }
    }
    if ack("b")["x"].as_f64() != Some(1e308) || ack("g")["x"].as_f64() != Some(2.2250738585072014e-308) {
        failures.push("large and small doubles are acknowledged exactly".into());
    }

    // Fresh nodes, so that nothing comes from the writing nodes' caches.
    let fresh_embedded = spawn_app(&store, &extra);
    let fresh_postgres = spawn_with(&primary_only(&settings));
    let primary = connect(&pg.primary).await;
    for (item, id) in &ids {
        let path = format!("/v1/{COLLECTION}/{id}");
        let e = call(&fresh_embedded, Method::GET, &path, None).await;
        let p = call(&fresh_postgres, Method::GET, &path, None).await;
        if e != p {
            failures.push(format!("read back {item}\n  embedded {e:?}\n  postgres {p:?}"));
        }
        let stored = row(&primary, id).await;
        match acknowledged.get(item) {
            Some(ack) => {
                for (origin, answer) in [("embedded", &e), ("postgres", &p)] {
                    if answer.status != 200 || answer.body != *ack {
                        failures.push(format!(
                            "{item}: {origin} stores {} {}, acknowledged {ack}",
                            answer.status, answer.body
                        ));
                    }
                }
                let ack: Value = serde_json::from_str(ack).expect("a document");
                let stored = stored.map(|row| row.to_string());
                if stored.as_deref() != Some(ack.to_string().as_str()) {
                    failures.push(format!(
                        "{item}: the PostgreSQL row is {stored:?}, acknowledged {ack}"
                    ));
                }
            }
            None => {
                if e.status != 404 || p.status != 404 || stored.is_some() {
                    failures.push(format!(
                        "{item}: never acknowledged, yet read back as {} / {} / {stored:?}",
                        e.status, p.status
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
