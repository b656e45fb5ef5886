//! Building an app over a real SQLite history file and a configuration written to disk.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use actix_web::web;
use aegis_api::AppState;
use aegis_history::{HistoryBackend, HistoryOptions, SqliteHistory};

pub(crate) const SERVICES: &str = "services:\n  qa: {url: \"http://127.0.0.1:9\"}\nworkflows:\n  smoke:\n    steps: [{type: discover, service: qa}]\n  nightly:\n    name: Nightly\n    steps: [{type: report}]\n";

pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) history: Arc<dyn HistoryBackend>,
    pub(crate) state: web::Data<AppState>,
    pub(crate) db_path: PathBuf,
}

pub(crate) async fn fixture(extra_yaml: &str) -> Fixture {
    fixture_with(&format!("{extra_yaml}\n{SERVICES}")).await
}

/// A fixture over exactly this configuration (`data_dir` goes to the temp folder).
pub(crate) async fn fixture_with(yaml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".aegis.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = aegis_config::LoadOptions::new().env(|_| None).path(Some(path)).load().unwrap();
    let db_path = dir.path().join("history.db");
    let history: Arc<dyn HistoryBackend> =
        Arc::new(SqliteHistory::open(&db_path, HistoryOptions::default()).await.unwrap());
    let engine = aegis_core::Engine::builder(config, history.clone()).build().unwrap();
    let state = web::Data::new(AppState::new(engine));
    Fixture { _dir: dir, history, state, db_path }
}

/// Sends `req` to a fresh app over `state` and returns status, headers and JSON body.
pub(crate) async fn call(
    state: &web::Data<AppState>,
    req: TestRequest,
) -> (u16, actix_web::http::header::HeaderMap, serde_json::Value) {
    let app = test::init_service(aegis_api::app(state.clone())).await;
    let response: ServiceResponse<_> = app.call(req.to_request()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().try_into_bytes().unwrap_or_default();
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    (status, headers, json)
}

/// Asserts the standard error body with `code`.
pub(crate) fn assert_error(body: &serde_json::Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}
