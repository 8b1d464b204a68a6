//! The admin API under `/admin`: `GET /admin/experiments`, the per-arm report of every
//! strategy flag (and `GET /admin/dashboard`, its page: [`super::dashboard`]).
//!
//! Every admin request must carry `Authorization: Bearer <admin.token>` or the
//! browser's admin cookie ([`super::login`]); without either, or with another token,
//! the answer is 401 with `WWW-Authenticate: Bearer` ([`super::bearer`]):
//! problem+json, or the log-in form for a browser. With no `admin.token` configured the admin API is disabled:
//! every `/admin/...` route answers 404. `/metrics` wants `admin.metrics_token` when
//! one is configured.

use std::collections::BTreeMap;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse};
use edgecache_config::AdminSettings;
use edgecache_flags::Strategy;
use serde::Serialize;

use super::bearer::BearerToken;
use super::error::{problem, ProblemType};
use super::login;
use crate::metrics::ArmStats;
use crate::Node;

/// The realm named in `WWW-Authenticate` by the admin routes.
const REALM: &str = "edgecache-admin";

/// The operator tokens: the admin API's (`None`: disabled) and `/metrics`'s (`None`:
/// open).
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<BearerToken>,
    metrics: Option<BearerToken>,
}

impl AdminAuth {
    pub fn new(settings: &AdminSettings) -> Self {
        Self {
            token: settings.token.as_ref().map(BearerToken::new),
            metrics: settings.metrics_token.as_ref().map(BearerToken::new),
        }
    }

    /// The token `/metrics` wants, if any.
    pub fn metrics_token(&self) -> Option<&BearerToken> {
        self.metrics.as_ref()
    }

    /// The admin token, if the admin API is enabled.
    pub fn admin_token(&self) -> Option<&BearerToken> {
        self.token.as_ref()
    }
}

/// The middleware of the `/admin` scope (mounted with `middleware::from_fn`).
pub async fn require_token(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let token = request
        .app_data::<web::Data<AdminAuth>>()
        .and_then(|auth| auth.token.clone());
    let Some(token) = token else {
        let response = problem(
            StatusCode::NOT_FOUND,
            ProblemType::NoRoute,
            "Not found",
            "the admin API is disabled: no admin.token is configured".to_owned(),
        )
        .to_actix_response();
        return Ok(request.into_response(response));
    };
    // The browser's cookie opens what a browser reads; a change (POST /admin/purge)
    // wants the bearer token.
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if reads && login::has_cookie(request.headers(), &token) {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    }
    match token.check(request.headers(), REALM, "admin token") {
        Ok(()) => next.call(request).await.map(ServiceResponse::map_into_boxed_body),
        Err(_) if login::wants_html(request.request()) => {
            let form = login::form(StatusCode::UNAUTHORIZED, false);
            Ok(request.into_response(form))
        }
        Err(refusal) => Ok(request.into_response(*refusal)),
    }
}

/// The report of `GET /admin/experiments`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExperimentsReport<'a> {
    /// The node that counted (every node counts its own requests).
    pub node: &'a str,
    /// Where the strategy flags come from now (as in `/readyz`).
    pub flag_source: String,
    /// Per strategy (`read-your-writes`, …): its arms seen on this node.
    pub experiments: BTreeMap<&'static str, FlagReport>,
}

/// One strategy flag's experiment.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlagReport {
    /// The Unleash flag name.
    pub flag: &'static str,
    /// Arm label (`on`, `off`, a variant, `other`) → its counts.
    pub arms: BTreeMap<String, ArmReport>,
}

/// One arm's counts, since the node started.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ArmReport {
    /// Distinct sessions that made a request in this arm (HyperLogLog estimate: exact
    /// for small counts, within about 2% beyond).
    pub sessions: u64,
    /// Item reads served (a batch-get counts each item).
    pub reads: u64,
    /// Reads served from what the node held, without an origin read for their
    /// non-strict fields.
    pub cache_hits: u64,
    /// `cache_hits / reads`; null without reads.
    pub hit_ratio: Option<f64>,
    /// Reads older than the session's own write of the item.
    pub stale_own_reads: u64,
    /// `stale_own_reads / reads`; null without reads.
    pub stale_own_read_rate: Option<f64>,
    /// Reads older than a version the session had already read.
    pub regressions_served: u64,
    /// Read latency on the node, in microseconds: the upper end of the log-linear
    /// bucket the quantile falls in (at most 12.5% over the true value); null
    /// without reads.
    pub latency_us: Latency,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
}

impl ArmReport {
    fn of(arm: &ArmStats<'_>) -> Self {
        let reads = arm.reads;
        let rate = |n: u64| (reads > 0).then(|| n as f64 / reads as f64);
        Self {
            sessions: arm.sessions,
            reads,
            cache_hits: arm.hits,
            hit_ratio: rate(arm.hits),
            stale_own_reads: arm.stale_own_reads,
            stale_own_read_rate: rate(arm.stale_own_reads),
            regressions_served: arm.regressions_served,
            latency_us: Latency {
                p50: arm.latency.quantile(0.5),
                p99: arm.latency.quantile(0.99),
            },
        }
    }
}

/// `GET /admin/experiments`: per strategy flag and arm, the sessions, reads, hit ratio,
/// stale-own-read rate and p50/p99 read latency this node has seen.
#[utoipa::path(
    get,
    path = "/admin/experiments",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Per strategy flag and arm: sessions, reads, hit ratio, stale own reads, latency", body = ExperimentsReport),
        (status = 401, description = "No or a wrong admin token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The admin API is disabled (no admin.token)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn experiments(node: web::Data<Node>) -> HttpResponse {
    let counts = &node.metrics().experiments;
    let experiments = Strategy::ALL
        .into_iter()
        .map(|strategy| {
            let arms = counts
                .arms_of(strategy)
                .iter()
                .map(|arm| (arm.label.to_owned(), ArmReport::of(arm)))
                .collect();
            let report = FlagReport {
                flag: strategy.flag_name(),
                arms,
            };
            (strategy.as_str(), report)
        })
        .collect();
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ExperimentsReport {
            node: node.node_id(),
            flag_source: node.flag_status().unwrap_or_else(|| "configuration".to_owned()),
            experiments,
        })
}
