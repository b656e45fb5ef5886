//! Hostile input against the real server (SPEC section 8, "Limits on what comes in"):
//! deeply nested and amplifying JSON Patches, downstream responses too deep or too
//! large to store, and redirects that would carry a service's key to another origin.
//! Each time the server answers with a message, stays up, keeps its memory bounded
//! and restarts cleanly.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use aegis_tests::{Received, Request, Server, read_request, write_config};
use serde_json::{Value, json};

use crate::support::{assert_error, assert_up, finished, wait_for_run};

/// What a local service answers on one path.
#[derive(Clone)]
enum Answer {
    /// 200 with this JSON text and its `Content-Length`.
    Json(String),
    /// 200 with `len` bytes of a JSON string, no `Content-Length`, then close.
    Endless(usize),
    /// 302 to this `Location`.
    Redirect(String),
}

/// A local HTTP service answering from a table of paths, keeping every request.
struct Service {
    url: String,
    routes: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Service {
    fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (table, log) = (routes.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (table, log) = (table.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &table, &log));
            }
        });
        Service { url: format!("http://127.0.0.1:{port}"), routes, seen }
    }

    fn route(&self, path: &str, answer: Answer) {
        self.routes.lock().unwrap().insert(path.to_owned(), answer);
    }

    fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut stream: TcpStream,
    table: &Mutex<HashMap<String, Answer>>,
    log: &Mutex<Vec<Received>>,
) {
    let Some(request) = read_request(&stream) else { return };
    let answer = table.lock().unwrap().get(&request.path).cloned();
    log.lock().unwrap().push(request);
    // Write errors only mean the server hung up early, which some tests expect.
    let _ = match answer {
        None => stream.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ),
        Some(Answer::Json(text)) => stream.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            )
            .as_bytes(),
        ),
        Some(Answer::Redirect(location)) => stream.write_all(
            format!(
                "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        ),
        Some(Answer::Endless(len)) => (|| {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n\"",
            )?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                stream.write_all(&chunk)?;
                sent += chunk.len();
            }
            stream.write_all(b"\"")
        })(),
    };
}

/// `[[[ ... 1 ... ]]]`, `depth` levels.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// The peak resident memory of a process, in kB (`VmHWM` in `/proc/<pid>/status`).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn config(dir: &Path, qa: &Service) {
    write_config(
        dir,
        &format!(
            "\
services:
  qa: {{url: \"{url}\", health_endpoint: /health, api_key_env: QA_KEY}}
workflows:
  review:
    steps:
      - {{id: test, type: test, service: qa}}
      - {{id: gate, type: gate, artifact: test, message: review}}
  call:
    steps:
      - {{id: fetch, type: http, service: qa, method: GET, path: /fetch}}
",
            url = qa.url
        ),
    );
}

const QA_KEY: &str = "qa-service-key-5f2d1c9b7e";

fn start(dir: &Path) -> Server {
    Server::start_with(dir, &[], &[("QA_KEY", QA_KEY)])
}

fn decide(server: &Server, id: &str, body: String) -> aegis_tests::Response {
    server.send(
        &Request::post(&format!("/api/runs/{id}/gates/gate/approve"))
            .body("application/json", body),
    )
}

fn waiting_run(server: &Server) -> String {
    let response = server.post("/api/workflows/review/run");
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["run_id"].as_str().unwrap().to_owned();
    wait_for_run(server, &id, |run| run["status"] == "waiting");
    id
}

fn qa_with_failures() -> Service {
    let qa = Service::start();
    qa.route("/health", Answer::Json(r#"{"status":"ok"}"#.to_owned()));
    qa.route(
        "/api/runs",
        Answer::Json(
            json!({"total": 3, "passed": 1, "failed": 2, "failures": [{"id": "a"}, {"id": "b"}]})
                .to_string(),
        ),
    );
    qa
}

#[test]
fn nested_and_deepening_patches_are_refused_and_the_server_restarts() {
    let qa = qa_with_failures();
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), &qa);
    let server = start(dir.path());
    let id = waiting_run(&server);

    // A body nested past 64 levels is refused before it is parsed.
    let deep_value = nested(100);
    let response = decide(
        &server,
        &id,
        format!(r#"{{"patch": [{{"op": "add", "path": "/x", "value": {deep_value}}}]}}"#),
    );
    assert_error(&response, 400, "bad_request");
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("64 levels"));

    // Copying the document into itself adds a level per operation: the operation
    // that would pass 64 levels is refused, and nothing changes.
    let deepening: Vec<Value> =
        (0..1000).map(|_| json!({"op": "copy", "from": "", "path": "/failures"})).collect();
    let response = decide(&server, &id, json!({ "patch": deepening }).to_string());
    assert_error(&response, 422, "unprocessable_entity");
    let message = response.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("deeper than 64 levels"), "{message}");

    // More than 1,000 operations are refused whatever they do.
    let many: Vec<Value> =
        (0..1001).map(|_| json!({"op": "test", "path": "/total", "value": 3})).collect();
    let response = decide(&server, &id, json!({ "patch": many }).to_string());
    assert_error(&response, 422, "unprocessable_entity");
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("1000"));
    assert_up(&server);

    // The run still waits, its data unchanged, and so it is after a restart.
    let run = server.get(&format!("/api/runs/{id}")).json();
    assert_eq!(run["status"], "waiting", "{run}");
    let data = server.get(&format!("/api/runs/{id}/artifacts/test.json")).json();
    assert_eq!(data["failures"], json!([{"id": "a"}, {"id": "b"}]));
    assert_eq!(server.terminate(), Some(0));
    let server = start(dir.path());
    let response = decide(
        &server,
        &id,
        json!({"patch": [{"op": "remove", "path": "/failures/0"}]}).to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["artifact"]["failures"], json!([{"id": "b"}]));
    let run = wait_for_run(&server, &id, |run| finished(&run["status"]));
    assert_eq!(run["status"], "succeeded", "{run}");
}

#[test]
fn copy_amplification_keeps_memory_bounded() {
    let qa = qa_with_failures();
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), &qa);
    let server = start(dir.path());
    let id = waiting_run(&server);

    // Each `copy` of the whole document to a new key doubles it: 20 of them make a
    // 120-byte artifact a 125 MB one (and gigabytes of memory) out of a 775-byte body.
    let ops: Vec<Value> = ('b'..='u')
        .map(|key| json!({"op": "copy", "from": "", "path": format!("/{key}")}))
        .collect();
    let body = json!({ "patch": ops }).to_string();
    assert!(body.len() <= 775, "{} bytes", body.len());
    let before = peak_rss_kb(server.pid());
    let response = decide(&server, &id, body);
    assert_error(&response, 422, "unprocessable_entity");
    let message = response.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("larger than the limit of 1 MiB"), "{message}");
    let growth_mb = peak_rss_kb(server.pid()).saturating_sub(before) / 1024;
    assert!(growth_mb < 64, "the server grew by {growth_mb} MB");
    assert_up(&server);
    assert_eq!(server.get(&format!("/api/runs/{id}")).json()["status"], "waiting");
}

#[test]
fn responses_too_deep_or_too_large_fail_the_step_and_are_not_stored() {
    let qa = qa_with_failures();
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), &qa);
    let server = start(dir.path());

    for (answer, error) in [
        (Answer::Json(nested(100)), "response body nested deeper than 64 levels"),
        (Answer::Endless(17 * 1024 * 1024), "response body larger than 16 MiB"),
    ] {
        qa.route("/fetch", answer);
        let before = peak_rss_kb(server.pid());
        let response = server.post("/api/workflows/call/run");
        assert_eq!(response.status, 202, "{}", response.text());
        let id = response.json()["run_id"].as_str().unwrap().to_owned();
        let run = wait_for_run(&server, &id, |run| finished(&run["status"]));
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["steps"][0]["error"], error, "{run}");
        assert_eq!(run["steps"][0]["data"], Value::Null, "{run}");
        let growth_mb = peak_rss_kb(server.pid()).saturating_sub(before) / 1024;
        assert!(growth_mb < 64, "the server grew by {growth_mb} MB");
    }
    // Everything stored reads back, also after a restart.
    assert_eq!(server.terminate(), Some(0));
    let server = start(dir.path());
    let runs = server.get("/api/runs").json();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");
    for run in runs["runs"].as_array().unwrap() {
        let id = run["id"].as_str().or(run["run_id"].as_str()).unwrap();
        let response = server.get(&format!("/api/runs/{id}"));
        assert_eq!(response.status, 200, "{}", response.text());
    }
}

#[test]
fn redirects_to_another_origin_are_not_followed_and_the_key_stays_home() {
    let qa = qa_with_failures();
    let elsewhere = Service::start();
    elsewhere.route("/steal", Answer::Json("{}".to_owned()));
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), &qa);
    let server = start(dir.path());

    // Another port on the same host is another origin.
    let target = format!("{}/steal", elsewhere.url);
    qa.route("/fetch", Answer::Redirect(target.clone()));
    let response = server.post("/api/workflows/call/run");
    let id = response.json()["run_id"].as_str().unwrap().to_owned();
    let run = wait_for_run(&server, &id, |run| finished(&run["status"]));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        run["steps"][0]["error"],
        format!("redirected to {target} (another origin); not followed"),
        "{run}"
    );

    // Health checks (an anonymous `GET /api/services` starts one) do not follow either.
    qa.route("/health", Answer::Redirect(target.clone()));
    let services = server.get("/api/services").json();
    assert_eq!(services["services"][0]["status"], "unreachable", "{services}");
    assert!(elsewhere.requests().is_empty(), "the other origin was called");

    // A redirect within the service's origin is followed, with the key.
    qa.route("/fetch", Answer::Redirect("/moved".to_owned()));
    qa.route("/moved", Answer::Json(r#"{"moved": true}"#.to_owned()));
    let response = server.post("/api/workflows/call/run");
    let id = response.json()["run_id"].as_str().unwrap().to_owned();
    let run = wait_for_run(&server, &id, |run| finished(&run["status"]));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["data"], json!({"moved": true}));
    let moved = qa.requests().into_iter().find(|r| r.path == "/moved").unwrap();
    assert_eq!(moved.header("x-api-key"), Some(QA_KEY));
    assert_eq!(moved.header("referer"), None);
}

#[test]
fn an_alias_to_a_missing_anchor_is_reported_at_the_alias_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "services:\n  qa:\n    url: http://localhost:1\n    features: *nosuch\n",
    )
    .unwrap();
    let out = aegis_tests::run(
        aegis_tests::aegis_cli(dir.path()).args(["config", "validate", "--config", "bad.yaml"]),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stdout.lines().next(),
        Some(
            "bad.yaml:4:15: error: alias `*nosuch` refers to an anchor `&nosuch` that is not defined before it"
        ),
        "{out:?}"
    );
}
