//! The REST API: routes grouped per resource, one file each; every error is
//! problem+json ([`ApiError`]).

pub mod admin;
mod batch;
pub mod envelope;
mod error;
pub mod forward;
mod health;
mod increment;
mod items;
pub mod metrics;
mod request;

use actix_web::{web, HttpRequest, HttpResponse, Resource};

pub use admin::AdminAuth;
pub use error::{ApiError, ErrorChain, PROBLEM_TYPE_PREFIX};
pub use request::{SESSION_ID, SESSION_TOKEN, USER_ID};

use crate::metrics::route;

/// Mounts every route. Every resource is named by its full template, the `route`
/// label of the HTTP metrics ([`crate::metrics::ROUTES`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", route::HEALTHZ).route(web::get().to(health::healthz)))
        .service(resource("/readyz", route::READYZ).route(web::get().to(health::readyz)))
        .service(resource("/cluster/leave", route::CLUSTER_LEAVE).route(web::post().to(health::peer_left)))
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
        .service(
            web::scope("/v1")
                .service(
                    resource("/{collection}/batch-get", route::BATCH_GET)
                        .route(web::post().to(batch::batch_get)),
                )
                .service(
                    resource("/{collection}/{id}/increment", route::INCREMENT)
                        .route(web::post().to(increment::increment)),
                )
                .service(
                    resource("/{collection}/{id}", route::ITEM)
                        .route(web::get().to(items::get_item))
                        .route(web::put().to(items::put_item))
                        .route(web::patch().to(items::patch_item))
                        .route(web::delete().to(items::delete_item))
                        .default_service(web::to(method_not_allowed)),
                ),
        )
        .default_service(web::to(no_route));
}

/// A resource at `path` (relative to its scope) named `template`, its full template,
/// which is also its `route` label ([`envelope::RouteLabel`]).
fn resource(path: &str, template: &'static str) -> Resource {
    web::resource(path)
        .name(template)
        .app_data(envelope::RouteLabel(template))
}

async fn no_route(request: HttpRequest) -> HttpResponse {
    ApiError::InvalidRequest(format!("no route for {} {}", request.method(), request.path()))
        .error_response_with(actix_web::http::StatusCode::NOT_FOUND, "no-route")
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    ApiError::InvalidRequest(format!(
        "{} is not allowed here (GET, PUT, PATCH, DELETE)",
        request.method()
    ))
    .error_response_with(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
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
