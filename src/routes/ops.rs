//! Routes for operators and tools, open to anyone: health, metrics, the API document.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};

use super::{get_or_head, json_response, resource};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(get_or_head().to(health)))
        .service(resource("/metrics").route(get_or_head().to(metrics)))
        .service(resource("/v3/openapi.json").route(get_or_head().to(openapi)));
}

/// `{"status": "ok"}`
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Health
///
/// 200 while the store answers; 503 when it does not.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The store is open", body = Health),
        (status = 503, description = "The store failed", body = ErrorBody),
    )
)]
pub(crate) async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.health().await.map_err(|e| {
        log::warn!("/healthz: {e}");
        ApiError::from(e)
    })?;
    let body = serde_json::to_vec(&Health { status: "ok" }).unwrap_or_default();
    Ok(json_response(body))
}

/// Metrics
///
/// Prometheus text format: requests by route, method and status, latency histograms,
/// auth failures, images in the catalog, store size on disk.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String,
            content_type = "text/plain"),
        (status = 503, description = "The metrics could not be rendered", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state.metrics_text().await.map_err(|e| {
        log::error!("rendering metrics failed: {e}");
        ApiError::StoreUnavailable
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, prometheus::TEXT_FORMAT))
        .body(text))
}

/// The OpenAPI document
///
/// This document: every route, its parameters, bodies, statuses and policy.
#[utoipa::path(
    get,
    path = "/v3/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "OpenAPI 3 document", body = Object),
    )
)]
pub(crate) async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    json_response(state.openapi())
}
