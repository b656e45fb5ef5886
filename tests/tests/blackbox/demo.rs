//! The `demo` workflow of `.aegis.yaml.example`, exactly as shipped, on a machine with
//! no QA services: it runs the bundled test script, calls the server's own `/health`,
//! stops at its review gate, and completes once the gate is approved.

use std::path::Path;

use aegis_tests::{Request, Server, free_port, workspace_root};

fn copy_example(dir: &Path) {
    let root = workspace_root();
    std::fs::copy(root.join(".aegis.yaml.example"), dir.join(".aegis.yaml")).unwrap();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::copy(root.join("scripts/demo_tests.py"), dir.join("scripts/demo_tests.py")).unwrap();
}

#[test]
fn the_demo_stops_at_its_gate_and_completes_after_approval() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let port = free_port();
    let port_text = port.to_string();
    // The example's `aegis` service follows AEGIS_PORT, so its health step reaches this server.
    let mut server = Server::spawn(dir.path(), port, &[], &[("AEGIS_PORT", port_text.as_str())]);
    server.wait_ready();

    let started = server.post("/api/workflows/demo/run?wait=true");
    assert_eq!(started.status, 202, "{}", started.text());
    let run = started.json();
    assert_eq!(run["status"], "waiting", "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["id"], "test");
    assert_eq!(steps[0]["data"]["failed"], 1, "the bundled script has one failing case");
    assert_eq!(steps[1]["id"], "health");
    assert_eq!(steps[1]["status"], "succeeded", "{}", steps[1]);

    let gates = server.get("/api/gates?status=pending").json();
    assert_eq!(gates["gates"][0]["run_id"], id.as_str());
    assert_eq!(gates["gates"][0]["gate"], "review");

    let approve = Request::post(&format!("/api/runs/{id}/gates/review/approve"))
        .body("application/json", r#"{"comment":"looks right"}"#);
    let decided = server.send(&approve);
    assert_eq!(decided.status, 200, "{}", decided.text());

    // The run continues on the server; poll its record until it finishes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let finished = loop {
        let run = server.get(&format!("/api/runs/{id}")).json();
        if run["status"] != "waiting" && run["status"] != "running" {
            break run;
        }
        assert!(std::time::Instant::now() < deadline, "the demo did not finish: {run}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let ids: Vec<&str> =
        finished["steps"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"report"), "{ids:?}");
    assert_eq!(finished["gate_decisions"][0]["decision"], "approve");
}
