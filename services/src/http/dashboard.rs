//! `GET /admin/dashboard`, the page of [`crate::dashboard`], and the log-in form that
//! lets a browser reach it: `GET /admin/login` (the form), `POST /admin/login` (the
//! token, once: answered with the admin cookie and a redirect to the dashboard),
//! `POST /admin/logout` (clears the cookie).

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::admin::AdminAuth;
use super::error::{problem, ApiError, ProblemType};
use super::login;
use crate::dashboard::Dashboard;

/// `GET /admin/dashboard` (behind the admin token or cookie).
#[utoipa::path(
    get,
    path = "/admin/dashboard",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The dashboard page: per strategy flag and arm, the node's counts and charts over the last hour", content_type = "text/html"),
        (status = 401, description = "No or a wrong admin token or cookie: problem+json, or the log-in form for a browser (Accept: text/html)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The admin API is disabled (no admin.token)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn dashboard(dashboard: web::Data<Dashboard>) -> HttpResponse {
    let nonce = login::nonce();
    login::html(StatusCode::OK, &nonce, dashboard.page(&nonce))
}

/// `GET /admin/login`: the form (404 while the admin API is disabled).
#[utoipa::path(
    get,
    path = "/admin/login",
    tag = "operations",
    responses(
        (status = 200, description = "The log-in form of the dashboard", content_type = "text/html"),
        (status = 404, description = "The admin API is disabled (no admin.token)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login_form(auth: web::Data<AdminAuth>) -> HttpResponse {
    match auth.admin_token() {
        Some(_) => login::form(StatusCode::OK, false),
        None => disabled(),
    }
}

/// The form's fields.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LogIn {
    /// The node's admin token.
    token: String,
}

/// `POST /admin/login`: with the admin token, 303 to the dashboard with the admin
/// cookie; with another, 401 and the form again; without a `token` field, 400
/// `invalid-request`.
#[utoipa::path(
    post,
    path = "/admin/login",
    tag = "operations",
    request_body(content = LogIn, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged in: the admin cookie (HttpOnly, SameSite=Strict) and a redirect to the dashboard"),
        (status = 400, description = "No `token` field", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not the admin token: the form again", content_type = "text/html"),
        (status = 404, description = "The admin API is disabled (no admin.token)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn log_in(
    request: HttpRequest,
    form: Option<web::Form<LogIn>>,
    auth: web::Data<AdminAuth>,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = auth.admin_token() else {
        return Ok(disabled());
    };
    let Some(form) = form else {
        return Err(ApiError::InvalidRequest(
            "a log-in is a form (application/x-www-form-urlencoded) with a `token` field".to_owned(),
        ));
    };
    if !token.admits(&form.token) {
        tracing::warn!("dashboard log-in refused: not the admin token");
        return Ok(login::form(StatusCode::UNAUTHORIZED, true));
    }
    let secure = request.connection_info().scheme() == "https";
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin/dashboard"))
        .insert_header((header::SET_COOKIE, login::set_cookie(token, secure)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// `POST /admin/logout`: clears the cookie and shows the form.
#[utoipa::path(
    post,
    path = "/admin/logout",
    tag = "operations",
    responses((status = 303, description = "The admin cookie cleared, and a redirect to the log-in form")),
)]
pub async fn log_out() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin/login"))
        .insert_header((header::SET_COOKIE, login::clear_cookie()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn disabled() -> HttpResponse {
    problem(
        StatusCode::NOT_FOUND,
        ProblemType::NoRoute,
        "Not found",
        "the admin API is disabled: no admin.token is configured".to_owned(),
    )
    .to_actix_response()
}
