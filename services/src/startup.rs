//! Building and running an edge node: the origin, the data plane and the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use edgecache_config::{OriginSettings, Settings};
use edgecache_flags::{ConfigFlags, FlagSource, UnleashFlags};

use crate::cluster::Cluster;
use crate::dashboard::Dashboard;
use crate::http::envelope::Envelope;
use crate::origin::{EmbeddedOrigin, OriginError, PostgresOrigin, SharedOrigin};
use crate::readiness::Readiness;
use crate::Node;

/// How long a stopping node waits for its background tasks once the server stopped.
pub const BACKGROUND_STOP: Duration = Duration::from_secs(2);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the origin")]
    Origin(#[source] OriginError),
    #[error("cannot start the Unleash flag source")]
    Flags(#[from] edgecache_flags::UnleashError),
}

/// A built edge node: listening, not yet serving until [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: Server,
    node: Arc<Node>,
    cluster: Arc<Cluster>,
}

impl Application {
    /// Opens the configured origin (seeding a fresh store), binds the listener (port 0
    /// picks a free one) and builds the server, with strategies from configuration.
    /// Flags come from Unleash when `flags.unleash` is set (falling back to a
    /// bootstrap file, then `flags.defaults`), else from `flags.defaults`. Must run
    /// inside the actix system that will serve (the Unleash poll loop starts on it).
    pub fn build(settings: &Settings) -> Result<Self, StartError> {
        let defaults = ConfigFlags::new(&settings.flags.defaults);
        let flags: Arc<dyn FlagSource> = match &settings.flags.unleash {
            Some(unleash) => Arc::new(UnleashFlags::start(unleash, defaults, &settings.node.id)?),
            None => Arc::new(defaults),
        };
        Self::build_with_flags(settings, flags)
    }

    /// Like [`Application::build`], with strategies from `flags`.
    pub fn build_with_flags(settings: &Settings, flags: Arc<dyn FlagSource>) -> Result<Self, StartError> {
        for warning in settings.warnings() {
            tracing::warn!(key = %warning.key, "{}", warning.message);
        }
        let origin = open_origin(settings).map_err(StartError::Origin)?;
        Self::build_with_origin(settings, flags, origin)
    }

    /// Like [`Application::build_with_flags`], over `origin` (opened, and seeded if
    /// need be, by the caller).
    pub fn build_with_origin(
        settings: &Settings,
        flags: Arc<dyn FlagSource>,
        origin: SharedOrigin,
    ) -> Result<Self, StartError> {
        let node = Arc::new(Node::new(settings, origin.clone(), flags));
        let readiness = web::Data::new(Readiness::start(
            origin,
            settings.server.readiness_interval,
            node.shutdown(),
        ));
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?
            .port();

        let shutdown = node.shutdown();
        shutdown.spawn("idempotency sweeper", node.clone().sweep_idempotency());
        let cluster = Arc::new(Cluster::new(&settings.node.id, &settings.cluster));
        if !cluster.is_solo() {
            shutdown.spawn("cluster health checks", cluster.clone().watch());
        }
        let data = web::Data::from(node.clone());
        let cluster_data = web::Data::new(cluster.clone());
        let admin = web::Data::new(crate::http::AdminAuth::new(&settings.admin));
        let dashboard = Arc::new(Dashboard::new(node.clone(), cluster.clone(), &settings.admin));
        shutdown.spawn("dashboard snapshots", dashboard.clone().sample());
        let dashboard = web::Data::from(dashboard);
        let (envelope_node, envelope_cluster) = (node.clone(), cluster.clone());
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(Envelope::new(envelope_node.clone(), envelope_cluster.clone()))
                .app_data(data.clone())
                .app_data(cluster_data.clone())
                .app_data(admin.clone())
                .app_data(dashboard.clone())
                .app_data(readiness.clone())
                .configure(crate::http::routes)
        })
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs().max(1));
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Bind { addr, source })?
            .run();
        tracing::info!(port, node = %settings.node.id, origin = node.origin_kind(), "edge node listening");
        Ok(Self {
            port,
            server,
            node,
            cluster,
        })
    }

    /// The port the node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's data plane (tests read its metrics).
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// This node's view of its group (tests read the forwarding counts).
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.clone()
    }

    /// A handle to stop the server (gracefully or not).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server stops. On SIGTERM or ctrl-c the node tells its peers it
    /// is leaving (so they stop forwarding to it), stops accepting, lets in-flight
    /// requests finish (up to the shutdown timeout) and passivates every session;
    /// the sessions go on elsewhere from their tokens. However the server stopped,
    /// the node then fires its [`Shutdown`](crate::Shutdown) and waits (at most
    /// [`BACKGROUND_STOP`]) for its background tasks to end.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let cluster = self.cluster.clone();
        actix_web::rt::spawn(async move {
            if stop_signal().await {
                tracing::info!("stop signal: leaving the group, finishing in-flight requests");
                cluster.announce_leaving().await;
                handle.stop(true).await;
            }
        });
        let result = self.server.await;
        self.node.sessions().passivate_all();
        self.node.stop_background(BACKGROUND_STOP).await;
        tracing::info!("edge node stopped");
        result
    }
}

/// Waits for SIGTERM or ctrl-c; `false` if no handler could be installed.
async fn stop_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return false;
        };
        tokio::select! {
            _ = term.recv() => true,
            result = tokio::signal::ctrl_c() => result.is_ok(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

fn open_origin(settings: &Settings) -> Result<SharedOrigin, OriginError> {
    match &settings.origin {
        OriginSettings::Embedded {
            path,
            read_connections,
            busy_timeout,
        } => {
            let origin = EmbeddedOrigin::open(path, *read_connections, *busy_timeout)?;
            if origin.seed_if_fresh(&settings.seed)? {
                tracing::info!(path = %path.display(), "seeded a fresh store with the demo data");
            }
            Ok(Arc::new(origin))
        }
        OriginSettings::Postgres(pg) => Ok(Arc::new(PostgresOrigin::open(settings, pg)?)),
    }
}

/// Creates the PostgreSQL tables of the configured collections and seeds empty ones
/// (`edgecache migrate`). The embedded store needs no migration: it creates its
/// tables when it opens.
pub async fn migrate(settings: &Settings) -> Result<bool, OriginError> {
    match &settings.origin {
        OriginSettings::Postgres(pg) => PostgresOrigin::open(settings, pg)?.migrate(settings).await,
        OriginSettings::Embedded { .. } => Ok(false),
    }
}
