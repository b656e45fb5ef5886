//! Gates: listing the gates that wait for a decision, and approving or
//! rejecting one with an optional comment and RFC 6902 JSON Patch.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::GateRequest;
use aegis_history::{PendingGate, RunId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::require;
use crate::body;
use crate::dto::Gate;
use crate::error::{ApiError, Result};
use crate::middleware::request_id;
use crate::routes::runs::parse_limit;
use crate::state::AppState;

/// Query of `GET /api/gates`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct GatesQuery {
    /// Only `pending` (the default) is supported: decided gates are in each run's detail.
    status: Option<String>,
    /// Page size, 1-1000 (default 50).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The gates waiting for a decision, oldest first, one page at a time.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GateList {
    /// The waiting gates.
    pub(crate) gates: Vec<Gate>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub(crate) next_cursor: Option<String>,
}

/// Version tag of gate cursors, so the format can change later.
const CURSOR_PREFIX: &str = "g1:";

/// A gate's position in the list order `(since, run_id, gate_id)`.
type Position = (i128, String, String);

fn position(gate: &PendingGate) -> Position {
    (gate.since.as_nanosecond(), gate.run_id.as_str().to_owned(), gate.gate_id.clone())
}

/// The cursor after `gate`: its position, hex-encoded so it is opaque and URL-safe.
fn encode_cursor(gate: &PendingGate) -> String {
    let (since, run, id) = position(gate);
    format!("{CURSOR_PREFIX}{since}:{run}:{id}").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Result<Position> {
    let invalid =
        || ApiError::BadRequest(format!("`cursor` is not a cursor this server gave: {cursor:?}"));
    if !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = plain.strip_prefix(CURSOR_PREFIX).ok_or_else(invalid)?;
    // Run ids hold no `:`; a gate id may, so it is the rest.
    let mut parts = rest.splitn(3, ':');
    let since = parts.next().and_then(|s| s.parse::<i128>().ok()).ok_or_else(invalid)?;
    let run = parts.next().filter(|r| !r.is_empty()).ok_or_else(invalid)?;
    let gate = parts.next().filter(|g| !g.is_empty()).ok_or_else(invalid)?;
    Ok((since, run.to_owned(), gate.to_owned()))
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
    let limit = parse_limit(query.limit.as_deref(), 50)?;
    let after = query.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    // A page is the next `limit` gates after the cursor's position in `position`
    // order, so gates decided meanwhile shift nothing and each gate still waiting is
    // listed once.
    let mut pending = state.history().pending_gates().await?;
    pending.sort_by_cached_key(position);
    let mut page: Vec<&PendingGate> = pending
        .iter()
        .filter(|gate| after.as_ref().is_none_or(|after| position(gate) > *after))
        .take(limit as usize + 1)
        .collect();
    let next_cursor = if page.len() > limit as usize {
        page.truncate(limit as usize);
        page.last().map(|gate| encode_cursor(gate))
    } else {
        None
    };
    Ok(HttpResponse::Ok()
        .json(GateList { gates: page.into_iter().map(Gate::from).collect(), next_cursor }))
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
    body: web::Payload,
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
    body: web::Payload,
) -> Result<HttpResponse> {
    decide(req, state, path.into_inner(), body, false).await
}

async fn decide(
    req: HttpRequest,
    state: web::Data<AppState>,
    (run_id, gate_id): (String, String),
    payload: web::Payload,
    approve: bool,
) -> Result<HttpResponse> {
    // Credentials first: the body is read only for a caller allowed to decide.
    let identity = require(&req, &state, Access::Operate)?;
    let bytes = body::read(payload, state.config().server().max_body_bytes()).await?;
    let body = parse_body(&bytes)?;
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
    // The engine runs the resumed run on its own runtime.
    let outcome = state.engine().decide(&id, &gate_id, request).await?;
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
