//! `GET /api/portfolio`: what the landing page shows.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;

use crate::auth::require;
use crate::error::Result;
use crate::state::AppState;

/// Name, version, tools (services) and workflows.
#[utoipa::path(get, path = "/api/portfolio", tag = "portfolio", responses((status = 200, body = Object)))]
pub(crate) async fn portfolio(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let config = state.config();
    let tools: Vec<_> = config.services().values().collect();
    let workflows: Vec<_> = config
        .workflows()
        .values()
        .map(|w| serde_json::json!({ "key": w.key(), "name": w.name(), "description": w.description(), "steps": w.steps().len() }))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "name": config.aegis().name(),
        "version": config.aegis().version(),
        "tools": tools,
        "workflows": workflows,
    })))
}
