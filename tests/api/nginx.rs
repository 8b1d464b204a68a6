//! The shipped load balancer, `deploy/nginx.conf`, started in front of test nodes:
//! the same file with only its listen port, its upstream servers and its files moved.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::TestApp;

/// A running nginx, stopped when dropped.
pub struct Nginx {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("EDGECACHE_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into()));
    assert!(
        path.exists(),
        "nginx is missing ({}): scripts/test.sh installs it (apt-get install nginx-light)",
        path.display()
    );
    path
}

/// `deploy/nginx.conf` in front of `nodes`.
pub fn start(nodes: &[&TestApp]) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::reserved_port();
    let servers: String = nodes
        .iter()
        .map(|n| {
            let host = n.address.trim_start_matches("http://");
            format!("        server {host} max_fails=2 fail_timeout=2s;\n")
        })
        .collect();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf")).unwrap();
    let upstream = "        server 127.0.0.1:8081 max_fails=2 fail_timeout=2s;\n        server 127.0.0.1:8082 max_fails=2 fail_timeout=2s;\n        server 127.0.0.1:8083 max_fails=2 fail_timeout=2s;\n";
    assert!(
        shipped.contains(upstream),
        "deploy/nginx.conf lists its three nodes"
    );
    let conf = shipped
        .replace("worker_processes 1;", "worker_processes 1;\ndaemon off;")
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"))
        .replace(upstream, &servers);
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(binary())
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        child,
        address: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}
