//! Accept, Content-Type, If-Match, If-None-Match and X-Request-Id.
#![no_main]

use image_catalog::http::headers::{
    accepts_json, if_match, if_none_match_matches, is_json_content_type, sane_request_id,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    let _ = accepts_json(Some(value));
    let _ = is_json_content_type(value);
    let _ = if_match(Some(value));
    let _ = if_none_match_matches(Some(value), "\"0123456789abcdef\"");
    if let Some(id) = sane_request_id(value) {
        // It is echoed in a header and written to the log as it is.
        assert!(!id.is_empty() && id.len() <= 128);
        assert!(id.bytes().all(|b| b.is_ascii_graphic()));
    }
});
