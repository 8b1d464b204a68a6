//! Three edge-node processes behind a real nginx, over PostgreSQL with a replica that
//! applies WAL 300 ms late; a workload of 10,000 operations recorded as a history; one
//! node killed (SIGKILL) and restarted mid-run; the history checked for Terry's four
//! session guarantees and the strict counter. The same run with read-your-writes and
//! monotonic reads off must show violations — the checker can fail.
//!
//! Needs the cluster and nginx that scripts/test.sh starts and installs; runs as its
//! own test binary (it restarts nothing shared, but loads the machine).

#[path = "../api/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edgecache");

/// The runs load every core: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx, stopped with SIGTERM when dropped (its master then stops its workers).
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("EDGECACHE_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into()));
    assert!(
        path.exists(),
        "nginx is missing ({}): scripts/test.sh installs it (apt-get install nginx-light)",
        path.display()
    );
    path
}

/// A database of its own on the test cluster, so runs never share items.
fn database(url: &str, name: &str) -> String {
    let status = Command::new("psql")
        .arg(url)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql runs");
    assert!(status.success(), "CREATE DATABASE {name}");
    url.rsplit_once('/')
        .map(|(base, _)| format!("{base}/{name}"))
        .unwrap()
}

fn wait_ready(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} on port {port} never became ready");
}

/// One run: three nodes with `flags` over a fresh database, nginx in front, the
/// workload through nginx (or, with `through_nginx` false, straight at the nodes and
/// without the change feed), node n1 killed and restarted mid-run. Returns the
/// checker's exit code, its report and the number of operations.
fn run(dir: &Path, name: &str, flags: &str, through_nginx: bool) -> (i32, String, usize) {
    let cluster = pg::cluster();
    let db = format!("{name}_{}", std::process::id());
    let primary = database(&cluster.primary, &db);
    let replica = cluster
        .replica
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{db}"))
        .unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let configs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let peers: String = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("n{j} = \"127.0.0.1:{}\"\n", ports[j]))
                .collect();
            let config = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nshutdown_timeout = \"2s\"\n\
                 [node]\nid = \"n{i}\"\nregion = \"test\"\n\
                 [origin]\nkind = \"postgres\"\nprimary = {primary:?}\nreplicas = [{replica:?}]\n\
                 pool_size = 8\nreplica_wait = \"1s\"\nreplica_max_lag = \"3s\"\nhealth_interval = \"50ms\"\n\
                 change_feed = {feed}\n\
                 [cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"300ms\"\n\
                 secrets = [{{ id = \"c1\", secret = \"the-test-cluster-secret-0123456789abcdef\" }}]\n\
                 [cluster.peers]\n{peers}\n{flags}\n",
                port = ports[i],
                feed = through_nginx
            );
            let path = dir.join(format!("{name}-n{i}.toml"));
            std::fs::write(&path, config).unwrap();
            path
        })
        .collect();
    let migrated = Command::new(BIN)
        .arg("migrate")
        .arg("--config")
        .arg(&configs[0])
        .status()
        .unwrap();
    assert!(migrated.success(), "edgecache migrate");

    let start = |i: usize| {
        let log = std::fs::File::create(dir.join(format!("{name}-n{i}.log"))).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&configs[i])
            .current_dir(dir)
            .env("EDGECACHE_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_ready(ports[i], "edge node");
        Proc(child)
    };
    let mut nodes: Vec<Proc> = (0..3).map(start).collect();

    let nginx_port = free_port();
    let servers: String = ports
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=2 fail_timeout=2s;\n"))
        .collect();
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
        .unwrap()
        .replace("worker_processes 1;", "worker_processes 1;\ndaemon off;")
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{nginx_port}"))
        .replace(
            "        server 127.0.0.1:8081 max_fails=2 fail_timeout=2s;\n        server 127.0.0.1:8082 max_fails=2 fail_timeout=2s;\n        server 127.0.0.1:8083 max_fails=2 fail_timeout=2s;\n",
            &servers,
        );
    let conf_path = dir.join(format!("{name}-nginx.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let _nginx = Nginx(
        Command::new(nginx())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", nginx_port)).is_err() {
        assert!(Instant::now() < deadline, "nginx never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let targets = if through_nginx {
        format!("http://127.0.0.1:{nginx_port}")
    } else {
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let history = dir.join(format!("{name}-history.jsonl"));
    let mut loadgen = Proc(
        Command::new(BIN)
            .args([
                "loadgen",
                "--targets",
                &targets,
                "--sessions",
                "50",
                "--ops",
                "200",
                "--keys",
                "24",
            ])
            .args(["--pick", "random", "--seed", "7", "--duration-limit", "240"])
            .arg("--out")
            .arg(&history)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // Mid-run, node n1 dies without warning, then comes back.
    std::thread::sleep(Duration::from_secs(3));
    let victim = &mut nodes[1];
    Command::new("kill")
        .args(["-KILL", &victim.0.id().to_string()])
        .status()
        .unwrap();
    let _ = victim.0.wait();
    std::thread::sleep(Duration::from_secs(1));
    nodes[1] = start(1);

    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = loadgen.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the workload finished in time");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "loadgen ran");
    let ops = std::fs::read_to_string(&history)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"op\""))
        .count();
    let check = Command::new(BIN).arg("check").arg(&history).output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    (check.status.code().unwrap_or(-1), report, ops)
}

#[test]
fn ten_thousand_operations_through_nginx_with_a_node_killed_keep_every_session_guarantee() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (code, report, ops) = run(dir.path(), "guarded", "", true);
    eprintln!("{report}");
    assert!(ops >= 10_000, "{ops} operations recorded");
    assert_eq!(
        code, 0,
        "the checker found violations with every strategy on:\n{report}"
    );
}

#[test]
fn with_read_your_writes_and_monotonic_reads_off_the_checker_finds_violations() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // No stickiness at all (the nodes are targeted directly, at random), so each
    // session's reads roam over nodes whose caches and replica lag behind its writes.
    // The change feed also goes: it makes every node drop what another node changed,
    // which by itself spares most sessions a stale read.
    let flags = "[flags.defaults]\nread-your-writes = \"off\"\nmonotonic-reads = \"off\"\nsession-affinity = \"off\"\n";
    let (code, report, ops) = run(dir.path(), "unguarded", flags, false);
    eprintln!("{report}");
    assert!(ops >= 10_000, "{ops} operations recorded");
    assert_eq!(code, 1, "the checker must report violations:\n{report}");
}
