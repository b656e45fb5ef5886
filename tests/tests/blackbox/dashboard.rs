//! The dashboard in a real headless Chromium: `tests/web/dashboard_test.py` drives the real
//! `aegis-server` (and a real nginx) with Playwright; each test here runs one of its tests.
//! `scripts/browser-setup.sh` (called by `scripts/test.sh`) installs Debian's chromium and
//! nginx and the `playwright` package into `target/py-web`.

use std::path::PathBuf;
use std::process::Command;

use aegis_tests::{binary, run, workspace_root};

/// The venv's Python: `AEGIS_BROWSER_PYTHON` (set by `scripts/test.sh`), else the venv
/// `scripts/browser-setup.sh` creates.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("AEGIS_BROWSER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/py-web/bin/python"));
    let chromium = std::env::var_os("AEGIS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    (path.exists() && chromium.exists()).then_some(path)
}

fn browser_test(name: &str) {
    let Some(python) = python() else {
        // `scripts/test.sh` installs the browser and makes its absence a failure; a bare
        // `cargo nextest run` without it cannot check this.
        assert!(
            std::env::var_os("AEGIS_REQUIRE_BROWSER").is_none(),
            "chromium or playwright is missing: run `scripts/browser-setup.sh`"
        );
        eprintln!("FIXME: no browser installed; run `scripts/browser-setup.sh` to check {name}");
        return;
    };
    let script = workspace_root().join("tests/web/dashboard_test.py");
    let out = run(Command::new(python)
        .arg(&script)
        .arg(format!("DashboardTest.{name}"))
        .env("AEGIS_SERVER_BIN", binary("aegis-server"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1"));
    assert_eq!(out.code, Some(0), "{name} failed:\n{}\n{}", out.stdout, out.stderr);
}

#[test]
fn browser_landing_lists_services_workflows_and_runs_live() {
    browser_test("test_landing_lists_services_workflows_runs_and_a_started_run_appears_live");
}

#[test]
fn browser_demo_gate_refuses_a_bad_patch_then_approves_with_a_dropped_failure() {
    browser_test(
        "test_demo_run_page_reaches_the_gate_refuses_a_bad_patch_and_approves_a_dropped_failure",
    );
}

#[test]
fn browser_run_page_follows_attempts_skips_parallel_batches_and_cancel() {
    browser_test("test_run_page_follows_a_run_live_with_attempts_skips_and_parallel_batches");
}

#[test]
fn browser_dropped_stream_resumes_without_loss_or_repeat() {
    browser_test("test_a_dropped_stream_resumes_without_losing_or_repeating_events");
}

#[test]
fn browser_landing_offline_banner_and_recovery() {
    browser_test("test_landing_says_the_server_is_unreachable_and_recovers_by_itself");
}

#[test]
fn browser_auth_prompt_key_on_every_request_and_viewer_403() {
    browser_test("test_auth_asks_for_a_key_sends_it_everywhere_and_names_the_role_a_viewer_lacks");
}

#[test]
fn browser_behind_nginx_under_base_path() {
    browser_test("test_behind_nginx_under_a_base_path");
}

#[test]
fn browser_phone_viewport_one_column_no_horizontal_scroll() {
    browser_test(
        "test_phone_viewport_has_one_column_touch_sized_controls_and_no_horizontal_scroll",
    );
}

#[test]
fn browser_landing_page_size_budget() {
    browser_test("test_landing_page_and_everything_it_loads_fits_the_size_budget");
}
