//! `GET /metrics` and `GET /admin/experiments` over real HTTP: with read-your-writes
//! rolled out to half of the sessions, both report each arm with the counts the test
//! observed; the admin API wants the configured bearer token and is off without one.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{sessions_in_arm, spawn_app, Client, Store, TestApp, LONG_TTL};

const RYW: &str = "edgecache.read-your-writes";
const TOKEN: &str = "admin-token-for-tests-0123456789abcdef";
/// Sessions per arm that write through A and read their write through B.
const N: usize = 3;

fn config() -> String {
    format!("{LONG_TTL}\n[flags.defaults]\nread-your-writes = \"50%\"\n[admin]\ntoken = \"{TOKEN}\"\n")
}

/// What the test saw of the reads of one arm through node B.
#[derive(Debug, Default)]
struct Observed {
    reads: u64,
    hits: u64,
    stale_own: u64,
}

#[actix_web::test]
async fn metrics_and_experiments_report_each_arm_as_the_test_observed_it() {
    let store = Store::new();
    let a = spawn_app(&store, &config());
    let b = spawn_app(&store, &config());

    let mut observed: BTreeMap<&str, Observed> = BTreeMap::new();
    for (arm, on) in [("on", true), ("off", false)] {
        // Every session of this round is in the same read-your-writes arm.
        let authors = sessions_in_arm(RYW, on, "author", N);
        let readers = sessions_in_arm(RYW, on, "reader", N);
        let users = sessions_in_arm(RYW, on, "user", N);
        let seen = observed.entry(arm).or_default();
        for i in 0..N {
            let item = format!("/v1/articles/exp-{arm}-{i}");
            let mut author = Client::with_id(&authors[i]);
            assert_eq!(author.put(&a, &item, json!({"title": "v1"})).await.status, 201);
            // A reader makes B cache v1, fresh for an hour.
            let mut reader = Client::with_id(&readers[i]);
            for _ in 0..2 {
                let read = reader.get(&b, &item).await;
                assert_eq!(read.body["title"], "v1");
                seen.reads += 1;
                seen.hits += u64::from(read.cache_status().starts_with("hit"));
            }
            // The user writes v2 through A and reads it through B.
            let mut user = Client::with_id(&users[i]);
            assert_eq!(user.put(&a, &item, json!({"title": "v2"})).await.status, 200);
            let read = user.get(&b, &item).await;
            seen.reads += 1;
            seen.hits += u64::from(read.cache_status().starts_with("hit"));
            if read.body["title"] == "v1" {
                seen.stale_own += 1;
            }
        }
    }
    assert_eq!(
        observed["on"].stale_own, 0,
        "read-your-writes on: no stale own read"
    );
    assert_eq!(
        observed["off"].stale_own, N as u64,
        "off: every user read B's stale copy"
    );
    assert_eq!(
        (observed["on"].hits, observed["off"].hits),
        (N as u64, 2 * N as u64)
    );

    // ------------------------------------------------ /metrics, no token needed
    let response = b.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let metrics = Samples::parse(&text);

    for (arm, seen) in &observed {
        let ryw = [("flag", "read-your-writes"), ("arm", arm)];
        assert_eq!(
            metrics.get("edgecache_stale_own_reads_total", &[("arm", arm)]),
            seen.stale_own as f64
        );
        assert_eq!(
            metrics.get("edgecache_experiment_reads_total", &ryw),
            seen.reads as f64
        );
        assert_eq!(
            metrics.get("edgecache_experiment_cache_hits_total", &ryw),
            seen.hits as f64
        );
        assert_eq!(
            metrics.get("edgecache_experiment_stale_own_reads_total", &ryw),
            seen.stale_own as f64
        );
        // Readers and users made requests on B; the authors only on A.
        assert_eq!(metrics.get("edgecache_experiment_sessions", &ryw), 2.0 * N as f64);
        assert_eq!(
            metrics.get("edgecache_experiment_read_duration_seconds_count", &ryw),
            seen.reads as f64
        );
    }
    let total_reads = 6.0 * N as f64;
    let monotonic = [("flag", "monotonic-reads"), ("arm", "on")];
    assert_eq!(
        metrics.get("edgecache_experiment_reads_total", &monotonic),
        total_reads
    );
    assert_eq!(
        metrics.get("edgecache_experiment_sessions", &monotonic),
        4.0 * N as f64
    );
    assert_eq!(metrics.sum("edgecache_reads_total"), total_reads);
    assert_eq!(metrics.get("edgecache_cache_hits_total", &[]), 3.0 * N as f64);
    assert_eq!(metrics.get("edgecache_cache_misses_total", &[]), 3.0 * N as f64);
    assert_eq!(
        metrics.get(
            "edgecache_reads_total",
            &[("tier", "cache"), ("cache_status", "hit")]
        ),
        3.0 * N as f64
    );
    let item_gets = [
        ("route", "/v1/{collection}/{id}"),
        ("method", "GET"),
        ("status", "2xx"),
    ];
    assert_eq!(
        metrics.get("edgecache_http_requests_total", &item_gets),
        total_reads
    );
    assert_eq!(
        metrics.get("edgecache_http_request_duration_seconds_count", &item_gets),
        total_reads
    );
    assert_eq!(metrics.get("edgecache_live_sessions", &[]), 4.0 * N as f64);
    assert_eq!(
        metrics.get("edgecache_sessions_opened_total", &[("start", "new")]),
        2.0 * N as f64
    );
    assert_eq!(
        metrics.get("edgecache_sessions_opened_total", &[("start", "rebuilt")]),
        2.0 * N as f64
    );
    assert_eq!(metrics.get("edgecache_cache_entries", &[]), 2.0 * N as f64);
    assert!(metrics.get("edgecache_cache_size_bytes", &[]) > 0.0);
    assert_eq!(
        metrics.get("edgecache_writes_total", &[]),
        0.0,
        "writes went through A"
    );

    // ------------------------------------------------ /admin/experiments
    let report = admin(&b, Some(TOKEN)).await;
    assert_eq!(report.status, StatusCode::OK);
    let flag = &report.body["experiments"]["read-your-writes"];
    assert_eq!(flag["flag"], RYW);
    for (arm, seen) in &observed {
        let counts = &flag["arms"][arm];
        assert_eq!(counts["sessions"], 2 * N as u64, "{arm}: {counts}");
        assert_eq!(counts["reads"], seen.reads, "{arm}: {counts}");
        assert_eq!(counts["cache_hits"], seen.hits, "{arm}: {counts}");
        assert_eq!(counts["stale_own_reads"], seen.stale_own, "{arm}: {counts}");
        let reads = seen.reads as f64;
        assert_eq!(counts["hit_ratio"].as_f64(), Some(seen.hits as f64 / reads));
        assert_eq!(
            counts["stale_own_read_rate"].as_f64(),
            Some(seen.stale_own as f64 / reads)
        );
        let (p50, p99) = (&counts["latency_us"]["p50"], &counts["latency_us"]["p99"]);
        assert!(p50.as_u64().unwrap() <= p99.as_u64().unwrap(), "{counts}");
        assert!(p99.as_u64().unwrap() > 0, "{counts}");
    }
    assert_eq!(flag["arms"].as_object().unwrap().len(), 2, "{flag}");
    let monotonic = &report.body["experiments"]["monotonic-reads"]["arms"];
    assert_eq!(monotonic.as_object().unwrap().len(), 1, "{monotonic}");
    assert_eq!(monotonic["on"]["reads"], 6 * N as u64);

    // A counted the sessions that wrote through it, and no read.
    let on_a = admin(&a, Some(TOKEN)).await;
    let counts = &on_a.body["experiments"]["read-your-writes"]["arms"]["on"];
    assert_eq!(counts["sessions"], 2 * N as u64, "{counts}");
    assert_eq!(counts["reads"], 0);
    assert_eq!(counts["hit_ratio"], Value::Null);
    assert_eq!(counts["latency_us"]["p50"], Value::Null);
}

#[actix_web::test]
async fn admin_routes_want_the_bearer_token_and_are_off_without_one() {
    let store = Store::new();
    let node = spawn_app(&store, &config());

    let missing = admin(&node, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.problem, "unauthorized");
    assert!(
        missing.www_authenticate.starts_with("Bearer realm="),
        "{missing:?}"
    );
    assert!(!missing.www_authenticate.contains("invalid_token"));

    let wrong = admin(&node, Some("admin-token-for-tests-0123456789abcdeX")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.problem, "unauthorized");
    assert!(
        wrong.www_authenticate.contains("error=\"invalid_token\""),
        "{wrong:?}"
    );

    let basic = node
        .request(Method::GET, "/admin/experiments")
        .basic_auth("admin", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    // Not even the routes under /admin show without the token.
    let unknown = node.request(Method::GET, "/admin/nothing").send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(admin(&node, Some(TOKEN)).await.status, StatusCode::OK);
    let post = node
        .request(Method::POST, "/admin/experiments")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    // /metrics stays open to scrapers, and counts the refusals.
    let text = node.scrape().await;
    let refused = [
        ("route", "/admin/experiments"),
        ("method", "GET"),
        ("status", "4xx"),
    ];
    assert_eq!(
        Samples::parse(&text).get("edgecache_http_requests_total", &refused),
        3.0
    );

    // With no admin token configured, the admin API is not there.
    let disabled = spawn_app(&store, LONG_TTL);
    for token in [None, Some(TOKEN)] {
        let answer = admin(&disabled, token).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
        assert_eq!(answer.problem, "no-route");
    }
}

#[actix_web::test]
async fn with_a_metrics_token_metrics_want_it_and_only_it() {
    const METRICS_TOKEN: &str = "metrics-token-for-tests-0123456789abcdef";
    let store = Store::new();
    let node = spawn_app(
        &store,
        &format!("{}metrics_token = \"{METRICS_TOKEN}\"\n", config()),
    );
    let scrape = |token: Option<&str>| {
        let mut request = node.request(Method::GET, "/metrics");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for (token, what) in [(None, "no token"), (Some(TOKEN), "the admin token")] {
        let refused = scrape(token).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"edgecache-metrics\""));
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
    }
    let scraped = scrape(Some(METRICS_TOKEN)).await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    let text = scraped.text().await.unwrap();
    let refused = [("route", "/metrics"), ("method", "GET"), ("status", "4xx")];
    assert_eq!(
        Samples::parse(&text).get("edgecache_http_requests_total", &refused),
        2.0
    );
    // The metrics token is no admin token.
    assert_eq!(
        admin(&node, Some(METRICS_TOKEN)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn the_admin_token_is_checked_and_never_printed() {
    // The error as text: what start-up prints.
    let load = |token: &str| {
        edgecache_config::load(&edgecache_config::Sources {
            dir: Some("/nonexistent".into()),
            skip_env: true,
            overrides: Some(format!("[admin]\ntoken = \"{token}\"\n")),
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    };
    let short = load("too-short").unwrap_err();
    assert!(
        short.contains("admin.token") && !short.contains("too-short"),
        "{short}"
    );
    let spaced = load("an admin token with spaces in it, 40 bytes")
        .unwrap_err()
        .to_string();
    assert!(spaced.contains("admin.token"), "{spaced}");

    let settings = load(TOKEN).unwrap();
    let printed = edgecache_config::effective_toml(&settings);
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(printed.contains("[admin]"), "{printed}");
}

/// The answer of `GET /admin/experiments`.
#[derive(Debug)]
struct AdminReply {
    status: StatusCode,
    www_authenticate: String,
    problem: String,
    body: Value,
}

async fn admin(app: &TestApp, token: Option<&str>) -> AdminReply {
    let mut request = app.request(Method::GET, "/admin/experiments");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map_or("", |v: &reqwest::header::HeaderValue| v.to_str().unwrap())
            .to_owned()
    };
    let www_authenticate = header("www-authenticate");
    let content_type = header("content-type");
    let body: Value = response.json().await.expect("a JSON body");
    let problem = if content_type == "application/problem+json" {
        body["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:problem:edgecache:"))
            .unwrap_or("")
            .to_owned()
    } else {
        String::new()
    };
    AdminReply {
        status,
        www_authenticate,
        problem,
        body,
    }
}

/// The samples of an OpenMetrics text exposition.
struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let name_end = line.find(['{', ' ']).expect("a sample line");
            let name = line[..name_end].to_owned();
            let mut labels = BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(body) = rest.strip_prefix('{') {
                // key="value" pairs; values may hold `{`, `}` and escaped quotes.
                let mut chars = body.char_indices();
                let mut key = String::new();
                loop {
                    let (i, c) = chars.next().expect("a closed label set");
                    match c {
                        '}' => {
                            rest = &body[i + 1..];
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                            let mut value = String::new();
                            loop {
                                match chars.next().expect("a closed label value").1 {
                                    '"' => break,
                                    '\\' => value.push(chars.next().expect("an escaped character").1),
                                    c => value.push(c),
                                }
                            }
                            labels.insert(std::mem::take(&mut key), value);
                        }
                        c => key.push(c),
                    }
                }
            }
            let value = rest.split_whitespace().next().expect("a value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number in {line}")),
            };
            samples.push((name, labels, value));
        }
        Self(samples)
    }

    /// The value of the one sample of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let matches: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "{name} {labels:?} appears {} times",
            matches.len()
        );
        matches[0]
    }

    /// The sum of every sample of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }
}
