//! Gates: listing the gates that wait for a decision, and approving or
//! rejecting one with an optional comment and RFC 6902 JSON Patch.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::GateRequest;
use aegis_history::RunId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::require;
use crate::dto::Gate;
use crate::error::{ApiError, Result};
use crate::middleware::request_id;
use crate::state::AppState;

/// Query of `GET /api/gates`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct GatesQuery {
    /// Only `pending` (the default) is supported: decided gates are in each run's detail.
    status: Option<String>,
}

/// The gates waiting for a decision, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GateList {
    /// The waiting gates.
    pub(crate) gates: Vec<Gate>,
}

/// Body of a decision; both fields are optional and an empty body is allowed.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct DecisionBody {
    /// Why the reviewer decided so; kept in history and events.
    pub(crate) comment: Option<String>,
    /// An RFC 6902 JSON Patch (an array of operations) for the gate's artifact.
    #[schema(value_type = Option<Vec<Object>>)]
    pub(crate) patch: Option<serde_json::Value>,
}

/// What a decision did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Decided {
    /// The run.
    pub(crate) run_id: String,
    /// The gate step id.
    pub(crate) gate: String,
    /// `approve` or `reject`.
    pub(crate) decision: String,
    /// Who decided (the key id, or `anonymous` with auth off).
    pub(crate) by: String,
    /// `running` when the run goes on, `rejected` when it ended.
    pub(crate) status: String,
    /// The gate's artifact as later steps see it.
    #[schema(value_type = Object)]
    pub(crate) artifact: Option<serde_json::Value>,
}

/// Gates waiting for a decision across runs.
#[utoipa::path(get, path = "/api/gates", tag = "gates", params(GatesQuery),
    responses((status = 200, body = GateList), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<GatesQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    match query.status.as_deref().map(str::trim) {
        None | Some("" | "pending") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`status` must be `pending`, found {other:?}; decided gates are in each run's detail"
            )));
        }
    }
    let gates = state.history().pending_gates().await?;
    Ok(HttpResponse::Ok().json(GateList { gates: gates.iter().map(Gate::from).collect() }))
}

/// Approves a waiting gate: the patch is applied to the artifact and the run continues.
#[utoipa::path(post, path = "/api/runs/{id}/gates/{gate}/approve", tag = "gates",
    params(("id" = String, Path, description = "Run id"), ("gate" = String, Path, description = "Gate step id")),
    request_body(content = DecisionBody, description = "Optional comment and JSON Patch"),
    responses((status = 200, body = Decided), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn approve(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    decide(req, state, path.into_inner(), body, true).await
}

/// Rejects a waiting gate: the run runs again from `retry_from`, or ends `rejected`.
#[utoipa::path(post, path = "/api/runs/{id}/gates/{gate}/reject", tag = "gates",
    params(("id" = String, Path, description = "Run id"), ("gate" = String, Path, description = "Gate step id")),
    request_body(content = DecisionBody, description = "Optional comment and JSON Patch"),
    responses((status = 200, body = Decided), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn reject(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    decide(req, state, path.into_inner(), body, false).await
}

async fn decide(
    req: HttpRequest,
    state: web::Data<AppState>,
    (run_id, gate_id): (String, String),
    body: web::Bytes,
    approve: bool,
) -> Result<HttpResponse> {
    let identity = require(&req, &state, Access::Operate)?;
    let body = parse_body(&body)?;
    let by = identity.display_name().to_owned();
    let mut request =
        if approve { GateRequest::approve(by.clone()) } else { GateRequest::reject(by.clone()) };
    if let Some(comment) = body.comment {
        request = request.comment(comment);
    }
    if let Some(patch) = body.patch.filter(|p| !p.is_null()) {
        request = request.patch(patch);
    }
    if let Some(id) = request_id(&req) {
        request = request.request_id(id);
    }
    let id = RunId::new(run_id);
    let gate = gate_id.clone();
    let outcome = state
        .on_engine(move |engine| async move { engine.decide(&id, &gate, request).await })
        .await?
        .map_err(gate_error)?;
    Ok(HttpResponse::Ok().json(Decided {
        run_id: outcome.run_id.to_string(),
        gate: outcome.gate_id,
        decision: outcome.decision.as_str().to_owned(),
        by,
        status: outcome.status.as_str().to_owned(),
        artifact: outcome.artifact,
    }))
}

/// An empty body is no comment and no patch; otherwise a JSON object.
fn parse_body(body: &[u8]) -> Result<DecisionBody> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    // Counted before parsing, without recursion: a deeply nested body is refused
    // here rather than becoming a value every later step would have to survive.
    let limit = aegis_core::limits::MAX_JSON_DEPTH;
    if aegis_core::limits::text_depth(body, limit) > limit {
        return Err(ApiError::BadRequest(format!(
            "the request body nests JSON deeper than {limit} levels"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("malformed JSON: {err}")))?;
    if !value.is_object() {
        return Err(ApiError::Unprocessable(
            "the decision body must be a JSON object `{comment, patch}`".to_owned(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|err| ApiError::Unprocessable(format!("invalid decision body: {err}")))
}

/// Maps the engine's gate errors to statuses: an unknown gate is 404, a gate
/// or run that does not wait is 409, a patch that does not apply is 422.
fn gate_error(err: aegis_core::Error) -> ApiError {
    match err {
        aegis_core::Error::UnknownGate { gate_id, .. } => {
            ApiError::NotFound { what: "gate", id: gate_id }
        }
        err @ (aegis_core::Error::RunNotWaiting { .. }
        | aegis_core::Error::GateNotPending { .. }) => ApiError::Conflict(err.to_string()),
        err @ aegis_core::Error::InvalidPatch(_) => ApiError::Unprocessable(err.to_string()),
        other => ApiError::from(other),
    }
}
