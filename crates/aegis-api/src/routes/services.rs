//! The service registry with live health.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::{HEALTH_TIMEOUT, ServiceHealth, check_service};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::require;
use crate::error::{ApiError, Result};
use crate::state::AppState;

/// A configured service with its live health.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ServiceView {
    /// The key under `services:`.
    key: String,
    /// Display name.
    name: String,
    /// Free text.
    description: Option<String>,
    /// Base URL (a password in it as `***`).
    url: String,
    /// Path probed.
    health_endpoint: String,
    /// Feature names.
    features: Vec<String>,
    /// `healthy`, `unhealthy` or `unreachable`.
    status: String,
    /// HTTP status of the health check, when it answered.
    http_status: Option<u16>,
    /// How long the check took.
    latency_ms: u64,
    /// Why it is not healthy.
    error: Option<String>,
}

fn view(state: &AppState, health: ServiceHealth) -> ServiceView {
    let service = state.config().services().get(&health.key);
    ServiceView {
        description: service.and_then(|s| s.description()).map(str::to_owned),
        url: service.map_or_else(String::new, |s| aegis_config::shown_url(s.url())),
        health_endpoint: service.map_or_else(String::new, |s| s.health_endpoint().to_owned()),
        features: service.map(|s| s.features().to_vec()).unwrap_or_default(),
        key: health.key,
        name: health.name,
        status: health.status.as_str().to_owned(),
        http_status: health.http_status,
        latency_ms: health.latency_ms,
        error: health.error,
    }
}

/// Every service with its health from checks at most 2 s old (shared by all callers).
#[utoipa::path(get, path = "/api/services", tag = "services", responses((status = 200, body = Object)))]
pub(crate) async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let checks = state.service_health().await;
    let services: Vec<ServiceView> = checks.iter().map(|h| view(&state, h.clone())).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "services": services })))
}

/// One live check; 200 with the status in the body even when the service is down.
#[utoipa::path(get, path = "/api/services/{key}/health", tag = "services",
    params(("key" = String, Path, description = "Service key")),
    responses((status = 200, body = ServiceView), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn health(
    req: HttpRequest,
    state: web::Data<AppState>,
    key: web::Path<String>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let key = key.into_inner();
    let service = state
        .config()
        .services()
        .get(&key)
        .ok_or_else(|| ApiError::NotFound { what: "service", id: key.clone() })?;
    let health = check_service(state.engine().client(), service, HEALTH_TIMEOUT).await;
    Ok(HttpResponse::Ok().json(view(&state, health)))
}
