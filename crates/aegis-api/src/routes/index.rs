//! The dashboard: `web/` embedded in the binary and served under `server.base_path`.
//!
//! Both pages (`/` and `/runs/{id}`) are the same `index.html`; its scripts pick the page
//! from the URL. Every link and request in it is relative, resolved against a `<base>`
//! element written per request, so the pages work under any prefix a proxy adds, even
//! one the server does not know about. Assets carry an `ETag` and are revalidated on each
//! load (`no-cache`): their names are not content-hashed, so a long cache lifetime could
//! pair a new `index.html` with old scripts after an upgrade.

use std::collections::HashMap;
use std::sync::OnceLock;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Result};
use crate::state::AppState;

/// The `web/` folder at the repository root, compiled into the binary.
static WEB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../web");

/// The placeholder `index.html` carries for the per-request `<base>` target.
const BASE_MARKER: &str = "<base href=\"./\">";

/// The policy every page is served with: nothing may load from, or connect to, another
/// origin, which the browser then enforces as well as the page's own code.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The content type for a file name, by its extension.
pub(crate) fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Each embedded file's `ETag`, computed once from its bytes.
fn etags() -> &'static HashMap<&'static str, String> {
    static ETAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        let mut map = HashMap::new();
        let mut pending = vec![&WEB];
        // The folder tree is ours and shallow; a work list keeps the walk iterative anyway.
        while let Some(dir) = pending.pop() {
            for file in dir.files() {
                if let Some(path) = file.path().to_str() {
                    map.insert(path, etag_of(file.contents()));
                }
            }
            pending.extend(dir.dirs());
        }
        map
    })
}

fn etag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether the request's `If-None-Match` names `etag`.
fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// The `<base href>` that makes relative URLs resolve to the dashboard's root, given the
/// request path below `base_path` (`rel`) and the whole request path.
pub(crate) fn base_href(rel: &str, full: &str) -> String {
    if rel.is_empty() {
        // `/aegis` without its slash: the browser's folder is the parent, so name ours.
        let last = full.rsplit('/').next().unwrap_or_default();
        return format!("{last}/");
    }
    let depth = rel.matches('/').count().saturating_sub(1);
    if depth == 0 { "./".to_owned() } else { "../".repeat(depth) }
}

fn page(req: &HttpRequest, state: &AppState) -> Result<HttpResponse> {
    let file = WEB
        .get_file("index.html")
        .and_then(|f| f.contents_utf8())
        .ok_or_else(|| ApiError::Internal("the dashboard is missing from the build".to_owned()))?;
    let full = req.path();
    let rel = full.strip_prefix(state.config().server().base_path()).unwrap_or(full);
    let base = base_href(rel, full);
    let html = file.replacen(BASE_MARKER, &format!("<base href=\"{base}\">"), 1);
    Ok(HttpResponse::Ok()
        .content_type(content_type("index.html"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(html))
}

/// The dashboard's landing page.
#[utoipa::path(get, path = "/", tag = "dashboard", responses((status = 200, content_type = "text/html")))]
pub(crate) async fn index(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    page(&req, &state)
}

/// A run's page: the same document, which reads the run id from the URL.
pub(crate) async fn run_page(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    page(&req, &state)
}

/// A file under `web/assets/`, with its `ETag`; 304 when the client has it already.
pub(crate) async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse> {
    let path = format!("assets/{name}");
    let missing = || ApiError::NotFound { what: "asset", id: name.to_string() };
    if name.split('/').any(|s| s.is_empty() || s == "..") {
        return Err(missing());
    }
    let file = WEB.get_file(&path).ok_or_else(missing)?;
    let etag = etags().get(path.as_str()).cloned().unwrap_or_else(|| etag_of(file.contents()));
    let fresh = not_modified(&req, &etag);
    let mut response =
        if fresh { HttpResponse::build(StatusCode::NOT_MODIFIED) } else { HttpResponse::Ok() };
    response
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.insert_header((header::ETAG, value));
    }
    if fresh {
        return Ok(response.finish());
    }
    Ok(response.content_type(content_type(&path)).body(file.contents()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_href_points_back_to_the_dashboard_root() {
        for (rel, full, expected) in [
            ("/", "/", "./"),
            ("/", "/aegis/", "./"),
            ("", "/aegis", "aegis/"),
            ("/runs/abc", "/runs/abc", "../"),
            ("/runs/abc/", "/aegis/runs/abc/", "../../"),
        ] {
            assert_eq!(base_href(rel, full), expected, "{full}");
        }
    }

    #[test]
    fn every_embedded_file_has_a_known_content_type_and_an_etag() {
        let etags = etags();
        assert!(etags.contains_key("index.html"), "{:?}", etags.keys());
        for path in etags.keys() {
            assert_ne!(content_type(path), "application/octet-stream", "{path}");
        }
        let index = WEB.get_file("index.html").and_then(|f| f.contents_utf8()).unwrap_or("");
        assert!(index.contains(BASE_MARKER), "index.html lost its base marker");
    }
}
