//! `GET /openapi.json` against the router it describes: every route the node mounts is
//! in the document with exactly the methods the router serves, and the document is
//! valid OpenAPI 3.1 by the reference validator (`openapi-spec-validator`, which the
//! test command installs; `EDGECACHE_TEST_OPENAPI_VALIDATOR` names it).

use std::collections::BTreeSet;

use edgecache_services::http::route::ROUTES;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{spawn_app, Store, TestApp};

const TOKEN: &str = "openapi-test-admin-token-0123456789";

const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::POST,
];

async fn document(app: &TestApp) -> Value {
    let response = app.request(Method::GET, "/openapi.json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// A concrete path for a route template.
fn concrete(template: &str) -> String {
    template
        .replace("{collection}", "products")
        .replace("{id}", "openapi-probe")
}

#[actix_rt::test]
async fn the_document_lists_every_route_with_exactly_the_methods_the_router_serves() {
    let store = Store::new();
    let app = spawn_app(&store, &format!("[admin]\ntoken = \"{TOKEN}\"\n"));
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let mounted: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(documented, mounted, "documented routes vs the router's");

    for template in ROUTES {
        let item = &paths[template];
        let listed: BTreeSet<String> = METHODS
            .iter()
            .map(|m| m.as_str().to_ascii_lowercase())
            .filter(|m| item.get(m).is_some())
            .collect();
        assert!(!listed.is_empty(), "{template} documents no method");
        if template.starts_with("/cluster/") {
            // Only peers with the cluster key get past the proof check, before any
            // method is looked at: a request without proof is refused whatever it is.
            let response = app.request(Method::GET, template).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{template}");
            continue;
        }
        for method in METHODS {
            let response = app
                .request(method.clone(), &concrete(template))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let served = response.status() != StatusCode::METHOD_NOT_ALLOWED;
            let documented = listed.contains(&method.as_str().to_ascii_lowercase());
            assert_eq!(
                served,
                documented,
                "{method} {template}: the router answers {} but the document {} it",
                response.status(),
                if documented { "lists" } else { "does not list" }
            );
            if !served {
                assert_eq!(
                    response
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap()),
                    Some("application/problem+json"),
                    "{method} {template}: a 405 is a problem document"
                );
                let allow = response.headers()["allow"].to_str().unwrap().to_owned();
                let allowed: BTreeSet<String> =
                    allow.split(',').map(|m| m.trim().to_ascii_lowercase()).collect();
                assert_eq!(allowed, listed, "{template}: Allow vs the document");
            }
        }
    }

    // Every operation says what its failures look like, with the problem schema.
    let problem_types = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
        .as_array()
        .expect("the problem types are enumerated");
    assert!(problem_types
        .iter()
        .any(|t| t == "urn:problem:edgecache:origin-unavailable"));
    let get_item = &paths["/v1/{collection}/{id}"]["get"];
    let params: BTreeSet<&str> = get_item["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "collection",
        "id",
        "X-Session-Id",
        "X-Session-Token",
        "X-User-Id",
        "explain",
    ] {
        assert!(params.contains(name), "GET item lacks {name}: {params:?}");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn the_document_is_valid_openapi_3_1() {
    let validator = std::env::var("EDGECACHE_TEST_OPENAPI_VALIDATOR").expect(
        "EDGECACHE_TEST_OPENAPI_VALIDATOR must name openapi-spec-validator (scripts/test.sh installs it)",
    );
    let store = Store::new();
    let app = spawn_app(&store, "");
    let doc = document(&app).await;
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let output = std::process::Command::new(&validator)
        .args(["--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {validator}: {e}"));
    assert!(
        output.status.success(),
        "the document does not validate:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // And an invalid document does not: the validator is really judging.
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["responses"] = Value::String("none".into());
    std::fs::write(&file, serde_json::to_vec_pretty(&broken).unwrap()).unwrap();
    let output = std::process::Command::new(&validator)
        .args(["--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a broken document passed the validator");
}
