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

/// A node process, killed if the test ends before it stopped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the node on a free port and returns it with its address, once it listens.
fn start(dir: &std::path::Path) -> (Node, String) {
    let mut child = edgecache(dir)
        .env("EDGECACHE__SERVER__LISTEN", "127.0.0.1:0")
        .env("EDGECACHE__ORIGIN__BUSY_TIMEOUT", "5s")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Node(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if parsed["fields"]["message"] == "edge node listening" {
                let _ = tx.send(parsed["fields"]["port"].as_u64().unwrap());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the node starts listening");
    (child, format!("http://127.0.0.1:{port}"))
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
