//! `edgecache sessionbench`: the session workload of the README's "what users choose
//! us for" table — many user sessions reading and writing one collection, against
//! edgecache or a policy users pick instead, counting what each session sees.
//!
//! N sessions (default 1,000) share C keep-alive HTTP/1.1 connections (default 64):
//! connection `w` carries sessions `w, w + C, …` in turn, one request at a time, so a
//! session's requests never overlap and its token chain is exact. Each request reads
//! (GET) or — with probability `--write-pct` — merge-patches one field of a document
//! picked from `--docs` by a Zipf distribution (θ `--zipf`, YCSB's 0.99 by default;
//! `k1` is the hottest). The client is hyper on its own connections, not a pooled
//! client: it should cost the machine little next to the servers it measures.
//!
//! What the client sends depends on the policy measured (`--policy`):
//! - `edgecache`: `X-Session-Id`, and the `X-Session-Token` of the session's last
//!   answer (the token chain a browser tab keeps);
//! - `ttl`: nothing per session (a plain TTL cache, e.g. nginx `proxy_cache`);
//! - `stick`: `X-Recent-Write: 1` while the session wrote within `--stick-for` (the
//!   proxy sends those reads to the primary: GitLab's and ProxySQL's stickiness);
//! - `read-through`: nothing (every read reaches the primary anyway).
//!
//! What the client sees: from each answer's `ETag` (the document's version) it counts
//! **stale own reads** (a read older than the session's own last acknowledged write of
//! that document) and **regressions** (a read older than one the session already
//! read), and from `X-Cache-Status` (nginx's `$upstream_cache_status`, when present)
//! or `Cache-Status` (edgecache's, RFC 9211) whether the answer was a cache hit.
//!
//! The result is one JSON line on stdout: requests, throughput, latency percentiles
//! (exact: every latency is kept, bounded per connection), hits, stale own reads,
//! regressions and errors. `scripts/session-bench.sh` runs it against each system.

mod tally;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::http1::{Answer, Connection, Op};
use tally::Tally;

/// What the client sends per session: the policy of the system measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Session id and token chain (edgecache).
    Edgecache,
    /// Nothing per session (a plain TTL cache).
    Ttl,
    /// `X-Recent-Write: 1` for `--stick-for` after each of the session's writes.
    Stick,
    /// Nothing per session (every read goes to the primary).
    ReadThrough,
}

/// `edgecache sessionbench`.
#[derive(clap::Args, Debug, Clone)]
pub struct SessionBenchArgs {
    /// Base URL of the system measured (`http://127.0.0.1:8080`; plain HTTP).
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// What the client sends per session.
    #[arg(long, value_enum, default_value_t = Policy::Edgecache)]
    pub policy: Policy,
    /// A name for the system in the output line.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub label: String,
    /// User sessions.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub sessions: usize,
    /// Keep-alive connections (requests in flight).
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub connections: usize,
    /// The client's threads.
    #[arg(long, value_name = "T", default_value_t = 2)]
    pub threads: usize,
    /// Documents `<prefix>1 … <prefix>D` of the collection.
    #[arg(long, value_name = "D", default_value_t = 100_000)]
    pub docs: u64,
    /// The Zipf exponent of the keys' popularity.
    #[arg(long, value_name = "THETA", default_value_t = 0.99)]
    pub zipf: f64,
    /// Percentage of requests that write.
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    pub write_pct: f64,
    /// Seconds to run.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// The collection.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    pub collection: String,
    /// The string field each write sets (a merge patch with a value unique in the run).
    #[arg(long, value_name = "FIELD", default_value = "description")]
    pub field: String,
    /// Document ids are this prefix followed by 1…D.
    #[arg(long, value_name = "PREFIX", default_value = "k")]
    pub key_prefix: String,
    /// With `--policy stick`: how long after a write the session's reads go to the
    /// primary, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub stick_for: f64,
    /// Timeout of each request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub timeout: f64,
    /// Latencies kept per connection (the percentiles are exact up to this many).
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    pub max_samples: usize,
    /// Seed of the workload's choices (default: from the clock).
    #[arg(long, value_name = "X")]
    pub seed: Option<u64>,
}

/// What one connection's loop needs, shared by all of them.
struct Plan {
    policy: Policy,
    docs: Zipf<f64>,
    write_share: f64,
    deadline: Instant,
    collection: String,
    field: String,
    key_prefix: String,
    stick_for: Duration,
    timeout: Duration,
    max_samples: usize,
    run: String,
}

/// A session as the client holds it.
struct Session {
    id: String,
    token: Option<hyper::header::HeaderValue>,
    last_write: Option<Instant>,
    /// Per document the session touched: (its own last acknowledged write's version,
    /// the highest version it read).
    seen: std::collections::HashMap<u64, (u64, u64)>,
}

/// Runs the workload and prints its result line.
pub fn run(args: SessionBenchArgs) -> anyhow::Result<()> {
    if args.sessions == 0 || args.connections == 0 || args.threads == 0 || args.docs == 0 {
        bail!("--sessions, --connections, --threads and --docs must be at least 1");
    }
    if !(0.0..=100.0).contains(&args.write_pct) {
        bail!("--write-pct must lie in [0, 100]");
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !positive(args.duration) || !positive(args.timeout) || !non_negative(args.stick_for) {
        bail!("--duration and --timeout must be positive, --stick-for 0 or more");
    }
    let target = args.target.trim_end_matches('/');
    let authority = target
        .strip_prefix("http://")
        .context("--target must be a plain http:// URL")?
        .to_owned();
    let docs =
        Zipf::new(args.docs as f64, args.zipf).map_err(|e| anyhow::anyhow!("--zipf {}: {e}", args.zipf))?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let run = format!("{:x}", seed & 0xffff_ffff);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let plan = Arc::new(Plan {
        policy: args.policy,
        docs,
        write_share: args.write_pct / 100.0,
        deadline: started + Duration::from_secs_f64(args.duration),
        collection: args.collection.clone(),
        field: args.field.clone(),
        key_prefix: args.key_prefix.clone(),
        stick_for: Duration::from_secs_f64(args.stick_for),
        timeout: Duration::from_secs_f64(args.timeout),
        max_samples: args.max_samples,
        run: run.clone(),
    });
    let connections = args.connections.min(args.sessions);
    let tally = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(connections);
        for w in 0..connections {
            let sessions: Vec<Session> = (w..args.sessions)
                .step_by(connections)
                .map(|i| Session {
                    id: format!("sb-{run}-{i}"),
                    token: None,
                    last_write: None,
                    seen: Default::default(),
                })
                .collect();
            let plan = plan.clone();
            let authority = authority.clone();
            let rng =
                rand::rngs::SmallRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tasks.push(tokio::spawn(drive(plan, authority, sessions, rng, w)));
        }
        let mut total = Tally::default();
        for task in tasks {
            total.merge(task.await.context("a connection's task panicked")?);
        }
        anyhow::Ok(total)
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!("{}", tally.summary(&args.label, args.policy, secs));
    Ok(())
}

/// One connection's loop: its sessions in turn until the deadline.
async fn drive(
    plan: Arc<Plan>,
    authority: String,
    mut sessions: Vec<Session>,
    mut rng: rand::rngs::SmallRng,
    worker: usize,
) -> Tally {
    let mut tally = Tally::with_capacity(plan.max_samples.min(1 << 16));
    let mut connection: Option<Connection> = None;
    let mut writes = 0u64;
    let mut next = 0;
    let count = sessions.len();
    while Instant::now() < plan.deadline {
        let session = &mut sessions[next];
        next = (next + 1) % count;
        let doc = (plan.docs.sample(&mut rng) as u64).clamp(1, u64::MAX);
        let path = format!("/v1/{}/{}{doc}", plan.collection, plan.key_prefix);
        let op = if rng.random::<f64>() < plan.write_share {
            writes += 1;
            Op::Patch(format!(
                "{{\"{}\":\"sb-{}-{worker}-{writes}\"}}",
                plan.field, plan.run
            ))
        } else {
            Op::Get
        };
        let is_write = matches!(op, Op::Patch(_));
        let mut headers = hyper::HeaderMap::new();
        match plan.policy {
            Policy::Edgecache => {
                headers.insert("x-session-id", session.id.parse().expect("ascii session id"));
                if let Some(token) = &session.token {
                    headers.insert("x-session-token", token.clone());
                }
            }
            Policy::Stick => {
                if session.last_write.is_some_and(|t| t.elapsed() < plan.stick_for) {
                    headers.insert("x-recent-write", hyper::header::HeaderValue::from_static("1"));
                }
            }
            Policy::Ttl | Policy::ReadThrough => {}
        }
        if connection.is_none() {
            match tokio::time::timeout(plan.timeout, Connection::open(&authority)).await {
                Ok(Ok(c)) => connection = Some(c),
                Ok(Err(_)) | Err(_) => {
                    tally.transport_error();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_mut() else { continue };
        let sent = Instant::now();
        let answer = tokio::time::timeout(plan.timeout, conn.send(&authority, &path, op, headers)).await;
        let latency = sent.elapsed();
        match answer {
            Ok(Ok(answer)) => record(&plan, session, doc, is_write, answer, latency, &mut tally),
            Ok(Err(_)) | Err(_) => {
                // The connection is in an unknown state: a new one for the next request.
                connection = None;
                tally.transport_error();
            }
        }
    }
    tally
}

fn record(
    plan: &Plan,
    session: &mut Session,
    doc: u64,
    is_write: bool,
    answer: Answer,
    latency: Duration,
    tally: &mut Tally,
) {
    if plan.policy == Policy::Edgecache {
        if let Some(token) = answer.token {
            session.token = Some(token);
        }
    }
    if !(200..300).contains(&answer.status) {
        tally.status_error(is_write);
        return;
    }
    let entry = session.seen.entry(doc).or_insert((0, 0));
    if is_write {
        if let Some(v) = answer.version {
            entry.0 = entry.0.max(v);
        }
        session.last_write = Some(Instant::now());
        tally.write(latency, plan.max_samples);
        return;
    }
    let (stale_own, regression) = match answer.version {
        Some(v) => {
            let stale_own = v < entry.0;
            let regression = !stale_own && v < entry.1;
            entry.1 = entry.1.max(v);
            (stale_own, regression)
        }
        None => (false, false),
    };
    tally.read(latency, answer.hit, stale_own, regression, plan.max_samples);
}
