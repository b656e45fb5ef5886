//! Secrets never leave the server (SPEC section 8): with real secret values in the
//! environment and the file, no read response (anonymous, as reads are public by
//! default), no log line and no `config show` output holds any of them.

use std::io::Write;
use std::net::TcpListener;

use aegis_tests::{Request, Server, aegis_cli, read_request, run, write_config};
use serde_json::Value;

use crate::support::{finished, wait_for_run};

const OPERATOR: &str = "operator-key-literal-8c1f2e";
const ENV_ADMIN: &str = "admin-key-from-env-93b7aa";
const HOOK_SECRET: &str = "hook-secret-from-env-41d0";
const TOKEN: &str = "token-from-env-7e52c9";
const SERVICE_KEY: &str = "service-key-from-env-0f3b";
const URL_PASSWORD: &str = "url-password-66aa";
const LITERAL_HEADER: &str = "literal-header-value-d41d";

/// Every secret the configuration holds, by value.
const SECRETS: [&str; 7] =
    [OPERATOR, ENV_ADMIN, HOOK_SECRET, TOKEN, SERVICE_KEY, URL_PASSWORD, LITERAL_HEADER];

/// A service that answers every request with `{"ok": true}`.
fn service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if read_request(&stream).is_none() {
                continue;
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}",
            );
        }
    });
    port
}

fn config(port: u16) -> String {
    format!(
        "\
auth:
  api_key: ${{ADMIN_KEY}}
  keys:
    - {{id: ci, key: {OPERATOR}, role: operator}}
services:
  qa:
    url: \"http://user:{URL_PASSWORD}@127.0.0.1:{port}\"
    health_endpoint: /health
    api_key_env: SERVICE_KEY
webhooks:
  - url: \"http://127.0.0.1:{port}/hook\"
    secret: ${{HOOK_SECRET}}
    events: [workflow.completed]
workflows:
  call:
    steps:
      - type: http
        id: fetch
        service: qa
        path: /api/${{TOKEN}}/x
        method: POST
        headers: {{Authorization: \"Bearer {LITERAL_HEADER}\", X-Token: \"${{TOKEN}}\"}}
        body: {{token: \"${{TOKEN}}\", plain: visible}}
  build:
    steps:
      - {{type: command, argv: [make, \"--token=${{TOKEN}}\"], env: {{TOKEN: \"${{TOKEN}}\"}}}}
"
    )
}

fn env() -> [(&'static str, &'static str); 4] {
    [
        ("ADMIN_KEY", ENV_ADMIN),
        ("HOOK_SECRET", HOOK_SECRET),
        ("TOKEN", TOKEN),
        ("SERVICE_KEY", SERVICE_KEY),
    ]
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[test]
fn no_read_response_log_line_or_config_show_holds_a_secret() {
    let port = service();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(port));
    let server = Server::start_with(dir.path(), &[], &env());

    // A run, so that run, event and artifact reads have something to show.
    let started =
        server.send(&Request::post("/api/workflows/call/run").header("X-API-Key", OPERATOR));
    assert_eq!(started.status, 202, "{}", started.text());
    let id = started.json()["run_id"].as_str().unwrap().to_owned();
    let done = wait_for_run(&server, &id, |run| finished(&run["status"]));
    assert_eq!(done["status"], "succeeded", "{done}");

    let mut reads = vec![
        "/health".to_owned(),
        "/health/status".to_owned(),
        "/api/services".to_owned(),
        "/api/services/qa/health".to_owned(),
        "/api/workflows".to_owned(),
        "/api/workflows/call".to_owned(),
        "/api/workflows/build".to_owned(),
        "/api/portfolio".to_owned(),
        "/api/runs".to_owned(),
        "/api/history".to_owned(),
        "/api/events?limit=100".to_owned(),
        "/api/gates".to_owned(),
        "/api/openapi.json".to_owned(),
        format!("/api/runs/{id}"),
        format!("/api/runs/{id}/events"),
        format!("/api/runs/{id}/artifacts"),
    ];
    let artifacts = server.get(&format!("/api/runs/{id}/artifacts")).json();
    for artifact in artifacts["artifacts"].as_array().into_iter().flatten() {
        if let Some(name) = artifact["name"].as_str() {
            reads.push(format!("/api/runs/{id}/artifacts/{name}"));
        }
    }
    for path in &reads {
        let response = server.get(path);
        assert!(response.status < 500, "{path}: {}", response.text());
        assert_no_secret(path, &response.text());
    }
    // Where a secret was, `***` is shown.
    let services = server.get("/api/services").json();
    assert_eq!(
        services["services"][0]["url"],
        format!("http://user:***@127.0.0.1:{port}/"),
        "{services}"
    );
    let call = server.get("/api/workflows/call").json();
    let step = &call["steps"][0];
    assert_eq!(step["path"], "***", "{call}");
    assert_eq!(step["headers"]["Authorization"], "***", "{call}");
    assert_eq!(step["body"], serde_json::json!({"token": "***", "plain": "visible"}), "{call}");
    let build = server.get("/api/workflows/build").json();
    assert_eq!(build["steps"][0]["argv"], serde_json::json!(["make", "***"]), "{build}");

    // The log, after a clean stop.
    let log_path = server.stderr_path().to_owned();
    assert_eq!(server.terminate(), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.is_empty());
    assert_no_secret("the server log", &log);

    // `config show`, in both forms.
    for args in [&["config", "show"][..], &["config", "show", "--json"][..]] {
        let mut cmd = aegis_cli(dir.path());
        cmd.envs(env());
        let out = run(cmd.args(args));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_no_secret("config show", &out.stdout);
        assert_no_secret("config show (stderr)", &out.stderr);
        assert!(out.stdout.contains("***"), "{}", out.stdout);
    }
    let shown: Value = {
        let mut cmd = aegis_cli(dir.path());
        cmd.envs(env());
        serde_json::from_str(&run(cmd.args(["config", "show", "--json"])).stdout).unwrap()
    };
    assert_eq!(shown["workflows"]["call"]["steps"][0]["headers"]["X-Token"], "***");
}
