//! The REST API: routes grouped per resource, one file each; every error is
//! problem+json ([`ApiError`]).

mod batch;
mod error;
pub mod forward;
mod health;
mod increment;
mod items;
mod request;

use actix_web::{web, HttpRequest, HttpResponse};

pub use error::{ApiError, ErrorChain, PROBLEM_TYPE_PREFIX};
pub use request::{SESSION_ID, SESSION_TOKEN, USER_ID};

/// Mounts every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/cluster/leave", web::post().to(health::peer_left))
        .service(
            web::scope("/v1")
                .route("/{collection}/batch-get", web::post().to(batch::batch_get))
                .route(
                    "/{collection}/{id}/increment",
                    web::post().to(increment::increment),
                )
                .service(
                    web::resource("/{collection}/{id}")
                        .route(web::get().to(items::get_item))
                        .route(web::put().to(items::put_item))
                        .route(web::patch().to(items::patch_item))
                        .route(web::delete().to(items::delete_item))
                        .default_service(web::to(method_not_allowed)),
                ),
        )
        .default_service(web::to(no_route));
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
