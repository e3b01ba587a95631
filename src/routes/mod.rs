//! The route table. Each resource file mounts its own routes; this file holds what
//! they share: the table of routes and policies, the JSON body reader, and the 404 and
//! 405 answers.

use std::future::{Ready, ready};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest, HttpResponse, Resource, guard};
use futures_util::StreamExt;

use crate::app::AppState;
use crate::domain::access::{CreateImage, DeleteImage, Policy, ReadAudit, ReadImages};
use crate::domain::image::{Image, ImageId};
use crate::error::{ApiError, mime_json};
use crate::http::headers::{is_identity_encoding, is_json_content_type};
pub use crate::http::middleware::RoutePattern;

pub(crate) mod audit;
pub(crate) mod images;
pub(crate) mod ops;

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// `None` for the routes open to anyone.
    pub policy: Option<&'static str>,
    /// The handler's OpenAPI operation (its `#[utoipa::path]` annotation).
    pub operation: fn() -> utoipa::openapi::path::Operation,
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        (self.method, self.path, self.policy) == (other.method, other.path, other.policy)
    }
}

/// The OpenAPI operation of a handler annotated with `#[utoipa::path]`.
macro_rules! operation {
    ($handler:path) => {
        <$handler as utoipa::Path>::operation
    };
}

/// Every route, the policy it needs and its documentation: the one place a route is
/// named. `check-config`, the OpenAPI document, the `Allow` header of each 405 and
/// the tests read it; the handlers' `Authorized<P>` arguments are what enforce it.
/// Each GET route also answers HEAD, with the same handler and policy (see
/// [`get_or_head`]).
pub const TABLE: &[Route] = &[
    Route {
        method: "GET",
        path: "/v3/images",
        policy: Some(ReadImages::NAME),
        operation: operation!(images::__path_list),
    },
    Route {
        method: "POST",
        path: "/v3/image",
        policy: Some(CreateImage::NAME),
        operation: operation!(images::__path_create),
    },
    Route {
        method: "GET",
        path: "/v3/image/{id}",
        policy: Some(ReadImages::NAME),
        operation: operation!(images::__path_show),
    },
    Route {
        method: "PUT",
        path: "/v3/image/{id}",
        policy: Some(CreateImage::NAME),
        operation: operation!(images::__path_update),
    },
    Route {
        method: "DELETE",
        path: "/v3/image/{id}",
        policy: Some(DeleteImage::NAME),
        operation: operation!(images::__path_delete),
    },
    Route {
        method: "GET",
        path: "/v3/audit",
        policy: Some(ReadAudit::NAME),
        operation: operation!(audit::__path_list),
    },
    Route {
        method: "GET",
        path: "/healthz",
        policy: None,
        operation: operation!(ops::__path_health),
    },
    Route {
        method: "GET",
        path: "/metrics",
        policy: None,
        operation: operation!(ops::__path_metrics),
    },
    Route {
        method: "GET",
        path: "/v3/openapi.json",
        policy: None,
        operation: operation!(ops::__path_openapi),
    },
];

/// The methods `path` answers, for the `Allow` header of a 405: its rows of [`TABLE`],
/// HEAD beside each GET.
pub fn allowed_methods(path: &str) -> &'static str {
    static ALLOW: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    let allow = ALLOW.get_or_init(|| {
        let mut allow: Vec<(&'static str, String)> = Vec::new();
        for route in TABLE {
            let methods: &[&str] = if route.method == "GET" {
                &["GET", "HEAD"]
            } else {
                std::slice::from_ref(&route.method)
            };
            match allow.iter_mut().find(|(p, _)| *p == route.path) {
                Some((_, list)) => {
                    for method in methods {
                        list.push_str(", ");
                        list.push_str(method);
                    }
                }
                None => allow.push((route.path, methods.join(", "))),
            }
        }
        allow
    });
    allow
        .iter()
        .find(|(p, _)| *p == path)
        .map_or("", |(_, list)| list.as_str())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    images::configure(cfg);
    audit::configure(cfg);
    ops::configure(cfg);
}

/// The route of a GET handler, which answers HEAD as well: the same status and
/// headers (Content-Type, ETag, Link, Content-Length), and actix leaves the body out.
/// Load balancers probe with HEAD.
pub(crate) fn get_or_head() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// A resource whose unmatched methods get a 405 naming the ones [`TABLE`] gives it.
fn resource(path: &'static str) -> Resource {
    let allow = allowed_methods(path);
    web::resource(path)
        .app_data(RoutePattern(path))
        .default_service(web::to(move |req: HttpRequest| async move {
            Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                path: req.path().to_owned(),
                allow,
            })
        }))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}; the API lives under /v3 (see README)",
        req.method(),
        req.path()
    )))
}

/// `{"id", "message"}`: the answer to a create or a delete.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct IdMessage {
    pub id: ImageId,
    /// `Created` or `Deleted`.
    pub message: &'static str,
}

/// The answer to an update.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Updated {
    pub image: Image,
    /// `Updated`.
    pub message: &'static str,
}

pub fn json_response(body: impl actix_web::body::MessageBody + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, mime_json()))
        .body(body)
}

/// A JSON request body, read only when the handler asks: after the `Authorized`
/// argument has run, so an unauthenticated client learns nothing from 415 or 413.
pub struct JsonBody {
    content_type: Option<Vec<u8>>,
    /// Every `Content-Encoding` header, joined with ", ".
    content_encoding: Option<Vec<u8>>,
    content_length: Option<usize>,
    limit: usize,
    timeout: Duration,
    payload: Payload,
}

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>();
        let limit = state.map_or(65536, |s| s.max_body_bytes);
        let timeout = state.map_or(Duration::from_secs(10), |s| s.body_timeout);
        let header = |name| req.headers().get(name).map(|v| v.as_bytes());
        let mut encodings = req
            .headers()
            .get_all(CONTENT_ENCODING)
            .map(|v| v.as_bytes());
        let content_encoding = encodings.next().map(|first| {
            encodings.fold(first.to_vec(), |mut all, more| {
                all.extend_from_slice(b", ");
                all.extend_from_slice(more);
                all
            })
        });
        ready(Ok(JsonBody {
            content_type: header(CONTENT_TYPE).map(<[u8]>::to_vec),
            content_encoding,
            content_length: header(CONTENT_LENGTH)
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()),
            limit,
            timeout,
            payload: payload.take(),
        }))
    }
}

impl JsonBody {
    pub async fn read(mut self) -> Result<Bytes, ApiError> {
        match &self.content_type {
            Some(ct) if is_json_content_type(ct) => {}
            Some(ct) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "'{}'",
                    String::from_utf8_lossy(ct)
                )));
            }
            None => return Err(ApiError::UnsupportedMediaType("no Content-Type".into())),
        }
        if let Some(encoding) = &self.content_encoding
            && !is_identity_encoding(encoding)
        {
            return Err(ApiError::UnsupportedEncoding(
                String::from_utf8_lossy(encoding).into_owned(),
            ));
        }
        if self.content_length.is_some_and(|n| n > self.limit) {
            return Err(ApiError::PayloadTooLarge { limit: self.limit });
        }
        // One deadline for the whole body, so a client trickling a byte at a time is
        // cut off as surely as one that stops.
        actix_web::rt::time::timeout(self.timeout, collect(&mut self.payload, self.limit))
            .await
            .unwrap_or(Err(ApiError::BodyTimeout {
                ms: self.timeout.as_millis(),
            }))
    }
}

async fn collect(payload: &mut Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
