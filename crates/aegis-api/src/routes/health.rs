//! Liveness, readiness and dependency status.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::require;
use crate::error::{ApiError, Result};
use crate::state::AppState;

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok` while the process serves.
    pub status: &'static str,
    /// The server's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// How many services are configured.
    pub services_configured: usize,
    /// How many workflows are configured.
    pub workflows_configured: usize,
}

/// The process is up and the configuration loaded.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Health)))]
pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.uptime_seconds(),
        services_configured: state.config().services().len(),
        workflows_configured: state.config().workflows().len(),
    })
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200)))]
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Liveness under the name Kubernetes probes use; the same answer as `/health/live`.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200)))]
pub(crate) async fn healthz() -> HttpResponse {
    live().await
}

/// Readiness: 200 when the history store answers, else 503.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses((status = 200), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn ready(state: web::Data<AppState>) -> Result<HttpResponse> {
    state
        .history()
        .ping()
        .await
        .map_err(|err| ApiError::NotReady(format!("history store is not answering: {err}")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

/// One dependency's state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Dependency {
    /// `history` or `service:<key>`.
    pub name: String,
    /// `healthy`, `unhealthy` or `unreachable`.
    pub status: String,
    /// How long the check took.
    pub latency_ms: f64,
    /// Why it is not healthy.
    pub error: Option<String>,
}

/// `GET /health/status`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DependencyStatus {
    /// `ok` when every dependency is healthy, else `degraded`.
    pub status: &'static str,
    /// Each dependency.
    pub dependencies: Vec<Dependency>,
}

/// Each dependency with its status and latency; services from checks at most 2 s old.
#[utoipa::path(get, path = "/health/status", tag = "health", responses((status = 200, body = DependencyStatus)))]
pub(crate) async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let started = Instant::now();
    let ping = state.history().ping().await;
    let history = Dependency {
        name: "history".to_owned(),
        status: if ping.is_ok() { "healthy" } else { "unreachable" }.to_owned(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        error: ping.err().map(|e| e.to_string()),
    };
    let mut dependencies = vec![history];
    for service in state.service_health().await.iter() {
        dependencies.push(Dependency {
            name: format!("service:{}", service.key),
            status: service.status.as_str().to_owned(),
            latency_ms: service.latency_ms as f64,
            error: service.error.clone(),
        });
    }
    let all_healthy = dependencies.iter().all(|d| d.status == "healthy");
    Ok(HttpResponse::Ok().json(DependencyStatus {
        status: if all_healthy { "ok" } else { "degraded" },
        dependencies,
    }))
}
