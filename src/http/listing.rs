//! What the two listings (images, audit) share: strict query parsing, the `limit`
//! range, the `Link: rel="next"` header, and a JSON array streamed in chunks so a
//! whole-catalog listing never sits in memory.

use std::collections::BTreeMap;

use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::domain::filter::{Filter, Search};
use crate::domain::image::{ImageId, Provider};
use crate::error::ApiError;

pub const MAX_LIMIT: usize = 1000;
/// Roughly how many bytes each streamed chunk holds.
const CHUNK_BYTES: usize = 32 * 1024;

/// RFC 3986 unreserved characters stay as they are; everything else is encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Decodes a query string that may only hold `allowed` keys, each at most once.
///
/// As `application/x-www-form-urlencoded` (`+` is a space), but strictly: a name or
/// value whose percent-decoded bytes are not UTF-8 is refused, where the usual decoders
/// put U+FFFD in their place and so would name another marker or provider.
pub fn parse_query(query: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode_component(raw_key).ok_or_else(|| {
            ApiError::bad_request(
                "a query parameter name is not valid UTF-8 once percent-decoded; \
                 percent-encode the UTF-8 bytes of each character",
            )
        })?;
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter '{}'; this route takes: {}",
                key.escape_debug(),
                allowed.join(", ")
            )));
        }
        let value = decode_component(raw_value).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter '{key}' is not valid UTF-8 once percent-decoded (as in \
                 '{}'); percent-encode the UTF-8 bytes of each character",
                raw_value.escape_debug()
            ))
        })?;
        if params.insert(key.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter '{key}' is given more than once"
            )));
        }
    }
    Ok(params)
}

/// One percent-encoded name or value of a query, or `None` if its bytes are not UTF-8.
fn decode_component(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

pub fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}, got '{}'",
                value.escape_debug()
            ))
        })
}

/// The images a listing's `provider` and `q` keep; a provider that config does not
/// list, or a `q` over 255 bytes, is a 400.
pub fn parse_filter(
    params: &BTreeMap<String, String>,
    providers: &[String],
) -> Result<Filter, ApiError> {
    Ok(Filter {
        provider: params
            .get("provider")
            .map(|p| Provider::parse(p, providers))
            .transpose()?,
        search: params
            .get("q")
            .map(|q| Search::parse(q))
            .transpose()?
            .flatten(),
    })
}

/// The `marker` of an image listing: an id that may be stored (it need not exist).
pub fn parse_marker(params: &BTreeMap<String, String>) -> Result<Option<ImageId>, ApiError> {
    params
        .get("marker")
        .map(|m| {
            ImageId::parse_existing(m.as_str())
                .map_err(|e| ApiError::bad_request(format!("marker: {e}")))
        })
        .transpose()
}

/// `Link` to the next page: the same query with `marker` set to `marker`.
pub fn next_link(path: &str, params: &BTreeMap<String, String>, marker: &str) -> String {
    link_with(path, params, "marker", marker)
}

/// `Link` to the next page: the same query with `key` set to `value`.
pub fn link_with(path: &str, params: &BTreeMap<String, String>, key: &str, value: &str) -> String {
    let mut query: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_VALUE)))
        .collect();
    query.push(format!("{key}={}", utf8_percent_encode(value, QUERY_VALUE)));
    format!("<{path}?{}>; rel=\"next\"", query.join("&"))
}

/// The header that says the highest durable audit seq as of an answer: a client
/// that follows the feed from it misses nothing the answer does not show.
pub const AUDIT_SEQ: &str = "x-audit-seq";

/// `response` with `X-Audit-Seq: seq`.
pub fn with_audit_seq(mut response: actix_web::HttpResponse, seq: u64) -> actix_web::HttpResponse {
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static(AUDIT_SEQ),
        actix_web::http::header::HeaderValue::from(seq),
    );
    response
}

/// A JSON array of pre-serialized items.
pub fn json_array<T: AsRef<[u8]>>(items: &[T]) -> Vec<u8> {
    let mut body =
        Vec::with_capacity(2 + items.iter().map(|i| i.as_ref().len() + 1).sum::<usize>());
    body.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_ref());
    }
    body.push(b']');
    body
}

/// A 200 whose body is one JSON array of `items`, streamed as they are read.
///
/// The store reads the items off the request workers (a blocking thread, or the
/// database's own runtime) a little ahead of the client: memory stays flat however big
/// the catalog. A failure before the first chunk is an error response; later, the
/// response can only be cut short.
pub async fn streamed_array<S, E>(items: S) -> Result<actix_web::HttpResponse, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + 'static,
    E: std::fmt::Display + Into<ApiError> + 'static,
{
    let mut chunks = json_array_chunks(items);
    let first = chunks
        .next()
        .await
        .unwrap_or(Err(ApiError::StoreUnavailable))?;
    let body =
        futures_util::stream::once(std::future::ready(Ok::<_, ApiError>(first))).chain(chunks);
    Ok(actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

/// The answer to a HEAD of a streamed listing: the headers of [`streamed_array`],
/// without reading the items for a body that would be thrown away.
pub fn streamed_head() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .streaming(futures_util::stream::empty::<Result<Bytes, ApiError>>())
}

/// Pre-serialized items as the chunks of one JSON array, each of about `CHUNK_BYTES`.
fn json_array_chunks<E>(
    items: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> impl Stream<Item = Result<Bytes, ApiError>> + Unpin
where
    E: std::fmt::Display + Into<ApiError>,
{
    struct State<S> {
        items: S,
        started: bool,
        done: bool,
    }
    let state = State {
        items,
        started: false,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            if state.done {
                return None;
            }
            let mut chunk = Vec::with_capacity(CHUNK_BYTES + 512);
            if !state.started {
                chunk.push(b'[');
            }
            while chunk.len() < CHUNK_BYTES {
                match state.items.next().await {
                    Some(Ok(item)) => {
                        if state.started {
                            chunk.push(b',');
                        }
                        state.started = true;
                        chunk.extend_from_slice(&item);
                    }
                    Some(Err(e)) => {
                        state.done = true;
                        if !state.started {
                            // Nothing sent yet: the client gets the error as a response.
                            return Some((Err(e.into()), state));
                        }
                        // Headers are gone already: the only honest signal left is to cut
                        // the response short, so the client sees invalid JSON, not a
                        // silently truncated list.
                        log::error!("listing aborted mid-stream: {e}");
                        return Some((Err(ApiError::StoreUnavailable), state));
                    }
                    None => {
                        state.done = true;
                        chunk.push(b']');
                        break;
                    }
                }
            }
            state.started = true;
            Some((Ok(Bytes::from(chunk)), state))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(items: Vec<Result<&'static str, String>>) -> String {
        let items = futures_util::stream::iter(items.into_iter().map(|item| {
            item.map(|s| Bytes::from_static(s.as_bytes()))
                .map_err(ApiError::BadRequest)
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let chunks: Vec<_> = runtime.block_on(json_array_chunks(items).collect());
        chunks
            .into_iter()
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn chunks_make_one_array() {
        assert_eq!(collect(vec![]), "[]");
        assert_eq!(collect(vec![Ok("1")]), "[1]");
        assert_eq!(collect(vec![Ok("1"), Ok("2"), Ok("3")]), "[1,2,3]");
        let many: Vec<_> = (0..20_000).map(|_| Ok("{\"a\":1}")).collect();
        let text = collect(many);
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.len(), 20_000);
        assert_eq!(json_array(&["1", "2"]), b"[1,2]");
        assert_eq!(json_array::<&str>(&[]), b"[]");
    }

    #[test]
    fn query_is_strict() {
        let allowed = &["limit", "marker"];
        assert!(parse_query("limit=1&marker=a", allowed).is_ok());
        assert!(parse_query("", allowed).unwrap().is_empty());
        let err = parse_query("limt=1", allowed).unwrap_err().to_string();
        assert!(err.contains("'limt'"), "{err}");
        assert!(parse_query("limit=1&limit=2", allowed).is_err());
    }

    #[test]
    fn query_values_decode_strictly() {
        let allowed = &["limit", "marker"];
        let params = parse_query("marker=a+b%20c%C3%A9%2B&&limit=", allowed).unwrap();
        assert_eq!(params["marker"], "a b cé+");
        assert_eq!(params["limit"], "");
        assert_eq!(parse_query("marker", allowed).unwrap()["marker"], "");
        assert_eq!(parse_query("marker=a=b", allowed).unwrap()["marker"], "a=b");
        // A lone '%' is kept as it is, as form decoding does.
        assert_eq!(parse_query("marker=%zz", allowed).unwrap()["marker"], "%zz");
        for bad in ["marker=%FF", "marker=a%C3", "limit=%80", "marker=%ED%A0%80"] {
            let err = parse_query(bad, allowed).unwrap_err().to_string();
            assert!(err.contains("is not valid UTF-8"), "{bad}: {err}");
            assert!(err.contains("query parameter '"), "{bad}: {err}");
        }
        let err = parse_query("%FF=1", allowed).unwrap_err().to_string();
        assert!(err.contains("name is not valid UTF-8"), "{err}");
    }

    #[test]
    fn limit_range() {
        assert!(parse_limit("0").is_err());
        assert_eq!(parse_limit("1").unwrap(), 1);
        assert_eq!(parse_limit("1000").unwrap(), 1000);
        assert!(parse_limit("1001").is_err());
        assert!(parse_limit("-1").is_err());
        assert!(parse_limit("ten").is_err());
    }

    #[test]
    fn link_keeps_other_parameters_encoded() {
        let params: BTreeMap<String, String> = [
            ("limit".to_string(), "2".to_string()),
            ("marker".to_string(), "old".to_string()),
            ("provider".to_string(), "ec2".to_string()),
        ]
        .into();
        assert_eq!(
            next_link("/v3/images", &params, "a&b=c d"),
            "</v3/images?limit=2&provider=ec2&marker=a%26b%3Dc%20d>; rel=\"next\""
        );
    }
}
