//! The REST API: routes grouped per resource, one file each; every error is
//! problem+json ([`ApiError`]).

pub mod admin;
mod batch;
mod bearer;
mod cluster;
pub mod envelope;
mod error;
pub mod forward;
mod health;
mod idempotency;
mod increment;
mod items;
pub mod metrics;
mod request;
pub mod route;
mod v1;

use actix_web::{web, HttpRequest, HttpResponse, Resource};

pub use admin::AdminAuth;
pub use error::{ApiError, ErrorChain, PROBLEM_TYPE_PREFIX};
pub use request::{SESSION_ID, SESSION_TOKEN, USER_ID};

/// Mounts every route. Every resource is named by its full template, the `route`
/// label of the HTTP metrics ([`route::ROUTES`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", route::HEALTHZ).route(web::get().to(health::healthz)))
        .service(resource("/readyz", route::READYZ).route(web::get().to(health::readyz)))
        .service(
            web::scope("/cluster")
                .wrap(actix_web::middleware::from_fn(cluster::require_peer))
                .service(resource("/health", route::CLUSTER_HEALTH).route(web::get().to(cluster::health)))
                .service(resource("/leave", route::CLUSTER_LEAVE).route(web::post().to(cluster::peer_left))),
        )
        .service(resource("/metrics", route::METRICS).route(web::get().to(metrics::metrics)))
        .service(
            web::scope("/admin")
                .wrap(actix_web::middleware::from_fn(admin::require_token))
                .service(
                    resource("/experiments", route::ADMIN_EXPERIMENTS)
                        .route(web::get().to(admin::experiments))
                        .default_service(web::to(admin::method_not_allowed)),
                ),
        )
        .service(web::scope("/v1").default_service(actix_web::dev::fn_service(v1::serve)))
        .default_service(web::to(not_found));
}

/// A resource at `path` (relative to its scope) named `template`, its full template
/// and its `route` label.
fn resource(path: &str, template: &'static str) -> Resource {
    web::resource(path).name(template)
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    no_route(&request)
}

fn no_route(request: &HttpRequest) -> HttpResponse {
    ApiError::InvalidRequest(format!("no route for {} {}", request.method(), request.path()))
        .error_response_with(actix_web::http::StatusCode::NOT_FOUND, "no-route")
}

impl ApiError {
    /// A problem response with another status and type than the error's own.
    fn error_response_with(&self, status: actix_web::http::StatusCode, slug: &str) -> HttpResponse {
        error::problem(
            status,
            slug,
            status.canonical_reason().unwrap_or("Error"),
            self.to_string(),
        )
        .to_actix_response()
    }
}
