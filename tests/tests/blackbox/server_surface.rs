//! The HTTP surface of the live server (SPEC sections 8 and 9): bodies read only after
//! the credentials and within 10 s, chunked bodies over the limit, `HEAD`, the bare
//! base path, CORS, cached service checks, and SSE streams closed at SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aegis_tests::{Request, Response, Server, Sse, signal, write_config};

use crate::support::{Mock, assert_error, assert_up, workflows};

const OPERATOR: &str = "operator-key-0123456789abcdef";
const VIEWER: &str = "viewer-key-0123456789abcdef";

fn auth_yaml() -> String {
    format!(
        "auth:\n  keys:\n    - {{id: ci, key: {OPERATOR}, role: operator}}\n    - {{id: dash, key: {VIEWER}, role: viewer}}\n"
    )
}

fn start(mock: &Mock, extra: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("{extra}\n{}", workflows(mock)));
    let server = Server::start(dir.path());
    (dir, server)
}

/// Writes `head` (without the blank line) and `body` as given, then reads until the
/// server closes the connection or `wait` passes. Returns the bytes and whether the
/// server closed the connection.
fn raw_exchange(port: u16, head: &str, body: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(format!("{head}\r\n\r\n").as_bytes()).unwrap();
    // The server may answer and close before taking everything.
    let _ = stream.write_all(body);
    let deadline = Instant::now() + wait;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (raw, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (raw, true),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (raw, true),
            Err(_) => return (raw, false),
        }
    }
}

/// Parses an answer read by [`raw_exchange`] (a `Content-Length` body).
fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.as_bytes().to_vec() }
}

fn approve_head(port: u16, key: Option<&str>, framing: &str) -> String {
    let mut head = format!(
        "POST /api/runs/no-such-run/gates/review/approve HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{framing}"
    );
    if let Some(key) = key {
        head.push_str(&format!("\r\nX-API-Key: {key}"));
    }
    head
}

#[test]
fn credentials_come_before_the_body_which_must_arrive_within_10_s() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = start(&mock, &auth_yaml());
    // A body that never completes: the server answers 401/403 without waiting for it
    // and closes the connection, so a slow client holds nothing.
    for (key, status, code) in [(None, 401, "unauthorized"), (Some(VIEWER), 403, "forbidden")] {
        let head = approve_head(server.port(), key, "Content-Length: 100000");
        let (raw, closed) = raw_exchange(server.port(), &head, b"{\"comm", Duration::from_secs(30));
        assert!(closed, "the server waited for the body of a refused request: {raw:?}");
        assert_error(&parse(&raw), status, code);
    }
    // An operator's body that stops arriving gets a JSON 408 after 10 s.
    let head = approve_head(server.port(), Some(OPERATOR), "Content-Length: 100000");
    let (raw, closed) = raw_exchange(server.port(), &head, b"{\"comm", Duration::from_secs(60));
    assert!(closed, "no answer to a stalled body: {raw:?}");
    assert_error(&parse(&raw), 408, "request_timeout");
    assert_up(&server);
}

#[test]
fn a_chunked_body_over_the_limit_is_the_json_413() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) =
        start(&mock, &format!("server: {{max_body_bytes: 4096}}\n{}", auth_yaml()));
    let head = approve_head(server.port(), Some(OPERATOR), "Transfer-Encoding: chunked");
    let mut body = Vec::new();
    for _ in 0..8 {
        body.extend_from_slice(format!("400\r\n{}\r\n", "x".repeat(1024)).as_bytes());
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (raw, closed) = raw_exchange(server.port(), &head, &body, Duration::from_secs(60));
    assert!(closed, "{raw:?}");
    assert_error(&parse(&raw), 413, "payload_too_large");
    assert_up(&server);
}

#[test]
fn head_answers_every_get_and_the_bare_base_path_redirects() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("server: {{base_path: /aegis}}\n{}", workflows(&mock)));
    let server = Server::spawn(dir.path(), aegis_tests::free_port(), &[], &[]);
    // `Server::start` probes `/health/ready`, which moved under the base path.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !aegis_tests::try_send(server.port(), &Request::get("/aegis/health/ready"))
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "not ready:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    for path in ["/aegis/health/live", "/aegis/healthz", "/aegis/health", "/aegis/api/runs"] {
        let response = server.send(&Request::new("HEAD", path));
        assert_eq!(response.status, 200, "HEAD {path}: {}", response.text());
        assert!(response.body.is_empty(), "HEAD {path} sent a body");
        assert!(response.header("x-request-id").is_some(), "{response:?}");
    }
    let response = server.get("/aegis");
    assert_eq!(response.status, 308, "{}", response.text());
    assert_eq!(response.header("location"), Some("/aegis/"));
    let response = server.get("/aegis?tab=runs");
    assert_eq!(response.header("location"), Some("/aegis/?tab=runs"));
    assert_eq!(server.get("/aegis/").status, 200);
    // Still only under the base path.
    assert_eq!(server.get("/aegisx").status, 404);
    assert_eq!(server.get("/health").status, 404);
}

fn allow_origin(response: &Response) -> Option<&str> {
    response.header("access-control-allow-origin")
}

#[test]
fn cors_answers_listed_origins_only() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = start(
        &mock,
        &format!("server: {{cors_origins: [\"https://dash.example\"]}}\n{}", auth_yaml()),
    );
    let listed = "https://dash.example";
    for request in [
        Request::get("/health"),
        Request::get("/api/runs"),
        // Refusals carry the headers too, so the browser shows the 401 to the page.
        Request::post("/api/workflows/quick/run"),
    ] {
        let response = server.send(&request.clone().header("Origin", listed));
        assert_eq!(allow_origin(&response), Some(listed), "{} {}", request.method, request.target);
        assert!(
            response.headers.iter().any(|(k, v)| k == "vary" && v.contains("Origin")),
            "{response:?}"
        );
    }
    let preflight = server.send(
        &Request::new("OPTIONS", "/api/workflows/quick/run")
            .header("Origin", listed)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "x-api-key, content-type"),
    );
    assert_eq!(preflight.status, 204, "{}", preflight.text());
    assert_eq!(allow_origin(&preflight), Some(listed));
    let methods = preflight.header("access-control-allow-methods").unwrap_or_default();
    for method in ["GET", "POST"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = preflight.header("access-control-allow-headers").unwrap_or_default();
    for header in ["X-API-Key", "Authorization", "Content-Type", "Last-Event-ID"] {
        assert!(headers.contains(header), "{headers}");
    }
    // Another origin gets no CORS header at all, and no preflight.
    let other = "https://evil.example";
    let response = server.send(&Request::get("/health").header("Origin", other));
    assert_eq!(response.status, 200);
    assert!(
        !response.headers.iter().any(|(k, _)| k.starts_with("access-control-")),
        "{response:?}"
    );
    let preflight = server.send(
        &Request::new("OPTIONS", "/api/workflows/quick/run")
            .header("Origin", other)
            .header("Access-Control-Request-Method", "POST"),
    );
    assert_ne!(preflight.status, 204);
    assert_eq!(allow_origin(&preflight), None);
    // Without an Origin, nothing changes.
    assert_eq!(allow_origin(&server.get("/health")), None);
}

#[test]
fn cors_star_allows_any_origin() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = start(&mock, "server: {cors_origins: [\"*\"]}");
    let origin = "http://localhost:5173";
    let response = server.send(&Request::get("/api/workflows").header("Origin", origin));
    assert_eq!(allow_origin(&response), Some(origin));
    let preflight = server.send(
        &Request::new("OPTIONS", "/api/events/stream")
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "last-event-id"),
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(allow_origin(&preflight), Some(origin));
}

#[test]
fn cors_is_off_without_origins() {
    let mock = Mock::start(Duration::ZERO);
    let (_dir, server) = start(&mock, "");
    let response = server.send(&Request::get("/health").header("Origin", "https://dash.example"));
    assert_eq!(allow_origin(&response), None);
}

#[test]
fn service_lists_answer_from_shared_checks_at_most_2_s_old_and_the_single_check_is_live() {
    // The health endpoint answers slowly, so the concurrent reads overlap one check.
    let mock = Mock::start(Duration::ZERO);
    mock.set_health_delay(Duration::from_millis(300));
    let (_dir, server) = start(&mock, "");
    let port = server.port();
    let before = mock.health_checks();
    let started = Instant::now();
    let readers: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 4 == 0 { "/health/status" } else { "/api/services" };
                aegis_tests::try_send(port, &Request::get(path)).unwrap()
            })
        })
        .collect();
    for reader in readers {
        let response = reader.join().unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(response.text().contains("healthy"), "{}", response.text());
    }
    let elapsed = started.elapsed();
    let checks = mock.health_checks() - before;
    // One check per 2 s window at most, whatever the number of readers.
    let allowed = 1 + elapsed.as_secs() as usize / 2;
    assert!(
        (1..=allowed).contains(&checks),
        "{checks} health checks for 20 reads in {elapsed:?} (allowed {allowed})"
    );
    // A cache older than 2 s is not used.
    std::thread::sleep(Duration::from_millis(2100));
    let before = mock.health_checks();
    assert_eq!(server.get("/api/services").status, 200);
    assert_eq!(mock.health_checks() - before, 1, "a stale cache was served");
    // The one-service check stays live: each call checks.
    let before = mock.health_checks();
    for _ in 0..3 {
        let response = server.get("/api/services/qa/health");
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["status"], "healthy");
    }
    assert_eq!(mock.health_checks() - before, 3);
}

#[test]
fn sigterm_closes_open_sse_streams_at_once_and_exits_within_the_grace() {
    let mock = Mock::start(Duration::ZERO);
    // A long grace: without closing the streams, the server would wait all of it.
    let (_dir, mut server) = start(&mock, "server: {shutdown_grace: 30}");
    let mut global = Sse::open(server.port(), "/api/events/stream", &[]);
    assert_eq!(global.status, 200);
    let run = crate::support::start_run(&server, "gated");
    crate::support::wait_for_run(&server, &run, |r| r["status"] == "waiting");
    let mut run_stream = Sse::open(server.port(), &format!("/api/runs/{run}/events/stream"), &[]);
    assert_eq!(run_stream.status, 200);
    let signalled = Instant::now();
    signal(server.pid(), "TERM");
    // Heartbeats arrive every 5 s; the streams must end well before the grace does.
    let bound = Duration::from_secs(15);
    for stream in [&mut global, &mut run_stream] {
        while stream.next_frame(bound.saturating_sub(signalled.elapsed())).is_some() {}
    }
    let ended = signalled.elapsed();
    assert!(ended < bound, "the SSE streams were still open {ended:?} after SIGTERM");
    assert_eq!(server.wait_exit(), Some(0), "{}", server.stderr());
    let exited = signalled.elapsed();
    assert!(exited < Duration::from_secs(32), "shutdown took {exited:?}, over grace + 2 s");
}

#[test]
fn request_lines_are_json_with_their_fields_when_asked_and_all_are_written_by_exit() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &workflows(&mock));
    let server = Server::start_with(dir.path(), &[], &[("AEGIS_LOG_FORMAT", "json")]);
    for n in 0..50 {
        let id = format!("json-line-{n}");
        let response = server.send(&Request::get("/health").header("X-Request-ID", &id));
        assert_eq!(response.status, 200);
    }
    let log_path = server.stderr_path().to_path_buf();
    assert_eq!(server.terminate(), Some(0));
    let text = std::fs::read_to_string(log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    for n in 0..50 {
        let id = format!("json-line-{n}");
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no request line for {id}:\n{text}"));
        assert_eq!(line["target"], "aegis::request");
        assert_eq!(line["level"], "info");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/health");
        assert_eq!(line["status"], 200);
        assert!(line["duration_ms"].is_number(), "{line}");
    }
    assert!(lines.iter().any(|l| l["message"] == "aegis-server stopped"), "{text}");
}
