//! The REST API: routes grouped per resource, one file each; every error is
//! problem+json ([`ApiError`]).
//!
//! Files import only files before them in: route, error, bearer, login, admin,
//! dashboard, metrics, health, request, fields, conditional, idempotency, write, items,
//! increment, batch, v1, forward, cluster, purge, openapi, envelope (this module mounts
//! them all).

pub mod admin;
mod batch;
mod bearer;
mod cluster;
mod conditional;
mod dashboard;
pub mod envelope;
mod error;
mod fields;
pub mod forward;
mod health;
mod idempotency;
mod increment;
mod items;
mod login;
pub mod metrics;
pub mod openapi;
mod purge;
mod request;
pub mod route;
mod v1;
mod write;

use actix_web::{web, HttpRequest, HttpResponse, Resource};

pub use admin::AdminAuth;
pub use error::{ApiError, ErrorChain, PROBLEM_TYPE_PREFIX};
pub use request::{SESSION_ID, SESSION_TOKEN, USER_ID};

/// Mounts every route. Every resource is named by its full template, the `route`
/// label of the HTTP metrics ([`route::ROUTES`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    // The API first: the router tries routes in this order, and nearly every request
    // is a `/v1` one (no other route starts with `/v1`). Behind eight others, matching
    // their prefixes was 1 % of a cache hit (`PERF_CALLGRAPH=1 bash scripts/perf.sh`).
    cfg.service(web::scope("/v1").default_service(actix_web::dev::fn_service(v1::serve)))
        .service(resource("/healthz", route::HEALTHZ, "GET").route(web::get().to(health::healthz)))
        .service(resource("/readyz", route::READYZ, "GET").route(web::get().to(health::readyz)))
        .service(
            web::scope("/cluster")
                .wrap(actix_web::middleware::from_fn(cluster::require_peer))
                .service(
                    resource("/health", route::CLUSTER_HEALTH, "GET").route(web::get().to(cluster::health)),
                )
                .service(
                    resource("/leave", route::CLUSTER_LEAVE, "POST")
                        .route(web::post().to(cluster::peer_left)),
                )
                .service(
                    resource("/purge", route::CLUSTER_PURGE, "POST").route(web::post().to(purge::from_peer)),
                ),
        )
        .service(resource("/metrics", route::METRICS, "GET").route(web::get().to(metrics::metrics)))
        .service(resource("/openapi.json", route::OPENAPI, "GET").route(web::get().to(openapi::openapi_json)))
        // The log-in form and its post need no token: mounted before the scope that
        // wants one.
        .service(
            resource("/admin/login", route::ADMIN_LOGIN, "GET, POST")
                .route(web::get().to(dashboard::login_form))
                .route(web::post().to(dashboard::log_in)),
        )
        .service(
            resource("/admin/logout", route::ADMIN_LOGOUT, "POST").route(web::post().to(dashboard::log_out)),
        )
        .service(
            web::scope("/admin")
                .wrap(actix_web::middleware::from_fn(admin::require_token))
                .service(
                    resource("/experiments", route::ADMIN_EXPERIMENTS, "GET")
                        .route(web::get().to(admin::experiments)),
                )
                .service(resource("/purge", route::ADMIN_PURGE, "POST").route(web::post().to(purge::purge)))
                .service(
                    resource("/dashboard", route::ADMIN_DASHBOARD, "GET")
                        .route(web::get().to(dashboard::dashboard)),
                ),
        )
        .default_service(web::to(not_found));
}

/// A resource at `path` (relative to its scope) named `template`, its full template
/// and its `route` label, that takes the methods in `allow` (other methods: 405
/// problem+json with `Allow`).
fn resource(path: &str, template: &'static str, allow: &'static str) -> Resource {
    web::resource(path)
        .name(template)
        .default_service(web::to(move |request: HttpRequest| async move {
            error::method_not_allowed(request.method(), allow)
        }))
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    error::no_route(&request)
}
