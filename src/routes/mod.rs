//! The route table. Each resource file mounts its own routes; this file holds what
//! they share: the table of routes and policies, and the 404 and 405 answers.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse, Resource, guard};

use crate::domain::access::{CreateImage, DeleteImage, Policy, ReadAudit, ReadImages};
use crate::domain::image::{Image, ImageId};
use crate::error::{ApiError, mime_json};
pub use crate::http::extract::JsonBody;
pub use crate::http::middleware::RoutePattern;

pub(crate) mod audit;
pub(crate) mod changes;
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
        path: "/v3/changes",
        policy: Some(ReadImages::NAME),
        operation: operation!(changes::__path_stream),
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
    changes::configure(cfg);
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
        "no route {} {}; the API lives under /v3 (GET /v3/openapi.json lists its routes)",
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
