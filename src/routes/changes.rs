//! `/v3/changes`: the catalog's changes as Server-Sent Events, one event per change,
//! as they become durable.

use std::time::Duration;

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use tokio::time::Instant;

use super::audit::{parse_seq, still_held};
use super::{get_or_head, resource};
use crate::domain::access::ReadImages;
use crate::domain::change::AuditRecord;
use crate::domain::image::Image;
use crate::error::{ApiError, ErrorBody};
use crate::feed::{Ended, Waiter};
use crate::http::extract::Authorized;
use crate::http::listing;
use crate::store::{AuditRange, StoreError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v3/changes").route(get_or_head().to(stream)));
}

/// A comment line at least this often, so that proxies and clients see a live
/// connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Records read from the store at once, for a follower that memory does not reach.
const STORE_BATCH: usize = 500;

/// One event's data: the change, without its user.
#[derive(serde::Serialize)]
struct ChangeEvent<'a> {
    seq: u64,
    time: &'a str,
    method: &'a str,
    id: &'a str,
    /// The image as the change left it; `null` for a delete.
    image: Option<&'a Image>,
}

/// The stream of changes
///
/// Server-Sent Events (`text/event-stream`), one per change of the catalog as it
/// becomes durable: `id:` its seq, `data:` one line of JSON
/// `{"seq","time","method","id","image"}` (`image` as the change left it, `null` for a
/// delete). It starts after `Last-Event-ID` (which browsers send again when they
/// reconnect, and which wins over `after`), else after `after`, else with the next
/// change; a comment line comes at least every 15 s. 410 when the changes after that
/// seq were pruned, or it is above every seq given: read the catalog again and follow
/// on from its `X-Audit-Seq`.
#[utoipa::path(
    get,
    path = "/v3/changes",
    tag = "images",
    params(
        ("after" = Option<i64>, Query, minimum = 0,
            description = "Start after this seq (Last-Event-ID wins over it)"),
        ("Last-Event-ID" = Option<String>, Header,
            description = "The seq of the last event received: start after it"),
    ),
    responses(
        (status = 200, description = "The stream of changes, without end",
            content_type = "text/event-stream", body = String,
            headers(
                ("X-Audit-Seq" = i64, description = "The highest durable seq as the stream began"),
                ("X-Accel-Buffering" = String, description = "`no`: for nginx, do not buffer"),
            )),
        (status = 400, description = "A bad query parameter or Last-Event-ID", body = ErrorBody),
        (status = 410, description = "The changes after that seq were pruned, or the seq is \
            above every seq given", body = ErrorBody),
        (status = 503, description = "Too many waiting requests ([server] max_waiters), or \
            the store failed", body = ErrorBody),
    )
)]
pub(crate) async fn stream(
    auth: Authorized<ReadImages>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = listing::parse_query(req.query_string(), &["after"])?;
    let resumed = match req.headers().get("last-event-id") {
        Some(value) => Some(parse_seq(
            "Last-Event-ID",
            value.to_str().unwrap_or("\u{fffd}").trim(),
        )?),
        None => params
            .get("after")
            .map(|a| parse_seq("after", a))
            .transpose()?,
    };
    let span = auth.store().trail_span().await?;
    let start = match resumed {
        Some(after) => {
            still_held(after, span)?;
            after
        }
        None => span.highest,
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header((listing::AUDIT_SEQ, span.highest));
    if req.method() == Method::HEAD {
        return Ok(response.finish());
    }
    let waiter = auth.state().feed().admit()?;
    let follower = Follower {
        auth,
        waiter,
        last: start,
        seen: start,
        keep_alive: Instant::now() + KEEP_ALIVE,
        ended: false,
    };
    let events = futures_util::stream::unfold(follower, |mut follower| async move {
        let chunk = follower.next_chunk().await?;
        Some((chunk, follower))
    });
    Ok(response.streaming(events))
}

/// One client's place in the stream.
struct Follower {
    auth: Authorized<ReadImages>,
    waiter: Waiter,
    /// The seq of the last event sent.
    last: u64,
    /// Delivered seqs up to here have been looked at.
    seen: u64,
    keep_alive: Instant,
    ended: bool,
}

impl Follower {
    /// The next piece of the stream: events, a comment, or `None` at its end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, ApiError>> {
        if self.ended {
            return None;
        }
        loop {
            match self.events().await {
                Ok(Some(events)) => {
                    self.keep_alive = Instant::now() + KEEP_ALIVE;
                    return Some(Ok(events));
                }
                Ok(None) => {}
                Err(e) => {
                    // Mid-stream, an error can only end it; the client reconnects with
                    // Last-Event-ID and misses nothing.
                    log::warn!("a change stream ended: {e}");
                    self.ended = true;
                    return None;
                }
            }
            match self.waiter.for_seq_after(self.seen, self.keep_alive).await {
                Ended::Landed => self.seen = self.waiter.feed().delivered(),
                Ended::TimedOut => {
                    self.keep_alive = Instant::now() + KEEP_ALIVE;
                    return Some(Ok(Bytes::from_static(b": keep-alive\n\n")));
                }
                Ended::Closing => return None,
                Ended::Reloaded => {
                    if self.auth.author().still_allowed().is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// The events after `last` that are durable, from memory or else from the store;
    /// `None` when there are none yet.
    async fn events(&mut self) -> Result<Option<Bytes>, StoreError> {
        let mut events = Vec::new();
        match self.waiter.feed().recent_after(self.last, STORE_BATCH) {
            Some(recent) => {
                for landed in &recent {
                    events.push(landed.event(|json| event(json).map(|(_, e)| e))?);
                    self.last = landed.seq;
                }
            }
            None => {
                let page = self
                    .auth
                    .store()
                    .audit_page(AuditRange::After(self.last), None, STORE_BATCH)
                    .await?;
                for json in &page.records {
                    let (seq, e) = event(json)?;
                    events.push(e);
                    self.last = seq;
                }
            }
        }
        self.seen = self.seen.max(self.last);
        Ok(match events.len() {
            0 => None,
            1 => events.pop(),
            _ => Some(Bytes::from(events.concat())),
        })
    }
}

/// A stored audit record as an event of the stream, and its seq.
fn event(json: &[u8]) -> Result<(u64, Bytes), StoreError> {
    let record: AuditRecord = serde_json::from_slice(json).map_err(StoreError::unreadable)?;
    let change = ChangeEvent {
        seq: record.seq,
        time: &record.time,
        method: &record.method,
        id: &record.id,
        image: record.after.as_ref(),
    };
    let mut text = format!("id: {}\ndata: ", record.seq).into_bytes();
    serde_json::to_writer(&mut text, &change).map_err(StoreError::unreadable)?;
    text.extend_from_slice(b"\n\n");
    Ok((record.seq, Bytes::from(text)))
}
