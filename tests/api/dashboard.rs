//! `GET /admin/dashboard` over real HTTP: refused without the admin token (the log-in
//! form for a browser), served with the bearer token or the cookie the form sets,
//! with a Content-Security-Policy, a row per arm and a chart per metric. The page in
//! a real browser: `tests/api/browser.rs`.

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{eventually, session_in_arm, spawn_app, Client, Store, LONG_TTL};

pub const TOKEN: &str = "admin-token-for-tests-0123456789abcdef";

pub fn dashboard_settings(extra: &str) -> String {
    format!(
        "{LONG_TTL}\n[flags.defaults]\nread-your-writes = \"50%\"\n\
         [admin]\ntoken = \"{TOKEN}\"\ndashboard_interval = \"100ms\"\ndashboard_history = \"1m\"\n{extra}"
    )
}

#[actix_web::test]
async fn the_dashboard_wants_the_admin_token_or_the_cookie_of_the_log_in_form() {
    let store = Store::new();
    let node = spawn_app(&store, &dashboard_settings(""));
    for on in [true, false] {
        let mut user = Client::with_id(&session_in_arm("edgecache.read-your-writes", on));
        let item = format!("/v1/articles/d-{on}");
        assert_eq!(user.put(&node, &item, json!({"title": "t"})).await.status, 201);
        for _ in 0..3 {
            assert_eq!(user.get(&node, &item).await.status, 200);
        }
    }

    // Without a token: problem+json for a program, the form (and nothing else) for a
    // browser.
    let refused = node
        .request(Method::GET, "/admin/dashboard")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/problem+json"));
    let browser = node
        .request(Method::GET, "/admin/dashboard")
        .header(ACCEPT, "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), StatusCode::UNAUTHORIZED);
    assert!(browser.headers().contains_key(CONTENT_SECURITY_POLICY));
    let form = browser.text().await.unwrap();
    assert!(form.contains("<form id=\"login\""));
    assert!(
        !form.contains("<table"),
        "nothing of the dashboard without the token"
    );

    // With the bearer token.
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            node.request(Method::GET, "/admin/dashboard")
                .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .matches("class=\"line s")
                .count()
                > 0
        })
        .await,
        "the charts draw once the ring has two snapshots"
    );
    let page = node
        .request(Method::GET, "/admin/dashboard")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'none'; style-src 'nonce-"), "{csp}");
    let html = page.text().await.unwrap();
    for arm in ["on", "off"] {
        assert!(
            html.contains(&format!("data-flag=\"read-your-writes\" data-arm=\"{arm}\"")),
            "a row for the {arm} arm"
        );
    }
    for metric in [
        "reads",
        "hit_ratio",
        "stale_own_rate",
        "regressions",
        "p50",
        "p99",
    ] {
        assert!(html.contains(&format!(
            "data-flag=\"read-your-writes\" data-metric=\"{metric}\""
        )));
    }
    for card in ["cache", "sessions", "origin", "cluster"] {
        assert!(
            html.contains(&format!("<div class=\"card\" id=\"{card}\">")),
            "{card}"
        );
    }
    assert!(!html.contains("<script"), "no script: CSP allows none");

    // The form: a wrong token is refused, the right one sets the cookie.
    let wrong = node
        .request(Method::POST, "/admin/login")
        .form(&[("token", "not-the-token-but-long-enough-0123456789")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(!wrong.headers().contains_key(SET_COOKIE));
    let malformed = node
        .request(Method::POST, "/admin/login")
        .form(&[("password", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert!(malformed.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/problem+json"));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let logged_in = client
        .post(format!("{}/admin/login", node.address))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(logged_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(logged_in.headers()[LOCATION], "/admin/dashboard");
    let cookie = logged_in.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = client
        .get(format!("{}/admin/dashboard", node.address))
        .header(COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), StatusCode::OK);
    // The cookie opens the JSON report too; a forged one opens nothing.
    let report = client
        .get(format!("{}/admin/experiments", node.address))
        .header(COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), StatusCode::OK);
    let purge = client
        .post(format!("{}/admin/purge", node.address))
        .header(COOKIE, &pair)
        .json(&json!({"collection": "articles", "ids": ["d-true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        purge.status(),
        StatusCode::UNAUTHORIZED,
        "a change wants the bearer token"
    );
    let forged = client
        .get(format!("{}/admin/dashboard", node.address))
        .header(COOKIE, "edgecache_admin=00112233")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    node.stop().await;
}

#[actix_web::test]
async fn the_grafana_dashboard_queries_only_metrics_the_node_exports() {
    let store = Store::new();
    let node = spawn_app(
        &store,
        &dashboard_settings("[flags.consistency_checks]\nsample = 1.0\n"),
    );
    let mut user = Client::with_id(&session_in_arm("edgecache.read-your-writes", false));
    assert_eq!(
        user.put(&node, "/v1/articles/g", json!({"title": "t"}))
            .await
            .status,
        201
    );
    assert_eq!(user.get(&node, "/v1/articles/g").await.status, 200);
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            node.scrape()
                .await
                .contains("edgecache_consistency_checks_total{")
        })
        .await
    );
    let metrics = node.scrape().await;

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let mut names = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("edgecache_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            names.insert(name);
        }
    }
    for name in &names {
        assert!(
            metrics.lines().any(|line| line
                .strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with(['{', ' ']))),
            "the Grafana dashboard queries {name}, which /metrics does not export"
        );
    }
    assert!(names.contains("edgecache_consistency_checks_total"));
    node.stop().await;
}
