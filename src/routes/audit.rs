//! The audit trail, newest first.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{get_or_head, resource};
use crate::domain::access::ReadAudit;
use crate::domain::change::AuditRecord;
use crate::error::{ApiError, ErrorBody};
use crate::http::extract::Authorized;
use crate::http::listing;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v3/audit").route(get_or_head().to(list)));
}

/// The audit trail
///
/// One record per successful change, newest first. Without `limit` the whole trail is
/// streamed; with it, `Link: <...>; rel="next"` points to older records.
#[utoipa::path(
    get,
    path = "/v3/audit",
    tag = "audit",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "At most this many records; the response then links to the next page"),
        ("marker" = Option<i64>, Query, minimum = 0,
            description = "Continue with records older than this seq"),
    ),
    responses(
        (status = 200, description = "Audit records, newest first", body = Vec<AuditRecord>,
            headers(("Link" = String, description = "The next page, while more remain"))),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 503, description = "The store failed", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    auth: Authorized<ReadAudit>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["limit", "marker"])?;
    let before = params
        .get("marker")
        .map(|m| {
            // Parsed as i64: the document promises an int64, and seqs never get near it.
            m.parse::<i64>()
                .ok()
                .and_then(|seq| u64::try_from(seq).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "marker must be an audit record's seq (a whole number), got '{}'",
                        m.escape_debug()
                    ))
                })
        })
        .transpose()?;
    let Some(limit) = params.get("limit") else {
        if req.method() == Method::HEAD {
            return Ok(listing::streamed_head());
        }
        return listing::streamed_array(auth.store().audit_stream(before)).await;
    };
    let limit = listing::parse_limit(limit)?;
    let page = auth.store().audit_page(before, limit).await?;
    let mut response = HttpResponse::Ok();
    if page.more
        && let Some(last) = page.records.last()
    {
        let last: AuditRecord =
            serde_json::from_slice(last).map_err(crate::store::StoreError::unreadable)?;
        response.insert_header((
            "Link",
            listing::next_link("/v3/audit", &params, &last.seq.to_string()),
        ));
    }
    Ok(response
        .content_type("application/json")
        .body(listing::json_array(&page.records)))
}
