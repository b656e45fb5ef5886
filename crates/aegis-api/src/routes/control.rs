//! Starting and cancelling runs.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::RunOptions;
use aegis_history::{RunId, RunStatus, Trigger};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::require;
use crate::dto::RunWithSteps;
use crate::error::{ApiError, Result};
use crate::middleware::request_id;
use crate::state::AppState;

/// Query of `POST /api/workflows/{key}/run`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct RunQuery {
    /// Wait for the run to finish (or stop at a gate) and return it.
    wait: Option<String>,
}

/// Where to follow a run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunLinks {
    /// The run (`GET`).
    #[serde(rename = "self")]
    pub(crate) this: String,
    /// Its events (`GET`, polling).
    pub(crate) events: String,
    /// Its events as server-sent events.
    pub(crate) stream: String,
    /// Cancel it (`POST`).
    pub(crate) cancel: String,
}

/// `202 Accepted` for a started run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    /// The new run's id.
    pub(crate) run_id: String,
    /// `queued`.
    pub(crate) status: String,
    /// Where to follow it.
    pub(crate) links: RunLinks,
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool> {
    match value.map(str::trim) {
        None | Some("" | "false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(other) => {
            Err(ApiError::BadRequest(format!("`{name}` must be true or false, found {other:?}")))
        }
    }
}

/// Starts a run of the workflow.
#[utoipa::path(post, path = "/api/workflows/{key}/run", tag = "runs",
    params(("key" = String, Path, description = "Workflow key"), RunQuery),
    responses(
        (status = 202, body = Accepted, description = "Queued (or, with wait=true, stopped at a gate)"),
        (status = 200, body = RunWithSteps, description = "With wait=true: the finished run"),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn start(
    req: HttpRequest,
    state: web::Data<AppState>,
    key: web::Path<String>,
    query: web::Query<RunQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Operate)?;
    let wait = parse_bool("wait", query.wait.as_deref())?;
    let key = key.into_inner();
    if !state.config().workflows().contains_key(&key) {
        return Err(ApiError::NotFound { what: "workflow", id: key });
    }
    let mut options = RunOptions::new(Trigger::Api);
    if let Some(id) = request_id(&req) {
        options = options.request_id(id);
    }
    let handle = state.engine().submit(&key, options).await?;
    let run_id = handle.id().to_string();
    if !wait {
        let links = RunLinks {
            this: state.link(&format!("/api/runs/{run_id}")),
            events: state.link(&format!("/api/runs/{run_id}/events")),
            stream: state.link(&format!("/api/runs/{run_id}/events/stream")),
            cancel: state.link(&format!("/api/runs/{run_id}/cancel")),
        };
        return Ok(HttpResponse::Accepted().json(Accepted {
            run_id,
            status: "queued".to_owned(),
            links,
        }));
    }
    let summary = handle.wait().await?;
    let detail =
        state.history().get_run(&RunId::new(summary.run_id.clone())).await?.ok_or_else(|| {
            ApiError::Internal(format!(
                "run {} finished but is not in the history store",
                summary.run_id
            ))
        })?;
    let body = RunWithSteps::from(&detail);
    if detail.run.status == RunStatus::Waiting {
        return Ok(HttpResponse::Accepted().json(body));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Cancels a queued or running run.
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 202), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn cancel(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let identity = require(&req, &state, Access::Operate)?;
    let id = RunId::new(id.into_inner());
    // The cancel commits the run's end (a compare-and-set that wins over any
    // decision or completion not committed yet) before it answers: a 202
    // always means the run ends `cancelled`.
    let by = identity.display_name().to_owned();
    match state.engine().cancel(&id, &by, request_id(&req)).await {
        Ok(()) => Ok(HttpResponse::Accepted()
            .json(serde_json::json!({ "run_id": id.as_str(), "status": "cancelled" }))),
        Err(aegis_core::Error::RunFinished { status, .. }) => {
            Err(ApiError::Conflict(format!("run {id} is {status} and cannot be cancelled")))
        }
        Err(err) => Err(err.into()),
    }
}
