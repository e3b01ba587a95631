//! The query string of GET /v3/images and GET /v3/audit: parse_query, then each value
//! as the handlers read it, then the Link header built from it.
#![no_main]

use image_catalog::domain::image::ImageId;
use image_catalog::http::listing::{next_link, parse_limit, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &[u8]| {
    // actix hands the handlers the query as &str.
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let _ = parse_limit(query);
    let Ok(params) = parse_query(query, &["provider", "limit", "marker"]) else {
        return;
    };
    if let Some(limit) = params.get("limit")
        && let Ok(n) = parse_limit(limit)
    {
        assert!((1..=1000).contains(&n));
    }
    if let Some(marker) = params.get("marker") {
        let _ = ImageId::parse_existing(marker.as_str());
    }
    let link = next_link(
        "/v3/images",
        &params,
        params.get("marker").map_or("m", |m| m),
    );
    // The header value must stay one line of visible ASCII.
    assert!(link.bytes().all(|b| (0x20..0x7f).contains(&b)), "{link}");
});
