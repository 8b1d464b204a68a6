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
use crate::projection::ProjectionError;

/// The `type` of every problem is `urn:problem:edgecache:<slug>`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:problem:edgecache:";

/// Declares [`ProblemType`] and [`ProblemType::ALL`] from one list, so that a type the
/// API can answer with cannot be missing from the OpenAPI document (`http::openapi`).
macro_rules! problem_types {
    ($($name:ident = $slug:literal: $about:literal;)*) => {
        /// Every problem `type` the API answers with: `urn:problem:edgecache:<slug>`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType {
            $(#[doc = $about] $name,)*
        }

        impl ProblemType {
            /// Every problem type, in declaration order.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$name),*];

            /// The stable slug at the end of the `type` URN.
            pub const fn slug(self) -> &'static str {
                match self {
                    $(ProblemType::$name => $slug,)*
                }
            }

            /// What the problem means, for the API's documentation.
            pub const fn about(self) -> &'static str {
                match self {
                    $(ProblemType::$name => $about,)*
                }
            }
        }
    };
}

problem_types! {
    MalformedJson = "malformed-json": "The request body is not valid JSON.";
    NotAnObject = "not-an-object": "The request body must be a JSON object.";
    UnsupportedMediaType = "unsupported-media-type": "The request's Content-Type is not one the route accepts.";
    BodyTooLarge = "body-too-large": "The request body exceeds the node's limit.";
    HeadersTooLarge = "headers-too-large": "The request's headers exceed the node's limit.";
    InvalidId = "invalid-id": "An item id is empty, too long or has characters outside A-Z, a-z, 0-9, '_', '.', ':' and '-'.";
    InvalidIfMatch = "invalid-if-match": "If-Match is neither \"*\" nor one ETag this node issued.";
    InvalidIdempotencyKey = "invalid-idempotency-key": "Idempotency-Key is empty, too long or not visible ASCII.";
    IdempotencyKeyReused = "idempotency-key-reused": "The Idempotency-Key was used for a different request.";
    IdempotencyKeyInFlight = "idempotency-key-in-flight": "A request with this Idempotency-Key is still running; retry later.";
    IdempotencyStoreFull = "idempotency-store-full": "The node cannot record another idempotency key now; the write was not applied.";
    InvalidSessionId = "invalid-session-id": "X-Session-Id is not a valid session id.";
    TokenWithoutSession = "token-without-session": "X-Session-Token was sent without X-Session-Id.";
    UserIdTooLong = "user-id-too-long": "X-User-Id exceeds its limit.";
    TokenMalformed = "token-malformed": "X-Session-Token cannot be read.";
    TokenUnknownKey = "token-unknown-key": "X-Session-Token was sealed with a key this node does not hold.";
    TokenTampered = "token-tampered": "X-Session-Token fails its authentication check.";
    TokenForeign = "token-foreign": "X-Session-Token belongs to another session.";
    UnknownCollection = "unknown-collection": "The collection is not configured.";
    NotFound = "not-found": "The item does not exist.";
    UnknownField = "unknown-field": "A field is not in the collection's data model.";
    UnknownProjectionField = "unknown-projection-field": "`fields` names a field that is not in the collection's data model.";
    WrongType = "wrong-type": "A field's value has the wrong JSON type.";
    OutOfRange = "out-of-range": "A field's value is outside its bounds.";
    IdMismatch = "id-mismatch": "The body's id differs from the path's.";
    UnrepresentableValue = "unrepresentable-value": "A value cannot be stored exactly.";
    InvalidRequest = "invalid-request": "The request is malformed in another way (the detail says how).";
    BatchTooLarge = "batch-too-large": "A batch asks for more ids than the node allows.";
    PreconditionFailed = "precondition-failed": "If-Match names another version than the item's; `current_version` says which.";
    BoundCrossed = "bound-crossed": "An increment would take a field past its bound.";
    NotAnInteger = "not-an-integer": "An increment's field does not hold an integer.";
    OriginUnavailable = "origin-unavailable": "The origin could not answer in time; reads and writes were not served.";
    SessionBusy = "session-busy": "The session's earlier writes did not finish in time; this write was not applied.";
    WriteOutcomeUnknown = "write-outcome-unknown": "The write started but its outcome is unknown; retry with the same Idempotency-Key.";
    ForwardedWithoutProof = "forwarded-without-proof": "X-Edgecache-Forwarded was set without a valid X-Edgecache-Proof.";
    Unauthorized = "unauthorized": "The route needs a bearer token (admin, metrics) or a peer's proof (cluster).";
    Forbidden = "forbidden": "A peer asked for something only another node may ask for.";
    NoRoute = "no-route": "Nothing is mounted at this path (or the admin API is disabled).";
    MethodNotAllowed = "method-not-allowed": "The path does not take this method; Allow lists those it does.";
    Internal = "internal": "The node failed; the request id is in its log.";
}

/// The slug of a request refused because it claims to be forwarded without proof (a
/// forwarding node that gets it back serves the request itself).
pub const FORWARDED_WITHOUT_PROOF: &str = ProblemType::ForwardedWithoutProof.slug();

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
    #[error(transparent)]
    Projection(#[from] ProjectionError),
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
    /// The problem `type` this error answers with.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            ApiError::MalformedJson(_) => ProblemType::MalformedJson,
            ApiError::NotAnObject => ProblemType::NotAnObject,
            ApiError::UnsupportedMediaType(_) => ProblemType::UnsupportedMediaType,
            ApiError::BodyTooLarge { .. } => ProblemType::BodyTooLarge,
            ApiError::HeadersTooLarge { .. } => ProblemType::HeadersTooLarge,
            ApiError::InvalidId { .. } => ProblemType::InvalidId,
            ApiError::InvalidIfMatch => ProblemType::InvalidIfMatch,
            ApiError::InvalidIdempotencyKey { .. } => ProblemType::InvalidIdempotencyKey,
            ApiError::IdempotencyKeyReused => ProblemType::IdempotencyKeyReused,
            ApiError::IdempotencyKeyInFlight => ProblemType::IdempotencyKeyInFlight,
            ApiError::IdempotencyFull => ProblemType::IdempotencyStoreFull,
            ApiError::Session(SessionError::InvalidId) => ProblemType::InvalidSessionId,
            ApiError::Session(SessionError::TokenWithoutSession) => ProblemType::TokenWithoutSession,
            ApiError::Session(SessionError::UserIdTooLong { .. }) => ProblemType::UserIdTooLong,
            ApiError::Session(SessionError::Token(TokenError::Malformed)) => ProblemType::TokenMalformed,
            ApiError::Session(SessionError::Token(TokenError::UnknownKey)) => ProblemType::TokenUnknownKey,
            ApiError::Session(SessionError::Token(TokenError::Tampered)) => ProblemType::TokenTampered,
            ApiError::Session(SessionError::Token(TokenError::Foreign)) => ProblemType::TokenForeign,
            ApiError::UnknownCollection(_) => ProblemType::UnknownCollection,
            ApiError::NotFound(_) => ProblemType::NotFound,
            ApiError::Invalid(InvalidInput::UnknownField(_)) => ProblemType::UnknownField,
            ApiError::Invalid(InvalidInput::WrongType { .. }) => ProblemType::WrongType,
            ApiError::Invalid(InvalidInput::OutOfRange { .. }) => ProblemType::OutOfRange,
            ApiError::Invalid(InvalidInput::IdMismatch) => ProblemType::IdMismatch,
            ApiError::Invalid(InvalidInput::Unrepresentable { .. }) => ProblemType::UnrepresentableValue,
            ApiError::InvalidRequest(_) => ProblemType::InvalidRequest,
            ApiError::Projection(ProjectionError::UnknownField(_)) => ProblemType::UnknownProjectionField,
            ApiError::Projection(ProjectionError::Empty) => ProblemType::InvalidRequest,
            ApiError::BatchTooLarge { .. } => ProblemType::BatchTooLarge,
            ApiError::PreconditionFailed { .. } => ProblemType::PreconditionFailed,
            ApiError::BoundCrossed(_) => ProblemType::BoundCrossed,
            ApiError::NotAnInteger(_) => ProblemType::NotAnInteger,
            ApiError::OriginUnavailable(_) => ProblemType::OriginUnavailable,
            ApiError::SessionBusy => ProblemType::SessionBusy,
            ApiError::OutcomeUnknown => ProblemType::WriteOutcomeUnknown,
            ApiError::ForwardedWithoutProof(_) => ProblemType::ForwardedWithoutProof,
            ApiError::Internal(_) => ProblemType::Internal,
        }
    }

    /// A problem response with another status and type than the error's own.
    pub fn error_response_with(&self, status: StatusCode, kind: ProblemType) -> HttpResponse {
        problem(
            status,
            kind,
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
            | ApiError::Projection(ProjectionError::Empty)
            | ApiError::ForwardedWithoutProof(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownCollection(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BoundCrossed(_) | ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::BodyTooLarge { .. } | ApiError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Invalid(_)
            | ApiError::NotAnInteger(_)
            | ApiError::Projection(ProjectionError::UnknownField(_)) => StatusCode::UNPROCESSABLE_ENTITY,
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
            tracing::debug!(problem = self.problem_type().slug(), detail = %self, "request rejected");
        }
        let detail = match self {
            // Internals stay in the log.
            ApiError::Internal(_) => "the node failed to answer; the request id is in the log".to_owned(),
            other => other.to_string(),
        };
        let mut problem = problem(status, self.problem_type(), self.title(), detail);
        if let ApiError::PreconditionFailed { current } = self {
            problem.set_value("current_version", current);
        }
        let mut response = problem.to_actix_response();
        if status.is_server_error() {
            // Logged with the request's id once the response leaves (http::envelope).
            response.extensions_mut().insert(Failure {
                problem: self.problem_type().slug(),
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

/// A problem document with a status, its `type`, a title and a detail.
pub fn problem(status: StatusCode, kind: ProblemType, title: &str, detail: String) -> HttpApiProblem {
    let status = http_api_problem::StatusCode::from_u16(status.as_u16())
        .unwrap_or(http_api_problem::StatusCode::INTERNAL_SERVER_ERROR);
    HttpApiProblem::new(status)
        .type_url(format!("{PROBLEM_TYPE_PREFIX}{}", kind.slug()))
        .title(title)
        .detail(detail)
}

/// 404 `no-route`: nothing is mounted at the request's path.
pub fn no_route(request: &HttpRequest) -> HttpResponse {
    ApiError::InvalidRequest(format!("no route for {} {}", request.method(), request.path()))
        .error_response_with(StatusCode::NOT_FOUND, ProblemType::NoRoute)
}

/// 405 `method-not-allowed`: the path takes only `allowed` (a comma-separated list,
/// also sent as `Allow`).
pub fn method_not_allowed(method: &actix_web::http::Method, allowed: &'static str) -> HttpResponse {
    let mut response = ApiError::InvalidRequest(format!("{method} is not allowed here ({allowed})"))
        .error_response_with(StatusCode::METHOD_NOT_ALLOWED, ProblemType::MethodNotAllowed);
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allowed),
    );
    response
}
