//! Every endpoint of SPEC section 8 that exists, against the real `aegis-server` with a
//! real SQLite file and a local mock QA service: the statuses each can answer, the auth
//! matrix, request ids carried into events, and server-sent events (resume without gap
//! or repeat, heartbeat, no proxy buffering).

use std::collections::BTreeSet;
use std::time::Duration;

use aegis_tests::{Request, Server, Sse, write_config};
use serde_json::Value;

use crate::support::{Mock, assert_error, assert_up, finished, start_run, wait_for_run, workflows};

fn server(mock: &Mock, extra: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("{extra}\n{}", workflows(mock)));
    let server = Server::start(dir.path());
    (dir, server)
}

#[test]
fn reads_answer_200_with_json_and_a_request_id() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = server(&mock, "");

    let health = server.get("/health");
    assert_eq!(health.status, 200);
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["services_configured"], 1);
    assert_eq!(body["workflows_configured"], 4);
    assert!(body["version"].as_str().is_some() && body["uptime_seconds"].is_u64(), "{body}");

    let run = server.post("/api/workflows/quick/run?wait=true");
    assert_eq!(run.status, 200, "{}", run.text());
    let id = run.json()["id"].as_str().unwrap().to_owned();

    for path in [
        "/health/live".to_owned(),
        "/healthz".to_owned(),
        "/health/ready".to_owned(),
        "/health/status".to_owned(),
        "/api/openapi.json".to_owned(),
        "/api/workflows".to_owned(),
        "/api/workflows/quick".to_owned(),
        "/api/workflows/quick/history".to_owned(),
        "/api/runs".to_owned(),
        "/api/runs?workflow=quick&status=succeeded&limit=5".to_owned(),
        format!("/api/runs/{id}"),
        format!("/api/runs/{id}/events"),
        format!("/api/runs/{id}/events?after=1"),
        format!("/api/runs/{id}/artifacts"),
        "/api/events".to_owned(),
        "/api/events?limit=3&event_type=step.completed".to_owned(),
        "/api/history?limit=10".to_owned(),
        "/api/portfolio".to_owned(),
        "/api/services".to_owned(),
        "/api/services/qa/health".to_owned(),
    ] {
        let response = server.get(&path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert!(response.header("x-request-id").is_some(), "{path}");
        response.json();
    }
    let root = server.get("/");
    assert_eq!(root.status, 200);

    let services = server.get("/api/services").json();
    assert_eq!(services["services"][0]["status"], "healthy", "{services}");
    let portfolio = server.get("/api/portfolio").json();
    assert_eq!(portfolio["name"], "Blackbox", "{portfolio}");
    assert_eq!(portfolio["version"], "9.9.9", "{portfolio}");
    let history = server.get("/api/history?limit=10").json();
    assert_eq!(history["runs"][0]["id"], id.as_str(), "{history}");
    assert_eq!(history["next_cursor"], Value::Null, "{history}");
    let detail = server.get(&format!("/api/runs/{id}")).json();
    assert_eq!(detail["steps"][0]["id"], "ping", "{detail}");
}

#[test]
fn a_service_that_is_down_is_still_a_200_with_its_status() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let down = aegis_tests::free_port();
    let yaml = workflows(&mock).replace(
        "services:\n",
        &format!("services:\n  gone: {{url: \"http://127.0.0.1:{down}\"}}\n"),
    );
    write_config(dir.path(), &yaml);
    let server = Server::start(dir.path());
    let response = server.get("/api/services/gone/health");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["status"], "unreachable", "{}", response.text());
    let status = server.get("/health/status");
    assert_eq!(status.status, 200);
    assert!(status.text().contains("unreachable"), "{}", status.text());
}

#[test]
fn starting_waiting_and_cancelling_runs() {
    let mock = Mock::start(Duration::from_secs(600));
    let (_dir, server) = server(&mock, "");

    let accepted = server.post("/api/workflows/quick/run");
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let body = accepted.json();
    let id = body["run_id"].as_str().unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["links"]["self"], format!("/api/runs/{id}"));
    assert_eq!(body["links"]["stream"], format!("/api/runs/{id}/events/stream"));
    let run = wait_for_run(&server, id, |r| finished(&r["status"]));
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "api");

    let done = server.post("/api/workflows/quick/run?wait=true");
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["status"], "succeeded");

    let gated = server.post("/api/workflows/gated/run?wait=true");
    assert_eq!(gated.status, 202, "{}", gated.text());
    let gated = gated.json();
    assert_eq!(gated["status"], "waiting", "{gated}");
    let gated_id = gated["id"].as_str().unwrap();
    // A run waiting at a gate is cancelled too; then there is nothing left to cancel.
    let cancel = server.post(&format!("/api/runs/{gated_id}/cancel"));
    assert_eq!(cancel.status, 202, "{}", cancel.text());
    let run = wait_for_run(&server, gated_id, |r| finished(&r["status"]));
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_error(&server.post(&format!("/api/runs/{gated_id}/cancel")), 409, "conflict");

    let slow = start_run(&server, "slow");
    wait_for_run(&server, &slow, |r| r["status"] == "running");
    let cancel = server.post(&format!("/api/runs/{slow}/cancel"));
    assert_eq!(cancel.status, 202, "{}", cancel.text());
    let run = wait_for_run(&server, &slow, |r| finished(&r["status"]));
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_error(&server.post(&format!("/api/runs/{slow}/cancel")), 409, "conflict");
    assert_error(&server.post("/api/runs/no-such-run/cancel"), 404, "not_found");
    assert_error(&server.post("/api/workflows/nope/run"), 404, "not_found");
    assert_error(&server.post("/api/workflows/quick/run?wait=perhaps"), 400, "bad_request");
}

#[test]
fn a_full_queue_is_429() {
    let mock = Mock::start(Duration::from_secs(600));
    let (_dir, server) = server(&mock, "server: {max_concurrent_runs: 1, max_queued_runs: 1}");
    let first = start_run(&server, "slow");
    wait_for_run(&server, &first, |r| r["status"] == "running");
    start_run(&server, "slow");
    let full = server.post("/api/workflows/slow/run");
    assert_error(&full, 429, "queue_full");
    assert_up(&server);
}

#[test]
fn unknown_ids_are_404_whatever_their_format() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = server(&mock, "");
    for path in [
        "/api/runs/0190aaaa-0000-7000-8000-000000000000",
        "/api/runs/01HZZZZZZZZZZZZZZZZZZZZZZZ",
        "/api/runs/x",
        "/api/runs/x/events",
        "/api/runs/x/events/stream",
        "/api/runs/x/artifacts",
        "/api/runs/x/artifacts/report.json",
        "/api/workflows/nope",
        "/api/workflows/nope/history",
        "/api/services/nope/health",
        "/api/nothing",
        "/nothing/at/all",
    ] {
        assert_error(&server.get(path), 404, "not_found");
    }
}

#[test]
fn wrong_methods_are_405_with_a_json_body() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = server(&mock, "");
    for (method, path) in [
        ("POST", "/health"),
        ("DELETE", "/api/runs"),
        ("PUT", "/api/workflows/quick"),
        ("GET", "/api/workflows/quick/run"),
        ("GET", "/api/runs/x/cancel"),
        ("PATCH", "/api/openapi.json"),
        ("POST", "/api/events/stream"),
    ] {
        let response = server.send(&Request::new(method, path));
        assert_error(&response, 405, "method_not_allowed");
    }
    assert_up(&server);
}

// --- Auth ----------------------------------------------------------------------------

const VIEWER: &str = "viewer-key-0123456789abcdef";
const OPERATOR: &str = "operator-key-0123456789abcdef";
const ADMIN: &str = "admin-key-0123456789abcdef";

fn auth_yaml(protect_reads: bool) -> String {
    format!(
        "auth:\n  protect_reads: {protect_reads}\n  keys:\n    - {{id: v, key: {VIEWER}, role: viewer}}\n    - {{id: o, key: {OPERATOR}, role: operator}}\n    - {{id: a, key: {ADMIN}, role: admin}}\n"
    )
}

/// Sends `request` with `key` presented in `form` (`none`, `x-api-key`, `bearer`).
fn with_key(request: Request, key: &str, form: &str) -> Request {
    match form {
        "x-api-key" => request.header("X-API-Key", key),
        "bearer" => request.header("Authorization", &format!("Bearer {key}")),
        _ => request,
    }
}

#[test]
fn the_auth_matrix_with_and_without_protected_reads() {
    let mock = Mock::start(Duration::ZERO);
    for protect_reads in [false, true] {
        let (_dir, server) = server(&mock, &auth_yaml(protect_reads));
        let cases: [(&str, &str); 5] = [
            ("none", ""),
            ("wrong", "not-a-key"),
            ("viewer", VIEWER),
            ("operator", OPERATOR),
            ("admin", ADMIN),
        ];
        for (who, key) in cases {
            let forms: &[&str] = if who == "none" { &["none"] } else { &["x-api-key", "bearer"] };
            for form in forms {
                let read = server.send(&with_key(Request::get("/api/runs"), key, form));
                let expected_read = match who {
                    "none" if protect_reads => 401,
                    "wrong" => 401,
                    _ => 200,
                };
                assert_eq!(
                    read.status,
                    expected_read,
                    "read as {who} ({form}), protect_reads {protect_reads}: {}",
                    read.text()
                );
                let write =
                    server.send(&with_key(Request::post("/api/workflows/quick/run"), key, form));
                let expected_write = match who {
                    "none" | "wrong" => 401,
                    "viewer" => 403,
                    _ => 202,
                };
                assert_eq!(
                    write.status,
                    expected_write,
                    "start as {who} ({form}), protect_reads {protect_reads}: {}",
                    write.text()
                );
                match expected_write {
                    401 => {
                        assert_error(&write, 401, "unauthorized");
                        assert_eq!(write.header("www-authenticate"), Some("Bearer"));
                    }
                    403 => assert_error(&write, 403, "forbidden"),
                    _ => {}
                }
                // Neither the answer nor the log ever shows a key.
                assert!(!write.text().contains(key) || key.is_empty(), "{}", write.text());
            }
        }
        // Public endpoints stay public.
        for path in ["/health", "/health/live", "/healthz", "/health/ready", "/api/openapi.json"] {
            assert_eq!(server.get(path).status, 200, "{path}");
        }
        let stream = Sse::open(server.port(), "/api/events/stream", &[]);
        assert_eq!(stream.status, if protect_reads { 401 } else { 200 });
        for key in [VIEWER, OPERATOR, ADMIN] {
            assert!(!server.stderr().contains(key), "a key reached the log");
        }
    }
}

// --- Request ids -----------------------------------------------------------------------

#[test]
fn the_request_id_is_echoed_and_carried_by_the_events_it_causes() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = server(&mock, "");
    let generated = server.get("/health");
    let generated = generated.header("x-request-id").unwrap();
    assert!(!generated.is_empty());

    let response = server.send(
        &Request::post("/api/workflows/quick/run?wait=true").header("X-Request-ID", "bb-req-42"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-request-id"), Some("bb-req-42"));
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let events = server.get(&format!("/api/runs/{id}/events")).json();
    let events = events["events"].as_array().unwrap();
    assert!(events.len() >= 3, "{events:?}");
    for event in events {
        assert_eq!(event["request_id"], "bb-req-42", "{event}");
        assert_eq!(event["run_id"], id.as_str());
        assert_eq!(event["schema_version"], "1.0");
    }
    // A request id with control characters is replaced, not echoed.
    let odd = server.send(&Request::get("/health").header("X-Request-ID", "a b"));
    assert_ne!(odd.header("x-request-id"), Some("a b"));
    assert!(server.stderr_comes_to_contain("bb-req-42"), "the request line is logged with its id");
}

// --- Server-sent events ----------------------------------------------------------------

/// `(seq, type)` of a data frame, `None` for a comment.
fn parse_frame(frame: &str) -> Option<(u64, String, Value)> {
    let mut id = None;
    let mut data = None;
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str::<Value>(v).unwrap());
        }
    }
    let data = data?;
    let seq = data["seq"].as_u64().unwrap();
    assert_eq!(id.as_deref(), Some(seq.to_string().as_str()), "`id:` is the seq: {frame}");
    Some((seq, data["type"].as_str().unwrap().to_owned(), data))
}

const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_run_stream_resumes_with_last_event_id_without_gap_or_repeat() {
    // Step `two` takes a few seconds, long enough to drop the stream in the middle.
    let mock = Mock::start(Duration::from_secs(3));
    let (_dir, server) = server(&mock, "");
    let id = start_run(&server, "steps");
    let path = format!("/api/runs/{id}/events/stream");

    let mut first = Sse::open(server.port(), &path, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-accel-buffering"), Some("no"));
    assert!(first.header("content-type").is_some_and(|t| t.starts_with("text/event-stream")));
    let mut seen = Vec::new();
    while let Some(frame) = first.next_frame(FRAME_TIMEOUT) {
        let Some((seq, kind, data)) = parse_frame(&frame) else { continue };
        seen.push(seq);
        if kind == "step.started" && data["data"]["step_id"] == "two" {
            break;
        }
    }
    drop(first);
    let last = *seen.last().unwrap();
    assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "the first stream is in order");

    // Resume, typically while step `two` still runs, and follow the run to its end.
    let mut resumed = Sse::open(server.port(), &path, &[("Last-Event-ID", &last.to_string())]);
    assert_eq!(resumed.status, 200);
    let mut rest = Vec::new();
    let mut kinds = Vec::new();
    while let Some(frame) = resumed.next_frame(FRAME_TIMEOUT) {
        let Some((seq, kind, _)) = parse_frame(&frame) else { continue };
        rest.push(seq);
        kinds.push(kind);
    }
    let end = *rest.last().unwrap();
    assert_eq!(rest, (last + 1..=end).collect::<Vec<_>>(), "no gap, no repeat");
    assert_eq!(kinds.last().map(String::as_str), Some("workflow.completed"), "{kinds:?}");
    let run = wait_for_run(&server, &id, |r| finished(&r["status"]));
    assert_eq!(run["status"], "succeeded", "{run}");
    let polled = server.get(&format!("/api/runs/{id}/events")).json();
    assert_eq!(polled["last_seq"], end, "the stream and the log agree");
}

#[test]
fn a_stream_waiting_at_a_gate_sends_a_heartbeat_and_resumes_mid_backlog() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = server(&mock, "");
    let waiting = server.post("/api/workflows/gated/run?wait=true");
    assert_eq!(waiting.status, 202, "{}", waiting.text());
    let id = waiting.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/runs/{id}/events/stream");

    let mut stream = Sse::open(server.port(), &path, &[]);
    let mut seqs = Vec::new();
    let mut kinds = BTreeSet::new();
    // The backlog, up to `gate.waiting`; then only heartbeats, as the run waits.
    loop {
        let frame = stream.next_frame(FRAME_TIMEOUT).expect("the stream stays open at a gate");
        let Some((seq, kind, _)) = parse_frame(&frame) else { continue };
        seqs.push(seq);
        kinds.insert(kind.clone());
        if kind == "gate.waiting" {
            break;
        }
    }
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(kinds.contains("step.completed"), "{kinds:?}");
    // The heartbeat comes every 5 s; 20 s is a generous bound on a busy machine.
    let frame = stream.next_frame(Duration::from_secs(20)).expect("a heartbeat while waiting");
    assert_eq!(frame, ": heartbeat");

    // Resuming from the middle of the backlog replays exactly the rest.
    let middle = seqs[seqs.len() / 2];
    let mut resumed = Sse::open(server.port(), &path, &[("Last-Event-ID", &middle.to_string())]);
    let mut rest = Vec::new();
    while rest.last() != seqs.last() {
        let frame = resumed.next_frame(FRAME_TIMEOUT).expect("the rest of the backlog");
        if let Some((seq, _, _)) = parse_frame(&frame) {
            rest.push(seq);
        }
    }
    assert_eq!(rest, seqs[seqs.len() / 2 + 1..].to_vec());
    // `?after=` does the same for clients that cannot set headers.
    let mut after = Sse::open(server.port(), &format!("{path}?after={middle}"), &[]);
    let frame = after.next_frame(FRAME_TIMEOUT).unwrap();
    assert_eq!(parse_frame(&frame).unwrap().0, middle + 1);
    // A Last-Event-ID that is not a seq is a 400, not a stream.
    let bad = Sse::open(server.port(), &path, &[("Last-Event-ID", "abc")]);
    assert_eq!(bad.status, 400);
}

#[test]
fn the_global_stream_carries_every_runs_events() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = server(&mock, "");
    let mut stream = Sse::open(server.port(), "/api/events/stream", &[]);
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    let id = start_run(&server, "quick");
    loop {
        let frame = stream.next_frame(FRAME_TIMEOUT).expect("events of the run");
        if frame.starts_with(':') {
            continue;
        }
        let id_line = frame.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_owned();
        assert!(id_line.starts_with(&format!("{id}/")), "{frame}");
        if frame.contains("\"type\":\"workflow.completed\"") {
            break;
        }
    }
}
