//! Events: seq contiguity, the file and the bus agreeing, and the schemas.

use std::collections::HashMap;

use aegis_core::testing::{MockService, Route};
use aegis_core::{Received, RunOptions};
use aegis_history::Trigger;
use serde_json::json;

use crate::common::env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_contiguous_and_the_bus_matches_events_jsonl() {
    let svc = MockService::start().await.expect("mock");
    svc.route("POST", "/api/runs", Route::ok(json!({ "failures": [{ "n": 1 }] })).fail_first(1));
    for path in ["/a", "/b"] {
        svc.route("GET", path, Route::ok(json!({})));
    }
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}
workflows:
  w:
    steps:
      - {{ id: test, type: test, service: s, retries: 1, retry_delay: 0.01 }}
      - {{ id: a, type: http, service: s, path: /a, parallel: true }}
      - {{ id: b, type: http, service: s, path: /b, parallel: true }}
      - {{ id: skipped, type: report, condition: on_failure }}
      - {{ id: report, type: report }}
",
        svc.url()
    ));
    let mut bus = env.engine.subscribe();
    let mut handles = Vec::new();
    for _ in 0..5 {
        handles.push(
            env.engine
                .submit("w", RunOptions::new(Trigger::Api).request_id("req-1"))
                .await
                .expect("submit"),
        );
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.wait().await.expect("wait").run_id.clone());
    }
    let mut from_bus: HashMap<String, Vec<aegis_core::Event>> = HashMap::new();
    let mut completed = 0;
    while completed < ids.len() {
        match bus.recv().await {
            Some(Received::Event(event)) => {
                if event.event_type == "workflow.completed" {
                    completed += 1;
                }
                from_bus.entry(event.run_id.clone()).or_default().push((*event).clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut all_types = Vec::new();
    for id in &ids {
        let file = env.events(id);
        let seqs: Vec<u64> = file.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=file.len() as u64).collect::<Vec<_>>());
        assert_eq!(from_bus.get(id), Some(&file), "bus and file agree for {id}");
        let run_id = aegis_history::RunId::new(id.as_str());
        assert_eq!(env.engine.run_events(&run_id, 0).await.expect("run_events"), file);
        let after: Vec<u64> = env
            .engine
            .run_events(&run_id, 2)
            .await
            .expect("run_events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after, (3..=file.len() as u64).collect::<Vec<_>>());
        let types: Vec<String> = file.iter().map(|e| e.event_type.clone()).collect();
        assert_eq!(types.first().map(String::as_str), Some("run.queued"));
        assert_eq!(types.last().map(String::as_str), Some("workflow.completed"));
        assert!(file.iter().all(|e| e.schema_version == "1.0"
            && e.request_id.as_deref() == Some("req-1")
            && e.workflow == "w"));
        all_types.extend(types);
    }
    // Only the first call to /api/runs fails, so one of the runs retried.
    for expected in [
        "run.queued",
        "workflow.started",
        "step.started",
        "step.retrying",
        "step.completed",
        "step.skipped",
        "failure.detected",
        "artifact.created",
        "workflow.completed",
    ] {
        assert!(all_types.iter().any(|t| t == expected), "{expected} in {all_types:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_events_and_artifacts_see_every_event_at_once() {
    let env = env("workflows:\n  w:\n    steps:\n      - { type: report }\n");
    for _ in 0..20 {
        let run = env.engine.run("w", RunOptions::new(Trigger::Api)).await.expect("run");
        let run_id = aegis_history::RunId::new(run.run_id.as_str());
        // No sync_events: the engine writes out what the writer thread has not yet.
        let events = env.engine.run_events(&run_id, 0).await.expect("run_events");
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types.first(), Some(&"run.queued"));
        assert_eq!(types.last(), Some(&"workflow.completed"));
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    }
    let run = env.engine.run("w", RunOptions::new(Trigger::Api)).await.expect("run");
    let run_id = aegis_history::RunId::new(run.run_id.as_str());
    let listed = env.engine.artifacts(&run_id).await.expect("artifacts").expect("run");
    let log = listed.iter().find(|a| a.name == "events.jsonl").expect("events.jsonl is listed");
    let bytes = crate::common::body_bytes(
        env.engine.artifact(&run_id, "events.jsonl").await.expect("read").expect("log"),
    );
    assert_eq!(log.size, bytes.len() as u64);
    let text = String::from_utf8(bytes).expect("utf-8");
    assert!(text.lines().last().is_some_and(|l| l.contains("workflow.completed")));
    // An unknown run has no events.
    let none = env.engine.run_events(&aegis_history::RunId::new("nope"), 0).await.expect("read");
    assert!(none.is_empty());
}

#[test]
fn the_event_schemas_in_docs_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/events");
    let bless = std::env::var_os("AEGIS_BLESS").is_some();
    if bless {
        std::fs::create_dir_all(&dir).expect("mkdir docs/events");
    }
    let mut stale = Vec::new();
    for (event_type, schema) in aegis_core::event_schemas() {
        let path = dir.join(format!("{}.json", event_type.as_str()));
        let text = serde_json::to_string_pretty(&schema).expect("json") + "\n";
        if bless {
            std::fs::write(&path, &text).expect("write schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "event schemas drifted; rerun with AEGIS_BLESS=1 and commit: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_lags_and_never_blocks_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::common::load(
        dir.path(),
        "data_dir: ./data\nworkflows:\n  w:\n    steps:\n      - { type: report }\n      - { id: again, type: report }\n",
    );
    let history: std::sync::Arc<dyn aegis_history::HistoryBackend> =
        std::sync::Arc::new(aegis_history::InMemoryHistory::default());
    let engine =
        aegis_core::Engine::builder(config, history).bus_capacity(4).build().expect("engine");
    let mut stuck = engine.subscribe();
    for _ in 0..20 {
        let run = engine.run("w", RunOptions::new(Trigger::Api)).await.expect("run");
        assert!(run.succeeded());
    }
    match stuck.recv().await {
        Some(Received::Lagged(missed)) => assert!(missed > 100, "missed {missed}"),
        other => panic!("expected a lag notice, got {other:?}"),
    }
    // After the notice the subscriber continues with the events still buffered.
    assert!(matches!(stuck.recv().await, Some(Received::Event(_))));
}
