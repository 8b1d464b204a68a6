//! The ceiling of `scripts/perf.sh`: a bare actix-web server answering
//! `GET /v1/{collection}/{id}` from a quick_cache map of pre-serialised documents —
//! no sessions, no tokens, no flags, no freshness classes. Whatever edgecache adds
//! on top of its cache hit is measured against this.
//!
//! Not a criterion bench: a `harness = false` target whose main starts the server and
//! runs until killed. Built with `cargo bench --bench ceiling --no-run`; run as
//!
//! ```text
//! ceiling-<hash> --port 8090 [--body FILE] [--keys 10000] [--collection bench] [--workers 0]
//! ```
//!
//! It stores the document of `--body` (default: a ~300-byte product) under the paths
//! `/v1/<collection>/k1` … `/v1/<collection>/k<keys>`, one copy per key, as a cache of
//! that many documents holds them (a single buffer shared by every key would keep the
//! whole working set in the CPU's caches, which no real cache of 10,000 documents
//! enjoys); any other path is a 404.
//! `--workers 0` (the default) means one worker per core, as edgecache's
//! `server.workers = 0`.
//!
//! Without `--port` (as when `cargo bench` runs every bench) it prints this usage
//! and exits 0 instead of serving forever.

use std::path::PathBuf;

use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use quick_cache::sync::Cache;

mod support;

const USAGE: &str =
    "usage: ceiling --port PORT [--body FILE] [--keys 10000] [--collection bench] [--workers 0]";

const DEFAULT_BODY: &str = r#"{"id":"k1","name":"Espresso cup","description":"A 90 ml porcelain cup with a thick wall that keeps the crema warm; dishwasher safe, stackable, made in Limoges.","price":12.5,"stock":40,"tags":["kitchen","coffee","porcelain"],"origin":"FR","weight_g":180,"sku":"CUP-090-WHT"}"#;

/// The ceiling's flags (see the module's documentation).
#[derive(clap::Parser)]
struct Args {
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    body: Option<PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value = "bench")]
    collection: String,
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

async fn get(request: HttpRequest, cache: web::Data<Cache<String, Bytes>>) -> HttpResponse {
    match cache.get(request.path()) {
        Some(body) => HttpResponse::Ok().content_type(ContentType::json()).body(body),
        None => HttpResponse::NotFound().finish(),
    }
}

fn main() -> std::io::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let Some(port) = args.port else {
        eprintln!("ceiling: not serving (no --port)\n{USAGE}");
        return Ok(());
    };
    let body = match &args.body {
        Some(path) => Bytes::from(std::fs::read(path)?),
        None => Bytes::from_static(DEFAULT_BODY.as_bytes()),
    };
    // Twice the keys: quick_cache splits its capacity over shards, and a shard that
    // receives more than its share would evict — every key must stay a hit.
    let cache: Cache<String, Bytes> = Cache::new(2 * args.keys.max(1));
    let path = |i: usize| format!("/v1/{}/k{i}", args.collection);
    for i in 1..=args.keys {
        cache.insert(path(i), Bytes::copy_from_slice(&body));
    }
    let missing = (1..=args.keys)
        .filter(|&i| cache.get(path(i).as_str()).is_none())
        .count();
    if missing > 0 {
        return Err(std::io::Error::other(format!(
            "{missing} of {} keys evicted at start",
            args.keys
        )));
    }
    let cache = web::Data::new(cache);
    let (addr, workers) = support::listen(port, args.workers);
    eprintln!(
        "ceiling: serving {} keys of {} bytes on http://{addr} with {workers} workers",
        args.keys,
        body.len()
    );
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(cache.clone())
                .route("/v1/{collection}/{id}", web::get().to(get))
        })
        .workers(workers)
        .bind(addr)?
        .run()
        .await
    })
}
