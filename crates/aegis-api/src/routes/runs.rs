//! Run listings and details, read from the history store.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_history::{ListQuery, MAX_PAGE_SIZE, RunId, RunStatus};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::require;
use crate::dto::{Run, RunPage, RunWithSteps};
use crate::error::{ApiError, Result};
use crate::state::AppState;

/// Query of `GET /api/runs`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct RunsQuery {
    /// Only this workflow's runs.
    workflow: Option<String>,
    /// Only runs with this status.
    status: Option<String>,
    /// Page size, 1-1000 (default 50).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query of paginated history endpoints.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct PageQuery {
    /// Page size, 1-1000.
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub(crate) fn parse_limit(limit: Option<&str>, default: u32) -> Result<u32> {
    let Some(text) = limit else { return Ok(default) };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "`limit` must be an integer 1-{MAX_PAGE_SIZE}, found {text:?}"
        ))),
    }
}

fn parse_status(status: Option<&str>) -> Result<Option<RunStatus>> {
    let Some(text) = status.filter(|s| !s.is_empty()) else { return Ok(None) };
    text.parse::<RunStatus>().map(Some).map_err(|_| {
        let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::BadRequest(format!(
            "`status` must be one of {}, found {text:?}",
            known.join(", ")
        ))
    })
}

/// Runs, newest first, filtered and paginated.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunPage), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<RunsQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let query = query.into_inner();
    let list = ListQuery {
        workflow: query.workflow.filter(|w| !w.is_empty()),
        status: parse_status(query.status.as_deref())?,
        limit: parse_limit(query.limit.as_deref(), 50)?,
        cursor: query.cursor.filter(|c| !c.is_empty()),
    };
    let page = state.history().list_runs(&list).await?;
    Ok(HttpResponse::Ok().json(RunPage {
        runs: page.runs.iter().map(Run::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One run with its steps, attempts and gates.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunWithSteps), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let id = id.into_inner();
    let detail = state
        .history()
        .get_run(&RunId::new(id.clone()))
        .await?
        .ok_or(ApiError::NotFound { what: "run", id })?;
    Ok(HttpResponse::Ok().json(RunWithSteps::from(&detail)))
}

/// Recent runs across workflows (the dashboard's "Recent Runs").
#[utoipa::path(get, path = "/api/history", tag = "runs", params(PageQuery),
    responses((status = 200, body = RunPage), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let query = query.into_inner();
    let list = ListQuery {
        workflow: None,
        status: None,
        limit: parse_limit(query.limit.as_deref(), 10)?,
        cursor: query.cursor.filter(|c| !c.is_empty()),
    };
    let page = state.history().list_runs(&list).await?;
    Ok(HttpResponse::Ok().json(RunPage {
        runs: page.runs.iter().map(Run::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One workflow's runs, newest first.
#[utoipa::path(get, path = "/api/workflows/{key}/history", tag = "runs", params(("key" = String, Path, description = "Workflow key"), PageQuery),
    responses((status = 200, body = RunPage), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn workflow_history(
    req: HttpRequest,
    state: web::Data<AppState>,
    key: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let key = key.into_inner();
    if !state.config().workflows().contains_key(&key) {
        return Err(ApiError::NotFound { what: "workflow", id: key });
    }
    let query = query.into_inner();
    let limit = parse_limit(query.limit.as_deref(), 50)?;
    let page = state
        .history()
        .workflow_runs(&key, limit, query.cursor.as_deref().filter(|c| !c.is_empty()))
        .await?;
    Ok(HttpResponse::Ok().json(RunPage {
        runs: page.runs.iter().map(Run::from).collect(),
        next_cursor: page.next_cursor,
    }))
}
