//! Gates against the real `aegis-server`: reject with a patch and `retry_from`,
//! approve with a patch so the bug service gets only the kept failures, every
//! conflict, restarts (SIGTERM and kill -9) while waiting, a deadline passing
//! while the server is down, and twenty concurrent approvals.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_tests::{Request, read_request};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-key-0123456789abcdef";
const VIEWER: &str = "viewer-key-0123456789abcdef";

/// A local QA service: its test run finds three failures; its bug tracker
/// keeps every report body it receives.
struct QaService {
    url: String,
    test_runs: Arc<Mutex<usize>>,
    reports: Arc<Mutex<Vec<Value>>>,
}

fn qa_service() -> QaService {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let test_runs = Arc::new(Mutex::new(0));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let (runs, seen) = (test_runs.clone(), reports.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some(request) = read_request(&stream) else { continue };
            let answer = match request.path.as_str() {
                "/api/runs" => {
                    *runs.lock().unwrap() += 1;
                    json!({"total": 5, "passed": 2, "failed": 3,
                        "failures": [{"id": "a"}, {"id": "b"}, {"id": "c"}]})
                }
                "/api/v1/reports" => {
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&request.body).unwrap_or(Value::Null));
                    json!({"accepted": true})
                }
                _ => json!({"status": "ok"}),
            };
            let text = answer.to_string();
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            );
        }
    });
    QaService { url, test_runs, reports }
}

fn write_config(dir: &Path, qa: &QaService) {
    let yaml = format!(
        "data_dir: ./data
history_db_path: ./history.db
auth:
  keys:
    - {{id: ci, key: {OPERATOR}, role: operator}}
    - {{id: dash, key: {VIEWER}, role: viewer}}
services:
  qa: {{url: \"{}\"}}
workflows:
  review:
    steps:
      - {{id: test, type: test, service: qa}}
      - {{id: gate, type: gate, artifact: test, message: Drop flaky failures, retry_from: test}}
      - {{id: bugs, type: submit_bugs, service: qa, condition: has_failures}}
  timed:
    steps:
      - {{id: test, type: test, service: qa}}
      - {{id: gate, type: gate, artifact: test, timeout: 2, on_timeout: approve}}
      - {{id: bugs, type: submit_bugs, service: qa, condition: has_failures}}
",
        qa.url
    );
    std::fs::write(dir.join(".aegis.yaml"), yaml).unwrap();
}

/// The real server (`aegis_tests::Server`) with the calls these tests make.
struct Server(aegis_tests::Server);

impl Server {
    fn start(dir: &Path) -> Server {
        Server(aegis_tests::Server::start(dir))
    }

    /// Stops with SIGTERM and checks the graceful exit.
    fn terminate(self) {
        assert_eq!(self.0.terminate(), Some(0), "graceful shutdown exits 0");
    }

    /// Kills with SIGKILL (kill -9).
    fn kill(self) {
        self.0.kill9();
    }

    /// Sends a JSON request (with the API key, if any); the answer's status and JSON body.
    fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = Request::new(method, path);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        if let Some(body) = body {
            request = request.body("application/json", body.to_string());
        }
        let response = self.0.send(&request);
        (response.status, serde_json::from_slice(&response.body).unwrap_or(Value::Null))
    }

    fn start_run(&self, workflow: &str) -> String {
        let (status, body) =
            self.call("POST", &format!("/api/workflows/{workflow}/run"), Some(OPERATOR), None);
        assert_eq!(status, 202, "{body}");
        body["run_id"].as_str().unwrap().to_owned()
    }

    fn run(&self, id: &str) -> Value {
        self.call("GET", &format!("/api/runs/{id}"), None, None).1
    }

    /// Polls until `done` holds for the run (the bound only stops a broken build).
    fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..1500 {
            let run = self.run(id);
            if done(&run) {
                return run;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("run {id} never got there: {}", self.run(id));
    }

    fn waiting(&self, id: &str) -> Value {
        self.wait_for(id, |r| {
            r["status"] == "waiting" && r["pending_gates"].as_array().is_some_and(|g| !g.is_empty())
        })
    }

    fn finished(&self, id: &str) -> Value {
        self.wait_for(id, |r| {
            !["queued", "running", "waiting"].contains(&r["status"].as_str().unwrap_or("queued"))
        })
    }

    fn decide(&self, id: &str, action: &str, body: &Value) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/api/runs/{id}/gates/gate/{action}"),
            Some(OPERATOR),
            Some(body),
        )
    }
}

fn ids(failures: &Value) -> Vec<String> {
    failures.as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn reject_with_retry_then_approve_with_a_patch_files_only_the_kept_failures() {
    let qa = qa_service();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &qa);
    let server = Server::start(dir.path());
    let id = server.start_run("review");
    server.waiting(&id);
    let (status, body) = server.call("GET", "/api/gates?status=pending", None, None);
    assert_eq!(status, 200);
    assert_eq!(body["gates"][0]["run_id"], id.as_str());

    // Conflicts first: nothing changes.
    let (status, _) = server.call(
        "POST",
        &format!("/api/runs/{id}/gates/gate/approve"),
        Some(VIEWER),
        Some(&json!({})),
    );
    assert_eq!(status, 403);
    let (status, body) =
        server.decide(&id, "approve", &json!({"patch": [{"op": "remove", "path": "/nope/1"}]}));
    assert_eq!(status, 422, "{body}");
    let (status, _) = server.decide(
        &id,
        "approve",
        &json!({"patch": [{"op": "test", "path": "/failed", "value": 0}]}),
    );
    assert_eq!(status, 422);
    let (status, _) = server.decide(&id, "approve", &json!({"patch": {"op": "remove"}}));
    assert_eq!(status, 422);
    let (status, _) = server.call(
        "POST",
        &format!("/api/runs/{id}/gates/nope/approve"),
        Some(OPERATOR),
        Some(&json!({})),
    );
    assert_eq!(status, 404);
    let (status, _) = server.call(
        "POST",
        "/api/runs/00000000-0000-0000-0000-000000000000/gates/gate/approve",
        Some(OPERATOR),
        Some(&json!({})),
    );
    assert_eq!(status, 404);
    assert_eq!(server.run(&id)["gate_decisions"], json!([]));

    // Reject with a patch: the test step runs again and the gate waits again.
    let (status, body) = server.decide(
        &id,
        "reject",
        &json!({"comment": "rerun", "patch": [{"op": "remove", "path": "/failures/2"}]}),
    );
    assert_eq!(status, 200, "{body}");
    // No immediate "second decision" here: the re-run may already have reached the gate
    // again, where a new decision is legitimate. Second decisions on a decided gate are
    // checked after the approval below and by the 20-concurrent-approvals test.
    let run = server.waiting(&id);
    assert_eq!(*qa.test_runs.lock().unwrap(), 2);
    let passes: Vec<u64> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step_id"] == "test" || s["id"] == "test")
        .filter_map(|s| s["execution"].as_u64())
        .collect();
    assert_eq!(passes, [0, 1], "{run}");

    // Approve with a patch removing one failure: the bug service gets the other two.
    let (status, body) =
        server.decide(&id, "approve", &json!({"patch": [{"op": "remove", "path": "/failures/1"}]}));
    assert_eq!(status, 200, "{body}");
    let run = server.finished(&id);
    assert_eq!(run["status"], "succeeded", "{run}");
    let reports = qa.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(ids(&reports[0]["failures"]), ["a", "c"]);
    let decisions = run["gate_decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(
        (decisions[0]["decision"].as_str(), decisions[0]["by"].as_str()),
        (Some("reject"), Some("ci"))
    );
    assert_eq!(decisions[1]["decision"], "approve");
    // A decision on a finished run is a conflict.
    let (status, _) = server.decide(&id, "approve", &json!({}));
    assert_eq!(status, 409);
    server.terminate();
}

fn restart_while_waiting(hard: bool) {
    let qa = qa_service();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &qa);
    let server = Server::start(dir.path());
    let id = server.start_run("review");
    server.waiting(&id);
    if hard {
        server.kill()
    } else {
        server.terminate()
    }
    let server = Server::start(dir.path());
    let run = server.run(&id);
    assert_eq!(run["status"], "waiting", "{run}");
    let (status, body) = server.decide(&id, "approve", &json!({"comment": "after restart"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.finished(&id)["status"], "succeeded");
    assert_eq!(ids(&qa.reports.lock().unwrap()[0]["failures"]), ["a", "b", "c"]);
}

#[test]
fn a_waiting_run_is_approvable_after_sigterm() {
    restart_while_waiting(false);
}

#[test]
fn a_waiting_run_is_approvable_after_kill_9() {
    restart_while_waiting(true);
}

#[test]
fn a_deadline_that_passes_while_the_server_is_down_is_decided_at_start() {
    let qa = qa_service();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &qa);
    let server = Server::start(dir.path());
    let id = server.start_run("timed");
    let run = server.waiting(&id);
    let deadline = run["pending_gates"][0]["deadline"].as_str().unwrap().to_owned();
    server.kill();
    // Wait out the 2 s deadline while no server runs.
    std::thread::sleep(Duration::from_millis(2500));
    let server = Server::start(dir.path());
    let run = server.finished(&id);
    assert_eq!(run["status"], "succeeded", "{run}");
    let decision = &run["gate_decisions"][0];
    assert_eq!(
        (decision["decision"].as_str(), decision["by"].as_str()),
        (Some("timeout_approve"), Some("timeout"))
    );
    assert!(decision["comment"].as_str().unwrap().contains(&deadline), "{decision}");
    let (_, events) = server.call("GET", &format!("/api/runs/{id}/events"), None, None);
    assert!(events.to_string().contains("gate.expired"), "{events}");
}

#[test]
fn of_twenty_concurrent_approvals_one_gets_200_and_nineteen_409() {
    let qa = qa_service();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &qa);
    let server = Arc::new(Server::start(dir.path()));
    let id = server.start_run("review");
    server.waiting(&id);
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (server, id) = (server.clone(), id.clone());
            std::thread::spawn(move || {
                server
                    .decide(
                        &id,
                        "approve",
                        &json!({"patch": [{"op": "remove", "path": "/failures/0"}]}),
                    )
                    .0
            })
        })
        .collect();
    let mut statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    assert_eq!(server.finished(&id)["status"], "succeeded");
    assert_eq!(ids(&qa.reports.lock().unwrap()[0]["failures"]), ["b", "c"]);
    assert_eq!(server.run(&id)["gate_decisions"].as_array().unwrap().len(), 1);
}
