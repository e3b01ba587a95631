//! The page's styles, script and favicon, built into the binary: nothing comes from
//! another origin, and nothing needs credentials.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use super::UiError;
use crate::error::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
    Asset {
        name: "live.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/live.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// Each asset's ETag, by its place in `ASSETS`: a hash of its bytes, so that a new
/// release's file is fetched again and an unchanged one is a 304.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..20]))
            .collect()
    })
}

pub async fn serve(req: HttpRequest) -> Result<HttpResponse, UiError> {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(place) = ASSETS.iter().position(|a| a.name == name) else {
        return Err(UiError::at("../")(ApiError::NotFound(format!(
            "no file {name} here"
        ))));
    };
    let (asset, etag) = (&ASSETS[place], &etags()[place]);
    let matched = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matched {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag.as_str()))
        // Asked again each time, answered with a 304 while it is the same file.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    Ok(if matched {
        response.finish()
    } else {
        response.content_type(asset.content_type).body(asset.body)
    })
}
