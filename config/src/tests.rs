//! Loading, layering and validation of the configuration.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use edgecache_flags::{Rollout, Strategy};
use secrecy::ExposeSecret;

use crate::load::load_with_env;
use crate::{effective_toml, load, ConfigError, Freshness, OriginSettings, Settings, Sources};

const SECRET: &str = "edgecache-development-secret-change-me-0123456789";

/// A token key of a deployment's own (outside `local` and `test` the development key
/// is refused).
const OWN_KEY: &str = "[session]\nactive_key = \"k1\"\nkeys = [{ id = \"k1\", secret = \"a-key-of-our-own-of-at-least-32-bytes\" }]\n";

/// Sources isolated from the working directory and the process environment.
fn isolated(overrides: &str) -> Sources {
    Sources {
        dir: Some("/nonexistent/edgecache-config-test".into()),
        environment: Some("test".into()),
        file: None,
        skip_env: true,
        overrides: Some(overrides.to_owned()),
    }
}

fn with_overrides(overrides: &str) -> Result<Settings, ConfigError> {
    load(&isolated(overrides))
}

/// Loads with `vars` as the whole environment.
fn with_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let sources = Sources {
        skip_env: false,
        overrides: None,
        ..isolated("")
    };
    let env = vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
    load_with_env(&sources, env)
}

/// The key an invalid setting names, or panics with the error.
fn invalid_key(result: Result<Settings, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid(invalid)) => invalid.key,
        Err(other) => panic!("expected an invalid setting, got {other}"),
        Ok(_) => panic!("expected an invalid setting, got a valid configuration"),
    }
}

fn base() -> Settings {
    with_overrides("").expect("the base configuration loads")
}

// ------------------------------------------------------------------ base

#[test]
fn base_config_loads_and_validates() {
    let settings = base();
    settings.validate().expect("base is valid");
    assert_eq!(settings.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(settings.server.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(settings.session.active_key, "dev");
    assert_eq!(settings.session.keys[0].secret.expose_secret(), SECRET);
    assert_eq!(
        settings.flags.defaults.get(&Strategy::ReadYourWrites),
        Some(&Rollout::On)
    );
    assert_eq!(settings.flags.defaults.len(), Strategy::ALL.len());
    let products = &settings.collections["products"];
    assert_eq!(
        products.freshness_of(&products.fields["stock"]),
        Freshness::Strict
    );
    assert_eq!(settings.seed["products"]["p1"]["stock"], 40);
    assert_eq!(settings.seed["products"]["p2"]["price"], 49.0);
    let OriginSettings::Embedded { read_connections, .. } = settings.origin else {
        panic!("the base configuration uses the embedded origin")
    };
    assert_eq!(read_connections, 4);
}

// ------------------------------------------------------------------ layering

#[test]
fn overrides_replace_single_keys_and_keep_the_rest() {
    let settings = with_overrides(
        r#"
        server.listen = "0.0.0.0:9000"
        [flags.defaults]
        monotonic_reads = "25%"
        "#,
    )
    .unwrap();
    assert_eq!(settings.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(settings.server.max_body_bytes, 65536, "the rest is kept");
    // `monotonic_reads` overrides the base's `monotonic-reads`, it does not sit beside it.
    assert_eq!(
        settings.flags.defaults[&Strategy::MonotonicReads],
        Rollout::Percent(25)
    );
}

#[test]
fn a_new_freshness_class_replaces_the_one_below() {
    let settings = with_overrides(
        r#"
        [collections.products]
        freshness = { class = "bounded", max_staleness = "3s" }
        [collections.profiles.fields.bio]
        type = "string"
        freshness = { class = "strict" }
        "#,
    )
    .unwrap();
    assert_eq!(
        settings.collections["products"].freshness,
        Freshness::Bounded {
            max_staleness: Duration::from_secs(3)
        }
    );
    assert_eq!(
        settings.collections["profiles"].fields["bio"].freshness,
        Some(Freshness::Strict)
    );
}

#[test]
fn the_same_freshness_class_merges_into_the_one_below() {
    let settings =
        with_overrides(r#"collections.products.freshness = { class = "relaxed", ttl = "0s" }"#).unwrap();
    assert_eq!(
        settings.collections["products"].freshness,
        Freshness::Relaxed {
            ttl: Duration::ZERO,
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(600),
        }
    );
}

#[test]
fn environment_file_then_config_file_then_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("staging.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:7001\"\nworkers = 3\n[node]\nregion = \"eu-west\"\n{OWN_KEY}"
        ),
    )
    .unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "[server]\nworkers = 5\n[node]\nid = \"edge-9\"\n").unwrap();

    let sources = Sources {
        dir: Some(dir.path().to_owned()),
        environment: Some("staging".into()),
        file: Some(file.clone()),
        skip_env: true,
        overrides: Some("node.id = \"edge-10\"".into()),
    };
    let settings = load(&sources).unwrap();
    assert_eq!(settings.server.listen, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(settings.node.region, "eu-west");
    assert_eq!(
        settings.server.workers, 5,
        "--config overrides the environment file"
    );
    assert_eq!(settings.node.id, "edge-10", "overrides override --config");

    // Another environment has no file there: skipped.
    let other = Sources {
        environment: Some("production".into()),
        file: None,
        overrides: Some(OWN_KEY.into()),
        ..sources.clone()
    };
    assert_eq!(load(&other).unwrap().server.listen.port(), 8080);

    // A missing --config file is an error that names it.
    let missing = Sources {
        file: Some(dir.path().join("absent.toml")),
        ..sources.clone()
    };
    let error = load(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::File { .. }), "{error}");
    assert!(error.to_string().contains("absent.toml"), "{error}");

    // A syntax error names the file.
    std::fs::write(&file, "[server\n").unwrap();
    let error = load(&sources).unwrap_err().to_string();
    assert!(error.contains("node.toml"), "{error}");
}

#[test]
fn environment_name_cannot_leave_the_directory() {
    let sources = Sources {
        environment: Some("../secrets".into()),
        ..isolated("")
    };
    let error = load(&sources).unwrap_err();
    assert!(matches!(error, ConfigError::Env { .. }), "{error}");
}

// ------------------------------------------------------------------ environment variables

#[test]
fn env_vars_override_nested_keys() {
    let settings = with_env(&[
        ("EDGECACHE__SERVER__LISTEN", "0.0.0.0:9090"),
        ("EDGECACHE__SERVER__WORKERS", "8"),
        ("EDGECACHE__FLAGS__DEFAULTS__READ_YOUR_WRITES", "off"),
        ("EDGECACHE__FLAGS__DEFAULTS__REPLICA_WAIT", "false"),
        ("EDGECACHE__FLAGS__DEFAULTS__STRICT_FIELDS", "50%"),
        ("EDGECACHE__ORIGIN__READ_CONNECTIONS", "8"),
        ("EDGECACHE__CACHE__FILL_DEADLINE", "500ms"),
        ("EDGECACHE__COLLECTIONS__PRODUCTS__FIELDS__PRICE__MAX", "1000.5"),
        ("EDGECACHE__NODE__ID", "007"),
        ("EDGECACHE__NODE__REGION", "1e3"),
        ("EDGECACHE_ENVIRONMENT_UNRELATED", "x"),
        ("PATH", "/usr/bin"),
    ])
    .unwrap();
    assert_eq!(
        settings.server.listen,
        "0.0.0.0:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.server.workers, 8);
    let defaults = &settings.flags.defaults;
    assert_eq!(defaults.len(), Strategy::ALL.len(), "no duplicate strategy keys");
    assert_eq!(defaults[&Strategy::ReadYourWrites], Rollout::Off);
    assert_eq!(defaults[&Strategy::ReplicaWait], Rollout::Off);
    assert_eq!(defaults[&Strategy::StrictFields], Rollout::Percent(50));
    assert_eq!(defaults[&Strategy::MonotonicReads], Rollout::On);
    let OriginSettings::Embedded { read_connections, .. } = settings.origin else {
        panic!("the base configuration uses the embedded origin")
    };
    assert_eq!(read_connections, 8, "a number inside a tagged table");
    assert_eq!(settings.cache.fill_deadline, Duration::from_millis(500));
    assert_eq!(settings.collections["products"].fields["price"].max, Some(1000.5));
    assert_eq!(settings.node.id, "007", "strings are not re-parsed as numbers");
    assert_eq!(settings.node.region, "1e3");
}

#[test]
fn env_var_sets_token_keys_as_a_toml_array() {
    let secret = "production-secret-of-at-least-32-bytes!";
    let settings = with_env(&[
        (
            "EDGECACHE__SESSION__KEYS",
            &format!(r#"[{{id="k2",secret="{secret}"}}, {{id="dev",secret="{SECRET}"}}]"#),
        ),
        ("EDGECACHE__SESSION__ACTIVE_KEY", "k2"),
    ])
    .unwrap();
    assert_eq!(settings.session.keys.len(), 2);
    assert_eq!(settings.session.keys[0].id, "k2");
    assert_eq!(settings.session.keys[0].secret.expose_secret(), secret);
    assert_eq!(settings.session.active_key, "k2");
}

#[test]
fn env_var_errors_name_the_variable_or_key() {
    let error = with_env(&[("EDGECACHE__SESSION__KEYS", r#"[{id="k2",secret="hush-hush"#)]).unwrap_err();
    assert!(
        matches!(&error, ConfigError::Env { var, .. } if var == "EDGECACHE__SESSION__KEYS"),
        "{error}"
    );
    assert!(!error.to_string().contains("hush"), "never echo a value: {error}");
    let error = with_env(&[("EDGECACHE__SESSION__KEYS", "[]\nnode = 1")]).unwrap_err();
    assert!(matches!(error, ConfigError::Env { .. }), "{error}");
    let error = with_env(&[("EDGECACHE__SERVER____LISTEN", "x")]).unwrap_err();
    assert!(matches!(error, ConfigError::Env { .. }), "{error}");
    let error = with_env(&[("EDGECACHE__SERVER__LISTN", "0.0.0.0:1")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("listn"), "{error}");
    let error = with_env(&[("EDGECACHE__FLAGS__DEFAULTS__READ_YOUR_WRITES", "maybe")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("maybe"), "{error}");
}

/// The only test that touches the process environment (tests run in parallel threads);
/// its variables are set nowhere else and every other test skips the environment.
#[test]
fn real_process_env_vars_are_read() {
    std::env::set_var("EDGECACHE__SERVER__SHUTDOWN_TIMEOUT", "3s");
    std::env::set_var("EDGECACHE__FLAGS__DEFAULTS__SESSION_AFFINITY", "off");
    let sources = Sources {
        skip_env: false,
        overrides: None,
        ..isolated("")
    };
    let result = load(&sources);
    std::env::remove_var("EDGECACHE__SERVER__SHUTDOWN_TIMEOUT");
    std::env::remove_var("EDGECACHE__FLAGS__DEFAULTS__SESSION_AFFINITY");
    let settings = result.unwrap();
    assert_eq!(settings.server.shutdown_timeout, Duration::from_secs(3));
    assert_eq!(settings.flags.defaults[&Strategy::SessionAffinity], Rollout::Off);
}

// ------------------------------------------------------------------ errors name the key

#[test]
fn a_value_of_the_wrong_form_names_its_key() {
    let error = with_overrides(r#"server.listen = "nope""#).unwrap_err();
    assert!(matches!(error, ConfigError::Parse(_)), "{error}");
    assert!(error.to_string().contains("server.listen"), "{error}");

    let error = with_overrides(r#"cache.fill_deadline = "soon""#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("cache.fill_deadline"), "{error}");

    let error = with_overrides("server.unknown = 1").unwrap_err().to_string();
    assert!(error.contains("unknown"), "{error}");
}

#[test]
fn invalid_settings_name_their_key() {
    let cases: &[(&str, &str)] = &[
        ("server.max_body_bytes = 10", "server.max_body_bytes"),
        ("server.max_body_bytes = 16777217", "server.max_body_bytes"),
        (r#"server.shutdown_timeout = "0s""#, "server.shutdown_timeout"),
        (
            r#"server.readiness_interval = "1ms""#,
            "server.readiness_interval",
        ),
        (r#"node.id = """#, "node.id"),
        (r#"node.region = "eu west""#, "node.region"),
        (&format!("node.id = \"{}\"", "a".repeat(65)), "node.id"),
        ("origin.read_connections = 0", "origin.read_connections"),
        ("origin.read_connections = 65", "origin.read_connections"),
        (r#"origin.busy_timeout = "0s""#, "origin.busy_timeout"),
        (r#"origin.path = """#, "origin.path"),
        ("cache.capacity_bytes = 1024", "cache.capacity_bytes"),
        ("cache.estimated_items = 0", "cache.estimated_items"),
        (r#"cache.fill_deadline = "0s""#, "cache.fill_deadline"),
        (r#"cache.fill_deadline = "61s""#, "cache.fill_deadline"),
        (r#"session.idle_lease = "500ms""#, "session.idle_lease"),
        ("session.max_live = 0", "session.max_live"),
        ("session.max_pending_writes = 1025", "session.max_pending_writes"),
        ("session.max_token_items = 25", "session.max_token_items"),
        (r#"session.write_timeout = "0s""#, "session.write_timeout"),
        (r#"session.active_key = "missing""#, "session.active_key"),
        ("session.keys = []", "session.keys"),
        (
            &format!(
                r#"session.keys = [{{id = "dev", secret = "{SECRET}"}}, {{id = "dev", secret = "{SECRET}"}}]"#
            ),
            "session.keys[1].id",
        ),
        (
            &format!(
                r#"session.keys = [{{id = "dev", secret = "{SECRET}"}}, {{id = "way-too-long-key-id", secret = "{SECRET}"}}]"#
            ),
            "session.keys[1].id",
        ),
        (
            r#"session.keys = [{id = "dev", secret = "short"}]"#,
            "session.keys[0].secret",
        ),
        (r#"admin.metrics_token = "too-short""#, "admin.metrics_token"),
        (
            r#"admin.metrics_token = "a metrics token with spaces, 40 bytes long""#,
            "admin.metrics_token",
        ),
        ("api.max_id_bytes = 0", "api.max_id_bytes"),
        ("api.max_id_bytes = 513", "api.max_id_bytes"),
        ("api.max_batch = 1001", "api.max_batch"),
        ("api.max_user_id_bytes = 0", "api.max_user_id_bytes"),
        ("api.max_user_id_bytes = 4097", "api.max_user_id_bytes"),
        (
            "[collections.Products]\nfreshness = { class = \"strict\" }\nfields.name = { type = \"string\" }",
            "collections.Products",
        ),
        (
            "[collections.empty]\nfreshness = { class = \"strict\" }\nfields = {}",
            "collections.empty.fields",
        ),
        (
            r#"collections.products.fields.id = { type = "string" }"#,
            "collections.products.fields.id",
        ),
        (
            r#"collections.products.fields.2nd = { type = "string" }"#,
            "collections.products.fields.2nd",
        ),
        (
            r#"collections.products.fields.name = { type = "string", min = 1 }"#,
            "collections.products.fields.name.min",
        ),
        (
            r#"collections.products.fields.stock = { type = "integer", min = 5, max = 1 }"#,
            "collections.products.fields.stock.min",
        ),
        (
            r#"collections.products.fields.stock = { type = "integer", max = 2.5 }"#,
            "collections.products.fields.stock.max",
        ),
        (
            r#"collections.carts.freshness = { class = "bounded", max_staleness = "0s" }"#,
            "collections.carts.freshness.max_staleness",
        ),
        (
            r#"collections.products.fields.price.freshness = { class = "bounded", max_staleness = "0s" }"#,
            "collections.products.fields.price.freshness.max_staleness",
        ),
        (r#"seed.orders.o1 = { total = 1 }"#, "seed.orders"),
        (
            r#"seed.products."p 4" = { name = "x" }"#,
            r#"seed.products."p 4""#,
        ),
        (r#"seed.products.p1.colour = "red""#, "seed.products.p1.colour"),
        (r#"seed.products.p1.id = "p1""#, "seed.products.p1.id"),
        (r#"seed.products.p1.stock = "many""#, "seed.products.p1.stock"),
        ("seed.products.p1.stock = 1.5", "seed.products.p1.stock"),
        ("seed.products.p1.price = -1", "seed.products.p1.price"),
        // What an origin could not store exactly.
        (
            "seed.products.p1.price = 9007199254740993",
            "seed.products.p1.price",
        ),
        (r#"seed.products.p1.name = "a\u0000b""#, "seed.products.p1.name"),
        (
            r#"seed.products.p1.tags = { "k\u0000" = 1 }"#,
            "seed.products.p1.tags",
        ),
        (
            r#"seed.products.p1.tags = ["ok", "\u0000"]"#,
            "seed.products.p1.tags",
        ),
        (
            "collections.products.fields.stock.max = 10",
            "seed.products.p1.stock",
        ),
    ];
    for (overrides, key) in cases {
        let result = with_overrides(overrides);
        assert_eq!(&invalid_key(result), key, "for {overrides:?}");
    }
    // An id longer than api.max_id_bytes.
    let result = with_overrides("api.max_id_bytes = 4\n[seed.products.p1234]\nname = \"x\"");
    assert_eq!(invalid_key(result), "seed.products.p1234");
}

#[test]
fn error_messages_are_specific() {
    let error = with_overrides(r#"session.active_key = "missing""#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("`session.active_key`"), "{error}");
    assert!(error.contains("missing") && error.contains("dev"), "{error}");

    let error = with_overrides(r#"session.keys = [{id = "dev", secret = "short"}]"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("32 bytes"), "{error}");
    assert!(
        !error.contains("short"),
        "a secret never appears in a message: {error}"
    );

    let error = with_overrides(r#"seed.products.p1.colour = "red""#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field"), "{error}");
}

#[test]
fn permissive_values_are_accepted() {
    let settings = with_overrides(
        r#"
        session.max_token_items = 0
        session.max_pending_writes = 0
        cache.plain_ttl = "0s"
        collections.products.freshness = { class = "relaxed", ttl = "0s", stale_while_revalidate = "0s", stale_if_error = "0s" }
        collections.products.fields.price = { type = "number", min = 0, max = 100 }
        seed.products.p1.price = 0.5
        seed.products.p1.tags = { any = ["json", 1] }
        seed.products."sku:A-1.b_2" = { name = "ok" }
        "#,
    );
    settings.unwrap();
}

#[test]
fn seed_values_are_loaded_in_the_form_the_origins_store() {
    let settings = with_overrides(
        r#"
        seed.products.p1.price = 12
        seed.products.p1.stock = 9223372036854775807
        seed.products.p1.tags = { zero = -0.0, list = [1, 2.5] }
        "#,
    )
    .unwrap();
    let p1 = &settings.seed["products"]["p1"];
    assert_eq!(p1["price"].to_string(), "12.0", "a number field holds doubles");
    assert_eq!(p1["stock"].to_string(), "9223372036854775807");
    assert_eq!(
        p1["tags"].to_string(),
        r#"{"list":[1,2.5],"zero":0.0}"#,
        "jsonb has no negative zero"
    );
}

// ------------------------------------------------------------------ environments

/// Loads in `environment` with `vars` as the whole process environment.
fn in_environment(environment: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let sources = Sources {
        environment: Some(environment.into()),
        skip_env: false,
        overrides: None,
        ..isolated("")
    };
    let env = vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
    load_with_env(&sources, env)
}

#[test]
fn the_development_key_is_refused_outside_local_and_test() {
    for environment in ["local", "test"] {
        in_environment(environment, &[]).expect("the development key is fine here");
    }
    for environment in ["production", "staging"] {
        let error = in_environment(environment, &[]).unwrap_err().to_string();
        assert!(error.contains("`session.keys`"), "{error}");
        assert!(error.contains(environment), "{error}");
        assert!(error.contains("EDGECACHE__SESSION__KEYS="), "says how: {error}");
        assert!(error.contains("--config"), "{error}");
        assert!(!error.contains(SECRET), "never shows a secret: {error}");
    }
    // Under another id, or beside a key of one's own: still the development key.
    let own = "a-production-key-of-at-least-32-bytes-0123";
    let renamed = in_environment(
        "production",
        &[
            (
                "EDGECACHE__SESSION__KEYS",
                &format!(r#"[{{id="k1",secret="{own}"}},{{id="old",secret="{SECRET}"}}]"#),
            ),
            ("EDGECACHE__SESSION__ACTIVE_KEY", "k1"),
        ],
    );
    assert_eq!(invalid_key(renamed), "session.keys");

    let settings = in_environment(
        "production",
        &[
            (
                "EDGECACHE__SESSION__KEYS",
                &format!(r#"[{{id="k1",secret="{own}"}}]"#),
            ),
            ("EDGECACHE__SESSION__ACTIVE_KEY", "k1"),
        ],
    )
    .expect("a key of one's own");
    assert_eq!(settings.session.active_key, "k1");
}

#[test]
fn the_sample_group_loads_in_production_with_its_secrets_from_the_environment() {
    let key = r#"[{id="k1",secret="a-production-key-of-at-least-32-bytes-0123"}]"#;
    let cluster = r#"[{id="c1",secret="a-cluster-secret-of-at-least-32-bytes-0123"}]"#;
    for i in 1..=3 {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/node-{i}.toml"));
        let load = |vars: &[(&str, &str)]| {
            let sources = Sources {
                file: Some(file.clone()),
                environment: Some("production".into()),
                skip_env: false,
                overrides: None,
                ..isolated("")
            };
            let env = vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
            load_with_env(&sources, env)
        };
        let settings = load(&[
            ("EDGECACHE__SESSION__KEYS", key),
            ("EDGECACHE__SESSION__ACTIVE_KEY", "k1"),
            ("EDGECACHE__CLUSTER__SECRETS", cluster),
        ])
        .unwrap_or_else(|e| panic!("deploy/node-{i}.toml: {e}"));
        assert_eq!(settings.cluster.peers.len(), 2);
        assert_eq!(settings.cluster.active().unwrap().id, "c1");
        assert_eq!(
            invalid_key(load(&[
                ("EDGECACHE__SESSION__KEYS", key),
                ("EDGECACHE__SESSION__ACTIVE_KEY", "k1")
            ])),
            "cluster.secrets"
        );
        assert_eq!(
            invalid_key(load(&[("EDGECACHE__CLUSTER__SECRETS", cluster)])),
            "session.keys"
        );
    }
}

// ------------------------------------------------------------------ cluster secrets

const CLUSTER_SECRET: &str = "a-cluster-secret-of-at-least-32-bytes-0123";

#[test]
fn a_node_with_peers_needs_a_cluster_secret_and_a_solo_node_none() {
    base().validate().expect("a solo node needs no cluster secret");
    let peers = "[cluster.peers]\nedge-2 = \"10.0.0.2:8080\"\n";
    let error = with_overrides(peers).unwrap_err().to_string();
    assert!(error.contains("`cluster.secrets`"), "{error}");
    assert!(error.contains("EDGECACHE__CLUSTER__SECRETS"), "says how: {error}");

    let one = with_overrides(&format!(
        "{peers}[[cluster.secrets]]\nid = \"c1\"\nsecret = \"{CLUSTER_SECRET}\"\n"
    ))
    .unwrap();
    let active = one.cluster.active().expect("the only secret is the active one");
    assert_eq!(active.id, "c1");
    assert_eq!(active.secret.expose_secret(), CLUSTER_SECRET);

    // Rotation: two accepted, the named one active.
    let two = with_env(&[
        (
            "EDGECACHE__CLUSTER__SECRETS",
            &format!(r#"[{{id="c1",secret="{CLUSTER_SECRET}"}},{{id="c2",secret="{CLUSTER_SECRET}-new"}}]"#),
        ),
        ("EDGECACHE__CLUSTER__ACTIVE_SECRET", "c2"),
        ("EDGECACHE__CLUSTER__PEERS__EDGE_2", "10.0.0.2:8080"),
    ])
    .unwrap();
    assert_eq!(two.cluster.secrets.len(), 2);
    assert_eq!(two.cluster.active().unwrap().id, "c2");
}

#[test]
fn cluster_secrets_are_checked_like_token_keys() {
    let secrets = |list: &str, active: &str| {
        with_overrides(&format!(
            "[cluster]\nsecrets = {list}\n{active}\n[cluster.peers]\nedge-2 = \"10.0.0.2:8080\"\n"
        ))
    };
    let s = CLUSTER_SECRET;
    let cases = [
        (
            r#"[{id = "c1", secret = "short"}]"#.to_owned(),
            "",
            "cluster.secrets[0].secret",
        ),
        (
            format!(r#"[{{id = "c1", secret = "{s}"}}, {{id = "c1", secret = "{s}"}}]"#),
            r#"active_secret = "c1""#,
            "cluster.secrets[1].id",
        ),
        (
            format!(r#"[{{id = "c 1", secret = "{s}"}}]"#),
            "",
            "cluster.secrets[0].id",
        ),
        (
            format!(r#"[{{id = "c1", secret = "{s}"}}]"#),
            r#"active_secret = "c9""#,
            "cluster.active_secret",
        ),
        (
            format!(r#"[{{id = "c1", secret = "{s}"}}, {{id = "c2", secret = "{s}"}}]"#),
            "",
            "cluster.active_secret",
        ),
    ];
    for (list, active, key) in cases {
        assert_eq!(invalid_key(secrets(&list, active)), key, "{list} {active}");
    }
    let error = secrets(r#"[{id = "c1", secret = "short-and-secret"}]"#, "")
        .unwrap_err()
        .to_string();
    assert!(
        !error.contains("short-and-secret"),
        "never shows a secret: {error}"
    );
}

// ------------------------------------------------------------------ effective TOML

#[test]
fn effective_toml_redacts_secrets_and_round_trips() {
    let secret = "a-production-secret-nobody-may-read-0123456789";
    let settings = with_overrides(&format!(
        r#"
        session.active_key = "k2"
        session.keys = [{{ id = "k2", secret = "{secret}" }}, {{ id = "dev", secret = "{SECRET}" }}]
        cluster.secrets = [{{ id = "c1", secret = "{SECRET}" }}]
        cluster.peers.edge-2 = "10.0.0.2:8080"
        "#
    ))
    .unwrap();
    let text = effective_toml(&settings);
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(text.contains("read-your-writes"), "{text}");

    // Everything but the secrets reads back the same.
    let back: toml::Table = text.parse().expect("effective_toml is valid TOML");
    assert_eq!(back["server"]["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(back["session"]["keys"][0]["id"].as_str(), Some("k2"));
    assert_eq!(back["cluster"]["secrets"][0]["id"].as_str(), Some("c1"));
    assert_eq!(
        back["cluster"]["secrets"][0]["secret"].as_str(),
        Some("[redacted]")
    );
    let restored = back.to_string().replace("[redacted]", SECRET);
    let reloaded = with_overrides(&restored).unwrap();
    assert_eq!(effective_toml(&reloaded), text);
}

// ------------------------------------------------------------------ warnings

#[test]
fn a_bound_tighter_than_the_replica_lag_is_a_warning_not_an_error() {
    assert!(
        base().warnings().is_empty(),
        "the embedded origin has no replicas"
    );
    let postgres = |max_lag: &str| {
        with_overrides(&format!(
            "[origin]\nkind = \"postgres\"\nprimary = \"postgres://p@db/shop\"\n\
             replicas = [\"postgres://p@replica/shop\"]\nreplica_max_lag = \"{max_lag}\"\n"
        ))
        .expect("a warning does not stop start-up")
    };
    // The base collections: carts bounded to 2 s, products.price to 5 s, profiles to 10 s.
    let keys = |settings: Settings| settings.warnings().into_iter().map(|w| w.key).collect::<Vec<_>>();
    assert_eq!(
        keys(postgres("5s")),
        vec!["collections.carts.freshness.max_staleness"]
    );
    assert_eq!(
        keys(postgres("6s")),
        vec![
            "collections.carts.freshness.max_staleness",
            "collections.products.fields.price.freshness.max_staleness",
        ]
    );
    assert!(keys(postgres("2s")).is_empty());
    let warning = &postgres("5s").warnings()[0];
    assert!(
        warning.message.contains("2s") && warning.message.contains("5s"),
        "{warning}"
    );
}
