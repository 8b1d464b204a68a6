//! What every request goes through, in one middleware: its id and span, session
//! affinity (forwarding to the session's owner; refusing a claim to be forwarded
//! without proof), the node's response headers, the
//! HTTP metrics and the log line of a failed request.
//!
//! One layer instead of five (a tracing logger, request-id, default-headers, metrics
//! and affinity middlewares): a cache hit is a few microseconds of work, and each
//! layer cost a boxed future, a second lookup of the app data or of the route, or
//! formatted span fields. Measured with `scripts/perf.sh` (README, "Against nginx").

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, ResponseError};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use super::error::Failure;
use super::{forward, v1, ApiError};
use crate::cluster::Cluster;
use crate::telemetry::{self, REQUEST_ID};
use crate::Node;

const NODE_HEADER: HeaderName = HeaderName::from_static("x-edgecache-node");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The middleware factory (`App::wrap`).
pub struct Envelope {
    inner: Rc<Shared>,
}

struct Shared {
    node: Arc<Node>,
    cluster: Arc<Cluster>,
    node_header: HeaderValue,
    /// `server.max_header_bytes`.
    max_header_bytes: usize,
}

impl Envelope {
    pub fn new(node: Arc<Node>, cluster: Arc<Cluster>) -> Self {
        let node_header = HeaderValue::from_str(node.node_id()).expect("node ids are validated at start-up");
        let max_header_bytes = node.limits().max_header_bytes;
        Self {
            inner: Rc::new(Shared {
                node,
                cluster,
                node_header,
                max_header_bytes,
            }),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Envelope
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = EnvelopeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(EnvelopeService {
            service: Rc::new(Boxed(service)),
            shared: self.inner.clone(),
        }))
    }
}

/// The inner service with its body boxed (a no-op for the app's own `BoxBody`), so
/// forwarding can fall back to it.
struct Boxed<S>(S);

impl<S, B> Service<ServiceRequest> for Boxed<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = futures_util::future::MapOk<S::Future, fn(ServiceResponse<B>) -> ServiceResponse<BoxBody>>;

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, request: ServiceRequest) -> Self::Future {
        use futures_util::TryFutureExt;
        self.0
            .call(request)
            .map_ok(ServiceResponse::map_into_boxed_body as fn(_) -> _)
    }
}

pub struct EnvelopeService<S> {
    service: Rc<Boxed<S>>,
    shared: Rc<Shared>,
}

impl<S, B> Service<ServiceRequest> for EnvelopeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut request: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        let service = self.service.clone();
        let id = telemetry::request_id(request.headers());
        let span = telemetry::request_span(request.method(), request.path(), &id);
        let method = request.method().clone();
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let handled = async move {
            let limit = shared.max_header_bytes;
            let result = if header_bytes > limit {
                // Refused before anything reads them (a session would keep some).
                Ok(request.into_response(ApiError::HeadersTooLarge { limit }.error_response()))
            } else if let Some(refusal) = forward::refuse_unproven(&request, &shared.cluster) {
                Ok(request.into_response(refusal))
            } else {
                match forward::owner(&request, &shared.node, &shared.cluster) {
                    None => service.call(request).await,
                    Some(owner) => {
                        // The owner logs under the same id.
                        request.headers_mut().insert(REQUEST_ID, id.clone());
                        forward::forward(request, owner, &shared.node, &shared.cluster, service.as_ref())
                            .await
                    }
                }
            };
            let (route, status) = match &result {
                Ok(response) => (route(response), response.status()),
                Err(err) => (None, err.as_response_error().status_code()),
            };
            shared
                .node
                .metrics()
                .http
                .record(route, &method, status.as_u16(), started.elapsed());
            tracing::Span::current().record("status", status.as_u16());
            match result {
                Ok(mut response) => {
                    if status.is_server_error() {
                        log_failure(&response, &id, &method, started);
                    }
                    let headers = response.headers_mut();
                    headers.insert(REQUEST_ID, id);
                    // Every answer names the node that served it: a read in its
                    // Cache-Status (RFC 9211 names the cache first), anything else in
                    // X-Edgecache-Node; a relayed answer keeps the owner's.
                    if !headers.contains_key(NODE_HEADER) && !headers.contains_key(CACHE_STATUS) {
                        headers.insert(NODE_HEADER, shared.node_header.clone());
                    }
                    Ok(response)
                }
                Err(err) => {
                    // An error actix-web turns into a response after us.
                    if status.is_server_error() {
                        let request_id = id.to_str().unwrap_or_default();
                        tracing::error!(request_id, %method, status = status.as_u16(), cause = %err, "request failed");
                    }
                    Err(err)
                }
            }
        };
        Box::pin(handled.instrument(span))
    }
}

/// The route label of a response's request: a `/v1` path's by its shape (no second
/// routing), else the name of the resource it matched, else none.
fn route(response: &ServiceResponse<BoxBody>) -> Option<&str> {
    let request = response.request();
    if request.path().starts_with("/v1/") {
        v1::label(request.path())
    } else {
        request.match_name()
    }
}

/// One ERROR line per failed request, with its id: the span may be off.
fn log_failure(
    response: &ServiceResponse<BoxBody>,
    id: &HeaderValue,
    method: &actix_web::http::Method,
    started: Instant,
) {
    let request_id = id.to_str().unwrap_or_default();
    let path = response.request().path();
    let status = response.status().as_u16();
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    match response.response().extensions().get::<Failure>() {
        Some(failure) => tracing::error!(
            request_id,
            %method,
            path,
            status,
            took_ms,
            problem = failure.problem,
            cause = %failure.cause,
            "request failed"
        ),
        None => tracing::error!(request_id, %method, path, status, took_ms, "request failed"),
    }
}
