//! `edgecache`: a regional edge node with per-session consistency.
//!
//! ```text
//! edgecache [serve] [--config FILE] [--listen ADDR]   run a node (the default)
//! edgecache check-config [--config FILE]              validate and print the configuration
//! edgecache loadgen --targets URL[,URL…] …            run a workload, record its history
//! edgecache check HISTORY                             check a history's session guarantees
//! edgecache migrate [--config FILE]                   create the PostgreSQL tables
//! edgecache sessionbench --target URL …               measure a session workload
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgecache_config::{Settings, Sources};
use edgecache_services::Application;
use tracing_subscriber::EnvFilter;

mod check;
mod http1;
mod loadgen;
mod sessionbench;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "edgecache",
    version,
    about = "A regional edge cache with per-session consistency"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge node (the default).
    Serve(ServeArgs),
    /// Validate the configuration and print the effective one, secrets redacted.
    CheckConfig {
        /// A configuration file layered over the defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Create the PostgreSQL tables of the configured collections (seeding empty
    /// ones); nothing to do for the embedded store.
    Migrate {
        /// A configuration file layered over the defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run N sessions × M operations against nodes or a load balancer and record the
    /// history (one JSON line per request; writes keyed, retried while their outcome
    /// is unknown) and the origin's state after it; optionally with adversity: several
    /// operations of a session at once, an anonymous flood, the primary stopped.
    Loadgen(Box<loadgen::LoadgenArgs>),
    /// Check a history recorded by `loadgen`: the four session guarantees per session
    /// (in real-time order), the strict counter, the writes' outcomes against the
    /// origin's state (not applied stays absent, acknowledged applies once, replays
    /// match) and the written field's staleness bound. Exits 1 on any violation.
    Check(check::CheckArgs),
    /// Measure a session workload (reads and merge patches of Zipf-picked documents by
    /// many sessions) against edgecache or another policy: throughput, latency, hit
    /// ratio, and the stale own reads and regressions the sessions see. One JSON line.
    Sessionbench(Box<sessionbench::SessionBenchArgs>),
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// A configuration file layered over the defaults.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The address to listen on (overrides `server.listen`).
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Option<SocketAddr>,
}

fn load(config: Option<PathBuf>) -> anyhow::Result<Settings> {
    let sources = Sources {
        file: config,
        ..Sources::default()
    };
    Ok(edgecache_config::load(&sources)?)
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("EDGECACHE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: log files and pipes get plain text (and the request
    // span's fields are not wrapped in escape codes on every request).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    if std::env::var("EDGECACHE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            let settings = load(config.or(cli.serve.config))?;
            print!("{}", edgecache_config::effective_toml(&settings));
            for warning in settings.warnings() {
                eprintln!("warning: {warning}");
            }
            eprintln!("configuration is valid");
            Ok(())
        }
        Some(Command::Migrate { config }) => {
            init_tracing();
            let settings = load(config.or(cli.serve.config))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let seeded = runtime
                .block_on(edgecache_services::migrate(&settings))
                .context("migrating the origin")?;
            tracing::info!(seeded, "origin migrated");
            Ok(())
        }
        Some(Command::Loadgen(args)) => loadgen::run(*args),
        // 0: no violation; 1: violations; 2: the history could not be read.
        Some(Command::Sessionbench(args)) => sessionbench::run(*args),
        Some(Command::Check(args)) => match check::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::exit(2)
            }
        },
        Some(Command::Serve(args)) => serve(ServeArgs {
            config: args.config.or(cli.serve.config),
            listen: args.listen.or(cli.serve.listen),
        }),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let mut settings = load(args.config)?;
    if let Some(listen) = args.listen {
        settings.server.listen = listen;
    }
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&settings).context("starting the edge node")?;
        app.run_until_stopped().await.context("serving")
    })
}
