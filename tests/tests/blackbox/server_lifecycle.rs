//! The `aegis-server` process: the bind guard, flags > env > file, the `healthcheck`
//! subcommand, persistence across restarts on one SQLite file, SIGTERM, and recovery
//! after `kill -9` with runs in flight.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aegis_tests::{Server, aegis_server, free_port, run, write_config};
use serde_json::Value;

use crate::support::{Mock, assert_up, finished, start_run, wait_for_run, workflows};

const KEY: &str = "admin-key-0123456789abcdef";

// --- Bind guard ----------------------------------------------------------------------

const REFUSAL: &str = "aegis-server: error: refusing to bind 0.0.0.0: a non-loopback address needs \
     `server.allow_external_bind: true` and configured auth (`auth.api_key` or `auth.keys`)";

#[test]
fn a_public_address_needs_allow_external_bind_and_auth() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", " (`server.allow_external_bind` is false and no API key is configured)"),
        ("server: {allow_external_bind: true}\n", " (no API key is configured)"),
        (&*format!("auth: {{api_key: {KEY}}}\n"), " (`server.allow_external_bind` is false)"),
    ];
    for (extra, missing) in cases {
        write_config(dir.path(), &format!("{extra}{}", workflows(&mock)));
        let port = free_port().to_string();
        let out = run(aegis_server(dir.path()).args([
            "--config",
            ".aegis.yaml",
            "--host",
            "0.0.0.0",
            "--port",
            &port,
        ]));
        assert_eq!(out.code, Some(1), "{extra}: {out:?}");
        let expected = format!("{REFUSAL}{missing}");
        assert!(out.stderr.lines().any(|l| l == expected), "{extra}: {}", out.stderr);
        // The same through AEGIS_HOST.
        let out = run(aegis_server(dir.path()).env("AEGIS_HOST", "0.0.0.0").args([
            "--config",
            ".aegis.yaml",
            "--port",
            &port,
        ]));
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.lines().any(|l| l == expected), "{}", out.stderr);
    }

    write_config(
        dir.path(),
        &format!(
            "server: {{allow_external_bind: true}}\nauth: {{api_key: {KEY}}}\n{}",
            workflows(&mock)
        ),
    );
    let server = Server::start_with(dir.path(), &["--host", "0.0.0.0"], &[]);
    assert_up(&server);
    assert!(server.stderr().contains("listening on http://0.0.0.0:"), "{}", server.stderr());
}

/// The image's own configuration (docker/aegis.yaml) without `AEGIS_API_KEY`: the server
/// exits 1 naming the variable and saying to pass it with `-e`, not to write a default key
/// into the file (in a container that file is the image's).
#[test]
fn the_image_config_without_a_key_says_to_pass_it_not_to_write_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = aegis_tests::workspace_root().join("docker/aegis.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    // The image's data folder does not exist here; everything else is as shipped.
    let yaml = yaml.replace("/app/data", "./data");
    std::fs::write(dir.path().join(".aegis.yaml"), yaml).unwrap();
    let port = free_port().to_string();
    let out = run(aegis_server(dir.path()).args(["--config", ".aegis.yaml", "--port", &port]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "environment variable `AEGIS_API_KEY` is not set: pass the key clients must send \
             when starting the container: docker run -e AEGIS_API_KEY=<key>"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(":-default"), "{}", out.stderr);
}

// --- Precedence ------------------------------------------------------------------------

/// Starts the server with exactly `args` and `env` and waits for it on `port`.
fn start_on(dir: &std::path::Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut server = Server::launch(dir, port, args, env);
    server.wait_ready();
    server
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    write_config(dir.path(), &format!("server: {{port: {file_port}}}\n{}", workflows(&mock)));
    let env_port_s = env_port.to_string();
    let flag_port_s = flag_port.to_string();

    let server = start_on(dir.path(), file_port, &["--config", ".aegis.yaml"], &[]);
    assert_up(&server);
    drop(server);

    let server = start_on(
        dir.path(),
        env_port,
        &["--config", ".aegis.yaml"],
        &[("AEGIS_PORT", &env_port_s)],
    );
    assert!(server.stderr().contains(&format!("127.0.0.1:{env_port}")), "{}", server.stderr());
    drop(server);

    let server = start_on(
        dir.path(),
        flag_port,
        &["--config", ".aegis.yaml", "--port", &flag_port_s],
        &[("AEGIS_PORT", &env_port_s)],
    );
    assert!(server.stderr().contains(&format!("127.0.0.1:{flag_port}")), "{}", server.stderr());
    drop(server);

    // Host: the file's public address is overridden by AEGIS_HOST, and AEGIS_HOST's
    // public address by --host (a public bind would be refused: no auth).
    write_config(dir.path(), &format!("server: {{host: 0.0.0.0}}\n{}", workflows(&mock)));
    let server = Server::start_with(dir.path(), &[], &[("AEGIS_HOST", "127.0.0.1")]);
    drop(server);
    let server =
        Server::start_with(dir.path(), &["--host", "127.0.0.1"], &[("AEGIS_HOST", "0.0.0.0")]);
    drop(server);

    // Config: --config wins over AEGIS_CONFIG, and AEGIS_DB_PATH moves the store.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, "workflows:\n  only: {steps: [{type: report}]}\n").unwrap();
    let server = Server::start_with(
        dir.path(),
        &[],
        &[("AEGIS_CONFIG", other.to_str().unwrap()), ("AEGIS_HOST", "127.0.0.1")],
    );
    assert_eq!(server.get("/health").json()["workflows_configured"], 4);
    drop(server);
    let port = free_port();
    let db = dir.path().join("elsewhere.db");
    let server = start_on(
        dir.path(),
        port,
        &["--port", &port.to_string()],
        &[("AEGIS_CONFIG", other.to_str().unwrap()), ("AEGIS_DB_PATH", db.to_str().unwrap())],
    );
    assert_eq!(server.get("/health").json()["workflows_configured"], 1);
    assert!(server.post("/api/workflows/only/run?wait=true").status == 200);
    drop(server);
    assert!(db.exists(), "AEGIS_DB_PATH names the history store");
}

// --- healthcheck -----------------------------------------------------------------------

#[test]
fn healthcheck_exits_0_against_a_live_server_and_1_when_nothing_listens() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &workflows(&mock));
    let server = Server::start(dir.path());
    let port = server.port().to_string();
    let out = run(aegis_server(dir.path()).args([
        "healthcheck",
        "--config",
        ".aegis.yaml",
        "--port",
        &port,
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with(&format!("ok: http://127.0.0.1:{port}/health/live")), "{out:?}");
    // The port also comes from the environment.
    let out = run(aegis_server(dir.path()).env("AEGIS_PORT", &port).args([
        "healthcheck",
        "--config",
        ".aegis.yaml",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    drop(server);

    let nobody = free_port().to_string();
    let out = run(aegis_server(dir.path()).args([
        "healthcheck",
        "--config",
        ".aegis.yaml",
        "--port",
        &nobody,
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with(&format!("unreachable: http://127.0.0.1:{nobody}/health/live")),
        "{out:?}"
    );
}

// --- Restarts --------------------------------------------------------------------------

#[test]
fn runs_survive_a_restart_and_a_waiting_run_still_waits() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &workflows(&mock));
    let server = Server::start(dir.path());
    let done = server.post("/api/workflows/quick/run?wait=true");
    assert_eq!(done.status, 200, "{}", done.text());
    let done_id = done.json()["id"].as_str().unwrap().to_owned();
    let waiting = server.post("/api/workflows/gated/run?wait=true");
    assert_eq!(waiting.status, 202, "{}", waiting.text());
    let waiting_id = waiting.json()["id"].as_str().unwrap().to_owned();
    let events_before = server.get(&format!("/api/runs/{waiting_id}/events")).json();
    assert_eq!(server.terminate(), Some(0));

    let server = Server::start(dir.path());
    let runs = server.get("/api/runs").json();
    let ids: Vec<&str> =
        runs["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [waiting_id.as_str(), done_id.as_str()], "{runs}");
    assert_eq!(server.get(&format!("/api/runs/{done_id}")).json()["status"], "succeeded");
    let waiting = server.get(&format!("/api/runs/{waiting_id}")).json();
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    assert_eq!(server.get(&format!("/api/runs/{waiting_id}/events")).json(), events_before);
    assert!(server.stderr().contains("1 waiting at a gate"), "{}", server.stderr());
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn sigterm_exits_0_and_records_the_run_in_flight_as_interrupted() {
    let mock = Mock::start(Duration::from_secs(600));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("server: {{shutdown_grace: 1}}\n{}", workflows(&mock)));
    let server = Server::start(dir.path());
    let id = start_run(&server, "slow");
    wait_for_run(&server, &id, |r| r["status"] == "running");
    let log = server.stderr_path().to_owned();
    assert_eq!(server.terminate(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("aegis-server stopped"), "{log}");

    let server = Server::start(dir.path());
    let run = server.get(&format!("/api/runs/{id}")).json();
    assert_eq!(run["status"], "interrupted", "{run}");
    let events = server.get(&format!("/api/runs/{id}/events")).json();
    let events = events["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"run.interrupted"), "an event says so: {types:?}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "workflow.completed", "{types:?}");
    assert_eq!(last["data"]["status"], "interrupted", "{last}");
}

#[test]
fn after_kill_9_with_100_runs_in_flight_every_accepted_run_is_there_and_none_is_running() {
    let mock = Mock::start(Duration::from_secs(600));
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "server: {{max_concurrent_runs: 10, max_queued_runs: 1000}}\n{}",
            workflows(&mock)
        ),
    );
    let server = Server::start(dir.path());
    let accepted: Vec<String> = (0..100).map(|_| start_run(&server, "slow")).collect();
    wait_for_run(&server, &accepted[0], |r| r["status"] == "running");
    server.kill9();

    // Queued runs run again after the restart; let them finish at once.
    mock.set_slow(Duration::ZERO);
    let server = Server::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(300);
    let statuses = loop {
        let page = server.get("/api/runs?limit=1000").json();
        let statuses: HashMap<String, Value> = page["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r["status"].clone()))
            .collect();
        if statuses.values().all(finished) {
            break statuses;
        }
        assert!(Instant::now() < deadline, "runs did not settle: {statuses:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for id in &accepted {
        let status =
            statuses.get(id).unwrap_or_else(|| panic!("run {id} was answered 202 and is lost"));
        assert!(
            status == "interrupted" || status == "succeeded",
            "run {id} is {status} after recovery"
        );
    }
    assert_eq!(statuses.len(), 100);
    assert!(
        statuses.values().any(|s| s == "interrupted"),
        "the runs that were running are recorded interrupted"
    );
    assert_eq!(statuses[&accepted[0]], "interrupted");
    assert_up(&server);
}
