//! Three edge-node processes behind a real nginx, over PostgreSQL with a replica that
//! applies WAL 300 ms late; a workload of 10,000 operations recorded as a history; one
//! node killed (SIGKILL) and restarted mid-run; and rows held locked `FOR UPDATE` past
//! the nodes' 300 ms write timeout (`loadgen --busy-rows`), so that writes are given
//! up while they run and retried with their `Idempotency-Key`. Each session keeps two
//! operations in flight (`--parallel 2`), an anonymous flood runs beside it (`--flood`,
//! a quarter of it with fresh session ids), and each node's session table holds a
//! tenth of the sessions (`session.max_live`), so sessions are evicted all the time
//! and rebuilt from their tokens. The history is checked for Terry's four session
//! guarantees, the strict counter, the writes' outcomes against the origin's state
//! before and after, and the bound of the written field's class (`profiles` bounded
//! to [`BOUND`] here). Midway the PostgreSQL primary stops for 9 s (three times the
//! nodes' `replica_max_lag`, `loadgen --stop-primary-after`): what failed meanwhile is
//! excused, what was served is checked like the rest. The same run with read-your-writes and monotonic reads off must
//! show violations — the checker can fail.
//!
//! Needs the cluster and nginx that scripts/test.sh starts and installs; runs as its
//! own test binary (it restarts nothing shared, but loads the machine).

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../api/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edgecache");

/// The sessions of each run.
const SESSIONS: usize = 50;

/// The freshness bound of the written field (`profiles.display_name`) in both runs,
/// in seconds: tighter than the default 10 s, so that a run of a minute tests it.
const BOUND: &str = "2";

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

/// Starts the primary when dropped if it is not running: loadgen killed while it had
/// the primary stopped must not leave the next test without one.
struct PrimaryBack<'a>(&'a pg::Cluster);

impl Drop for PrimaryBack<'_> {
    fn drop(&mut self) {
        let bin = PathBuf::from(std::env::var("EDGECACHE_TEST_PG_BIN").unwrap_or_default());
        let data = &self.0.primary_data;
        let pg_ctl = |action: &str| {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("pg_ctl"))
                .arg("-D")
                .arg(data)
                .args(["-w", "-t", "30", "-l"])
                .arg(data.join("log"))
                .arg(action)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !pg_ctl("status") {
            pg_ctl("start");
        }
    }
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

/// A plain HTTP/1.0 GET on loopback: the whole answer, or "" when it fails.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

/// The value of a counter line (`name{labels} value`) of a node's /metrics.
fn metric(port: u16, line: &str) -> u64 {
    get(port, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
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

/// One run: three nodes with `flags` (a TOML fragment appended to each node's
/// configuration) over a fresh database, nginx in front, the workload through nginx
/// (or, with `through_nginx` false, straight at the nodes and without the change
/// feed), node n1 killed and restarted mid-run; with `busy_rows`, loadgen reads the
/// origin's state from the primary and holds random rows locked for 800 ms at a
/// time; `loadgen_args` are more of loadgen's flags. Returns the checker's exit code,
/// its report and the history.
fn run(
    dir: &Path,
    name: &str,
    flags: &str,
    through_nginx: bool,
    busy_rows: bool,
    loadgen_args: &[&str],
) -> (i32, String, String) {
    let cluster = pg::cluster();
    let db = format!("{name}_{}", std::process::id());
    let primary = database(&cluster.primary, &db);
    let replica = cluster
        .replica
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{db}"))
        .unwrap();
    let ports: Vec<u16> = (0..3).map(|_| helpers::reserved_port()).collect();
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
                 [collections.profiles]\nfreshness = {{ class = \"bounded\", max_staleness = \"{BOUND}s\" }}\n\
                 [cluster.peers]\n{peers}\n{flags}\n",
                port = ports[i],
                feed = if through_nginx { "\"logical\"" } else { "\"off\"" }
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
            // EDGECACHE_TEST_NODE_LOG (an EDGECACHE_LOG filter) to debug a violation.
            .env(
                "EDGECACHE_LOG",
                std::env::var("EDGECACHE_TEST_NODE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_ready(ports[i], "edge node");
        Proc(child)
    };
    let mut nodes: Vec<Proc> = (0..3).map(start).collect();

    let nginx_port = helpers::reserved_port();
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
                &SESSIONS.to_string(),
                "--ops",
                "200",
                "--keys",
                "24",
            ])
            .args([
                "--pick",
                "random",
                "--seed",
                "7",
                "--duration-limit",
                "240",
                "--bound",
                BOUND,
            ])
            .args(loadgen_args)
            .args(if busy_rows {
                vec![
                    "--pg-url",
                    primary.as_str(),
                    "--busy-rows",
                    "0.3",
                    "--busy-hold",
                    "0.8",
                    "--retry-unknown",
                    "4",
                ]
            } else {
                vec![]
            })
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
    // Node n1's counts start at its restart.
    let rebuilt: Vec<u64> = ports
        .iter()
        .map(|p| metric(*p, "edgecache_sessions_opened_total{start=\"rebuilt\"}"))
        .collect();
    eprintln!(
        "{name}: sessions rebuilt from their tokens (not live on the node that served them): {} (n0, n1 since its \
         restart, n2: {rebuilt:?})",
        rebuilt.iter().sum::<u64>()
    );
    let history_text = std::fs::read_to_string(&history).unwrap();
    let check = Command::new(BIN).arg("check").arg(&history).output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    (check.status.code().unwrap_or(-1), report, history_text)
}

/// The operations of a history (first attempts), and the retries.
fn counts(history: &str) -> (usize, usize) {
    let ops = history.lines().filter(|l| l.contains("\"kind\":\"op\""));
    let (retries, first): (Vec<&str>, Vec<&str>) = ops.partition(|l| l.contains("\"attempt\":"));
    (first.len(), retries.len())
}

#[test]
fn ten_thousand_operations_in_parallel_beside_a_flood_with_a_node_killed_rows_held_busy_and_a_tiny_session_table_keep_every_guarantee(
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Writes given up after 300 ms while rows are held for 800 ms: they start, wait on
    // the lock, and are answered write-outcome-unknown; loadgen retries them. Each
    // node keeps a tenth of the sessions live: the rest live in their tokens.
    let flags = format!(
        "[session]\nwrite_timeout = \"300ms\"\nmax_live = {}\n",
        SESSIONS / 10
    );
    // The primary stops 10 s in, for three times the nodes' replica_max_lag (3 s).
    let cluster = pg::cluster();
    let data = cluster.primary_data.to_str().unwrap().to_owned();
    let bin = std::env::var("EDGECACHE_TEST_PG_BIN").unwrap();
    let _primary = PrimaryBack(&cluster);
    let adversity = [
        "--parallel",
        "2",
        "--flood",
        "100",
        "--pg-data",
        &data,
        "--pg-bin",
        &bin,
        "--stop-primary-after",
        "10",
        "--stop-primary-for",
        "9",
    ];
    let (code, report, history) = run(dir.path(), "guarded", &flags, true, true, &adversity);
    eprintln!("{report}");
    let (ops, retries) = counts(&history);
    assert!(ops >= 10_000, "{ops} operations recorded");
    assert!(
        retries > 0 && history.contains("\"kind\":\"origin_after\",\"session\""),
        "busy rows made writes of unknown outcome, retried; the origin's final state recorded"
    );
    assert!(
        history.contains("\"parallel\":2") && history.contains("\"kind\":\"flood\""),
        "sessions ran two operations at once, beside a flood"
    );
    let outage = history
        .lines()
        .find(|l| l.contains("\"kind\":\"outage\""))
        .unwrap_or("");
    assert!(
        outage.contains("\"started_ns\"") && !outage.contains("\"error\""),
        "the primary was stopped and started again: {outage}"
    );
    if code != 0 {
        // The history and the nodes' logs are what a violation is debugged with.
        let kept = dir.keep();
        panic!(
            "the checker found violations with every strategy on (history and logs kept in {}):\n{report}",
            kept.display()
        );
    }
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
    let (code, report, history) = run(dir.path(), "unguarded", flags, false, false, &[]);
    eprintln!("{report}");
    let (ops, _) = counts(&history);
    assert!(ops >= 10_000, "{ops} operations recorded");
    assert_eq!(code, 1, "the checker must report violations:\n{report}");
}
