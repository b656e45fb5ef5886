//! Bad input against the live server: each kind gets a 4xx with a JSON message, never
//! a 5xx, and the server keeps answering `/health` afterwards.

use std::time::Duration;

use aegis_tests::{Request, Response, Server, write_config};

use crate::support::{Mock, assert_error, assert_up, workflows};

fn server() -> (Mock, tempfile::TempDir, Server) {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("server: {{max_body_bytes: 4096}}\n{}", workflows(&mock)));
    let server = Server::start(dir.path());
    (mock, dir, server)
}

/// Sends `request`, asserts a 4xx JSON error (any code), and that the server is up.
#[track_caller]
fn check_4xx(server: &Server, request: &Request) -> Response {
    let response = server.send(request);
    assert!(
        (400..500).contains(&response.status),
        "{} {:?}: HTTP {} {}",
        request.method,
        request.target,
        response.status,
        response.text()
    );
    assert_error(&response, response.status, response.json()["error"]["code"].as_str().unwrap());
    assert_up(server);
    response
}

#[test]
fn an_oversize_body_is_413() {
    let (_mock, _dir, server) = server();
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(64 * 1024));
    let response = server
        .send(&Request::post("/api/workflows/quick/run").body("application/json", big.clone()));
    assert_error(&response, 413, "payload_too_large");
    assert_up(&server);
    let runs = server.get("/api/runs").json();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "no run for a refused request");
}

#[test]
fn bodies_on_a_bodiless_endpoint_never_fail_the_server() {
    let (_mock, _dir, server) = server();
    for (content_type, body) in [
        ("application/json", "{\"unclosed\": "),
        ("application/json", "\u{0}\u{1}"),
        ("text/plain", "hello"),
        ("application/x-www-form-urlencoded", "a=b"),
    ] {
        let response =
            server.send(&Request::post("/api/workflows/quick/run").body(content_type, body));
        assert!(response.status < 500, "{content_type}: {}", response.text());
        assert_up(&server);
    }
}

#[test]
fn traversal_attempts_in_artifact_names_name_nothing() {
    let (_mock, dir, server) = server();
    let run = server.post("/api/workflows/quick/run?wait=true");
    let id = run.json()["id"].as_str().unwrap().to_owned();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
    for name in [
        "..",
        "..%2F..%2Fsecret.txt",
        "..%2f..%2f..%2fsecret.txt",
        "%2e%2e%2f%2e%2e%2fsecret.txt",
        "..%5C..%5Csecret.txt",
        "%2Fetc%2Fpasswd",
        "events.jsonl%00.txt",
        "....%2F%2Fsecret.txt",
    ] {
        let response =
            check_4xx(&server, &Request::get(&format!("/api/runs/{id}/artifacts/{name}")));
        assert_eq!(response.status, 404, "{name}: {}", response.text());
        assert!(!response.text().contains("top secret"));
    }
    for path in [
        format!("/api/runs/{id}/artifacts/../../../secret.txt"),
        "/api/runs/..%2F..%2Fsecret.txt/artifacts/x".to_owned(),
        "/api/runs/../../history.db".to_owned(),
    ] {
        let response = server.get(&path);
        assert!((400..500).contains(&response.status), "{path}: {}", response.status);
        assert!(!response.text().contains("top secret") && !response.text().contains("SQLite"));
        assert_up(&server);
    }
}

#[test]
fn absurd_limits_cursors_and_seqs_are_400() {
    let (_mock, _dir, server) = server();
    let long = "c".repeat(8000);
    for path in [
        "/api/runs?limit=0".to_owned(),
        "/api/runs?limit=-1".to_owned(),
        "/api/runs?limit=1001".to_owned(),
        "/api/runs?limit=99999999999999999999999".to_owned(),
        "/api/runs?limit=abc".to_owned(),
        "/api/runs?limit=1e3".to_owned(),
        "/api/runs?cursor=garbage".to_owned(),
        "/api/runs?cursor=%00%FF".to_owned(),
        format!("/api/runs?cursor={long}"),
        "/api/runs?status=exploded".to_owned(),
        "/api/history?limit=NaN".to_owned(),
        "/api/history?cursor=-1".to_owned(),
        "/api/workflows/quick/history?limit=0".to_owned(),
        "/api/workflows/quick/history?cursor=zzz".to_owned(),
        "/api/events?limit=0".to_owned(),
        "/api/events?limit=18446744073709551616".to_owned(),
        "/api/events?event_type=nope".to_owned(),
    ] {
        let response = check_4xx(&server, &Request::get(&path));
        assert_eq!(response.status, 400, "{path}: {}", response.text());
    }
    let run = server.post("/api/workflows/quick/run?wait=true");
    let id = run.json()["id"].as_str().unwrap().to_owned();
    for after in ["-1", "x", "18446744073709551616"] {
        let response =
            check_4xx(&server, &Request::get(&format!("/api/runs/{id}/events?after={after}")));
        assert_eq!(response.status, 400, "{after}");
    }
}

#[test]
fn nul_and_unicode_in_paths_are_4xx() {
    let (_mock, _dir, server) = server();
    for path in [
        "/api/runs/%00",
        "/api/runs/a%00b/events",
        "/api/runs/%E2%98%83",
        "/api/runs/%F0%9F%92%A5/artifacts",
        "/api/runs/%FF%FE",
        "/api/workflows/%E2%98%83",
        "/api/workflows/%00/run",
        "/api/services/%C3%A9/health",
    ] {
        let method = if path.ends_with("/run") { "POST" } else { "GET" };
        check_4xx(&server, &Request::new(method, path));
    }
    // Raw bytes that are not valid in a request target: the HTTP layer refuses them;
    // whatever it answers, it is a 4xx and the server stays up.
    for path in ["/api/runs/\u{2603}", "/api/runs/a b", "/api/runs/\u{0}"] {
        let response = server.send(&Request::get(path));
        assert!((400..500).contains(&response.status), "{path:?}: {}", response.status);
        assert_up(&server);
    }
}

#[test]
fn wrong_methods_and_odd_headers_are_4xx() {
    let (_mock, _dir, server) = server();
    for (method, path) in [
        ("DELETE", "/api/runs"),
        ("PUT", "/api/runs/x"),
        ("POST", "/api/history"),
        ("OPTIONS", "/api/workflows"),
        ("BREW", "/health"),
    ] {
        let response = check_4xx(&server, &Request::new(method, path));
        assert_eq!(response.status, 405, "{method} {path}");
    }
    for (name, value) in [
        ("X-API-Key", "\u{7f}"),
        ("Authorization", "Bearer"),
        ("Authorization", "Basic Zm9vOmJhcg=="),
        ("Last-Event-ID", "\u{e9}"),
        ("X-Request-ID", "\u{1}"),
    ] {
        let response = server.send(&Request::get("/api/runs").header(name, value));
        assert!(response.status < 500, "{name}: {value:?}: {}", response.text());
        assert_up(&server);
    }
    let huge = "h".repeat(64 * 1024);
    let response = server.send(&Request::get("/health").header("X-Big", &huge));
    assert!(response.status < 500, "{}", response.status);
    assert_up(&server);
}
