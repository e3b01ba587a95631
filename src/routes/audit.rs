//! The audit trail: newest first, one image's history (`id`), or as a feed of what
//! came after a seq (`after`), oldest first.

use actix_web::http::Method;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{get_or_head, resource};
use crate::domain::access::{ReadAudit, ReadImages};
use crate::domain::change::AuditRecord;
use crate::domain::image::ImageId;
use crate::error::{ApiError, ErrorBody};
use crate::feed::Ended;
use crate::http::extract::Authorized;
use crate::http::listing;
use crate::http::wait::{Waited, parse_wait};
use crate::store::{AuditRange, Page, StoreError, TrailSpan};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v3/audit").route(get_or_head().to(list)));
}

/// Records per page of a feed (`after`) when no `limit` is given.
pub const FEED_PAGE: usize = 100;

/// The audit trail
///
/// One record per successful change. By default newest first: without `limit` the
/// whole trail is streamed; with it, `Link: <...>; rel="next"` points to older records.
/// With `after`, the records newer than that seq, oldest first, 100 a page (`limit` up
/// to 1000), `Link` to the next page while a page is full: a feed to follow. `before`
/// and `after` (the image as it was and became) are shown only to a caller who also
/// holds `read_images`.
#[utoipa::path(
    get,
    path = "/v3/audit",
    tag = "audit",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "At most this many records; the response then links to the next page"),
        ("marker" = Option<i64>, Query, minimum = 0,
            description = "Continue with records older than this seq (not with `after`)"),
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Records newer than this seq, oldest first (not with `marker`)"),
        ("id" = Option<ImageId>, Query, description = "Only this image's records"),
        ("wait" = Option<String>, Query, pattern = "^[0-9]+[sm]?$",
            description = "With `after`: when nothing is newer, wait this long (30, 30s, 5m; \
            at most 5m) for a record, then answer it, or `[]`"),
    ),
    responses(
        (status = 200, description = "Audit records", body = Vec<AuditRecord>,
            headers(
                ("Link" = String, description = "The next page, while more remain"),
                ("X-Audit-Seq" = i64, description = "The highest durable seq as of this answer"),
            )),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 410, description = "Records after `after` were pruned, or `after` is above \
            every seq this catalog has given: re-read the catalog and follow on from its \
            X-Audit-Seq", body = ErrorBody),
        (status = 403, description = "The caller lost read_audit while waiting (a reload)",
            body = ErrorBody),
        (status = 503, description = "The store failed, or too many requests wait \
            ([server] max_waiters)", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    auth: Authorized<ReadAudit>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(
        req.query_string(),
        &["limit", "marker", "after", "id", "wait"],
    )?;
    let seq_of = |name: &str| {
        params
            .get(name)
            .map(|value| parse_seq(name, value))
            .transpose()
    };
    let (marker, after) = (seq_of("marker")?, seq_of("after")?);
    if marker.is_some() && after.is_some() {
        return Err(ApiError::bad_request(
            "after and marker do not go together: after lists the records newer than a seq, \
             oldest first; marker the ones older than a seq, newest first",
        ));
    }
    let id = params
        .get("id")
        .map(|id| {
            ImageId::parse_existing(id.as_str())
                .map_err(|e| ApiError::bad_request(format!("id: {e}")))
        })
        .transpose()?;
    let limit = params
        .get("limit")
        .map(|l| listing::parse_limit(l))
        .transpose()?;
    let wait = params.get("wait").map(|w| parse_wait(w)).transpose()?;
    if wait.is_some() && after.is_none() {
        return Err(ApiError::bad_request(
            "wait needs after: it waits for records newer than that seq",
        ));
    }
    // Read before the records: resuming the feed from it misses nothing.
    let span = auth.store().trail_span().await?;
    let shown = Shown {
        images: auth.also_holds::<ReadImages>(),
    };
    let mut seq = span.highest;
    let response = match (after, limit) {
        (Some(after), limit) => {
            still_held(after, span)?;
            let limit = limit.unwrap_or(FEED_PAGE);
            let read = || {
                auth.store()
                    .audit_page(AuditRange::After(after), id.as_ref(), limit)
            };
            let mut page = read().await?;
            // A long poll: nothing newer yet. HEAD answers its headers at once.
            if let Some(wait) = wait.filter(|w| !w.is_zero())
                && page.records.is_empty()
                && req.method() != Method::HEAD
            {
                let started = Instant::now();
                let mut waiter = auth.state().feed().admit()?;
                let until = started + wait;
                // What was delivered when the wait began: a record of another image
                // (with `id`) wakes it, and it waits on for what comes after.
                let mut seen = after;
                loop {
                    match waiter.for_seq_after(seen, until).await {
                        Ended::Landed => {
                            seen = waiter.feed().delivered();
                            seq = auth.store().trail_span().await?.highest;
                            page = read().await?;
                            if !page.records.is_empty() {
                                break;
                            }
                        }
                        Ended::TimedOut | Ended::Closing => break,
                        Ended::Reloaded => auth.author().still_allowed()?,
                    }
                }
                req.extensions_mut().insert(Waited(started.elapsed()));
            }
            page_response(&page, &params, "after", shown)?
        }
        (None, Some(limit)) => {
            let page = auth
                .store()
                .audit_page(AuditRange::Before(marker), id.as_ref(), limit)
                .await?;
            page_response(&page, &params, "marker", shown)?
        }
        (None, None) if req.method() == Method::HEAD => listing::streamed_head(),
        (None, None) => {
            let records = auth.store().audit_stream(marker, id.as_ref());
            let records = records.map(move |record| shown.record(record?));
            listing::streamed_array(records).await?
        }
    };
    Ok(listing::with_audit_seq(response, seq))
}

/// A seq given as `name`. Parsed as i64: the document promises an int64, and seqs
/// never get near it.
pub(crate) fn parse_seq(name: &str, value: &str) -> Result<u64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .and_then(|seq| u64::try_from(seq).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be an audit record's seq (a whole number), got '{}'",
                value.escape_debug()
            ))
        })
}

/// A feed may go on after `after` only if every record after it is still held, and
/// `after` is a seq this catalog has given: otherwise 410, and the client starts again.
pub(crate) fn still_held(after: u64, span: TrailSpan) -> Result<(), ApiError> {
    if after > span.highest {
        return Err(ApiError::Gone(format!(
            "after={after} is above the highest seq this catalog has given ({}): the \
             catalog was put back from an older copy, or the seq is from another catalog; \
             read the catalog again and follow on from its X-Audit-Seq",
            span.highest
        )));
    }
    // Seqs are given in order and pruned oldest first: a gap below the lowest held
    // record was pruned (`[audit] keep_days`).
    let pruned_through = span
        .lowest
        .map_or(span.highest, |lowest| lowest.saturating_sub(1));
    if after < pruned_through {
        return Err(ApiError::Gone(format!(
            "the records after seq {after} up to {pruned_through} were pruned ([audit] \
             keep_days); read the catalog again and follow on from its X-Audit-Seq"
        )));
    }
    Ok(())
}

/// What the caller may see of a record.
#[derive(Clone, Copy)]
struct Shown {
    /// `before` and `after`: only with `read_images` too.
    images: bool,
}

impl Shown {
    fn record(self, json: bytes::Bytes) -> Result<bytes::Bytes, StoreError> {
        if self.images {
            return Ok(json);
        }
        AuditRecord::without_images(&json)
            .map(bytes::Bytes::from)
            .map_err(StoreError::unreadable)
    }
}

/// A page of records, with a `Link` on to the next (`key` set to the last seq) while
/// it is full.
fn page_response(
    page: &Page,
    params: &std::collections::BTreeMap<String, String>,
    key: &str,
    shown: Shown,
) -> Result<HttpResponse, ApiError> {
    let records = page
        .records
        .iter()
        .map(|record| shown.record(record.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut response = HttpResponse::Ok();
    if page.more
        && let Some(last) = page.records.last()
    {
        let last: AuditRecord = serde_json::from_slice(last).map_err(StoreError::unreadable)?;
        response.insert_header((
            "Link",
            listing::link_with("/v3/audit", params, key, &last.seq.to_string()),
        ));
    }
    Ok(response
        .content_type("application/json")
        .body(listing::json_array(&records)))
}
