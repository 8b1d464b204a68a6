//! The PostgreSQL cluster the test command starts (scripts/pg-cluster.sh): where it
//! is, how to stop and start its servers, and nodes configured over it.

use std::path::PathBuf;
use std::process::Command;

use edgecache_config::Settings;

/// The primary and the delayed streaming replica started by scripts/test.sh.
#[allow(dead_code)] // the failover tests use the server controls
pub struct Cluster {
    pub primary: String,
    pub replica: String,
    pub primary_data: PathBuf,
    pub replica_data: PathBuf,
    bin: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the PostgreSQL tests need the primary and replica that \
             scripts/test.sh starts (or `source scripts/pg-cluster.sh && pg_cluster_start`)"
        )
    })
}

pub fn cluster() -> Cluster {
    Cluster {
        primary: var("EDGECACHE_TEST_PG_PRIMARY"),
        replica: var("EDGECACHE_TEST_PG_REPLICA"),
        primary_data: var("EDGECACHE_TEST_PG_PRIMARY_DATA").into(),
        replica_data: var("EDGECACHE_TEST_PG_REPLICA_DATA").into(),
        bin: var("EDGECACHE_TEST_PG_BIN").into(),
    }
}

#[allow(dead_code)]
impl Cluster {
    fn pg_ctl(&self, data: &PathBuf, action: &str) {
        self.pg_ctl_mode(data, action, "fast");
    }

    fn pg_ctl_mode(&self, data: &PathBuf, action: &str, mode: &str) {
        let log = data.join("log");
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-w", "-t", "30", "-m", mode])
            .arg("-l")
            .arg(&log)
            .arg(action)
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl {action} {}", data.display());
    }

    pub fn stop_primary(&self) {
        self.pg_ctl(&self.primary_data, "stop");
    }

    /// Kills the primary without a shutdown checkpoint (`-m immediate`: every backend
    /// ends at once, as in a crash); the next start recovers from the WAL.
    pub fn kill_primary(&self) {
        self.pg_ctl_mode(&self.primary_data, "stop", "immediate");
    }

    /// Stops the primary until the guard drops, which starts it again (also when the
    /// test fails, so the tests after it find a primary).
    pub fn primary_down(&self) -> PrimaryDown<'_> {
        self.stop_primary();
        PrimaryDown { cluster: self }
    }

    fn primary_runs(&self) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.primary_data)
            .arg("status")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    pub fn start_primary(&self) {
        self.pg_ctl(&self.primary_data, "start");
    }

    pub fn stop_replica(&self) {
        self.pg_ctl(&self.replica_data, "stop");
    }

    pub fn start_replica(&self) {
        self.pg_ctl(&self.replica_data, "start");
    }

    /// Runs each statement on its own (ALTER SYSTEM refuses a transaction block) at
    /// `url` with psql, and returns what the last one printed.
    pub fn psql(&self, url: &str, statements: &[&str]) -> String {
        self.try_psql(url, statements)
            .unwrap_or_else(|error| panic!("psql {statements:?}: {error}"))
    }

    /// Like [`Cluster::psql`], with psql's error instead of a panic.
    pub fn try_psql(&self, url: &str, statements: &[&str]) -> Result<String, String> {
        let mut command = Command::new("timeout");
        command
            .arg("20")
            .arg(self.bin.join("psql"))
            .arg(url)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
            .env("PGCONNECT_TIMEOUT", "3");
        for statement in statements {
            command.arg("-c").arg(statement);
        }
        let output = command.output().expect("psql runs");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }

    /// The version of `id` in `table` as the replica has replayed it (0: absent, also
    /// while the replica has not replayed the table's creation).
    pub fn replica_version(&self, table: &str, id: &str) -> i64 {
        let sql = format!("SELECT coalesce(max(version), 0) FROM {table} WHERE id = '{id}'");
        self.try_psql(&self.replica, &[&sql])
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Makes the replica apply WAL `delay` late (`recovery_min_apply_delay`, e.g.
    /// `"3s"`) until the guard drops, which restores the cluster's delay (also when
    /// the test fails). Returns once the replica runs with the new delay.
    pub fn delay_replica(&self, delay: &str) -> ReplicaDelay<'_> {
        let set = format!("ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'");
        self.psql(&self.replica, &[&set, "SELECT pg_reload_conf()"]);
        self.await_replica_delay(delay);
        ReplicaDelay { cluster: self }
    }

    /// Waits (at most 10 s) until the replica shows `delay` as its apply delay.
    fn await_replica_delay(&self, delay: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.psql(&self.replica, &["SHOW recovery_min_apply_delay"]) == delay {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replica took on recovery_min_apply_delay = {delay}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Makes every commit on the primary wait for a synchronous standby that never
    /// answers (`synchronous_standby_names` naming no server) until the guard drops,
    /// which restores asynchronous commits.
    pub fn commits_wait_for_nobody(&self) -> PrimarySetting<'_> {
        self.set_on_primary("synchronous_standby_names", "'edgecache_nobody'")
    }

    /// Makes the primary's WAL writer wait 10 s between rounds (its most) until the
    /// guard drops. A commit with `synchronous_commit = off` then stays in the WAL
    /// buffers, unwritten and unsent to the replica, until a later synchronous commit
    /// or a full page makes the writer write it.
    pub fn wal_writer_waits(&self) -> PrimarySetting<'_> {
        self.set_on_primary("wal_writer_delay", "'10s'")
    }

    /// Sets `name` to `value` on the primary (`ALTER SYSTEM`, then a reload) until the
    /// guard drops.
    fn set_on_primary(&self, name: &'static str, value: &str) -> PrimarySetting<'_> {
        let set = format!("ALTER SYSTEM SET {name} = {value}");
        self.psql(&self.primary, &[&set, "SELECT pg_reload_conf()"]);
        PrimarySetting { cluster: self, name }
    }

    /// The primary's URL for a login role of its own (superuser, created if absent)
    /// whose sessions run with `setting` (e.g. `"synchronous_commit = off"`).
    pub fn primary_as(&self, role: &str, setting: &str) -> String {
        let create = format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') \
             THEN CREATE ROLE {role} SUPERUSER LOGIN; END IF; END $$"
        );
        let set = format!("ALTER ROLE {role} SET {setting}");
        self.psql(&self.primary, &[&create, &set]);
        self.primary.replacen("://postgres@", &format!("://{role}@"), 1)
    }

    /// Settings of a node over this cluster with `extra` TOML (collections of the
    /// test, flags) layered on top, and the tables of its collections migrated.
    pub async fn settings(&self, extra: &str) -> Settings {
        let overrides = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nshutdown_timeout = \"1s\"\n\
             [origin]\nkind = \"postgres\"\nprimary = {:?}\nreplicas = [{:?}]\npool_size = 8\n\
             connect_timeout = \"1s\"\nstatement_timeout = \"2s\"\nreplica_wait = \"1s\"\n\
             replica_max_lag = \"3s\"\nhealth_interval = \"50ms\"\n{extra}",
            self.primary, self.replica
        );
        let settings = edgecache_config::load(&edgecache_config::Sources {
            dir: Some("/nonexistent".into()),
            skip_env: true,
            overrides: Some(overrides),
            ..Default::default()
        })
        .expect("test settings are valid");
        edgecache_services::migrate(&settings)
            .await
            .expect("the tables are created");
        settings
    }
}

/// The primary stopped; dropping it starts it again.
#[allow(dead_code)]
pub struct PrimaryDown<'a> {
    cluster: &'a Cluster,
}

impl Drop for PrimaryDown<'_> {
    fn drop(&mut self) {
        if !self.cluster.primary_runs() {
            self.cluster.start_primary();
        }
    }
}

/// A setting of the primary changed until the guard drops, which resets it — also
/// when the test fails, and also if the primary is down then: it is started first,
/// so the tests after it find the cluster as it was.
#[allow(dead_code)]
pub struct PrimarySetting<'a> {
    cluster: &'a Cluster,
    name: &'static str,
}

impl Drop for PrimarySetting<'_> {
    fn drop(&mut self) {
        let c = self.cluster;
        if !c.primary_runs() {
            c.start_primary();
        }
        let reset = format!("ALTER SYSTEM RESET {}", self.name);
        c.psql(&c.primary, &[&reset, "SELECT pg_reload_conf()"]);
    }
}

/// The replica running with another apply delay; dropping it restores the delay the
/// cluster was started with.
#[allow(dead_code)]
pub struct ReplicaDelay<'a> {
    cluster: &'a Cluster,
}

impl Drop for ReplicaDelay<'_> {
    fn drop(&mut self) {
        let c = self.cluster;
        c.psql(
            &c.replica,
            &[
                "ALTER SYSTEM RESET recovery_min_apply_delay",
                "SELECT pg_reload_conf()",
            ],
        );
        let ms: u64 = std::env::var("EDGECACHE_TEST_PG_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(300);
        // As SHOW prints it: the largest unit that divides it.
        let shown = match ms {
            0 => "0".to_owned(),
            ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
            ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
            ms => format!("{ms}ms"),
        };
        c.await_replica_delay(&shown);
    }
}

/// A collection of its own for each test (its own table), with long cache windows so
/// only watermarks and the change feed make a node read the origin.
pub fn collection(name: &str) -> String {
    format!(
        r#"
[collections.{name}]
freshness = {{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }}
[collections.{name}.fields]
title = {{ type = "string" }}
n = {{ type = "integer" }}
"#
    )
}

/// A collection whose fields are all bounded to `max_staleness` (`"2s"`), like carts.
#[allow(dead_code)]
pub fn bounded(name: &str, max_staleness: &str) -> String {
    format!(
        r#"
[collections.{name}]
freshness = {{ class = "bounded", max_staleness = "{max_staleness}" }}
[collections.{name}.fields]
total = {{ type = "number" }}
"#
    )
}

/// A collection with a strict counter and bounded price, like products.
pub fn shop(name: &str) -> String {
    format!(
        r#"
[collections.{name}]
freshness = {{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }}
[collections.{name}.fields]
label = {{ type = "string" }}
price = {{ type = "number", freshness = {{ class = "bounded", max_staleness = "2s" }} }}
stock = {{ type = "integer", min = 0, freshness = {{ class = "strict" }} }}
"#
    )
}
