//! Routes for operators, open to anyone: health.

use actix_web::{HttpResponse, web};

use super::{json_response, resource};
use crate::error::ApiError;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(health)));
}

async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.store.is_healthy() {
        Ok(json_response(r#"{"status":"ok"}"#))
    } else {
        Err(ApiError::StoreUnavailable)
    }
}
