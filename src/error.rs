//! The one error type of the HTTP API, and how each variant becomes a status and the
//! `{"message": …}` body of docs/contract.md §1. Every failure a client can see goes
//! through here: the handlers use none of actix's own extractors (`Json`, `Path`,
//! `Query`), whose errors would have another shape; the body, the path's id and the
//! query are read by this crate's own (`http::extract`, `http::listing`, `routes`),
//! and an unknown route or method is answered by `routes` too.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;
use crate::domain::access::Revoked;
use crate::domain::image::ValidationError;
use crate::store::StoreError;

/// The realm sent with every 401, so `curl` and browsers know to offer Basic auth.
pub const WWW_AUTHENTICATE: &str = "Basic realm=\"image-catalog\"";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("user '{user}' does not hold the policy '{policy}' that this route requires")]
    Forbidden { user: String, policy: &'static str },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "method {method} is not allowed on {path}; allowed: {allow}{}",
        method_hint(method, path)
    )]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("this service only answers application/json, which the Accept header '{0}' rules out")]
    NotAcceptable(String),
    #[error("an image with id '{0}' already exists")]
    Conflict(String),
    /// What a feed asks for is no longer there (pruned), or never was.
    #[error("{0}")]
    Gone(String),
    #[error(
        "{max} requests are waiting for changes already, as many as this server lets wait \
         ([server] max_waiters); retry in a moment"
    )]
    TooManyWaiters { max: usize },
    #[error("If-Match does not match the current ETag of image '{0}'; fetch it again and retry")]
    PreconditionFailed(String),
    #[error("the request body is larger than the {limit} bytes this server accepts")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json, got {0}")]
    UnsupportedMediaType(String),
    #[error(
        "Content-Encoding '{0}' is not supported: send the body uncompressed (no \
         Content-Encoding, or identity)"
    )]
    UnsupportedEncoding(String),
    #[error(
        "the request headers are {size} bytes (names and values), more than the {limit} bytes \
         of request headers this server accepts"
    )]
    HeadersTooLarge { size: usize, limit: usize },
    #[error(
        "this request came on a connection that an earlier response closed (Connection: \
         close), so it was not run; send it again on a new connection"
    )]
    AfterClose,
    #[error("the store is unavailable, nothing was changed; retry later")]
    StoreUnavailable,
    #[error(
        "the store failed while making this change durable, so whether it was applied is \
         unknown: GET the image once the service answers again to check before retrying"
    )]
    OutcomeUnknown,
    #[error(
        "the store has stopped after a failure and the service is restarting; nothing was \
         changed; retry in a moment"
    )]
    StoreStopped,
    #[error("too many changes are waiting to be written; nothing was changed; retry in a moment")]
    StoreBusy,
    #[error("the request body did not arrive within {ms} ms; send the whole body at once")]
    BodyTimeout { ms: u128 },
    #[error(
        "too many failed logins for this user name from your address; retry in {retry_after_secs} s"
    )]
    TooManyFailedLogins { retry_after_secs: u64 },
    #[error("the server is serving as many connections as it may ({limit}); retry in a moment")]
    TooManyConnections { limit: usize },
    #[error(
        "your address holds as many connections to this server as one address may ({limit}); \
         reuse or close them, or retry in a moment"
    )]
    TooManyConnectionsFromAddress { limit: usize },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    pub fn unknown_image(id: &str) -> Self {
        ApiError::NotFound(format!("no image with id '{id}'"))
    }
}

/// Where the client most likely meant to go.
fn method_hint(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("POST", "/v3/images") => "; to create an image, POST to /v3/image",
        _ => "",
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthorized(why) => ApiError::Unauthorized(why),
            AuthError::TooManyFailedLogins { retry_after_secs } => {
                ApiError::TooManyFailedLogins { retry_after_secs }
            }
        }
    }
}

impl From<Revoked> for ApiError {
    fn from(revoked: Revoked) -> Self {
        ApiError::Forbidden {
            user: revoked.user,
            policy: revoked.policy,
        }
    }
}

impl From<crate::feed::Full> for ApiError {
    fn from(full: crate::feed::Full) -> Self {
        ApiError::TooManyWaiters {
            max: full.max_waiters,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        ApiError::BadRequest(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => ApiError::unknown_image(&id),
            StoreError::Conflict(id) => ApiError::Conflict(id),
            StoreError::PreconditionFailed(id) => ApiError::PreconditionFailed(id),
            StoreError::Invalid(err) => err.into(),
            StoreError::OutcomeUnknown(why) => {
                log::error!("a change of unknown outcome: {why}");
                ApiError::OutcomeUnknown
            }
            StoreError::Stopped(_) => ApiError::StoreStopped,
            StoreError::Revoked(revoked) => revoked.into(),
            StoreError::Busy => ApiError::StoreBusy,
            StoreError::Unavailable(why) => {
                log::warn!("the store is unavailable: {why}");
                ApiError::StoreUnavailable
            }
            other => {
                // The client cannot act on engine details; the operator can.
                log::error!("store failure: {other}");
                ApiError::StoreUnavailable
            }
        }
    }
}

/// The body every error carries.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A sentence a person can act on, naming the field, id, policy or header concerned.
    pub message: String,
}

pub fn message_body(message: &str) -> String {
    serde_json::to_string(&ErrorBody {
        message: message.to_owned(),
    })
    .unwrap_or_default()
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::AfterClose => StatusCode::BAD_REQUEST,
            ApiError::StoreUnavailable
            | ApiError::OutcomeUnknown
            | ApiError::StoreStopped
            | ApiError::StoreBusy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyFailedLogins { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyConnections { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyConnectionsFromAddress { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyWaiters { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type(mime_json());
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, WWW_AUTHENTICATE));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::TooManyFailedLogins { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, *retry_after_secs));
            }
            ApiError::TooManyConnections { .. }
            | ApiError::TooManyConnectionsFromAddress { .. } => {
                // A connection over the limit is not kept for a next request.
                response.insert_header((header::RETRY_AFTER, 1));
                response.force_close();
            }
            ApiError::StoreBusy | ApiError::StoreStopped | ApiError::TooManyWaiters { .. } => {
                response.insert_header((header::RETRY_AFTER, 1));
            }
            ApiError::BodyTimeout { .. } | ApiError::AfterClose => {
                response.force_close();
            }
            ApiError::HeadersTooLarge { .. } => {
                // Its body, if any, is not read; a client that sends such heads gets no
                // second request on this connection.
                response.force_close();
            }
            _ => {}
        }
        response.body(message_body(&self.to_string()))
    }
}

pub fn mime_json() -> header::HeaderValue {
    header::HeaderValue::from_static("application/json")
}
