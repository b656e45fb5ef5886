//! `GET /metrics` of the real server: the exposition passes `promtool check metrics`,
//! carries the names of SPEC section 12, and its values move as runs finish, gates
//! wait and are decided, and requests are answered; gauges survive a restart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aegis_tests::{Request, Server, run, write_config};

use crate::support::{Mock, finished, start_run, wait_for_run, workflows};

const KEY: &str = "metrics-key-0123456789abcdef";

/// `promtool`: `AEGIS_PROMTOOL` (set by `scripts/test.sh`), else on `PATH`.
fn promtool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AEGIS_PROMTOOL") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join("promtool"))
        .find(|p| p.exists())
}

/// Feeds `text` to `promtool check metrics` and fails with its findings.
fn check_with_promtool(dir: &std::path::Path, text: &str) {
    let Some(promtool) = promtool() else {
        // `scripts/test.sh` installs promtool (Debian `prometheus`) and then requires it.
        assert!(
            std::env::var_os("AEGIS_REQUIRE_PROMTOOL").is_none(),
            "promtool is required but missing: run `scripts/test.sh`"
        );
        eprintln!("FIXME: promtool is not installed; run `scripts/test.sh` to check this");
        return;
    };
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = run(std::process::Command::new("sh").arg("-c").arg(format!(
        "'{}' check metrics < '{}'",
        promtool.display(),
        file.display()
    )));
    assert_eq!(
        out.code,
        Some(0),
        "promtool check metrics failed:\n{}{}\n{text}",
        out.stdout,
        out.stderr
    );
}

/// The value of the sample written exactly as `series` (name and labels as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` has `expected` (the follower applies events a little after
/// they happen), failing with the last scrape after two minutes.
#[track_caller]
fn wait_for_value(server: &Server, series: &str, expected: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = server.get("/metrics").text();
        if value(&text, series) == Some(expected) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never became {expected}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_pass_promtool_and_move_as_runs_finish_and_gates_wait() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &workflows(&mock));
    let server = Server::start(dir.path());

    let response = server.get("/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = response.text();
    check_with_promtool(dir.path(), &text);
    for name in [
        "aegis_runs_total",
        "aegis_runs",
        "aegis_run_duration_seconds",
        "aegis_step_duration_seconds",
        "aegis_queue_depth",
        "aegis_gates_pending",
        "aegis_webhook_deliveries_total",
        "aegis_webhook_outbox_pending",
        "aegis_http_requests_total",
        "aegis_build_info",
    ] {
        assert!(text.contains(&format!("\n# TYPE {name} ")), "no TYPE line for {name}:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP line for {name}:\n{text}");
    }
    assert_eq!(
        value(&text, "aegis_runs_total{workflow=\"quick\",status=\"succeeded\"}"),
        Some(0.0)
    );
    assert_eq!(value(&text, "aegis_runs{workflow=\"gated\",status=\"waiting\"}"), Some(0.0));
    assert_eq!(value(&text, "aegis_gates_pending"), Some(0.0));
    assert_eq!(value(&text, "aegis_queue_depth"), Some(0.0));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(value(&text, &format!("aegis_build_info{{version=\"{version}\"}}")), Some(1.0));

    // A finished run counts once, with its duration and its step's.
    let quick = start_run(&server, "quick");
    wait_for_run(&server, &quick, |run| finished(&run["status"]));
    let text =
        wait_for_value(&server, "aegis_runs_total{workflow=\"quick\",status=\"succeeded\"}", 1.0);
    assert_eq!(value(&text, "aegis_run_duration_seconds_count{workflow=\"quick\"}"), Some(1.0));
    assert_eq!(
        value(&text, "aegis_step_duration_seconds_count{workflow=\"quick\",type=\"http\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "aegis_step_duration_seconds_bucket{workflow=\"quick\",type=\"http\",le=\"+Inf\"}"
        ),
        Some(1.0)
    );

    // A run at its gate is `waiting` with one pending gate, until it is approved.
    let gated = start_run(&server, "gated");
    wait_for_run(&server, &gated, |run| run["status"] == "waiting");
    let text = wait_for_value(&server, "aegis_gates_pending", 1.0);
    assert_eq!(value(&text, "aegis_runs{workflow=\"gated\",status=\"waiting\"}"), Some(1.0));
    check_with_promtool(dir.path(), &text);
    // No run id is ever a label value: requests for runs count under the route pattern.
    assert!(!text.contains(&quick) && !text.contains(&gated), "a run id in:\n{text}");
    assert!(
        value(&text, "aegis_http_requests_total{route=\"/api/runs/{id}\",status=\"200\"}")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            "aegis_http_requests_total{route=\"/api/workflows/{key}/run\",status=\"202\"}"
        ) == Some(2.0),
        "{text}"
    );
    server.get("/no/such/route");
    let text = server.get("/metrics").text();
    assert_eq!(
        value(&text, "aegis_http_requests_total{route=\"unmatched\",status=\"404\"}"),
        Some(1.0),
        "{text}"
    );

    let decided = server.post(&format!("/api/runs/{gated}/gates/review/approve"));
    assert_eq!(decided.status, 200, "{}", decided.text());
    wait_for_run(&server, &gated, |run| finished(&run["status"]));
    let text =
        wait_for_value(&server, "aegis_runs_total{workflow=\"gated\",status=\"succeeded\"}", 1.0);
    assert_eq!(value(&text, "aegis_gates_pending"), Some(0.0));
    assert_eq!(value(&text, "aegis_runs{workflow=\"gated\",status=\"waiting\"}"), Some(0.0));
    check_with_promtool(dir.path(), &text);
}

#[test]
fn a_gate_left_waiting_by_a_previous_process_is_counted_after_a_restart() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &workflows(&mock));
    let server = Server::start(dir.path());
    let gated = start_run(&server, "gated");
    wait_for_run(&server, &gated, |run| run["status"] == "waiting");
    assert_eq!(server.terminate(), Some(0));

    let server = Server::start(dir.path());
    let text = wait_for_value(&server, "aegis_gates_pending", 1.0);
    assert_eq!(value(&text, "aegis_runs{workflow=\"gated\",status=\"waiting\"}"), Some(1.0));
    // Counters start again at zero with the process, as Prometheus expects.
    assert_eq!(
        value(&text, "aegis_runs_total{workflow=\"gated\",status=\"succeeded\"}"),
        Some(0.0)
    );
}

#[test]
fn metrics_are_a_read_and_need_a_key_when_reads_are_protected() {
    let mock = Mock::start(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!("auth: {{api_key: {KEY}, protect_reads: true}}\n{}", workflows(&mock)),
    );
    let server = Server::start(dir.path());
    assert_eq!(server.get("/metrics").status, 401);
    let response = server.send(&Request::get("/metrics").header("X-API-Key", KEY));
    assert_eq!(response.status, 200, "{}", response.text());
    let response =
        server.send(&Request::get("/metrics").header("Authorization", &format!("Bearer {KEY}")));
    assert_eq!(response.status, 200, "{}", response.text());
    // The refused scrape is itself counted.
    assert_eq!(
        value(&response.text(), "aegis_http_requests_total{route=\"/metrics\",status=\"401\"}"),
        Some(1.0)
    );
}
