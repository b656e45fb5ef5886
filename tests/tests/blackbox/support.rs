//! Shared pieces of the real-server tests: a mock QA service on its own runtime, the
//! configuration they run against, and assertions on error bodies.

use std::time::{Duration, Instant};

use aegis_core::testing::{MockService, Route};
use aegis_tests::{Response, Server};
use serde_json::{Value, json};

/// `aegis_core::testing::MockService` with the runtime it runs on; stops when dropped.
pub(crate) struct Mock {
    service: MockService,
    _runtime: tokio::runtime::Runtime,
}

impl Mock {
    /// A mock QA service: `GET /health` and `GET /ok` answer at once, `GET /slow`
    /// after `slow`.
    pub(crate) fn start(slow: Duration) -> Mock {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let service = runtime.block_on(MockService::start()).unwrap();
        service.route("GET", "/health", Route::ok(json!({"status": "ok"})));
        service.route("GET", "/ok", Route::ok(json!({"ok": true})));
        service.route("GET", "/slow", Route::ok(json!({"ok": true})).delay(slow));
        Mock { service, _runtime: runtime }
    }

    /// Changes how `GET /slow` answers (for the next requests).
    pub(crate) fn set_slow(&self, delay: Duration) {
        self.service.route("GET", "/slow", Route::ok(json!({"ok": true})).delay(delay));
    }

    /// Makes `GET /health` answer after `delay`.
    pub(crate) fn set_health_delay(&self, delay: Duration) {
        self.service.route("GET", "/health", Route::ok(json!({"status": "ok"})).delay(delay));
    }

    /// How many health checks reached the service so far.
    pub(crate) fn health_checks(&self) -> usize {
        self.service.requests_to("/health").len()
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        self.service.url()
    }
}

/// Services and workflows against `mock`: `quick` (one fast HTTP step), `slow` (one
/// step waiting for `/slow`), `gated` (a step, then a gate, then a step) and `steps`
/// (fast, slow, fast).
pub(crate) fn workflows(mock: &Mock) -> String {
    format!(
        "\
aegis: {{name: Blackbox, version: 9.9.9}}
services:
  qa: {{url: \"{url}\", health_endpoint: /health}}
workflows:
  quick:
    steps:
      - {{id: ping, type: http, service: qa, method: GET, path: /ok}}
  slow:
    steps:
      - {{id: wait, type: http, service: qa, method: GET, path: /slow, timeout: 600}}
  gated:
    steps:
      - {{id: first, type: http, service: qa, method: GET, path: /ok}}
      - {{id: review, type: gate, message: look}}
      - {{id: last, type: http, service: qa, method: GET, path: /ok}}
  steps:
    steps:
      - {{id: one, type: http, service: qa, method: GET, path: /ok}}
      - {{id: two, type: http, service: qa, method: GET, path: /slow, timeout: 600}}
      - {{id: three, type: http, service: qa, method: GET, path: /ok}}
",
        url = mock.url()
    )
}

/// Asserts `response` is `status` with the standard JSON error body `code` and a
/// message, and an `X-Request-ID`.
#[track_caller]
pub(crate) fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert!(
        response.header("content-type").is_some_and(|t| t.starts_with("application/json")),
        "{response:?}"
    );
    let body = response.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(response.header("x-request-id").is_some_and(|id| !id.is_empty()), "{response:?}");
}

/// Asserts the server still answers `/health` with 200.
#[track_caller]
pub(crate) fn assert_up(server: &Server) {
    let health = server.get("/health");
    assert_eq!(health.status, 200, "{}\n{}", health.text(), server.stderr());
}

/// Polls `GET /api/runs/{id}` until `done` holds for the run (a minute at most).
#[track_caller]
pub(crate) fn wait_for_run(server: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = server.get(&format!("/api/runs/{id}")).json();
        if done(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not get there: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a run status is final.
pub(crate) fn finished(status: &Value) -> bool {
    matches!(
        status.as_str(),
        Some("succeeded" | "failed" | "rejected" | "cancelled" | "interrupted")
    )
}

/// Starts `workflow` and returns the run id from the 202.
#[track_caller]
pub(crate) fn start_run(server: &Server, workflow: &str) -> String {
    let response = server.post(&format!("/api/workflows/{workflow}/run"));
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["run_id"].as_str().unwrap().to_owned()
}
