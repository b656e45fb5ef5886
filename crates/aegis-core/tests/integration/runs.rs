//! Run lifecycle: recovery at start, gates pausing a run.

use std::sync::Arc;

use aegis_core::testing::{MockService, Route};
use aegis_core::{Engine, RunOptions};
use aegis_history::{
    HistoryBackend, InMemoryHistory, NewRun, RunId, RunStatus, RunUpdate, StepRecord, StepStatus,
    Trigger,
};
use serde_json::json;

use crate::common::{env, load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_interrupts_running_runs_and_restarts_queued_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load(
        dir.path(),
        "data_dir: ./data\nworkflows:\n  w:\n    steps:\n      - { id: report, type: report }\n",
    );
    let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
    // What a previous process left behind: one run mid-step, one queued, one waiting.
    let new = |id: &str| NewRun {
        id: RunId::new(id),
        workflow: "w".into(),
        trigger: Trigger::Api,
        request_id: None,
        created_at: jiff::Timestamp::now(),
    };
    for id in ["running-1", "queued-1", "waiting-1"] {
        history.create_run(&new(id)).await.expect("create");
    }
    let started = RunUpdate {
        started_at: Some(jiff::Timestamp::now()),
        ..RunUpdate::status(RunStatus::Running)
    };
    history.update_run(&RunId::new("running-1"), &started).await.expect("update");
    let step = StepRecord {
        execution: 0,
        index: 0,
        step_id: "report".into(),
        step_type: "report".into(),
        status: StepStatus::Running,
        error: None,
        started_at: Some(jiff::Timestamp::now()),
        completed_at: None,
        duration_ms: None,
        data: None,
        attempts: Vec::new(),
    };
    history.record_step(&RunId::new("running-1"), &step).await.expect("step");
    history
        .update_run(&RunId::new("waiting-1"), &RunUpdate::status(RunStatus::Waiting))
        .await
        .expect("update");
    // Two events were already written for the running run.
    let old_dir = dir.path().join("data/runs/running-1");
    std::fs::create_dir_all(&old_dir).expect("mkdir");
    std::fs::write(old_dir.join("events.jsonl"), "{\"seq\":1}\n{\"seq\":2}\n").expect("events");

    let engine = Engine::builder(config, Arc::clone(&history)).build().expect("engine");
    let recovery = engine.recover().await.expect("recover");
    assert_eq!(recovery.interrupted, vec![RunId::new("running-1")]);
    assert_eq!(recovery.requeued, vec![RunId::new("queued-1")]);
    assert_eq!(recovery.waiting, vec![RunId::new("waiting-1")]);

    let interrupted = history.get_run(&RunId::new("running-1")).await.expect("get").expect("run");
    assert_eq!(interrupted.run.status, RunStatus::Interrupted);
    assert_eq!(interrupted.steps[0].status, StepStatus::Failed);
    // events.jsonl is written behind the run: write out what is pending first.
    engine.sync_events();
    let lines = std::fs::read_to_string(old_dir.join("events.jsonl")).expect("events");
    let events: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(events[2]["type"], json!("run.interrupted"));
    assert_eq!(events[2]["seq"], json!(3));
    assert_eq!(events[2]["data"]["step_id"], json!("report"));

    // The queued run runs to completion.
    for _ in 0..200 {
        let run = history.get_run(&RunId::new("queued-1")).await.expect("get").expect("run");
        if run.run.status == RunStatus::Succeeded {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let queued = history.get_run(&RunId::new("queued-1")).await.expect("get").expect("run");
    assert_eq!(queued.run.status, RunStatus::Succeeded);
    let waiting = history.get_run(&RunId::new("waiting-1")).await.expect("get").expect("run");
    assert_eq!(waiting.run.status, RunStatus::Waiting);
}

#[tokio::test]
async fn a_gate_pauses_the_run_as_waiting_and_frees_its_slot() {
    let svc = MockService::start().await.expect("mock");
    svc.route("POST", "/api/runs", Route::ok(json!({ "failures": [{ "n": 1 }] })));
    let env = env(&format!(
        "server: {{ max_concurrent_runs: 1 }}
services:\n  s: {{ url: '{}' }}
workflows:
  w:
    steps:
      - {{ id: test, type: test, service: s }}
      - {{ id: review, type: gate, artifact: test, message: check, timeout: 60 }}
      - {{ id: report, type: report }}
",
        svc.url()
    ));
    let first = env.run("w").await;
    assert_eq!(first.status, RunStatus::Waiting);
    assert_eq!(first.waiting_at.as_deref(), Some("review"));
    assert!(first.step("report").is_none());
    // With one slot, a second run still gets to its gate: the first released its slot.
    let second = env.engine.run("w", RunOptions::new(Trigger::Api)).await.expect("run");
    assert_eq!(second.status, RunStatus::Waiting);
    let detail =
        env.history.get_run(&first.run_id.as_str().into()).await.expect("get").expect("run");
    assert_eq!(detail.run.status, RunStatus::Waiting);
    assert_eq!(detail.pending_gates.len(), 1);
    assert_eq!(detail.pending_gates[0].gate_id, "review");
    assert!(detail.pending_gates[0].deadline.is_some());
    let types: Vec<String> = env.events(&first.run_id).into_iter().map(|e| e.event_type).collect();
    assert_eq!(types.last().map(String::as_str), Some("gate.waiting"));
}
