//! Parsing of the request headers the API reacts to: Accept, Content-Type,
//! Content-Encoding, If-Match / If-None-Match and X-Request-Id. Pure functions, no I/O.

use crate::domain::change::Precondition;

/// Whether an `Accept` header admits `application/json`. No header admits anything.
pub fn accepts_json(accept: Option<&[u8]>) -> bool {
    accepts(accept, &["application/json"])
}

/// Whether an `Accept` header admits one of `offered` (media types such as
/// `text/event-stream`). No header admits anything.
pub fn accepts(accept: Option<&[u8]>, offered: &[&str]) -> bool {
    let Some(accept) = accept else { return true };
    let Ok(accept) = std::str::from_utf8(accept) else {
        return false;
    };
    if accept.trim().is_empty() {
        return true;
    }
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let admitted = media == "*/*"
            || offered.iter().any(|offer| {
                media.eq_ignore_ascii_case(offer)
                    || media.strip_suffix("/*").is_some_and(|kind| {
                        offer.split_once('/').is_some_and(|(offered_kind, _)| {
                            kind.eq_ignore_ascii_case(offered_kind)
                        })
                    })
            });
        // q=0 means "not acceptable"; anything unparsable counts as the default 1.
        let refused = parts.any(|param| {
            let mut kv = param.splitn(2, '=');
            let key = kv.next().unwrap_or("").trim();
            let value = kv.next().unwrap_or("").trim();
            key.eq_ignore_ascii_case("q") && value.parse::<f32>().is_ok_and(|q| q <= 0.0)
        });
        admitted && !refused
    })
}

/// Whether a `Content-Type` header says JSON (`application/json`, any parameters).
pub fn is_json_content_type(content_type: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(content_type) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

/// Whether a `Content-Encoding` value leaves the body as it is: empty, or only
/// `identity`. The server decodes no content coding, so a body in any other is refused.
pub fn is_identity_encoding(content_encoding: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(content_encoding) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"))
}

/// The entity tags of an `If-Match` or `If-None-Match` value, or `None` for `*`.
/// Weak tags keep their `W/` prefix, so they never equal a strong tag.
// Hand-written, not actix's `IfMatch` / `IfNoneMatch` / `EntityTag`: their list parser
// (actix-http's `from_comma_delimited`) silently drops every item that is not a valid
// tag, so `If-Match: abc123` would be an empty list, a 412 that reads as a lost race,
// instead of the 400 that says to quote it; and `Precondition` is a domain type, which
// holds no actix type.
fn entity_tags(value: &str) -> Option<Vec<String>> {
    if value.trim() == "*" {
        return None;
    }
    Some(
        value
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// The compare-and-swap condition of an `If-Match` header. An entity tag must be
/// quoted, as the `ETag` header gives it: a bare one is refused with a message that
/// says so, rather than never matching and reading as a lost race (412).
pub fn if_match(value: Option<&[u8]>) -> Result<Option<Precondition>, String> {
    let Some(value) = value else { return Ok(None) };
    let value = String::from_utf8_lossy(value);
    Ok(Some(match entity_tags(&value) {
        None => Precondition::Exists,
        Some(tags) => {
            if let Some(bare) = tags.iter().find(|t| !is_quoted_tag(t)) {
                return Err(format!(
                    "If-Match holds '{}', which is not an entity tag: quote it as the ETag \
                     header gives it, e.g. If-Match: \"{}\"",
                    bare.escape_debug(),
                    bare.trim_matches('"').escape_debug()
                ));
            }
            Precondition::EtagIn(tags)
        }
    }))
}

/// `"..."` or `W/"..."`.
fn is_quoted_tag(tag: &str) -> bool {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"')
}

/// Whether `If-None-Match` matches `etag` (weak comparison, as RFC 9110 says for GET).
pub fn if_none_match_matches(value: Option<&[u8]>, etag: &str) -> bool {
    let Some(value) = value else { return false };
    let value = String::from_utf8_lossy(value);
    match entity_tags(&value) {
        None => true,
        Some(tags) => tags
            .iter()
            .any(|t| t.strip_prefix("W/").unwrap_or(t) == etag),
    }
}

/// A client's `X-Request-Id`, if it is sane enough to echo and log.
pub fn sane_request_id(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    if ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_wants_quoted_tags() {
        assert_eq!(if_match(None), Ok(None));
        assert_eq!(if_match(Some(b"*")), Ok(Some(Precondition::Exists)));
        assert_eq!(
            if_match(Some(b"\"a\", W/\"b\"")),
            Ok(Some(Precondition::EtagIn(vec![
                "\"a\"".into(),
                "W/\"b\"".into()
            ])))
        );
        let err = if_match(Some(b"abc123")).unwrap_err();
        assert!(
            err.contains("quote it") && err.contains("\"abc123\""),
            "{err}"
        );
        assert!(if_match(Some(b"\"a\", b")).is_err());
        // An empty list matches no ETag: 412, as RFC 9110 has it.
        assert_eq!(if_match(Some(b"")), Ok(Some(Precondition::EtagIn(vec![]))));
    }

    /// Why `if_match` is hand-written: actix's parser takes a bare tag for no tag.
    #[test]
    fn actix_if_match_drops_a_bare_tag_silently() {
        use actix_web::http::header::{Header, IfMatch};
        let request = actix_web::test::TestRequest::default()
            .insert_header(("if-match", "abc123"))
            .to_http_request();
        let parsed = IfMatch::parse(&request);
        assert!(
            matches!(&parsed, Ok(IfMatch::Items(tags)) if tags.is_empty()),
            "{parsed:?}"
        );
    }

    #[test]
    fn accept_admits_json() {
        for ok in [
            None,
            Some(&b"application/json"[..]),
            Some(b"Application/JSON"),
            Some(b"application/*"),
            Some(b"*/*"),
            Some(b"text/html, application/json;q=0.9"),
            Some(b"*/*;q=0.1"),
            Some(b""),
        ] {
            assert!(accepts_json(ok), "{ok:?}");
        }
        for refused in [
            &b"text/html"[..],
            b"application/xml",
            b"application/json;q=0",
            b"text/*",
            b"\xff",
        ] {
            assert!(!accepts_json(Some(refused)), "{refused:?}");
        }
        let stream = ["text/event-stream", "application/json"];
        for ok in [
            &b"text/event-stream"[..],
            b"text/*",
            b"application/json",
            b"*/*",
        ] {
            assert!(accepts(Some(ok), &stream), "{ok:?}");
        }
        assert!(!accepts(Some(b"text/html"), &stream));
        assert!(!accepts(Some(b"text/event-stream;q=0"), &stream));
    }

    #[test]
    fn content_type_is_json() {
        assert!(is_json_content_type(b"application/json"));
        assert!(is_json_content_type(b"application/json; charset=utf-8"));
        assert!(is_json_content_type(b"APPLICATION/JSON"));
        assert!(!is_json_content_type(b"text/plain"));
        assert!(!is_json_content_type(b"application/jsonx"));
        assert!(!is_json_content_type(b"application/x-www-form-urlencoded"));
    }

    #[test]
    fn only_identity_encoding_leaves_the_body_alone() {
        for identity in [
            &b"identity"[..],
            b"IDENTITY",
            b" identity ",
            b"",
            b"identity, identity",
        ] {
            assert!(is_identity_encoding(identity), "{identity:?}");
        }
        for coded in [
            &b"gzip"[..],
            b"br",
            b"identity, gzip",
            b"x-gzip",
            b"\xff",
            b"identityx",
        ] {
            assert!(!is_identity_encoding(coded), "{coded:?}");
        }
    }

    #[test]
    fn conditional_headers() {
        assert!(if_none_match_matches(Some(b"*"), "\"a\""));
        assert!(if_none_match_matches(Some(br#"W/"a""#), "\"a\""));
        assert!(!if_none_match_matches(Some(br#""b""#), "\"a\""));
        assert!(!if_none_match_matches(None, "\"a\""));
    }

    #[test]
    fn request_ids() {
        assert_eq!(sane_request_id(b"abc-123"), Some("abc-123"));
        assert_eq!(sane_request_id(b""), None);
        assert_eq!(sane_request_id(b"a b"), None);
        assert_eq!(sane_request_id(&[b'a'; 129]), None);
    }
}
