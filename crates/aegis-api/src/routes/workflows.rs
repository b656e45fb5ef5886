//! Workflow definitions.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;

use crate::auth::require;
use crate::error::{ApiError, Result};
use crate::state::AppState;

/// Every workflow definition, in file order.
#[utoipa::path(get, path = "/api/workflows", tag = "workflows", responses((status = 200, body = Object)))]
pub(crate) async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let workflows: Vec<_> = state.config().workflows().values().collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "workflows": workflows })))
}

/// One workflow definition.
#[utoipa::path(get, path = "/api/workflows/{key}", tag = "workflows",
    params(("key" = String, Path, description = "Workflow key")),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    key: web::Path<String>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let workflow = state
        .config()
        .workflows()
        .get(key.as_str())
        .ok_or_else(|| ApiError::NotFound { what: "workflow", id: key.into_inner() })?;
    Ok(HttpResponse::Ok().json(workflow))
}
