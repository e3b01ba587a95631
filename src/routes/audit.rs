//! The audit trail, newest first.

use actix_web::{HttpRequest, HttpResponse, web};

use super::resource;
use crate::error::ApiError;
use crate::listing::{self, JsonArrayChunks};
use crate::policy::{Authorized, ReadAudit};
use crate::store::AuditRecord;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v3/audit", "GET").route(web::get().to(list)));
}

async fn list(auth: Authorized<ReadAudit>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["limit", "marker"])?;
    let before = params
        .get("marker")
        .map(|m| {
            m.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "marker must be an audit record's seq (a whole number), got '{}'",
                    m.escape_debug()
                ))
            })
        })
        .transpose()?;
    let Some(limit) = params.get("limit") else {
        let items = auth.store().audit_from(before);
        let chunks = futures_util::stream::iter(JsonArrayChunks::new(items));
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .streaming(chunks));
    };
    let limit = listing::parse_limit(limit)?;
    let page = auth.store().audit_page(before, limit)?;
    let mut response = HttpResponse::Ok();
    if page.more
        && let Some(last) = page.records.last()
    {
        let last: AuditRecord = serde_json::from_slice(last)
            .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?;
        response.insert_header((
            "Link",
            listing::next_link("/v3/audit", &params, &last.seq.to_string()),
        ));
    }
    Ok(response
        .content_type("application/json")
        .body(listing::json_array(&page.records)))
}
