//! The five routes of the seed: list, create, show, update, delete.

use actix_web::http::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{JsonBody, json_response, resource};
use crate::error::ApiError;
use crate::headers;
use crate::image::{Image, ImageId, ImagePatch, Provider};
use crate::listing::{self, JsonArrayChunks};
use crate::policy::{Authorized, CreateImage, DeleteImage, ReadImages};
use crate::store::{Applied, Change, Record};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v3/images", "GET").route(web::get().to(list)))
        .service(resource("/v3/image", "POST").route(web::post().to(create)))
        .service(
            resource("/v3/image/{id}", "GET, PUT, DELETE")
                .route(web::get().to(show))
                .route(web::put().to(update))
                .route(web::delete().to(delete)),
        );
}

/// The `{id}` of the path, decoded strictly: actix would replace invalid UTF-8 with
/// U+FFFD, silently naming another image.
fn path_id(req: &HttpRequest) -> Result<ImageId, ApiError> {
    let raw = req.uri().path().rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("the image id in the path is not valid UTF-8"))?;
    Ok(ImageId::parse(decoded.into_owned())?)
}

async fn list(auth: Authorized<ReadImages>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["provider", "limit", "marker"])?;
    let provider = params
        .get("provider")
        .map(|p| Provider::parse(p, &auth.state().providers))
        .transpose()?;
    let marker = params
        .get("marker")
        .map(|m| {
            ImageId::parse(m.as_str()).map_err(|e| ApiError::bad_request(format!("marker: {e}")))
        })
        .transpose()?;
    let Some(limit) = params.get("limit") else {
        let items = auth.store().list_from(marker.as_ref(), provider);
        let chunks = futures_util::stream::iter(JsonArrayChunks::new(items));
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .streaming(chunks));
    };
    let limit = listing::parse_limit(limit)?;
    let page = auth
        .store()
        .list_page(marker.as_ref(), provider.as_ref(), limit)?;
    let mut response = HttpResponse::Ok();
    if page.more
        && let Some(last) = page.records.last()
    {
        let last = Record::from(last.clone()).image()?;
        response.insert_header((
            "Link",
            listing::next_link("/v3/images", &params, last.id.as_str()),
        ));
    }
    Ok(response
        .content_type("application/json")
        .body(listing::json_array(&page.records)))
}

async fn create(auth: Authorized<CreateImage>, body: JsonBody) -> Result<HttpResponse, ApiError> {
    let image = Image::from_json(&body.read().await?, &auth.state().providers)?;
    let id = image.id.clone();
    auth.store()
        .apply(Change::Create(image), auth.user())
        .await?;
    Ok(json_response(
        json!({ "id": id, "message": "Created" }).to_string(),
    ))
}

async fn show(auth: Authorized<ReadImages>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req)?;
    let record = auth
        .store()
        .get(&id)?
        .ok_or_else(|| ApiError::unknown_image(id.as_str()))?;
    let etag = record.etag();
    let if_none_match = req.headers().get(IF_NONE_MATCH).map(|v| v.as_bytes());
    if headers::if_none_match_matches(if_none_match, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((ETAG, etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((ETAG, etag))
        .body(record.json().to_vec()))
}

async fn update(
    auth: Authorized<CreateImage>,
    body: JsonBody,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req)?;
    let patch = ImagePatch::from_json(&body.read().await?)?;
    let precondition = headers::if_match(req.headers().get(IF_MATCH).map(|v| v.as_bytes()));
    let change = Change::Update {
        id,
        patch,
        precondition,
    };
    let Applied::Updated(record) = auth.store().apply(change, auth.user()).await? else {
        return Err(ApiError::StoreUnavailable);
    };
    let mut body = Vec::with_capacity(record.json().len() + 32);
    body.extend_from_slice(b"{\"image\":");
    body.extend_from_slice(record.json());
    body.extend_from_slice(b",\"message\":\"Updated\"}");
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((ETAG, record.etag()))
        .body(body))
}

async fn delete(auth: Authorized<DeleteImage>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req)?;
    let precondition = headers::if_match(req.headers().get(IF_MATCH).map(|v| v.as_bytes()));
    let change = Change::Delete {
        id: id.clone(),
        precondition,
    };
    auth.store().apply(change, auth.user()).await?;
    Ok(json_response(
        json!({ "id": id, "message": "Deleted" }).to_string(),
    ))
}
