//! The page for people: the catalog and its trail in a browser, read-only, for the
//! same users and policies as the API, kept live by a small script that follows
//! `/v3/changes` (and long-polls `/v3/audit`).
//!
//! Everything it loads is in the binary and served from `/ui/static/`; every `/ui/`
//! response carries a Content-Security-Policy that allows no inline script. A handler
//! takes a [`Viewer<P>`]: the API's proof of the policy, whose refusals are pages
//! (401 with the realm, so that a browser asks for the password; 403 naming the policy).

mod assets;
mod views;

use std::future::Future;
use std::pin::Pin;

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use maud::Markup;

use crate::app::AppState;
use crate::domain::access::{Policy, ReadAudit, ReadImages};
use crate::domain::change::AuditRecord;
use crate::domain::image::Image;
use crate::error::ApiError;
use crate::http::extract::{Authorized, ClientAddress};
use crate::http::listing;
use crate::http::middleware::RoutePattern;
use crate::routes::get_or_head;
use crate::store::{AuditRange, Record, StoreError};
use views::{Frame, Live, Section};

/// The pages and the policy each needs, for `check-config`'s table (the pages are not
/// in the OpenAPI document: they are not the API). The styles, the script and the
/// favicon under `/ui/static/` are open, as is `/`, which leads here.
pub const ROUTES: &[(&str, &str)] = &[
    ("/ui/", ReadImages::NAME),
    ("/ui/image/{id}", ReadImages::NAME),
    ("/ui/audit", ReadAudit::NAME),
];

/// Rows on a page of the catalog and of the trail.
const PAGE: usize = 100;
/// Records of an image's history on its page.
const HISTORY: usize = 50;

/// Only this binary's own script, styles and images; no frame may hold the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/")
            .app_data(RoutePattern("/"))
            .route(get_or_head().to(to_the_page)),
    )
    .service(
        web::scope("/ui")
            .wrap(
                DefaultHeaders::new()
                    .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("Referrer-Policy", "no-referrer"))
                    .add(("X-Frame-Options", "DENY")),
            )
            .service(page("", "/ui", to_the_page))
            .service(page("/", "/ui/", catalog))
            .service(page("/image/{id}", "/ui/image/{id}", image))
            .service(page("/audit", "/ui/audit", trail))
            .service(page("/static/{name}", "/ui/static/{name}", assets::serve))
            .default_service(web::to(|req: HttpRequest| async move {
                Err::<HttpResponse, _>(UiError::at(base_of(req.path()))(ApiError::NotFound(
                    format!("no page {}", req.path()),
                )))
            })),
    );
}

fn page<F, Args>(path: &'static str, pattern: &'static str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .app_data(RoutePattern(pattern))
        .route(get_or_head().to(handler))
        .default_service(web::to(|req: HttpRequest| async move {
            // Read-only: nothing here takes a POST, a PUT or a DELETE.
            Err::<HttpResponse, _>(UiError::at(base_of(req.path()))(
                ApiError::MethodNotAllowed {
                    method: req.method().to_string(),
                    path: req.path().to_owned(),
                    allow: "GET, HEAD",
                },
            ))
        }))
}

/// `/` and `/ui` lead to the catalog page. Relative, so that it works under a proxy's
/// sub-path too.
async fn to_the_page() -> HttpResponse {
    HttpResponse::TemporaryRedirect()
        .insert_header((header::LOCATION, "ui/"))
        .finish()
}

/// Proof that the caller holds policy `P`, for a page: the refusals are pages too.
pub struct Viewer<P: Policy>(Authorized<P>);

impl<P: Policy> FromRequest for Viewer<P> {
    type Error = UiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, UiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = Authorized::<P>::from_request(req, payload);
        let base = base_of(req.path());
        Box::pin(async move { authorized.await.map(Viewer).map_err(UiError::at(base)) })
    }
}

impl<P: Policy> Viewer<P> {
    /// What every page shows around its content, for this viewer.
    fn frame<'a>(&'a self, req: &HttpRequest, title: &'a str, section: Section) -> Frame<'a> {
        Frame {
            title,
            base: base_of(req.path()),
            user: Some(self.0.user()),
            can_audit: self.0.also_holds::<ReadAudit>(),
            section,
            in_clear: in_clear(req, self.0.state()),
            live: None,
        }
    }
}

/// From a page to `/ui/`.
fn base_of(path: &str) -> &'static str {
    if path.starts_with("/ui/image/") || path.starts_with("/ui/static/") {
        "../"
    } else {
        ""
    }
}

/// Whether the password reached this page in clear: plain HTTP from another host
/// (a trusted proxy that says it took HTTPS counts as HTTPS).
fn in_clear(req: &HttpRequest, state: &AppState) -> bool {
    if state.certificates().is_some() {
        return false;
    }
    let peer = req.peer_addr().map(|a| a.ip());
    let via_https_proxy = peer.is_some_and(|p| {
        state.config().server.trusted_proxies.contains(p)
            && req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    });
    let client = req
        .extensions()
        .get::<ClientAddress>()
        .map(|c| c.0)
        .or(peer);
    !via_https_proxy && !client.is_some_and(|c| c.is_loopback())
}

fn html(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The pages hold what only signed-in users may see.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// The catalog: 100 images a page, of one provider or a search if asked.
async fn catalog(viewer: Viewer<ReadImages>, req: HttpRequest) -> Result<HttpResponse, UiError> {
    catalog_page(viewer, &req).await.map_err(UiError::at(""))
}

async fn catalog_page(
    viewer: Viewer<ReadImages>,
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["provider", "q", "marker"])?;
    let state = viewer.0.state();
    let filter = listing::parse_filter(&params, &state.providers)?;
    let marker = listing::parse_marker(&params)?;
    let (snapshot, found) = viewer
        .0
        .store()
        .list_page_at(marker.as_ref(), &filter, PAGE)
        .await?;
    let images = found
        .records
        .into_iter()
        .map(|json| Record::from(json).image())
        .collect::<Result<Vec<Image>, StoreError>>()?;
    let provider = filter.provider.as_ref().map(|p| p.as_str());
    let q = params.get("q").map_or("", String::as_str);
    let last = images.last().filter(|_| found.more).map(|i| i.id.as_str());
    let next = last.map(|last| views::catalog_link(provider, q, Some(last)));
    let info = req.connection_info();
    let origin = format!("{}://{}", info.scheme(), info.host());
    let mut frame = viewer.frame(req, "Images", Section::Catalog);
    frame.live = Some(Live {
        kind: "catalog",
        seq: snapshot.seq,
        after: marker.as_ref().map(|m| m.as_str()),
        until: last,
        provider,
        q: filter.search.as_ref().map(|s| s.folded()),
    });
    let content = views::catalog(&views::Catalog {
        images: &images,
        providers: &state.providers,
        provider,
        q,
        next,
        later: marker.is_some(),
        unfiltered: filter.is_all(),
        origin: &origin,
    });
    Ok(html(views::page(&frame, content)))
}

/// One image: its fields, its ETag, and its history for a user who may read the trail.
async fn image(viewer: Viewer<ReadImages>, req: HttpRequest) -> Result<HttpResponse, UiError> {
    image_page(viewer, &req).await.map_err(UiError::at("../"))
}

async fn image_page(
    viewer: Viewer<ReadImages>,
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::routes::images::path_id(req)?;
    let store = viewer.0.store();
    let Some(record) = store.get(&id).await? else {
        return Err(ApiError::NotFound(format!(
            "no image with id '{}' (deleted, or never created)",
            id.as_str()
        )));
    };
    let etag = record.etag();
    let image = record.image()?;
    let (history, more_history) = if viewer.0.also_holds::<ReadAudit>() {
        let page = store
            .audit_page(AuditRange::Before(None), Some(&id), HISTORY)
            .await?;
        (Some(audit_records(&page.records)?), page.more)
    } else {
        (None, false)
    };
    let title = image.id.as_str().to_owned();
    let frame = viewer.frame(req, &title, Section::Other);
    let content = views::image(&views::ImagePage {
        image: &image,
        etag: &etag,
        history: history.as_deref(),
        more_history,
    });
    Ok(html(views::page(&frame, content)))
}

/// The audit trail, newest first, 100 a page.
async fn trail(viewer: Viewer<ReadAudit>, req: HttpRequest) -> Result<HttpResponse, UiError> {
    trail_page(viewer, &req).await.map_err(UiError::at(""))
}

async fn trail_page(
    viewer: Viewer<ReadAudit>,
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["marker"])?;
    let marker = params
        .get("marker")
        .map(|m| crate::routes::audit::parse_seq("marker", m))
        .transpose()?;
    let store = viewer.0.store();
    // Before the page: a record landing in between is shown and then followed, and
    // the script leaves out a seq it has.
    let seq = store.snapshot().await?.seq;
    let page = store
        .audit_page(AuditRange::Before(marker), None, PAGE)
        .await?;
    let records = audit_records(&page.records)?;
    let next = records
        .last()
        .filter(|_| page.more)
        .map(|last| format!("audit?marker={}", last.seq));
    let mut frame = viewer.frame(req, "Audit trail", Section::Audit);
    if marker.is_none() {
        frame.live = Some(Live {
            kind: "audit",
            seq,
            after: None,
            until: None,
            provider: None,
            q: None,
        });
    }
    let content = views::trail(&views::Trail {
        records: &records,
        next,
        later: marker.is_some(),
        shows_images: viewer.0.also_holds::<ReadImages>(),
    });
    Ok(html(views::page(&frame, content)))
}

fn audit_records(records: &[bytes::Bytes]) -> Result<Vec<AuditRecord>, ApiError> {
    records
        .iter()
        .map(|json| {
            serde_json::from_slice(json).map_err(|e| ApiError::from(StoreError::unreadable(e)))
        })
        .collect()
}

/// An API error, answered as a page: the same status and headers (the realm of a 401,
/// the `Retry-After` of a 429), in HTML.
#[derive(Debug)]
pub struct UiError {
    error: ApiError,
    /// From the failed page to `/ui/`.
    base: &'static str,
}

impl UiError {
    /// Turns errors of the page at `base` into pages.
    fn at<E: Into<ApiError>>(base: &'static str) -> impl Fn(E) -> UiError {
        move |error| UiError {
            error: error.into(),
            base,
        }
    }
}

impl std::fmt::Display for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl ResponseError for UiError {
    fn status_code(&self) -> StatusCode {
        self.error.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.error.error_response();
        let status = response.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        let frame = Frame {
            title: reason,
            base: self.base,
            user: None,
            can_audit: false,
            section: Section::Other,
            in_clear: false,
            live: None,
        };
        let message = self.error.to_string();
        let body = views::page(
            &frame,
            views::error(status.as_u16(), reason, &message, self.base),
        );
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.set_body(BoxBody::new(body.into_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: HttpResponse) -> String {
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap_or_default();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header_of(response: &HttpResponse, name: header::HeaderName) -> &str {
        response.headers().get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn a_refusal_is_a_page_with_the_headers_of_the_api() {
        let response = UiError::at("")(ApiError::TooManyFailedLogins {
            retry_after_secs: 30,
        })
        .error_response();
        assert_eq!(response.status(), 429);
        assert_eq!(header_of(&response, header::RETRY_AFTER), "30");
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let body = body_of(response).await;
        assert!(body.contains("429 Too Many Requests"), "{body}");
        assert!(body.contains("Too many failed sign-ins"), "{body}");

        let response =
            UiError::at("../")(ApiError::Unauthorized("no credentials")).error_response();
        assert_eq!(
            header_of(&response, header::WWW_AUTHENTICATE),
            crate::error::WWW_AUTHENTICATE
        );
        assert!(
            body_of(response)
                .await
                .contains("href=\"../static/style.css\"")
        );
    }

    #[test]
    fn a_page_knows_its_way_back_to_the_catalog() {
        assert_eq!(base_of("/ui/"), "");
        assert_eq!(base_of("/ui/audit"), "");
        assert_eq!(base_of("/ui/image/ami-1"), "../");
        assert_eq!(base_of("/ui/static/style.css"), "../");
    }
}
