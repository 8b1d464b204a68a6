//! Spawning edge nodes on port 0 over a temporary embedded store, and a small client
//! that plays one session (it keeps the session id and the last token).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use edgecache_config::{Settings, Sources};
use edgecache_services::{Application, Node};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

static TRACING: Once = Once::new();

/// Logs go to the test output only when `TEST_LOG` is set.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                .with_test_writer()
                .init();
        }
    });
}

/// A port for a server that must be named before it starts (a peer of a cluster, a
/// load balancer's upstream): below the kernel's ephemeral range, so no test binding
/// port 0 (and no outgoing connection) can take it between this choice and the bind,
/// and never the same twice in this process. Checked free by a bind.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Linux's default ephemeral range starts at 32768; read the machine's.
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    let span = ephemeral.saturating_sub(low).max(1);
    // Processes of other test binaries start elsewhere in the span.
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (start.wrapping_add(n) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {ephemeral}");
}

/// A store shared by the nodes of one test.
pub struct Store {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Store {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("edgecache.db");
        Self { _dir: dir, path }
    }
}

/// Settings for a test node over `store`: the shipped base, then `extra` TOML.
pub fn settings(store: &Path, extra: &str) -> Settings {
    let overrides = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nshutdown_timeout = \"1s\"\n\
         [origin]\nkind = \"embedded\"\npath = {:?}\nread_connections = 2\nbusy_timeout = \"200ms\"\n{extra}",
        store.display().to_string()
    );
    edgecache_config::load(&Sources {
        dir: Some("/nonexistent".into()),
        skip_env: true,
        overrides: Some(overrides),
        ..Sources::default()
    })
    .expect("test settings are valid")
}

/// One running edge node.
pub struct TestApp {
    pub address: String,
    pub node: Arc<Node>,
    pub cluster: Arc<edgecache_services::cluster::Cluster>,
    handle: actix_web::dev::ServerHandle,
    /// The node's `run_until_stopped`, which ends once its background tasks have.
    run: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

/// Starts a node over `store` with `extra` TOML layered over the base configuration.
pub fn spawn_app(store: &Store, extra: &str) -> TestApp {
    spawn_with(&settings(&store.path, extra))
}

pub fn spawn_with(settings: &Settings) -> TestApp {
    init_tracing();
    serve(Application::build(settings).expect("the node starts"))
}

/// Starts a node with `settings` over `origin` (strategies from `flags.defaults`).
pub fn spawn_over(settings: &Settings, origin: edgecache_services::origin::SharedOrigin) -> TestApp {
    init_tracing();
    let flags = Arc::new(edgecache_flags::ConfigFlags::new(&settings.flags.defaults));
    serve(Application::build_with_origin(settings, flags, origin).expect("the node starts"))
}

fn serve(app: Application) -> TestApp {
    let address = format!("http://127.0.0.1:{}", app.port());
    let node = app.node();
    let cluster = app.cluster();
    let handle = app.handle();
    let run = actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        node,
        cluster,
        handle,
        run,
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client"),
    }
}

impl TestApp {
    /// A request to this node, outside any session.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{}", self.address, path))
    }

    /// The node's `/metrics`, as a scraper reads it.
    pub async fn scrape(&self) -> String {
        self.request(Method::GET, "/metrics")
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics is text")
    }

    /// Stops the node gracefully, and returns once it has stopped (its background
    /// tasks included).
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.run
            .await
            .expect("the node's run task did not panic")
            .expect("the node stopped cleanly");
    }
}

/// One end-user session: its id and the last token a node gave it. It can talk to any
/// node, as an application behind a load balancer would.
#[derive(Clone, Default)]
pub struct Client {
    pub session_id: Option<String>,
    pub token: Option<String>,
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The `Cache-Status` without the cache's name (`hit`, `fwd=uri-miss; stored`, …).
    pub fn cache_status(&self) -> &str {
        cache_status_params(self.header("cache-status"))
    }

    /// The node that answered: the cache named first in `Cache-Status` (a read), else
    /// `X-Edgecache-Node`.
    pub fn node(&self) -> &str {
        match self.header("cache-status").split_once("; ") {
            Some((name, _)) => name,
            None => self.header("x-edgecache-node"),
        }
    }

    /// The problem `type` slug of an error response.
    pub fn problem(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{}",
            self.body
        );
        self.body["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:problem:edgecache:"))
            .unwrap_or("")
    }

    pub fn version(&self) -> u64 {
        self.header("etag").trim_matches('"').parse().unwrap_or(0)
    }
}

impl Client {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_id(id: &str) -> Self {
        Self {
            session_id: Some(id.to_owned()),
            token: None,
        }
    }

    pub async fn send(
        &mut self,
        app: &TestApp,
        method: Method,
        path: &str,
        body: Option<(&str, Value)>,
    ) -> Reply {
        self.send_with(app.request(method, path), body, &[]).await
    }

    /// Sends `request` in this session with `body` and extra `headers` (e.g.
    /// `Idempotency-Key`), to any address (a node, a load balancer).
    pub async fn send_with(
        &mut self,
        mut request: reqwest::RequestBuilder,
        body: Option<(&str, Value)>,
        headers: &[(&str, &str)],
    ) -> Reply {
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(id) = &self.session_id {
            request = request.header("x-session-id", id);
        }
        if let Some(token) = &self.token {
            request = request.header("x-session-token", token);
        }
        if let Some((content_type, body)) = body {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let response = request.send().await.expect("the node answers");
        self.absorb(response).await
    }

    async fn absorb(&mut self, response: Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(id) = headers.get("x-session-id") {
            self.session_id = Some(id.to_str().unwrap().to_owned());
        }
        if let Some(token) = headers.get("x-session-token") {
            self.token = Some(token.to_str().unwrap().to_owned());
        }
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, app: &TestApp, path: &str) -> Reply {
        self.send(app, Method::GET, path, None).await
    }

    pub async fn put(&mut self, app: &TestApp, path: &str, body: Value) -> Reply {
        self.send(app, Method::PUT, path, Some(("application/json", body)))
            .await
    }

    pub async fn patch(&mut self, app: &TestApp, path: &str, body: Value) -> Reply {
        self.send(
            app,
            Method::PATCH,
            path,
            Some(("application/merge-patch+json", body)),
        )
        .await
    }

    pub async fn increment(&mut self, app: &TestApp, path: &str, body: Value) -> Reply {
        self.send(
            app,
            Method::POST,
            &format!("{path}/increment"),
            Some(("application/json", body)),
        )
        .await
    }
}

/// The cluster secret of the test groups (under `[cluster]`).
pub const CLUSTER_SECRETS: &str =
    r#"secrets = [{ id = "c1", secret = "the-test-cluster-secret-0123456789abcdef" }]"#;

/// Collections with short windows, so time-based behaviour shows in milliseconds.
pub const SHORT_WINDOWS: &str = r#"
[collections.notes]
freshness = { class = "relaxed", ttl = "400ms", stale_while_revalidate = "1200ms", stale_if_error = "1h" }
[collections.notes.fields]
text = { type = "string" }
[collections.prices]
freshness = { class = "bounded", max_staleness = "300ms" }
[collections.prices.fields]
amount = { type = "number" }
[collections.counters]
freshness = { class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }
[collections.counters.fields]
label = { type = "string" }
count = { type = "integer", min = 0, freshness = { class = "strict" } }
"#;

/// Polls `check` every 20 ms until it holds, at most `limit`.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A collection whose entries stay fresh for the whole test, so only the session's
/// watermarks can make a node go back to the origin.
pub const LONG_TTL: &str = r#"
[collections.articles]
freshness = { class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }
[collections.articles.fields]
title = { type = "string" }
"#;

/// A session id that lands in the `on` (or off) arm of a 50% rollout of `flag`.
pub fn session_in_arm(flag: &str, on: bool) -> String {
    sessions_in_arm(flag, on, "session", 1).remove(0)
}

/// `count` session ids starting with `prefix` in the `on` (or off) arm of a 50%
/// rollout of `flag`.
pub fn sessions_in_arm(flag: &str, on: bool, prefix: &str, count: usize) -> Vec<String> {
    let rollout = edgecache_flags::Rollout::Percent(50);
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| rollout.is_enabled(flag, id) == on)
        .take(count)
        .collect()
}

/// An id no earlier run used (the PostgreSQL cluster outlives a test run when started
/// by hand).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A `Cache-Status` value without the cache's name: what follows the first `; `.
pub fn cache_status_params(value: &str) -> &str {
    value.split_once("; ").map_or(value, |(_, params)| params)
}
