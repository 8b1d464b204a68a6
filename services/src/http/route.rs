//! The route templates of the REST API: every resource [`super::routes`] mounts is
//! named by its template, which is also its `route` label in the HTTP metrics.

pub const ITEM: &str = "/v1/{collection}/{id}";
pub const BATCH_GET: &str = "/v1/{collection}/batch-get";
pub const INCREMENT: &str = "/v1/{collection}/{id}/increment";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const CLUSTER_HEALTH: &str = "/cluster/health";
pub const CLUSTER_LEAVE: &str = "/cluster/leave";
pub const METRICS: &str = "/metrics";
pub const ADMIN_EXPERIMENTS: &str = "/admin/experiments";
pub const OPENAPI: &str = "/openapi.json";
pub const ADMIN_PURGE: &str = "/admin/purge";
pub const CLUSTER_PURGE: &str = "/cluster/purge";
pub const ADMIN_DASHBOARD: &str = "/admin/dashboard";
pub const ADMIN_LOGIN: &str = "/admin/login";
pub const ADMIN_LOGOUT: &str = "/admin/logout";

/// The `route` label values of the HTTP metrics. `http::routes` names every resource
/// by its template, so a request's route is read from the match without building its
/// pattern. Requests that match no named resource count as [`crate::metrics::UNMATCHED`].
pub const ROUTES: [&str; 15] = [
    ITEM,
    BATCH_GET,
    INCREMENT,
    HEALTHZ,
    READYZ,
    CLUSTER_HEALTH,
    CLUSTER_LEAVE,
    METRICS,
    ADMIN_EXPERIMENTS,
    OPENAPI,
    ADMIN_PURGE,
    CLUSTER_PURGE,
    ADMIN_DASHBOARD,
    ADMIN_LOGIN,
    ADMIN_LOGOUT,
];
