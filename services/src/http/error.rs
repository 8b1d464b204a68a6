//! Every failure the REST API reports, as RFC 9457 problem+json with a stable `type`.
//! A 5xx never shows its cause to the client; the log keeps the whole chain.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use edgecache_actors::TokenError;
use http_api_problem::HttpApiProblem;

use crate::node::{ReadError, SessionError, WriteFailure};
use crate::origin::{OriginError, WriteError};
use crate::plan::InvalidInput;

/// The `type` of every problem is `urn:problem:edgecache:<slug>`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:problem:edgecache:";

/// The slug of a request refused because it claims to be forwarded without proof (a
/// forwarding node that gets it back serves the request itself).
pub const FORWARDED_WITHOUT_PROOF: &str = "forwarded-without-proof";

/// What the log line of a failed request (5xx) says: the problem and the whole cause
/// chain. Error responses carry it in their extensions; only the log sees it
/// (`http::envelope` writes it).
pub struct Failure {
    pub problem: &'static str,
    pub cause: String,
}

/// What went wrong, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("the content type must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request's headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the id must be 1 to {max} bytes of A-Z, a-z, 0-9, '_', '.', ':' and '-'")]
    InvalidId { max: usize },
    #[error("the If-Match header must be \"*\" or one ETag this node issued")]
    InvalidIfMatch,
    #[error("the Idempotency-Key header must be 1 to {max} visible ASCII characters")]
    InvalidIdempotencyKey { max: usize },
    #[error(
        "this Idempotency-Key was used for another request (method, item, preconditions or body differ)"
    )]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed; retry later")]
    IdempotencyKeyInFlight,
    #[error("the node cannot record more idempotency keys now; this write was not applied, retry later")]
    IdempotencyFull,
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    #[error("no item `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("at most {max} ids per batch")]
    BatchTooLarge { max: usize },
    #[error("the item is at version {current}, not the one If-Match names")]
    PreconditionFailed { current: u64 },
    #[error("{0}")]
    BoundCrossed(String),
    #[error("field `{0}` does not hold an integer")]
    NotAnInteger(String),
    #[error("the origin is unavailable")]
    OriginUnavailable(#[source] OriginError),
    #[error("the session's earlier writes did not finish in time; this write was not applied")]
    SessionBusy,
    #[error(
        "the write started but its outcome is unknown: it may or may not have been applied; \
         retry with the same Idempotency-Key"
    )]
    OutcomeUnknown,
    #[error("X-Edgecache-Forwarded is set only by edge nodes, with a valid X-Edgecache-Proof: {0}")]
    ForwardedWithoutProof(crate::cluster::ProofError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// The stable slug of the problem `type`.
    pub fn slug(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed-json",
            ApiError::NotAnObject => "not-an-object",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::BodyTooLarge { .. } => "body-too-large",
            ApiError::HeadersTooLarge { .. } => "headers-too-large",
            ApiError::InvalidId { .. } => "invalid-id",
            ApiError::InvalidIfMatch => "invalid-if-match",
            ApiError::InvalidIdempotencyKey { .. } => "invalid-idempotency-key",
            ApiError::IdempotencyKeyReused => "idempotency-key-reused",
            ApiError::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            ApiError::IdempotencyFull => "idempotency-store-full",
            ApiError::Session(SessionError::InvalidId) => "invalid-session-id",
            ApiError::Session(SessionError::TokenWithoutSession) => "token-without-session",
            ApiError::Session(SessionError::UserIdTooLong { .. }) => "user-id-too-long",
            ApiError::Session(SessionError::Token(TokenError::Malformed)) => "token-malformed",
            ApiError::Session(SessionError::Token(TokenError::UnknownKey)) => "token-unknown-key",
            ApiError::Session(SessionError::Token(TokenError::Tampered)) => "token-tampered",
            ApiError::Session(SessionError::Token(TokenError::Foreign)) => "token-foreign",
            ApiError::UnknownCollection(_) => "unknown-collection",
            ApiError::NotFound(_) => "not-found",
            ApiError::Invalid(InvalidInput::UnknownField(_)) => "unknown-field",
            ApiError::Invalid(InvalidInput::WrongType { .. }) => "wrong-type",
            ApiError::Invalid(InvalidInput::OutOfRange { .. }) => "out-of-range",
            ApiError::Invalid(InvalidInput::IdMismatch) => "id-mismatch",
            ApiError::Invalid(InvalidInput::Unrepresentable { .. }) => "unrepresentable-value",
            ApiError::InvalidRequest(_) => "invalid-request",
            ApiError::BatchTooLarge { .. } => "batch-too-large",
            ApiError::PreconditionFailed { .. } => "precondition-failed",
            ApiError::BoundCrossed(_) => "bound-crossed",
            ApiError::NotAnInteger(_) => "not-an-integer",
            ApiError::OriginUnavailable(_) => "origin-unavailable",
            ApiError::SessionBusy => "session-busy",
            ApiError::OutcomeUnknown => "write-outcome-unknown",
            ApiError::ForwardedWithoutProof(_) => FORWARDED_WITHOUT_PROOF,
            ApiError::Internal(_) => "internal",
        }
    }

    /// A problem response with another status and type than the error's own.
    pub fn error_response_with(&self, status: StatusCode, slug: &str) -> HttpResponse {
        problem(
            status,
            slug,
            status.canonical_reason().unwrap_or("Error"),
            self.to_string(),
        )
        .to_actix_response()
    }

    fn title(&self) -> &'static str {
        match self.status_code().as_u16() {
            400 => "Bad request",
            404 => "Not found",
            409 => "Conflict",
            412 => "Precondition failed",
            413 => "Content too large",
            415 => "Unsupported media type",
            431 => "Request header fields too large",
            422 => "Unprocessable content",
            503 => "Service unavailable",
            _ => "Internal server error",
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::UnknownCollection(c) => ApiError::UnknownCollection(c),
            ReadError::Origin(e) => e.into(),
        }
    }
}

impl From<OriginError> for ApiError {
    fn from(err: OriginError) -> Self {
        match err {
            e @ OriginError::Unavailable { .. } => ApiError::OriginUnavailable(e),
            e @ OriginError::Internal { .. } => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<WriteFailure> for ApiError {
    fn from(err: WriteFailure) -> Self {
        match err {
            WriteFailure::UnknownCollection(c) => ApiError::UnknownCollection(c),
            WriteFailure::SessionBusy => ApiError::SessionBusy,
            WriteFailure::OutcomeUnknown | WriteFailure::Write(WriteError::OutcomeUnknown(_)) => {
                ApiError::OutcomeUnknown
            }
            WriteFailure::IdempotencyFull => ApiError::IdempotencyFull,
            WriteFailure::Write(WriteError::KeyReused) => ApiError::IdempotencyKeyReused,
            WriteFailure::Write(WriteError::KeyInFlight) => ApiError::IdempotencyKeyInFlight,
            WriteFailure::Write(WriteError::VersionMismatch { current, .. }) => {
                ApiError::PreconditionFailed { current: current.0 }
            }
            WriteFailure::Write(WriteError::NotFound) => ApiError::NotFound("the item does not exist".into()),
            WriteFailure::Write(e @ WriteError::BoundCrossed { .. }) => ApiError::BoundCrossed(e.to_string()),
            WriteFailure::Write(WriteError::NotAnInteger { field }) => ApiError::NotAnInteger(field),
            WriteFailure::Write(WriteError::Origin(e)) => e.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::NotAnObject
            | ApiError::InvalidId { .. }
            | ApiError::InvalidIfMatch
            | ApiError::InvalidIdempotencyKey { .. }
            | ApiError::Session(_)
            | ApiError::InvalidRequest(_)
            | ApiError::ForwardedWithoutProof(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownCollection(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BoundCrossed(_) | ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::BodyTooLarge { .. } | ApiError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Invalid(_) | ApiError::NotAnInteger(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::OriginUnavailable(_)
            | ApiError::SessionBusy
            | ApiError::OutcomeUnknown
            | ApiError::IdempotencyFull => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if !status.is_server_error() {
            tracing::debug!(problem = self.slug(), detail = %self, "request rejected");
        }
        let detail = match self {
            // Internals stay in the log.
            ApiError::Internal(_) => "the node failed to answer; the request id is in the log".to_owned(),
            other => other.to_string(),
        };
        let mut problem = problem(status, self.slug(), self.title(), detail);
        if let ApiError::PreconditionFailed { current } = self {
            problem.set_value("current_version", current);
        }
        let mut response = problem.to_actix_response();
        if status.is_server_error() {
            // Logged with the request's id once the response leaves (http::envelope).
            response.extensions_mut().insert(Failure {
                problem: self.slug(),
                cause: ErrorChain(self).to_string(),
            });
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || matches!(self, ApiError::IdempotencyKeyInFlight) {
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// Displays an error with every cause behind it.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A problem document with a status, the `type` of `slug`, a title and a detail.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: String) -> HttpApiProblem {
    let status = http_api_problem::StatusCode::from_u16(status.as_u16())
        .unwrap_or(http_api_problem::StatusCode::INTERNAL_SERVER_ERROR);
    HttpApiProblem::new(status)
        .type_url(format!("{PROBLEM_TYPE_PREFIX}{slug}"))
        .title(title)
        .detail(detail)
}

/// 404 `no-route`: nothing is mounted at the request's path.
pub fn no_route(request: &HttpRequest) -> HttpResponse {
    ApiError::InvalidRequest(format!("no route for {} {}", request.method(), request.path()))
        .error_response_with(StatusCode::NOT_FOUND, "no-route")
}
