//! A run's artifacts: the files under `data_dir/runs/<run_id>/` and each
//! step's data as `<step_id>.json` (served by the engine from history).
//!
//! A file is streamed from disk in chunks of [`CHUNK`] bytes as the client
//! takes them (actix polls the body only while the socket has room), so a
//! download holds one chunk in memory, whatever the file's size.

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::ArtifactBody;
use aegis_history::RunId;
use futures_util::stream::Stream;
use serde::Serialize;
use tokio::io::AsyncReadExt as _;
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
    aegis_core::is_artifact_name(name)
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
    let run_id = RunId::new(id.as_str());
    let base = state.link(&format!("/api/runs/{id}/artifacts"));
    let Some(found) = state
        .engine()
        .artifacts(&run_id)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot list artifacts: {e}")))?
    else {
        return Err(ApiError::NotFound { what: "run", id: id.into_inner() });
    };
    let artifacts: Vec<Artifact> = found
        .into_iter()
        .map(|a| Artifact { url: format!("{base}/{}", a.name), name: a.name, size: a.size })
        .collect();
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
    let run_id = RunId::new(id.as_str());
    if state.history().get_run(&run_id).await?.is_none() {
        return Err(ApiError::NotFound { what: "run", id });
    }
    if !plain_name(&name) {
        return Err(ApiError::NotFound { what: "artifact", id: name });
    }
    let body = match state.engine().artifact(&run_id, &name).await {
        Ok(Some(body)) => body,
        Ok(None) => return Err(ApiError::NotFound { what: "artifact", id: name }),
        Err(err) => return Err(ApiError::Internal(format!("cannot read artifact {name}: {err}"))),
    };
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("jsonl") => "application/x-ndjson",
        Some("xml") => "application/xml",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type(content_type)
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{name}\"")))
        .insert_header(("X-Content-Type-Options", "nosniff"));
    Ok(match body {
        // Shared with the engine's copy, not copied.
        ArtifactBody::Bytes(bytes) => response.body(Bytes::from_owner(bytes)),
        ArtifactBody::File { file, size } => {
            // The size at opening is the length announced; a file that grows
            // meanwhile is cut there, one that shrinks ends the stream early.
            response.no_chunking(size).streaming(chunks(tokio::fs::File::from_std(file), size))
        }
        _ => return Err(ApiError::Internal(format!("cannot serve artifact {name}"))),
    })
}

/// How much of a file one chunk of a download holds.
const CHUNK: usize = 64 * 1024;

/// The first `size` bytes of `file`, [`CHUNK`] bytes at a time.
fn chunks(
    file: tokio::fs::File,
    size: u64,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold((file, size), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(read) => {
                buf.truncate(read);
                Some((Ok(Bytes::from(buf)), (file, left - read as u64)))
            }
            Err(err) => Some((Err(err), (file, 0))),
        }
    })
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
