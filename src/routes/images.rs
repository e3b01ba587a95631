//! The five routes of the seed: list, create, show, update, delete.

use actix_web::http::Method;
use actix_web::http::header::{ETAG, HeaderName, HeaderValue, IF_MATCH, IF_NONE_MATCH};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};

use super::{IdMessage, JsonBody, RoutePattern, Updated, get_or_head, json_response, resource};
use crate::app::CachedPage;
use crate::domain::access::{CreateImage, DeleteImage, ReadImages};
use crate::domain::change::Change;
use crate::domain::image::{Image, ImageId, ImagePatch, NewImage, Provider};
use crate::error::{ApiError, ErrorBody};
use crate::feed::Ended;
use crate::http::extract::Authorized;
use crate::http::headers;
use crate::http::listing;
use crate::http::wait::{self, Waited};
use crate::store::{Applied, Record};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v3/images").route(get_or_head().to(list)))
        .service(resource("/v3/image").route(web::post().to(create)))
        .service(
            web::scope("/v3/image")
                .app_data(RoutePattern(BY_ID))
                .default_service(web::to(by_id)),
        );
}

const BY_ID: &str = "/v3/image/{id}";

/// `/v3/image/{id}`, dispatched here rather than by actix's router: a dynamic segment
/// costs a regex match per request, 6% of a cached GET (bench/RESULTS.md). Each
/// method still goes through its handler and its `Authorized<P>`.
async fn by_id(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let one_segment = req
        .path()
        .strip_prefix("/v3/image/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    if !one_segment {
        return super::not_found(req).await;
    }
    let mut payload = payload.into_inner();
    match *req.method() {
        // HEAD is GET, and actix leaves the body out.
        Method::GET | Method::HEAD => {
            let auth = Authorized::from_request(&req, &mut payload).await?;
            show(auth, req).await
        }
        Method::PUT => {
            let auth = Authorized::from_request(&req, &mut payload).await?;
            let body = JsonBody::from_request(&req, &mut payload).await?;
            update(auth, body, req).await
        }
        Method::DELETE => {
            let auth = Authorized::from_request(&req, &mut payload).await?;
            delete(auth, req).await
        }
        _ => Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            allow: super::allowed_methods(BY_ID),
        }),
    }
}

/// The `{id}` of the path, decoded strictly: actix would replace invalid UTF-8 with
/// U+FFFD, silently naming another image.
pub(crate) fn path_id(req: &HttpRequest) -> Result<ImageId, ApiError> {
    let raw = req.uri().path().rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("the image id in the path is not valid UTF-8"))?;
    // Leniently: an id stored before a rule was added must stay reachable.
    Ok(ImageId::parse_existing(decoded.into_owned())?)
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|_| ApiError::StoreUnavailable)
}

/// List images
///
/// Sorted by id (byte order). Without `limit` the whole catalog is streamed. With
/// `limit`, a `Link: <...>; rel="next"` header points to the next page while more remain.
#[utoipa::path(
    get,
    path = "/v3/images",
    tag = "images",
    params(
        ("provider" = Option<Provider>, Query, description = "Only this provider's images"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "At most this many images; the response then links to the next page"),
        ("marker" = Option<ImageId>, Query, description = "Start after this id"),
        ("q" = Option<String>, Query, max_length = 255, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$",
            description = "Only images whose id or name holds this text (ASCII letters \
                in any case; `%` and `_` are literal; empty: no filter; no control \
                character, which no id or name holds)"),
    ),
    responses(
        (status = 200, description = "The images, sorted by id", body = Vec<Image>,
            headers(
                ("Link" = String, description = "The next page, while more remain"),
                ("X-Audit-Seq" = i64, description = "The highest durable audit seq as of \
                    this answer (for the full list, before it began): follow the feed on \
                    from it"),
            )),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 503, description = "The store failed", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    auth: Authorized<ReadImages>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["provider", "limit", "marker", "q"])?;
    let filter = listing::parse_filter(&params, &auth.state().providers)?;
    let marker = listing::parse_marker(&params)?;
    let Some(limit) = params.get("limit") else {
        // Before the listing begins: resuming the feed from it misses nothing (and
        // may repeat a change the listing shows).
        let seq = auth.store().snapshot().await?.seq;
        let response = if req.method() == Method::HEAD {
            listing::streamed_head()
        } else {
            listing::streamed_array(auth.store().list_stream(marker.as_ref(), &filter)).await?
        };
        return Ok(listing::with_audit_seq(response, seq));
    };
    let limit = listing::parse_limit(limit)?;
    let key = format!(
        "{}\0{}\0{}\0{limit}",
        filter.provider.as_ref().map_or("", |p| p.as_str()),
        filter.search.as_ref().map_or("", |s| s.folded()),
        marker.as_ref().map_or("", |m| m.as_str())
    );
    // A page seen before is served again while the catalog's generation stays the
    // same (on PostgreSQL, that is one small read, of any node's writes); a page not
    // seen before is read with its generation at once, without asking twice.
    let cached = match auth.pages().peek(&key) {
        Some(page) if page.generation == auth.store().snapshot().await?.generation => Some(page),
        _ => None,
    };
    let page = match cached {
        Some(page) => page,
        None => {
            let (snapshot, found) = auth
                .store()
                .list_page_at(marker.as_ref(), &filter, limit)
                .await?;
            let link = match found.records.last() {
                Some(last) if found.more => {
                    let last = Record::from(last.clone()).image()?;
                    Some(listing::next_link("/v3/images", &params, last.id.as_str()))
                }
                _ => None,
            };
            let page = CachedPage {
                generation: snapshot.generation,
                seq: snapshot.seq,
                body: listing::json_array(&found.records).into(),
                link,
            };
            auth.pages().put(key, page.clone());
            page
        }
    };
    let mut response = HttpResponse::Ok();
    if let Some(link) = page.link {
        response.insert_header(("Link", link));
    }
    response.insert_header((listing::AUDIT_SEQ, page.seq));
    Ok(response.content_type("application/json").body(page.body))
}

/// Create an image
///
/// Insert-if-absent: an existing id is a 409 and changes nothing. A 200 means the image
/// is on disk.
#[utoipa::path(
    post,
    path = "/v3/image",
    tag = "images",
    request_body = NewImage,
    responses(
        (status = 200, description = "Created", body = IdMessage,
            example = json!({"id": "ami-0abc", "message": "Created"})),
        (status = 400, description = "A field breaks its rule, or the body is not a JSON object", body = ErrorBody),
        (status = 409, description = "An image with this id exists", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "The store failed; nothing was changed", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    auth: Authorized<CreateImage>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let image = Image::from_json(&body.read().await?, &auth.state().providers)?;
    let id = image.id.clone();
    auth.store()
        .apply(Change::Create(image), auth.author())
        .await?;
    Ok(json_response(to_json(&IdMessage {
        id,
        message: "Created",
    })?))
}

/// Show an image
///
/// Carries a strong `ETag`; `If-None-Match` with a current tag gives 304. With
/// `Prefer: wait=N` (seconds, at most 300), a GET of a current copy (`If-None-Match`
/// matches, or is `*`) waits until the image changes (200) or goes (404), else 304
/// after N seconds; a GET of an absent id waits until it is created (200), else 404
/// after N seconds. Changes to other images do not end the wait. A response that
/// waited says `Preference-Applied: wait=N`.
#[utoipa::path(
    get,
    path = "/v3/image/{id}",
    tag = "images",
    params(
        ("id" = ImageId, Path, description = "The image id"),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds"),
        ("Prefer" = Option<String>, Header,
            description = "wait=N: wait up to N seconds (at most 300) for a change (RFC 7240)"),
    ),
    responses(
        (status = 200, description = "The image", body = Image,
            headers(
                ("ETag" = String, description = "Strong validator of the record"),
                ("Preference-Applied" = String, description = "wait=N, when the response waited"),
            )),
        (status = 304, description = "The client's copy is current",
            headers(
                ("ETag" = String, description = "Strong validator of the record"),
                ("Preference-Applied" = String, description = "wait=N, when the response waited"),
            )),
        (status = 400, description = "The id breaks its rule", body = ErrorBody),
        (status = 403, description = "The caller lost read_images while waiting (a reload)",
            body = ErrorBody),
        (status = 404, description = "No image with this id", body = ErrorBody,
            headers(("Preference-Applied" = String, description = "wait=N, when the response waited"))),
        (status = 503, description = "The store failed, or too many requests wait \
            ([server] max_waiters)", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    auth: Authorized<ReadImages>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req)?;
    let if_none_match = req.headers().get(IF_NONE_MATCH).map(|v| v.as_bytes());
    let prefer = req.headers().get_all("prefer").map(|v| v.as_bytes());
    let wait = wait::prefer_wait(prefer).filter(|_| req.method() == Method::GET);
    let Some(wait) = wait else {
        let record = auth.store().get(&id).await?;
        return shown(&id, record, if_none_match);
    };
    // Armed before the read: a change that lands in between still wakes it.
    let watch = auth.state().feed().watch_image(id.as_str());
    let notified = watch.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let mut record = auth.store().get(&id).await?;
    // Only a current copy (If-None-Match matches) or an absent image waits.
    let current = record
        .as_ref()
        .is_some_and(|r| headers::if_none_match_matches(if_none_match, &r.etag()));
    if (record.is_some() && !current) || wait.is_zero() {
        return shown(&id, record, if_none_match);
    }
    let started = tokio::time::Instant::now();
    let mut waiter = auth.state().feed().admit()?;
    let until = started + wait;
    let tag = |record: &Option<Record>| record.as_ref().map(Record::etag);
    loop {
        match waiter.for_image(notified.as_mut(), until).await {
            Ended::Landed => {
                notified.set(watch.notified());
                notified.as_mut().enable();
                let now = auth.store().get(&id).await?;
                let changed = tag(&now) != tag(&record);
                record = now;
                if changed {
                    break;
                }
            }
            Ended::TimedOut | Ended::Closing => break,
            Ended::Reloaded => auth.author().still_allowed()?,
        }
    }
    req.extensions_mut().insert(Waited(started.elapsed()));
    let applied = format!("wait={}", wait.as_secs());
    let mut response = match shown(&id, record, if_none_match) {
        Ok(response) => response,
        Err(error) => error.error_response(),
    };
    response.headers_mut().insert(
        HeaderName::from_static("preference-applied"),
        HeaderValue::from_str(&applied).unwrap_or(HeaderValue::from_static("wait")),
    );
    Ok(response)
}

/// The answer to a GET of `id`, which the store holds as `record`: 404, 304 when
/// `If-None-Match` matches, else the image with its ETag.
fn shown(
    id: &ImageId,
    record: Option<Record>,
    if_none_match: Option<&[u8]>,
) -> Result<HttpResponse, ApiError> {
    let record = record.ok_or_else(|| ApiError::unknown_image(id.as_str()))?;
    let etag = record.etag();
    if headers::if_none_match_matches(if_none_match, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((ETAG, etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((ETAG, etag))
        .body(record.json().clone()))
}

/// Update an image
///
/// Changes `remote_user` and/or `name`. `If-Match` makes it a compare-and-swap.
#[utoipa::path(
    put,
    path = "/v3/image/{id}",
    tag = "images",
    params(
        ("id" = ImageId, Path, description = "The image id"),
        ("If-Match" = Option<String>, Header, description = "Change only if the ETag is one of these"),
    ),
    request_body = ImagePatch,
    responses(
        (status = 200, description = "Updated", body = Updated,
            headers(("ETag" = String, description = "Strong validator of the new record"))),
        (status = 400, description = "A field breaks its rule, or tries to change id or provider", body = ErrorBody),
        (status = 404, description = "No image with this id", body = ErrorBody),
        (status = 412, description = "If-Match does not match; nothing changed", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "The store failed; nothing was changed", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    auth: Authorized<CreateImage>,
    body: JsonBody,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req)?;
    let patch = ImagePatch::from_json(&body.read().await?)?;
    let precondition = headers::if_match(req.headers().get(IF_MATCH).map(|v| v.as_bytes()))
        .map_err(ApiError::BadRequest)?;
    let change = Change::Update {
        id,
        patch,
        precondition,
    };
    let Applied::Updated(record) = auth.store().apply(change, auth.author()).await? else {
        return Err(ApiError::StoreUnavailable);
    };
    let body = to_json(&Updated {
        image: record.image()?,
        message: "Updated",
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((ETAG, record.etag()))
        .body(body))
}

/// Delete an image
///
/// `If-Match` makes it a compare-and-swap.
#[utoipa::path(
    delete,
    path = "/v3/image/{id}",
    tag = "images",
    params(
        ("id" = ImageId, Path, description = "The image id"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the ETag is one of these"),
    ),
    responses(
        (status = 200, description = "Deleted", body = IdMessage,
            example = json!({"id": "ami-0abc", "message": "Deleted"})),
        (status = 400, description = "The id breaks its rule", body = ErrorBody),
        (status = 404, description = "No image with this id", body = ErrorBody),
        (status = 412, description = "If-Match does not match; nothing changed", body = ErrorBody),
        (status = 503, description = "The store failed; nothing was changed", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    auth: Authorized<DeleteImage>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req)?;
    let precondition = headers::if_match(req.headers().get(IF_MATCH).map(|v| v.as_bytes()))
        .map_err(ApiError::BadRequest)?;
    let change = Change::Delete {
        id: id.clone(),
        precondition,
    };
    auth.store().apply(change, auth.author()).await?;
    Ok(json_response(to_json(&IdMessage {
        id,
        message: "Deleted",
    })?))
}
