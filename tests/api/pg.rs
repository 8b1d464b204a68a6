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

    pub fn start_primary(&self) {
        self.pg_ctl(&self.primary_data, "start");
    }

    pub fn stop_replica(&self) {
        self.pg_ctl(&self.replica_data, "stop");
    }

    pub fn start_replica(&self) {
        self.pg_ctl(&self.replica_data, "start");
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
