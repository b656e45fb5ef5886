//! Every built-in step type against a mock service.

use aegis_core::testing::{MockService, Route};
use aegis_history::{RunStatus, StepStatus};
use serde_json::json;

use crate::common::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_pipeline_calls_each_service_endpoint() {
    let qa = MockService::start().await.expect("mock");
    let bugs = MockService::start().await.expect("mock");
    qa.route("GET", "/api/routes", Route::ok(json!({ "routes": ["/a", "/b"] })));
    qa.route("POST", "/api/runs", Route::ok(json!({ "total": 3, "failures": [{ "name": "t1" }] })));
    bugs.route("POST", "/api/v1/reports", Route::json(201, json!({ "filed": 1 })));
    // Any variable that is set will do as the key's source; tests may not set variables.
    let key = std::env::var("HOME").expect("HOME is set");
    let env = env(&format!(
        "services:
  qa: {{ url: '{}', api_key_env: HOME }}
  bugs: {{ url: '{}' }}
workflows:
  full:
    steps:
      - {{ type: discover, service: qa }}
      - {{ type: test, service: qa }}
      - {{ type: submit_bugs, service: bugs, condition: has_failures }}
      - {{ type: verify, service: qa, condition: has_failures }}
      - {{ type: report }}
",
        qa.url(),
        bugs.url()
    ));
    let run = env.run("full").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.step("discover").map(|s| s.data["route_count"].clone()), Some(json!(2)));
    let test = run.step("test").expect("test step");
    assert_eq!(
        (test.data["total"].clone(), test.data["passed"].clone(), test.data["failed"].clone()),
        (json!(3), json!(2), json!(1))
    );
    assert_eq!(run.step("submit_bugs").map(|s| s.data["submitted"].clone()), Some(json!(1)));
    assert_eq!(run.step("verify").map(|s| s.data["verify_only"].clone()), Some(json!(true)));
    let report = run.step("report").expect("report");
    assert_eq!(
        report.data["summary"],
        json!({ "total": 4, "passed": 4, "failed": 0, "skipped": 0 })
    );

    let runs = qa.requests_to("/api/runs");
    assert_eq!(
        runs.iter().map(|r| r.json()).collect::<Vec<_>>(),
        vec![json!({}), json!({ "verify_only": true })]
    );
    assert!(qa.requests().iter().all(|r| r.header("x-api-key") == Some(key.as_str())));
    assert_eq!(
        bugs.requests_to("/api/v1/reports")[0].json(),
        json!({ "failures": [{ "name": "t1" }] })
    );
    assert_eq!(bugs.requests()[0].header("x-api-key"), None);

    // Recorded in history, each step's data stored as an artifact.
    let detail =
        env.history.get_run(&run.run_id.as_str().into()).await.expect("history").expect("run");
    assert_eq!(detail.run.status, RunStatus::Succeeded);
    assert_eq!(detail.steps.len(), 5);
    assert!(detail.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    let artifact = env.engine.artifact(&run.run_id.as_str().into(), "test.json").await;
    let stored: serde_json::Value = serde_json::from_slice(&crate::common::body_bytes(
        artifact.expect("read").expect("artifact"),
    ))
    .expect("json");
    assert_eq!(stored, test.data);
    let listed = env.engine.artifacts(&run.run_id.as_str().into()).await.expect("list");
    let names: Vec<String> = listed.expect("run").into_iter().map(|a| a.name).collect();
    assert!(names.contains(&"test.json".to_owned()) && names.contains(&"events.jsonl".to_owned()));
}

#[tokio::test]
async fn submit_bugs_with_nothing_to_send_calls_nothing() {
    let bugs = MockService::start().await.expect("mock");
    let env = env(&format!(
        "services:\n  bugs: {{ url: '{}' }}\nworkflows:\n  w:\n    steps:\n      - {{ type: submit_bugs, service: bugs }}\n",
        bugs.url()
    ));
    let run = env.run("w").await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.steps[0].data, json!({ "submitted": 0, "response": null }));
    assert!(bugs.requests().is_empty());
}

#[tokio::test]
async fn http_steps_template_bodies_check_statuses_and_read_failures() {
    let svc = MockService::start().await.expect("mock");
    svc.route("GET", "/api/routes", Route::ok(json!(["/x", "/y", "/z"])));
    svc.route("POST", "/notes", Route::json(202, json!({ "result": { "bad": [{ "id": 1 }] } })));
    svc.route("GET", "/teapot", Route::json(418, json!({})));
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}
workflows:
  w:
    steps:
      - {{ id: routes, type: discover, service: s }}
      - id: notify
        type: http
        service: s
        method: POST
        path: /notes
        headers: {{ X-Source: aegis }}
        body: {{ count: '{{{{ steps.routes.route_count }}}}', text: 'found {{{{ steps.routes.route_count }}}} routes' }}
        expect_status: [202]
        failures_from: /result/bad
      - {{ id: teapot, type: http, service: s, path: /teapot, condition: always }}
",
        svc.url()
    ));
    let run = env.run("w").await;
    let notify = run.step("notify").expect("notify");
    assert!(notify.success, "{notify:#?}");
    assert_eq!(notify.data["failures"], json!([{ "id": 1 }]));
    let sent = &svc.requests_to("/notes")[0];
    assert_eq!(sent.json(), json!({ "count": 3, "text": "found 3 routes" }));
    assert_eq!(sent.header("x-source"), Some("aegis"));
    let teapot = run.step("teapot").expect("teapot");
    assert!(!teapot.success);
    assert_eq!(teapot.error.as_deref(), Some("HTTP 418: {}"));
    assert_eq!(run.status, RunStatus::Failed);
}

fn write_script(dir: &std::path::Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).expect("script");
}

#[tokio::test]
async fn command_steps_capture_output_and_parse_junit() {
    let dir_env = env("workflows:\n  placeholder:\n    steps:\n      - { type: report }\n");
    let dir = dir_env.dir.path().to_path_buf();
    write_script(&dir, "ok.sh", "echo hello; echo oops >&2\n");
    write_script(
        &dir,
        "junit.sh",
        "cat > report.xml <<'X'\n<testsuite><testcase name=\"a\"/><testcase name=\"b\"><failure message=\"boom\"/></testcase></testsuite>\nX\nexit 1\n",
    );
    write_script(&dir, "bad.sh", "echo '<testsuite><testcase>' > bad.xml; exit 1\n");
    write_script(&dir, "fail.sh", "echo 'it broke' >&2; exit 3\n");
    let config = crate::common::load(
        &dir,
        "data_dir: ./data
workflows:
  w:
    steps:
      - { id: ok, type: command, argv: [sh, ok.sh], cwd: . }
      - { id: junit, type: command, argv: [sh, junit.sh], cwd: ., junit: report.xml }
      - { id: malformed, type: command, argv: [sh, bad.sh], cwd: ., junit: bad.xml, condition: always }
      - { id: missing, type: command, argv: [sh, ok.sh], cwd: ., junit: nowhere.xml, condition: always }
      - { id: fails, type: command, argv: [sh, fail.sh], cwd: ., condition: always }
",
    );
    let engine = aegis_core::Engine::builder(config, std::sync::Arc::clone(&dir_env.history))
        .build()
        .expect("engine");
    let run = engine
        .run("w", aegis_core::RunOptions::new(aegis_history::Trigger::Cli))
        .await
        .expect("run");
    let step = |id: &str| run.step(id).cloned().expect(id);

    assert!(step("ok").success);
    let run_dir = dir.join("data/runs").join(&run.run_id);
    assert_eq!(
        std::fs::read_to_string(run_dir.join("ok.stdout.txt")).ok().as_deref(),
        Some("hello\n")
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("ok.stderr.txt")).ok().as_deref(),
        Some("oops\n")
    );

    let junit = step("junit");
    assert!(junit.success, "a parseable report makes a non-zero exit a success: {junit:#?}");
    assert_eq!(junit.data["exit_code"], json!(1));
    assert_eq!((junit.data["total"].clone(), junit.data["failed"].clone()), (json!(2), json!(1)));
    assert_eq!(junit.data["failures"][0]["message"], json!("boom"));

    let malformed = step("malformed");
    assert!(!malformed.success);
    let error = malformed.error.unwrap_or_default();
    assert!(error.starts_with("malformed junit report ") && error.contains("bad.xml"), "{error}");

    let missing = step("missing").error.unwrap_or_default();
    assert!(missing.contains("nowhere.xml") && missing.contains("not found"), "{missing}");
    assert_eq!(step("fails").error.as_deref(), Some("command failed with exit code 3: it broke"));
    assert_eq!(run.status, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_workflow_finishes_without_qa_services() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("scripts")).expect("mkdir");
    std::fs::copy(root.join("scripts/demo_tests.py"), dir.path().join("scripts/demo_tests.py"))
        .expect("copy script");
    let example = std::fs::read_to_string(root.join(".aegis.yaml.example")).expect("example");
    std::fs::write(dir.path().join(".aegis.yaml"), example).expect("write");
    let config = aegis_config::LoadOptions::new().cwd(dir.path()).load().expect("example loads");
    let history: std::sync::Arc<dyn aegis_history::HistoryBackend> =
        std::sync::Arc::new(aegis_history::InMemoryHistory::default());
    let engine = aegis_core::Engine::builder(config, history).build().expect("engine");
    let run = engine
        .run("demo", aegis_core::RunOptions::new(aegis_history::Trigger::Cli))
        .await
        .expect("run");
    // Until gates are decided by a human, the run may stop at its gate; without an
    // Aegis server on :8000 the health step fails and the gate is skipped.
    assert!(
        matches!(run.status, RunStatus::Failed | RunStatus::Waiting | RunStatus::Succeeded),
        "{run:#?}"
    );
    let test = run.step("test").expect("test step");
    assert!(test.success, "{test:#?}");
    assert_eq!(test.failures().len(), 1);
    assert!(run.step("report").is_some() || run.status == RunStatus::Waiting);
}
