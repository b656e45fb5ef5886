//! A run's artifacts: the files under `data_dir/runs/<run_id>/`.

use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_history::RunId;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::require;
use crate::error::{ApiError, Result};
use crate::state::AppState;

/// One artifact file.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Artifact {
    /// File name, used in the download URL.
    name: String,
    /// Size in bytes.
    size: u64,
    /// Download URL.
    url: String,
}

/// An artifact name is one plain file name: no separators, no `..`, no control
/// characters. Anything else names nothing, so it is a 404 like any unknown name.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

async fn run_dir(state: &AppState, id: &str) -> Result<std::path::PathBuf> {
    let run_id = RunId::new(id);
    if state.history().get_run(&run_id).await?.is_none() {
        return Err(ApiError::NotFound { what: "run", id: id.to_owned() });
    }
    Ok(state.engine().run_dir(&run_id))
}

/// The run's artifacts.
#[utoipa::path(get, path = "/api/runs/{id}/artifacts", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let dir = run_dir(&state, &id).await?;
    let base = state.link(&format!("/api/runs/{id}/artifacts"));
    let artifacts = web::block(move || -> std::io::Result<Vec<Artifact>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.is_file() && plain_name(&name) {
                out.push(Artifact { url: format!("{base}/{name}"), name, size: meta.len() });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("cannot list artifacts: {e}")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "artifacts": artifacts })))
}

/// Downloads one artifact.
#[utoipa::path(get, path = "/api/runs/{id}/artifacts/{name}", tag = "runs",
    params(("id" = String, Path, description = "Run id"), ("name" = String, Path, description = "Artifact file name")),
    responses((status = 200), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let (id, name) = path.into_inner();
    let dir = run_dir(&state, &id).await?;
    if !plain_name(&name) {
        return Err(ApiError::NotFound { what: "artifact", id: name });
    }
    let file = dir.join(&name);
    let bytes = match web::block(move || std::fs::read(file))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound { what: "artifact", id: name });
        }
        Err(err) => return Err(ApiError::Internal(format!("cannot read artifact {name}: {err}"))),
    };
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("jsonl") => "application/x-ndjson",
        Some("xml") => "application/xml",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{name}\"")))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(bytes))
}

#[cfg(test)]
mod tests {
    use super::plain_name;

    #[test]
    fn only_plain_file_names_are_artifacts() {
        assert!(plain_name("test.json"));
        assert!(plain_name("command.stdout.txt"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", "é.json", "x y"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}
