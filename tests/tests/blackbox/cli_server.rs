//! `aegis-cli` against a server (`--server`, `AEGIS_SERVER`) and its in-process
//! `history`, `runs show` and `events tail`: against a canned local HTTP server, and
//! against the real `aegis-server` binary.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aegis_tests::{Finished, Received as Request, Server, aegis_cli, read_request, run};
use serde_json::{Value, json};

fn write_config(dir: &Path) {
    let yaml = "\
data_dir: ./data
history_db_path: ./history.db
workflows:
  ok:
    steps:
      - { id: one, type: command, argv: [sh, -c, 'exit 0'] }
      - { id: two, type: command, argv: [sh, -c, 'exit 0'] }
  bad:
    steps:
      - { id: boom, type: command, argv: [sh, -c, 'exit 3'], retries: 1, retry_delay: 0.01 }
  gated:
    steps:
      - { id: first, type: command, argv: [sh, -c, 'exit 0'] }
      - { id: review, type: gate, message: 'look' }
      - { id: last, type: command, argv: [sh, -c, 'exit 0'] }
";
    std::fs::write(dir.join(".aegis.yaml"), yaml).unwrap();
}

fn json_of(out: &Finished) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

// --- Without a server -------------------------------------------------------------

#[test]
fn events_tail_without_a_server_exits_2_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    for args in [&["events", "tail"][..], &["events", "tail", "--run", "x"]] {
        let out = run(aegis_cli(dir.path()).args(args));
        assert_eq!(out.code, Some(2), "{out:?}");
        assert_eq!(
            out.stderr.trim_end(),
            "error: `events tail` needs a running server: pass --server URL or set AEGIS_SERVER"
        );
    }
    // An empty AEGIS_SERVER counts as unset.
    let out = run(aegis_cli(dir.path()).env("AEGIS_SERVER", "").args(["events", "tail"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn history_and_runs_show_read_the_local_sqlite_file_of_cli_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let out = run(aegis_cli(dir.path()).arg("history"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "no runs recorded\n");
    assert!(out.stderr.contains("no history store at"), "{out:?}");
    assert!(!dir.path().join("history.db").exists(), "reading must not create the store");

    assert_eq!(run(aegis_cli(dir.path()).args(["run", "ok"])).code, Some(0));
    assert_eq!(run(aegis_cli(dir.path()).args(["run", "bad"])).code, Some(1));

    let out = run(aegis_cli(dir.path()).arg("history"));
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("ID "), "{}", lines[0]);
    assert!(
        lines[0].ends_with("WORKFLOW  STATUS     STARTED              DURATION"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("  bad       failed  "), "{}", lines[1]);
    assert!(lines[2].contains("  ok        succeeded  "), "{}", lines[2]);
    assert!(!out.stdout.contains('\x1b'), "no colour when piped");

    let out = run(aegis_cli(dir.path()).args(["history", "--json", "--workflow", "bad"]));
    let runs = json_of(&out);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["trigger"], "cli");
    let id = runs[0]["id"].as_str().unwrap().to_owned();

    let out = run(aegis_cli(dir.path()).args(["history", "--json", "--limit", "1"]));
    assert_eq!(json_of(&out).as_array().unwrap().len(), 1);

    let out = run(aegis_cli(dir.path()).args(["runs", "show", &id]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with(&format!("run {id}\n  workflow   bad\n  status     failed\n")));
    assert!(out.stdout.contains("  ✗ boom (command) failed in "), "{}", out.stdout);
    assert!(out.stdout.contains("after 2 attempts: command failed with exit code 3"));
    assert!(out.stdout.contains("      attempt 1 ✗ "), "{}", out.stdout);

    let out = run(aegis_cli(dir.path()).args(["runs", "show", &id, "--json"]));
    let detail = json_of(&out);
    assert_eq!(detail["id"], id.as_str());
    assert_eq!(detail["steps"][0]["id"], "boom");
    assert_eq!(detail["steps"][0]["attempts"].as_array().unwrap().len(), 2);
}

#[test]
fn an_unknown_run_id_exits_1_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    assert_eq!(run(aegis_cli(dir.path()).args(["run", "ok"])).code, Some(0));
    let out = run(aegis_cli(dir.path()).args(["runs", "show", "no-such-run"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("error: run `no-such-run` not found: the history store at "),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_memory_history_store_has_no_runs_to_show() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".aegis.yaml"),
        "history_db_path: ':memory:'\nworkflows:\n  w:\n    steps:\n      - { type: command, argv: [sh, -c, 'exit 0'] }\n",
    )
    .unwrap();
    let out = run(aegis_cli(dir.path()).arg("history"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("`:memory:`"), "{out:?}");
    let out = run(aegis_cli(dir.path()).args(["runs", "show", "x"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("`:memory:`"), "{out:?}");
}

#[test]
fn a_malformed_server_url_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["localhost:8000", "ftp://127.0.0.1/", "http://", "::"] {
        let out = run(aegis_cli(dir.path()).args(["--server", bad, "history"]));
        assert_eq!(out.code, Some(2), "{bad}: {out:?}");
        assert!(out.stderr.contains("--server <URL>"), "{out:?}");
        let out = run(aegis_cli(dir.path()).env("AEGIS_SERVER", bad).args(["runs", "show", "x"]));
        assert_eq!(out.code, Some(2), "{bad}: {out:?}");
    }
}

#[test]
fn a_refused_connection_names_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    for args in [&["history"][..], &["runs", "show", "x"], &["status"], &["run", "ok", "--wait"]] {
        let out = run(aegis_cli(dir.path()).args(["--server", &url]).args(args));
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(
            out.stderr.starts_with(&format!("error: cannot connect to the server at {url}/: ")),
            "{out:?}"
        );
        assert!(out.stderr.to_lowercase().contains("refused"), "{out:?}");
    }
}

// --- Against a canned HTTP server --------------------------------------------------

type Handler = dyn Fn(&Request, usize) -> String + Send + Sync;

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering each request with `handler`
/// (given the request and how many requests came before), one connection at a time,
/// closing the connection after each answer.
struct Canned {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Canned {
    fn start(handler: impl Fn(&Request, usize) -> String + Send + Sync + 'static) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let Some(request) = read_request(&stream) else { continue };
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request.clone());
                    seen.len() - 1
                };
                let answer = handler(&request, n);
                let mut stream = stream;
                let _ = stream.write_all(answer.as_bytes());
                let _ = stream.flush();
            }
        });
        Canned { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer_json(status: u16, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn answer_sse(frames: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{frames}"
    )
}

fn event(seq: u64, kind: &str, data: Value) -> String {
    let envelope = json!({
        "schema_version": "1.0", "id": format!("e{seq}"), "seq": seq, "type": kind,
        "time": "2026-01-01T00:00:00Z", "run_id": "r1", "workflow": "w", "request_id": null,
        "data": data,
    });
    format!("id: {seq}\ndata: {envelope}\n\n")
}

fn finished_run(status: &str) -> Value {
    json!({
        "id": "r1", "workflow": "w", "status": status, "trigger": "api",
        "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:00Z",
        "completed_at": "2026-01-01T00:00:01Z", "duration_ms": 1000,
        "error": if status == "failed" { json!("step b failed: boom") } else { Value::Null },
        "request_id": null, "steps": [], "gate_decisions": [], "pending_gates": []
    })
}

/// A server whose run `r1` of workflow `w` streams two steps, dropping the connection
/// after the first, then ends with `status`.
fn run_server(status: &'static str) -> Canned {
    Canned::start(move |req, _| match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/api/workflows/w/run") => answer_json(
            202,
            &json!({"run_id": "r1", "status": "queued", "links": {
                "self": "/api/runs/r1", "events": "/api/runs/r1/events",
                "stream": "/api/runs/r1/events/stream", "cancel": "/api/runs/r1/cancel"}}),
        ),
        ("GET", "/api/runs/r1/events/stream") => match req.header("last-event-id") {
            // The first connection drops in the middle of the third frame.
            None => answer_sse(&format!(
                ": heartbeat\n\n{}{}id: 3\ndata: {{\"cut",
                event(1, "workflow.started", json!({})),
                event(
                    2,
                    "step.completed",
                    json!({"step_id": "a", "success": true, "duration_ms": 5})
                ),
            )),
            Some("2") => answer_sse(&format!(
                "{}{}",
                event(
                    3,
                    "step.completed",
                    json!({"step_id": "b", "success": status == "succeeded", "duration_ms": 7, "error": "boom"})
                ),
                event(4, "workflow.completed", json!({"status": status})),
            )),
            Some(other) => answer_json(
                400,
                &json!({"error": {"code": "bad_request", "message": format!("unexpected Last-Event-ID {other}")}}),
            ),
        },
        ("GET", "/api/runs/r1") => answer_json(200, &finished_run(status)),
        _ => answer_json(
            404,
            &json!({"error": {"code": "not_found", "message": "no such endpoint"}}),
        ),
    })
}

#[test]
fn run_wait_prints_step_lines_from_the_stream_and_resumes_after_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    let server = run_server("succeeded");
    let out =
        run(aegis_cli(dir.path()).env("AEGIS_SERVER", &server.url).args(["run", "w", "--wait"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        "running w (r1)\n  ✓ a (5 ms)\n  ✓ b (7 ms)\nrun r1 succeeded in 1000 ms\n"
    );
    assert!(out.stderr.contains("reconnecting"), "{out:?}");
    let requests = server.requests();
    let streams: Vec<&Request> =
        requests.iter().filter(|r| r.path == "/api/runs/r1/events/stream").collect();
    assert_eq!(streams.len(), 2, "{requests:?}");
    assert_eq!(streams[1].header("last-event-id"), Some("2"));
}

#[test]
fn run_wait_exits_1_when_the_run_fails_and_json_prints_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = run_server("failed");
    let out = run(aegis_cli(dir.path()).args(["--server", &server.url, "run", "w", "--wait"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("  ✗ b (7 ms): boom\n"), "{out:?}");
    assert!(out.stdout.ends_with("run r1 failed in 1000 ms: step b failed: boom\n"), "{out:?}");

    let out =
        run(aegis_cli(dir.path()).args(["--server", &server.url, "run", "w", "--wait", "--json"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(json_of(&out), finished_run("failed"));
}

#[test]
fn run_without_wait_prints_the_run_id_and_sends_the_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = run_server("succeeded");
    let out = run(aegis_cli(dir.path()).env("AEGIS_API_KEY", "s3cret").args([
        "--server",
        &server.url,
        "run",
        "w",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "r1\n");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].header("x-api-key"), Some("s3cret"));
}

#[test]
fn server_errors_show_the_message_and_status_and_auth_errors_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Canned::start(|req, _| match req.header("x-api-key") {
        None => answer_json(
            401,
            &json!({"error": {"code": "unauthorized", "message": "missing API key"}}),
        ),
        Some("viewer") if req.method == "POST" => answer_json(
            403,
            &json!({"error": {"code": "forbidden", "message": "this needs the operator role"}}),
        ),
        Some(_) => answer_json(
            404,
            &json!({"error": {"code": "not_found", "message": "run `nope` not found"}}),
        ),
    });
    let out = run(aegis_cli(dir.path()).args(["--server", &server.url, "history"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines[0], "error: missing API key (HTTP 401)");
    assert!(lines[1].starts_with("hint: ") && lines[1].contains("--api-key"), "{out:?}");

    let out = run(aegis_cli(dir.path()).args([
        "--server",
        &server.url,
        "--api-key",
        "viewer",
        "run",
        "w",
        "--wait",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("error: this needs the operator role (HTTP 403)\nhint: "),
        "{out:?}"
    );

    let out = run(aegis_cli(dir.path()).args([
        "--server",
        &server.url,
        "--api-key",
        "admin",
        "runs",
        "show",
        "nope",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "error: run `nope` not found (HTTP 404)\n");
}

#[test]
fn history_pages_through_next_cursor_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let page = |ids: &[&str], next: Option<&str>| {
        let runs: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"id": id, "workflow": "w", "status": "succeeded", "trigger": "api",
                "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:00Z",
                "completed_at": null, "duration_ms": 1500, "error": null, "request_id": null})
            })
            .collect();
        json!({"runs": runs, "next_cursor": next})
    };
    let server = Canned::start(move |req, _| {
        if req.path.contains("cursor=c1") {
            answer_json(200, &page(&["r3"], None))
        } else {
            answer_json(200, &page(&["r1", "r2"], Some("c1")))
        }
    });
    let out = run(aegis_cli(dir.path()).args([
        "--server",
        &server.url,
        "history",
        "--workflow",
        "w",
        "--limit",
        "5",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        "ID  WORKFLOW  STATUS     STARTED              DURATION\n\
         r1  w         succeeded  2026-01-01 00:00:00  1.5 s\n\
         r2  w         succeeded  2026-01-01 00:00:00  1.5 s\n\
         r3  w         succeeded  2026-01-01 00:00:00  1.5 s\n"
    );
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/runs?workflow=w&limit=5", "/api/runs?workflow=w&limit=3&cursor=c1"]);
}

#[test]
fn events_tail_of_a_run_prints_a_line_per_event_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = run_server("succeeded");
    let out =
        run(aegis_cli(dir.path()).args(["--server", &server.url, "events", "tail", "--run", "r1"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    assert_eq!(lines[0], "2026-01-01 00:00:00  workflow.started    w  r1");
    assert_eq!(
        lines[1],
        "2026-01-01 00:00:00  step.completed      w  r1 step_id=a success=true duration_ms=5"
    );
    assert!(
        lines[3].starts_with("2026-01-01 00:00:00  workflow.completed  w  r1 status=succeeded")
    );

    let out = run(aegis_cli(dir.path()).args([
        "--server",
        &server.url,
        "events",
        "tail",
        "--run",
        "r1",
        "--json",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let seqs: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

// --- Against the real aegis-server -------------------------------------------------

#[test]
fn against_the_real_server_run_wait_history_runs_show_and_events_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let server = Server::start(dir.path());
    let cli =
        |args: &[&str]| run(aegis_cli(dir.path()).args(["--server", &server.url()]).args(args));

    let out = cli(&["run", "ok", "--wait"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("running ok ("), "{out:?}");
    assert!(lines[1].starts_with("  ✓ one ("), "{out:?}");
    assert!(lines[2].starts_with("  ✓ two ("), "{out:?}");
    assert!(lines[3].contains(" succeeded in "), "{out:?}");

    let out = cli(&["run", "bad", "--wait", "--json"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let failed = json_of(&out);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["trigger"], "api");
    let failed_id = failed["id"].as_str().unwrap().to_owned();

    let out = cli(&["run", "gated", "--wait"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("  ⏸ review waits for a decision\n"), "{out:?}");
    assert!(out.stdout.trim_end().ends_with("waiting at gate review"), "{out:?}");

    let out = cli(&["run", "ok"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let queued_id = out.stdout.trim().to_owned();
    let out = cli(&["events", "tail", "--run", &queued_id, "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let types: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("run.queued"), "{types:?}");
    assert_eq!(types.last().map(String::as_str), Some("workflow.completed"), "{types:?}");

    let out = cli(&["history", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(json_of(&out).as_array().unwrap().len(), 4);
    let out = cli(&["history", "--workflow", "bad"]);
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");

    let out = cli(&["runs", "show", &failed_id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("after 2 attempts"), "{out:?}");
    let out = cli(&["runs", "show", "0190aaaa-0000-7000-8000-000000000000"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("(HTTP 404)"), "{out:?}");

    let out = cli(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(json_of(&out), json!([]));
}

#[test]
fn against_the_real_server_with_auth_a_missing_key_exits_1_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let mut yaml = std::fs::read_to_string(dir.path().join(".aegis.yaml")).unwrap();
    yaml.push_str("auth:\n  api_key: k3y-for-tests\n  protect_reads: true\n");
    std::fs::write(dir.path().join(".aegis.yaml"), yaml).unwrap();
    let server = Server::start(dir.path());
    let out = run(aegis_cli(dir.path()).args(["--server", &server.url(), "history"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("(HTTP 401)\nhint: "), "{out:?}");
    let out = run(aegis_cli(dir.path()).env("AEGIS_API_KEY", "k3y-for-tests").args([
        "--server",
        &server.url(),
        "run",
        "ok",
        "--wait",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
}
