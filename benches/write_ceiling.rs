//! The write ceiling of `scripts/write-bench.sh`: a bare actix-web server that, for
//! every `PATCH /v1/{collection}/{id}`, `PUT /v1/{collection}/{id}` or
//! `POST /v1/{collection}/{id}/increment`, runs pgbench's statements for that write on
//! a deadpool-postgres pool (tokio-postgres, statements prepared once per connection)
//! and answers `{"version": …, "position": …}` — no sessions, no tokens, no
//! preconditions read from the request, no cache, no change feed. It is the most an
//! HTTP server on this stack (the design's actix-web and tokio-postgres) can do with
//! pgbench's statements: what edgecache adds to a write is measured against it, and
//! what the HTTP hop itself costs is measured by it against pgbench.
//!
//! Not a criterion bench: a `harness = false` target whose main starts the server and
//! runs until killed. Built with `cargo bench --bench write_ceiling --no-run`; run as
//!
//! ```text
//! write_ceiling-<hash> --port 8091 --primary postgresql://… \
//!     --statements patch=FILE [--statements put=FILE] [--statements incr=FILE] \
//!     [--pool 16] [--workers 0]
//! ```
//!
//! Each FILE is a pgbench script as write-bench.sh writes it (`\`-lines skipped, one
//! statement per line, `:id` the item's id): its statements are sent together on one
//! pooled connection, each committed on its own and answered in order — as the node
//! sends an unkeyed write and its position read (tokio-postgres pipelines requests
//! issued together). The first statement's first column is the version, the last's
//! the position. `--pool` defaults to the node's `origin.pool_size` default (16);
//! `--workers 0` means one worker per core, as edgecache's `server.workers = 0`.
//!
//! Without `--port` (as when `cargo bench` runs every bench) it prints this usage and
//! exits 0 instead of serving forever.

use std::collections::HashMap;
use std::str::FromStr;

use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse, HttpServer};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::LocalBoxFuture;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::NoTls;

mod support;

// The node's allocator (src/main.rs): the ceiling must not lose to the node on malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: write_ceiling --port PORT --primary URL --statements MODE=FILE… [--pool N] [--workers N]";

/// The write ceiling's flags (see the module's documentation).
#[derive(clap::Parser)]
struct Args {
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    primary: Option<String>,
    /// MODE=FILE: the pgbench script of a write mode (patch, put, incr).
    #[arg(long = "statements", value_parser = statements)]
    statements: Vec<(String, Vec<String>)>,
    #[arg(long, default_value_t = 16)]
    pool: usize,
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The statements of a pgbench script: its `\`-lines dropped, `:id` as `$1`.
fn script(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('\\'))
        .map(|line| line.trim_end_matches(';').replace(":id", "$1"))
        .collect()
}

/// `--statements MODE=FILE`: the mode and its statements.
fn statements(spec: &str) -> Result<(String, Vec<String>), String> {
    let (mode, file) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec}: want MODE=FILE"))?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let sqls = script(&text);
    if sqls.is_empty() {
        return Err(format!("{file}: no statements"));
    }
    Ok((mode.to_owned(), sqls))
}

struct State {
    pool: Pool,
    statements: HashMap<String, Vec<String>>,
}

fn failed(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::ServiceUnavailable().body(e.to_string())
}

/// Runs the statements of `mode` for item `id`, sent together on one connection.
async fn run(state: &State, mode: &str, id: &str) -> HttpResponse {
    let Some(sqls) = state.statements.get(mode) else {
        return HttpResponse::NotFound().finish();
    };
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(e) => return failed(e),
    };
    let prepared =
        match futures_util::future::try_join_all(sqls.iter().map(|sql| client.prepare_cached(sql))).await {
            Ok(prepared) => prepared,
            Err(e) => return failed(e),
        };
    let with_id: [&(dyn ToSql + Sync); 1] = [&id];
    let rows = futures_util::future::join_all(prepared.iter().map(|statement| {
        let params = if statement.params().is_empty() {
            &[][..]
        } else {
            &with_id[..]
        };
        client.query(statement, params)
    }))
    .await;
    let mut rows = match rows.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let version = rows
        .first()
        .and_then(|rows| rows.first())
        .and_then(|row| row.try_get::<_, i64>(0).ok());
    let Some(version) = version else {
        return HttpResponse::NotFound().finish();
    };
    let position = rows
        .pop()
        .and_then(|rows| rows.into_iter().next())
        .and_then(|row| row.try_get::<_, PgLsn>(0).ok())
        .map(|lsn| lsn.to_string())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(format!(r#"{{"version":{version},"position":"{position}"}}"#))
}

/// The handler of the writes of `mode`.
fn handler(
    mode: &'static str,
) -> impl Fn(web::Path<(String, String)>, web::Bytes, web::Data<State>) -> LocalBoxFuture<'static, HttpResponse>
       + Clone {
    move |path, _body, state| Box::pin(async move { run(&state, mode, &path.1).await })
}

fn main() -> std::io::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let Some(port) = args.port else {
        eprintln!("write_ceiling: not serving (no --port)\n{USAGE}");
        return Ok(());
    };
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}\n{USAGE}"));
    let primary = args
        .primary
        .ok_or_else(|| invalid("--primary is required".into()))?;
    let statements: HashMap<String, Vec<String>> = args.statements.into_iter().collect();
    if statements.is_empty() {
        return Err(invalid("at least one --statements MODE=FILE".into()));
    }
    let config =
        tokio_postgres::Config::from_str(&primary).map_err(|e| invalid(format!("--primary: {e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(args.pool.max(1))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| invalid(format!("pool: {e}")))?;
    let modes: Vec<&String> = statements.keys().collect();
    let (addr, workers) = support::listen(port, args.workers);
    eprintln!(
        "write_ceiling: {modes:?} on http://{addr} with {workers} workers, a pool of {}",
        args.pool
    );
    let state = web::Data::new(State { pool, statements });
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/v1/{collection}/{id}", web::put().to(handler("put")))
                .route("/v1/{collection}/{id}", web::patch().to(handler("patch")))
                .route("/v1/{collection}/{id}/increment", web::post().to(handler("incr")))
        })
        .workers(workers)
        .bind(addr)?
        .run()
        .await
    })
}
