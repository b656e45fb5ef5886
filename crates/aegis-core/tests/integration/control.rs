//! Control flow: retries with backoff, timeouts, errors, parallel batches,
//! cancellation, concurrency limits.

use std::time::{Duration, Instant};

use aegis_core::testing::{MockService, Route, refused_url};
use aegis_core::{Received, RunOptions};
use aegis_history::{RunStatus, Trigger};
use serde_json::json;

use crate::common::env;

#[tokio::test]
async fn retries_back_off_exponentially_as_seen_by_the_server() {
    let svc = MockService::start().await.expect("mock");
    svc.route("POST", "/api/runs", Route::ok(json!({ "total": 1 })).fail_first(2));
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}\nworkflows:\n  w:\n    steps:\n      - {{ type: test, service: s, retries: 3, retry_delay: 0.2 }}\n",
        svc.url()
    ));
    let run = env.run("w").await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let attempts = &run.steps[0].attempts;
    assert_eq!(attempts.iter().map(|a| a.success).collect::<Vec<_>>(), [false, false, true]);
    assert!(
        attempts[0].error.as_deref().is_some_and(|e| e.starts_with("HTTP 500: ")),
        "{attempts:?}"
    );
    let calls = svc.requests_to("/api/runs");
    assert_eq!(calls.len(), 3);
    // Lower bounds only: 0.2 s then 0.4 s between attempts.
    assert!(calls[1].started - calls[0].finished >= Duration::from_millis(190));
    assert!(calls[2].started - calls[1].finished >= Duration::from_millis(390));
    let types: Vec<String> = env.events(&run.run_id).into_iter().map(|e| e.event_type).collect();
    assert_eq!(types.iter().filter(|t| *t == "step.retrying").count(), 2);
}

#[tokio::test]
async fn timeouts_refusals_and_http_errors_are_told_apart() {
    let svc = MockService::start().await.expect("mock");
    svc.route("GET", "/slow", Route::ok(json!({})).delay(Duration::from_secs(5)));
    svc.route("GET", "/broken", Route::json(500, json!({ "error": "kaput" })));
    let refused = refused_url().await.expect("port");
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}\n  gone: {{ url: '{refused}' }}
workflows:
  w:
    steps:
      - {{ id: slow, type: http, service: s, path: /slow, timeout: 0.3 }}
      - {{ id: gone, type: http, service: gone, path: /x, condition: always }}
      - {{ id: broken, type: http, service: s, path: /broken, condition: always }}
      - {{ id: after, type: report }}
",
        svc.url()
    ));
    let run = env.run("w").await;
    let error = |id: &str| run.step(id).and_then(|s| s.error.clone());
    assert_eq!(error("slow").as_deref(), Some("timed out after 300ms"));
    assert_eq!(error("gone").as_deref(), Some("connection refused"));
    assert_eq!(error("broken").as_deref(), Some(r#"HTTP 500: {"error":"kaput"}"#));
    // `on_success` after failures: skipped.
    assert!(run.step("after").is_some_and(|s| s.skipped));
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("step slow failed: timed out after 300ms"));
}

#[tokio::test]
async fn each_condition_when_true_and_false() {
    let svc = MockService::start().await.expect("mock");
    svc.route("GET", "/ok", Route::ok(json!({ "failures": [] })));
    svc.route("GET", "/failures", Route::ok(json!({ "failures": [{ "n": 1 }] })));
    svc.route("GET", "/down", Route::json(503, json!({})));
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}
workflows:
  clean:
    steps:
      - {{ id: a, type: http, service: s, path: /ok }}
      - {{ id: on_success, type: report }}
      - {{ id: on_failure, type: report, condition: on_failure }}
      - {{ id: has_failures, type: report, condition: has_failures }}
      - {{ id: always, type: report, condition: always }}
  dirty:
    steps:
      - {{ id: a, type: http, service: s, path: /failures }}
      - {{ id: b, type: http, service: s, path: /down }}
      - {{ id: on_success, type: report }}
      - {{ id: on_failure, type: report, condition: on_failure }}
      - {{ id: has_failures, type: report, condition: has_failures }}
      - {{ id: always, type: report, condition: always }}
",
        svc.url()
    ));
    let skipped = |run: &aegis_core::RunSummary, id: &str| run.step(id).map(|s| s.skipped);
    let clean = env.run("clean").await;
    assert_eq!(clean.status, RunStatus::Succeeded);
    assert_eq!(skipped(&clean, "on_success"), Some(false));
    assert_eq!(skipped(&clean, "on_failure"), Some(true));
    assert_eq!(skipped(&clean, "has_failures"), Some(true));
    assert_eq!(skipped(&clean, "always"), Some(false));
    let dirty = env.run("dirty").await;
    assert_eq!(dirty.status, RunStatus::Failed);
    assert_eq!(skipped(&dirty, "on_success"), Some(true));
    assert_eq!(skipped(&dirty, "on_failure"), Some(false));
    assert_eq!(skipped(&dirty, "has_failures"), Some(false));
    assert_eq!(skipped(&dirty, "always"), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_parallel_steps_overlap_in_time() {
    let svc = MockService::start().await.expect("mock");
    for path in ["/a", "/b", "/c"] {
        svc.route("GET", path, Route::ok(json!({})).delay(Duration::from_millis(300)));
    }
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}
workflows:
  w:
    steps:
      - {{ id: a, type: http, service: s, path: /a, parallel: true }}
      - {{ id: b, type: http, service: s, path: /b, parallel: true }}
      - {{ id: c, type: http, service: s, path: /c }}
",
        svc.url()
    ));
    let run = env.run("w").await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let (a, b, c) =
        (&svc.requests_to("/a")[0], &svc.requests_to("/b")[0], &svc.requests_to("/c")[0]);
    assert!(a.started < b.finished && b.started < a.finished, "a and b overlap");
    assert!(c.started >= a.finished && c.started >= b.finished, "c runs after the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_the_current_step_promptly() {
    let svc = MockService::start().await.expect("mock");
    svc.route("GET", "/hang", Route::ok(json!({})).delay(Duration::from_secs(30)));
    let env = env(&format!(
        "services:\n  s: {{ url: '{}' }}\nworkflows:\n  w:\n    steps:\n      - {{ id: hang, type: http, service: s, path: /hang, timeout: 60 }}\n      - {{ id: after, type: report, condition: always }}\n",
        svc.url()
    ));
    let mut events = env.engine.subscribe();
    let handle = env.engine.submit("w", RunOptions::new(Trigger::Api)).await.expect("submit");
    while let Some(received) = events.recv().await {
        if let Received::Event(e) = received
            && e.event_type == "step.started"
        {
            break;
        }
    }
    let clock = Instant::now();
    env.engine.cancel(handle.id(), "ops", None).await.expect("cancel");
    let run_id = handle.id().clone();
    let run = handle.wait().await.expect("wait");
    assert!(clock.elapsed() < Duration::from_secs(30), "did not wait for the step");
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.step("hang").and_then(|s| s.error.clone()).as_deref(), Some("cancelled"));
    assert!(run.step("after").is_none(), "no step runs after a cancellation");
    let types: Vec<String> = env.events(&run.run_id).into_iter().map(|e| e.event_type).collect();
    assert!(
        types.ends_with(&["run.cancelled".to_owned(), "workflow.completed".to_owned()]),
        "{types:?}"
    );
    let stored = env.history.get_run(&run_id).await.expect("history").expect("run");
    assert_eq!(stored.run.status, RunStatus::Cancelled);
    let again = env.engine.cancel(&run_id, "ops", None).await;
    assert!(matches!(again, Err(aegis_core::Error::RunFinished { .. })), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_under_fifty_simultaneous_runs() {
    let global = MockService::start().await.expect("mock");
    let single = MockService::start().await.expect("mock");
    global.route("GET", "/work", Route::ok(json!({})).delay(Duration::from_millis(20)));
    single.route("GET", "/work", Route::ok(json!({})).delay(Duration::from_millis(10)));
    let env = env(&format!(
        "server: {{ max_concurrent_runs: 4, max_queued_runs: 200 }}
services:\n  g: {{ url: '{}' }}\n  s: {{ url: '{}' }}
workflows:
  wide:
    steps:
      - {{ type: http, service: g, path: /work }}
  narrow:
    concurrency: 2
    steps:
      - {{ type: http, service: s, path: /work }}
",
        global.url(),
        single.url()
    ));
    let mut handles = Vec::new();
    for i in 0..50 {
        let workflow = if i % 2 == 0 { "wide" } else { "narrow" };
        handles.push(
            env.engine.submit(workflow, RunOptions::new(Trigger::Api)).await.expect("submit"),
        );
    }
    for handle in handles {
        assert_eq!(handle.wait().await.expect("wait").status, RunStatus::Succeeded);
    }
    assert_eq!(global.requests().len() + single.requests().len(), 50);
    assert!(global.max_in_flight() + single.max_in_flight() <= 4 + 2);
    assert!(global.max_in_flight() <= 4, "global limit: {}", global.max_in_flight());
    assert!(single.max_in_flight() <= 2, "workflow limit: {}", single.max_in_flight());
    assert_eq!(env.engine.queued_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_runs_with_a_distinct_error() {
    let svc = MockService::start().await.expect("mock");
    svc.route("GET", "/work", Route::ok(json!({})).delay(Duration::from_millis(200)));
    let env = env(&format!(
        "server: {{ max_concurrent_runs: 1, max_queued_runs: 2 }}
services:\n  s: {{ url: '{}' }}
workflows:\n  w:\n    steps:\n      - {{ type: http, service: s, path: /work }}
",
        svc.url()
    ));
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for _ in 0..6 {
        match env.engine.submit("w", RunOptions::new(Trigger::Api)).await {
            Ok(handle) => accepted.push(handle),
            Err(aegis_core::Error::QueueFull { limit }) => {
                assert_eq!(limit, 2);
                rejected += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!((accepted.len(), rejected), (3, 3));
    for handle in accepted {
        assert_eq!(handle.wait().await.expect("wait").status, RunStatus::Succeeded);
    }
    // Rejected runs are not recorded.
    assert_eq!(env.history.recent(100).await.expect("recent").len(), 3);
}

#[tokio::test]
async fn a_command_that_outlives_its_timeout_fails_with_the_limit() {
    let env = env(
        "workflows:\n  w:\n    steps:\n      - { id: sleepy, type: command, argv: [sleep, '30'], timeout: 0.3 }\n",
    );
    let clock = Instant::now();
    let run = env.run("w").await;
    assert!(clock.elapsed() < Duration::from_secs(30), "the program was not waited for");
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.steps[0].error.as_deref(), Some("timed out after 300ms"));
}

#[tokio::test]
async fn shutdown_lets_quick_runs_finish_interrupts_slow_ones_and_keeps_queued_ones() {
    let svc = MockService::start().await.expect("mock");
    svc.route("GET", "/quick", Route::ok(json!({})).delay(Duration::from_millis(50)));
    svc.route("GET", "/slow", Route::ok(json!({})).delay(Duration::from_secs(60)));
    let env = env(&format!(
        "server: {{ max_concurrent_runs: 2 }}
services:\n  s: {{ url: '{}' }}
workflows:
  quick:\n    steps:\n      - {{ type: http, service: s, path: /quick }}
  slow:\n    concurrency: 1\n    steps:\n      - {{ id: wait, type: http, service: s, path: /slow, timeout: 120 }}
",
        svc.url()
    ));
    let quick = env.engine.submit("quick", RunOptions::new(Trigger::Api)).await.expect("quick");
    let slow = env.engine.submit("slow", RunOptions::new(Trigger::Api)).await.expect("slow");
    // The slow workflow runs one at a time, so this one waits in the queue.
    let queued = env.engine.submit("slow", RunOptions::new(Trigger::Api)).await.expect("queued");
    let (slow_id, queued_id) = (slow.id().clone(), queued.id().clone());

    let report = env.engine.shutdown(Duration::from_millis(500)).await.expect("shutdown");
    assert!(report.stopped.contains(&slow_id), "{report:?}");
    assert_eq!(quick.wait().await.expect("quick").status, RunStatus::Succeeded);
    assert_eq!(slow.wait().await.expect("slow").status, RunStatus::Interrupted);

    let stored = env.history.get_run(&slow_id).await.expect("get").expect("slow run stored");
    assert_eq!(stored.run.status, RunStatus::Interrupted);
    let types: Vec<String> =
        env.events(slow_id.as_str()).into_iter().map(|e| e.event_type).collect();
    assert_eq!(
        types.iter().rev().take(2).collect::<Vec<_>>(),
        ["workflow.completed", "run.interrupted"]
    );
    // The queued run was never started: it stays queued for the next start's recovery.
    let waiting = env.history.get_run(&queued_id).await.expect("get").expect("queued run stored");
    assert_eq!(waiting.run.status, RunStatus::Queued);
    // And nothing new is accepted.
    assert!(matches!(
        env.engine.submit("quick", RunOptions::new(Trigger::Api)).await,
        Err(aegis_core::Error::ShuttingDown)
    ));
}
