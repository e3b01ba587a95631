//! The envelope of every request: one middleware whose steps each do one job, in
//! the order they run. (One layer rather than six: each actix layer is a boxed
//! future and a poll more per request; see bench/RESULTS.md.)
//!
//! 1. [`request_id`]: the client's sane `X-Request-Id`, or a new one.
//! 2. [`client_address`]: the TCP peer, or behind a trusted proxy the client that
//!    `X-Forwarded-For` names.
//! 3. [`refusal`]: a request pipelined behind a response that closed its connection
//!    (not run), a connection past a cap (503), headers past `max_header_bytes` (431)
//!    or an `Accept` that rules out JSON (406), before any work is done.
//! 4. [`call_holding_body`]: the route, with the request body held until the response
//!    is written.
//! 5. [`record`]: the request in the metrics and its access-log line (the user's name,
//!    never a credential).
//! 6. [`tag_request_id`]: the id on the response.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};

use crate::app::AppState;
use crate::error::ApiError;
use crate::forwarded::TrustedProxies;
use crate::http::extract::{AuthenticatedUser, ClientAddress};
use crate::http::limits::ClosingConnection;
use crate::http::{headers, limits};
use crate::metrics::UNMATCHED;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route pattern a request matched, for the access log and metrics. Attached
/// as resource data: asking actix for the pattern would match the path again.
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(pub &'static str);

/// The middleware: see the module's steps.
pub async fn envelope(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let client = state
        .as_ref()
        .and_then(|state| client_address(&req, &state.config().server.trusted_proxies));
    if let Some(client) = client {
        req.extensions_mut().insert(ClientAddress(client));
    }
    let closing = req.conn_data::<ClosingConnection>().cloned();
    let request_closes = req.head().connection_type() == ConnectionType::Close;
    let refused = match &closing {
        Some(closing) if closing.is_closing() => Some(ApiError::AfterClose),
        _ => refusal(&req, state.as_ref().map(|s| s.get_ref())),
    };
    let mut response = match refused {
        Some(refused) => req.into_response(refused.error_response()),
        None => call_holding_body(req, next).await?,
    };
    // The last response on this connection: nothing pipelined behind it is run.
    if let Some(closing) = closing
        && (request_closes || response.response().head().connection_type() == ConnectionType::Close)
    {
        closing.close();
    }
    record(
        &response,
        state.as_ref().map(|s| s.get_ref()),
        method.as_str(),
        started.elapsed(),
        client,
        &request_id,
    );
    tag_request_id(&mut response, &request_id);
    Ok(response)
}

/// The client's `X-Request-Id` if it is sane, else 32 random hex digits.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| headers::sane_request_id(v.as_bytes()))
        .map_or_else(
            || hex::encode(rand::random::<u128>().to_le_bytes()),
            str::to_owned,
        )
}

fn client_address(req: &ServiceRequest, proxies: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if proxies.is_empty() {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .map(HeaderValue::as_bytes);
    Some(proxies.client(peer, forwarded))
}

/// Why the request is refused before any route runs, if it is. `Accept` is per route:
/// `/metrics` speaks Prometheus text, so it does not apply there; the event stream
/// admits `text/event-stream` too; the pages under `/ui/` speak `text/html`.
fn refusal(req: &ServiceRequest, state: Option<&AppState>) -> Option<ApiError> {
    let max_header_bytes = state.map_or(16 * 1024, |s| s.config().server.max_header_bytes);
    if let Some(refused) =
        limits::over_limit(req).or_else(|| limits::oversize_headers(req, max_header_bytes))
    {
        return Some(refused);
    }
    let accept = req.headers().get(header::ACCEPT);
    let path = req.path();
    let offered: &[&str] = match path {
        "/v3/changes" => &["text/event-stream", "application/json"],
        // The page's styles, script and favicon, and `/`, a redirect: any Accept.
        "/metrics" | "/" => &[],
        _ if path.starts_with("/ui/static/") => &[],
        _ if path == "/ui" || path.starts_with("/ui/") => &["text/html"],
        _ => &["application/json"],
    };
    if !offered.is_empty() && !headers::accepts(accept.map(|v| v.as_bytes()), offered) {
        let shown = accept
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        return Some(ApiError::NotAcceptable(shown));
    }
    None
}

/// Runs the route. When a handler drops a chunked body unread (a 401 before it, a
/// 413 halfway), actix would read and discard the rest for as long as the client
/// sends it; holding the body until the response is written makes it close instead.
async fn call_holding_body(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    match limits::hold_body(&mut req) {
        None => Ok(next.call(req).await?.map_into_boxed_body()),
        Some(hold) => {
            let mut response = next.call(req).await?.map_into_boxed_body();
            if !hold.read_to_end() {
                // actix closes such a connection after the response: say so, and let
                // nothing pipelined behind it run.
                response
                    .response_mut()
                    .head_mut()
                    .set_connection_type(ConnectionType::Close);
            }
            Ok(limits::keep_until_written(response, hold))
        }
    }
}

/// The request in the metrics (by route pattern) and its access-log line (by the
/// path as requested).
fn record(
    response: &ServiceResponse<BoxBody>,
    state: Option<&AppState>,
    method: &str,
    elapsed: Duration,
    client: Option<IpAddr>,
    request_id: &str,
) {
    let status = response.status().as_u16();
    let request = response.request();
    if let Some(state) = state {
        let route = request
            .app_data::<RoutePattern>()
            .map_or(UNMATCHED, |p| p.0);
        // The time spent waiting for a change is the client's choice, not latency.
        let waited = request
            .extensions()
            .get::<crate::http::wait::Waited>()
            .map_or(Duration::ZERO, |w| w.0);
        let worked = elapsed.saturating_sub(waited);
        state.observe_request(route, method, status, worked.as_secs_f64());
    }
    let extensions = request.extensions();
    let user = extensions
        .get::<AuthenticatedUser>()
        .map_or("-", |u| u.0.name.as_str());
    crate::logging::access(
        method,
        request.path(),
        status,
        elapsed,
        client,
        user,
        request_id,
    );
}

fn tag_request_id(response: &mut ServiceResponse<BoxBody>, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
}
