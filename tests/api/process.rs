//! The `edgecache` binary as an operator runs it: configuration checks and a graceful
//! stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn edgecache(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgecache"));
    command
        .current_dir(dir)
        .env_remove("EDGECACHE_ENVIRONMENT")
        .env("EDGECACHE_LOG_FORMAT", "json")
        .env("EDGECACHE_LOG", "info");
    command
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let output = edgecache(dir.path())
        .args(["check-config"])
        .env("EDGECACHE__NODE__ID", "edge-7")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.contains("id = \"edge-7\""),
        "the environment layer applies"
    );
    assert!(printed.contains("[redacted]"));
    assert!(
        !printed.contains("edgecache-development-secret"),
        "secrets never print"
    );
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, key) in [
        ("EDGECACHE__SESSION__ACTIVE_KEY", "missing", "session.active_key"),
        ("EDGECACHE__SERVER__LISTEN", "not-an-address", "server.listen"),
        ("EDGECACHE__CACHE__CAPACITY_BYTES", "10", "cache.capacity_bytes"),
    ] {
        let output = edgecache(dir.path())
            .arg("serve")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{var}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(key),
            "{var}={value}: the error names `{key}`: {stderr}"
        );
    }
}

#[test]
fn outside_local_and_test_the_development_key_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |environment: &str| {
        let mut command = edgecache(dir.path());
        command
            .arg("serve")
            .env("EDGECACHE_ENVIRONMENT", environment)
            .env("EDGECACHE__SERVER__LISTEN", "127.0.0.1:0")
            .env_remove("EDGECACHE__SESSION__KEYS")
            .env_remove("EDGECACHE__SESSION__ACTIVE_KEY");
        command
    };
    let output = serve("production").output().unwrap();
    assert!(
        !output.status.success(),
        "the development key must stop start-up in production"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("session.keys"), "names the key: {stderr}");
    assert!(
        stderr.contains("EDGECACHE__SESSION__KEYS="),
        "says how to set one: {stderr}"
    );
    assert!(
        !stderr.contains("edgecache-development-secret"),
        "never shows the secret: {stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before the store is opened"
    );

    // With a key of its own, production starts.
    let output = edgecache(dir.path())
        .arg("check-config")
        .env("EDGECACHE_ENVIRONMENT", "production")
        .env(
            "EDGECACHE__SESSION__KEYS",
            r#"[{id="k1",secret="a-production-key-of-at-least-32-bytes-0123"}]"#,
        )
        .env("EDGECACHE__SESSION__ACTIVE_KEY", "k1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A node process, killed if the test ends before it stopped.
pub(crate) struct Node(pub(crate) Child);

impl Drop for Node {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The log lines a node printed so far (JSON).
type Logs = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// Starts the node on a free port and returns it with its address, once it listens.
pub(crate) fn start(dir: &std::path::Path) -> (Node, String) {
    start_with(dir, &[])
}

/// Like [`start`], with `EDGECACHE__…` settings in the environment.
pub(crate) fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> (Node, String) {
    let (node, address, _) = start_logged(dir, "5s", env);
    (node, address)
}

/// Like [`start_with`], with the store's busy timeout and the node's log lines.
fn start_logged(dir: &std::path::Path, busy_timeout: &str, env: &[(&str, &str)]) -> (Node, String, Logs) {
    let mut child = edgecache(dir)
        .env("EDGECACHE__SERVER__LISTEN", "127.0.0.1:0")
        .env("EDGECACHE__ORIGIN__BUSY_TIMEOUT", busy_timeout)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Node(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = Logs::default();
    std::thread::spawn({
        let logs = logs.clone();
        move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if parsed["fields"]["message"] == "edge node listening" {
                    let _ = tx.send(parsed["fields"]["port"].as_u64().unwrap());
                }
                logs.lock().unwrap().push(parsed);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the node starts listening");
    (child, format!("http://127.0.0.1:{port}"), logs)
}

#[tokio::test]
async fn a_failed_request_is_logged_once_with_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, address, logs) = start_logged(dir.path(), "100ms", &[]);
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("{address}/v1/products/p1"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();

    // The store's write lock is held past the busy timeout: the writes fail with 503.
    let locker = rusqlite::Connection::open(dir.path().join("data/edgecache.db")).unwrap();
    locker
        .execute_batch("BEGIN IMMEDIATE; UPDATE meta SET position = position;")
        .unwrap();
    let patch = |request_id: Option<&str>| {
        let mut request = client
            .patch(format!("{address}/v1/products/p1"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"price": 12.0}"#);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let theirs = patch(Some("lb-req.42")).await.unwrap();
    assert_eq!(theirs.status(), 503);
    assert_eq!(
        theirs.headers()["x-request-id"],
        "lb-req.42",
        "the caller's id is kept"
    );
    let ours = patch(None).await.unwrap();
    assert_eq!(ours.status(), 503);
    let our_id = ours.headers()["x-request-id"].to_str().unwrap().to_owned();
    locker.execute_batch("ROLLBACK").unwrap();

    let failed = |id: &str| {
        logs.lock()
            .unwrap()
            .iter()
            .filter(|line| {
                line["fields"]["message"] == "request failed" && line["fields"]["request_id"] == id
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while failed(&our_id).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["lb-req.42", our_id.as_str()] {
        let lines = failed(id);
        assert_eq!(lines.len(), 1, "one line for request {id}: {lines:?}");
        let fields = &lines[0]["fields"];
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(fields["status"], 503);
        assert_eq!(fields["problem"], "origin-unavailable");
        assert_eq!(fields["method"], "PATCH");
        assert_eq!(fields["path"], "/v1/products/p1");
        assert!(
            fields["cause"].as_str().is_some_and(|c| !c.is_empty()),
            "{fields}"
        );
    }
    assert!(
        failed(&ok_id).is_empty(),
        "a successful request is not logged as failed"
    );
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address) = start(dir.path());
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Hold the store's write lock so the next write stays in flight.
    let locker = rusqlite::Connection::open(dir.path().join("data/edgecache.db")).unwrap();
    locker
        .execute_batch("BEGIN IMMEDIATE; UPDATE meta SET position = position;")
        .unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        let address = address.clone();
        async move {
            client
                .patch(format!("{address}/v1/products/p1"))
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"price": 11.0}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the node waits for the in-flight write"
    );

    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight write finished"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node exits after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a graceful stop exits 0: {status}");

    // The write was committed: a node on the same store sees it.
    let (again, address) = start(dir.path());
    let reply: serde_json::Value = client
        .get(format!("{address}/v1/products/p1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["price"], 11.0);
    drop(again);
}
