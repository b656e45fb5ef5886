//! Gates: approve and reject with JSON Patches, `retry_from`, refused patches,
//! conflicts, concurrent decisions, deadlines, cancellation and restarts.

use std::sync::Arc;
use std::time::Duration;

use aegis_core::testing::{MockService, Route};
use aegis_core::{Engine, Error, GateRequest, RunOptions};
use aegis_history::{
    GateDecisionKind, HistoryBackend, InMemoryHistory, RunDetail, RunId, RunStatus, Trigger,
};
use serde_json::{Value, json};

use crate::common::{Env, env, load};

/// A QA service whose test run finds three failures and whose bug tracker
/// accepts reports.
async fn qa_service() -> MockService {
    let svc = MockService::start().await.expect("mock");
    svc.route(
        "POST",
        "/api/runs",
        Route::ok(json!({
            "total": 5, "passed": 2, "failed": 3,
            "failures": [{ "id": "a" }, { "id": "b" }, { "id": "c" }],
        })),
    );
    svc.route("POST", "/api/v1/reports", Route::ok(json!({ "accepted": true })));
    svc
}

fn review_yaml(url: &str, gate_extra: &str) -> String {
    format!(
        "services:\n  s: {{ url: '{url}' }}
workflows:
  w:
    steps:
      - {{ id: test, type: test, service: s }}
      - {{ id: review, type: gate, artifact: test, message: check{gate_extra} }}
      - {{ id: bugs, type: submit_bugs, service: s, condition: has_failures }}
"
    )
}

async fn detail(history: &Arc<dyn HistoryBackend>, run_id: &str) -> RunDetail {
    history.get_run(&RunId::new(run_id)).await.expect("get").expect("run")
}

/// Polls history until the run has left `waiting`/`running` (no time assertion:
/// the bound only keeps a broken build from hanging).
async fn settled(history: &Arc<dyn HistoryBackend>, run_id: &str) -> RunDetail {
    for _ in 0..1000 {
        let d = detail(history, run_id).await;
        if d.run.status.is_finished() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {run_id} did not finish");
}

fn ids(failures: &Value) -> Vec<String> {
    failures
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn waiting_run(env: &Env) -> String {
    let run = env.run("w").await;
    assert_eq!(run.status, RunStatus::Waiting);
    run.run_id.clone()
}

#[tokio::test]
async fn approve_with_a_patch_files_only_the_failures_the_reviewer_kept() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ""));
    let run_id = waiting_run(&env).await;
    let patch = json!([{ "op": "remove", "path": "/failures/1" }]);
    let outcome = env
        .engine
        .decide(
            &RunId::new(&run_id),
            "review",
            GateRequest::approve("ci").comment("b is flaky").patch(patch.clone()),
        )
        .await
        .expect("decide");
    assert_eq!(outcome.status, RunStatus::Running);
    assert_eq!(ids(&outcome.artifact.clone().expect("artifact")["failures"]), ["a", "c"]);
    let summary = outcome.handle.expect("resumed").wait().await.expect("wait");
    assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");

    let reports = svc.requests_to("/api/v1/reports");
    assert_eq!(reports.len(), 1);
    assert_eq!(ids(&reports[0].json()["failures"]), ["a", "c"]);

    let d = detail(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert!(d.pending_gates.is_empty());
    let decision = &d.gate_decisions[0];
    assert_eq!((decision.decision, decision.by.as_str()), (GateDecisionKind::Approve, "ci"));
    assert_eq!(decision.comment.as_deref(), Some("b is flaky"));
    assert_eq!(decision.patch.as_ref(), Some(&patch));
    assert_eq!(
        ids(&decision.artifact_before.clone().expect("before")["failures"]),
        ["a", "b", "c"]
    );
    assert_eq!(ids(&decision.artifact_after.clone().expect("after")["failures"]), ["a", "c"]);
    // The step's data in history and its artifact `test.json` are the patched data.
    let test = d.steps.iter().find(|s| s.step_id == "test").expect("test step");
    assert_eq!(ids(&test.data.clone().expect("data")["failures"]), ["a", "c"]);
    let bytes = env.engine.artifact(&run_id.as_str().into(), "test.json").await.expect("read");
    let stored: Value =
        serde_json::from_slice(&crate::common::body_bytes(bytes.expect("test.json")))
            .expect("json");
    assert_eq!(ids(&stored["failures"]), ["a", "c"]);
    let gate = d.steps.iter().find(|s| s.step_id == "review").expect("gate step");
    assert_eq!(
        gate.data,
        Some(json!({ "decision": "approve", "by": "ci", "comment": "b is flaky" }))
    );

    let events = env.events(&run_id);
    let approved = events.iter().find(|e| e.event_type == "gate.approved").expect("approved");
    assert_eq!(approved.data["by"], "ci");
    assert_eq!(approved.data["comment"], "b is flaky");
    assert_eq!(approved.data["patch"], patch);
    // One run, one `workflow.started`, seq without gaps.
    assert_eq!(events.iter().filter(|e| e.event_type == "workflow.started").count(), 1);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.last().map(|e| e.event_type.as_str()), Some("workflow.completed"));
}

#[tokio::test]
async fn reject_with_retry_from_runs_the_steps_again_and_reaches_the_gate_again() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ", retry_from: test"));
    let run_id = waiting_run(&env).await;
    let id = RunId::new(&run_id);
    let outcome = env
        .engine
        .decide(&id, "review", GateRequest::reject("ci").comment("rerun please"))
        .await
        .expect("reject");
    assert_eq!(outcome.status, RunStatus::Running);
    let again = outcome.handle.expect("resumed").wait().await.expect("wait");
    assert_eq!(again.status, RunStatus::Waiting);
    assert_eq!(again.waiting_at.as_deref(), Some("review"));
    assert_eq!(svc.requests_to("/api/runs").len(), 2);
    let d = detail(&env.history, &run_id).await;
    let executions: Vec<(u32, &str)> =
        d.steps.iter().map(|s| (s.execution, s.step_id.as_str())).collect();
    assert_eq!(executions, [(0, "test"), (0, "review"), (1, "test"), (1, "review")]);
    assert_eq!(d.pending_gates.len(), 1);

    let patch = json!([{ "op": "remove", "path": "/failures/0" }]);
    let done = env
        .engine
        .decide(&id, "review", GateRequest::approve("ci").patch(patch))
        .await
        .expect("approve")
        .handle
        .expect("resumed")
        .wait()
        .await
        .expect("wait");
    assert_eq!(done.status, RunStatus::Succeeded);
    let reports = svc.requests_to("/api/v1/reports");
    assert_eq!(reports.len(), 1);
    assert_eq!(ids(&reports[0].json()["failures"]), ["b", "c"]);
    let d = detail(&env.history, &run_id).await;
    let kinds: Vec<GateDecisionKind> = d.gate_decisions.iter().map(|g| g.decision).collect();
    assert_eq!(kinds, [GateDecisionKind::Reject, GateDecisionKind::Approve]);
    let types: Vec<String> = env.events(&run_id).into_iter().map(|e| e.event_type).collect();
    assert_eq!(types.iter().filter(|t| *t == "gate.waiting").count(), 2);
    assert_eq!(types.iter().filter(|t| *t == "gate.rejected").count(), 1);
}

#[tokio::test]
async fn reject_without_retry_from_ends_the_run_rejected() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ""));
    let run_id = waiting_run(&env).await;
    let outcome = env
        .engine
        .decide(&RunId::new(&run_id), "review", GateRequest::reject("ops"))
        .await
        .expect("reject");
    assert_eq!(outcome.status, RunStatus::Rejected);
    assert!(outcome.handle.is_none());
    let d = detail(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Rejected);
    assert!(d.run.completed_at.is_some());
    assert!(svc.requests_to("/api/v1/reports").is_empty());
    let events = env.events(&run_id);
    let last = events.last().expect("events");
    assert_eq!(
        (last.event_type.as_str(), last.data["status"].as_str()),
        ("workflow.completed", Some("rejected"))
    );
    assert!(events.iter().any(|e| e.event_type == "gate.rejected" && e.data["by"] == "ops"));
}

#[tokio::test]
async fn refused_patches_and_conflicts_change_nothing() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ""));
    let run_id = waiting_run(&env).await;
    let id = RunId::new(&run_id);
    for patch in [
        json!([{ "op": "remove", "path": "/nope/7" }]),
        json!([{ "op": "test", "path": "/total", "value": 99 }]),
        json!({ "op": "remove", "path": "/failures/0" }),
        json!([{ "op": "explode" }]),
    ] {
        let err = env
            .engine
            .decide(&id, "review", GateRequest::approve("ci").patch(patch.clone()))
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::InvalidPatch(_)), "{patch}: {err:?}");
    }
    let d = detail(&env.history, &run_id).await;
    assert_eq!((d.run.status, d.pending_gates.len()), (RunStatus::Waiting, 1));
    assert!(d.gate_decisions.is_empty());
    let test = d.steps.iter().find(|s| s.step_id == "test").expect("test");
    assert_eq!(ids(&test.data.clone().expect("data")["failures"]), ["a", "b", "c"]);

    let unknown = env.engine.decide(&id, "nope", GateRequest::approve("ci")).await;
    assert!(matches!(unknown, Err(Error::UnknownGate { .. })), "{unknown:?}");
    let no_run =
        env.engine.decide(&RunId::new("no-such-run"), "review", GateRequest::approve("ci")).await;
    assert!(matches!(no_run, Err(Error::UnknownRun(_))), "{no_run:?}");

    let first = env.engine.decide(&id, "review", GateRequest::approve("ci")).await.expect("first");
    let second = env.engine.decide(&id, "review", GateRequest::approve("ci")).await;
    assert!(
        matches!(second, Err(Error::GateNotPending { .. } | Error::RunNotWaiting { .. })),
        "{second:?}"
    );
    first.handle.expect("resumed").wait().await.expect("wait");
    let after = env.engine.decide(&id, "review", GateRequest::reject("ci")).await;
    assert!(matches!(after, Err(Error::RunNotWaiting { .. })), "{after:?}");
    assert_eq!(detail(&env.history, &run_id).await.gate_decisions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_twenty_concurrent_approvals_exactly_one_wins() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ""));
    let run_id = waiting_run(&env).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let engine = env.engine.clone();
            let id = RunId::new(&run_id);
            let patch = json!([{ "op": "remove", "path": "/failures/0" }]);
            tokio::spawn(async move {
                engine
                    .decide(&id, "review", GateRequest::approve(format!("k{i}")).patch(patch))
                    .await
            })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(outcome) => wins.push(outcome),
            Err(Error::GateNotPending { .. } | Error::RunNotWaiting { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((wins.len(), conflicts), (1, 19));
    let summary = wins.remove(0).handle.expect("resumed").wait().await.expect("wait");
    assert_eq!(summary.status, RunStatus::Succeeded);
    // The patch was applied once: one failure removed, not nineteen.
    let reports = svc.requests_to("/api/v1/reports");
    assert_eq!(ids(&reports[0].json()["failures"]), ["b", "c"]);
    assert_eq!(detail(&env.history, &run_id).await.gate_decisions.len(), 1);
}

#[tokio::test]
async fn a_deadline_decides_by_on_timeout_as_timeout() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ", timeout: 0.2, on_timeout: approve"));
    let run_id = waiting_run(&env).await;
    let d = settled(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
    let decision = &d.gate_decisions[0];
    assert_eq!(
        (decision.decision, decision.by.as_str()),
        (GateDecisionKind::TimeoutApprove, "timeout")
    );
    let events = env.events(&run_id);
    let expired = events.iter().find(|e| e.event_type == "gate.expired").expect("expired");
    assert_eq!(
        (expired.data["decision"].as_str(), expired.data["by"].as_str()),
        (Some("approve"), Some("timeout"))
    );
    assert_eq!(svc.requests_to("/api/v1/reports").len(), 1);

    // The default is reject.
    let env = crate::common::env(&review_yaml(&svc.url(), ", timeout: 0.2"));
    let run_id = waiting_run(&env).await;
    let d = settled(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Rejected);
    assert_eq!(d.gate_decisions[0].decision, GateDecisionKind::TimeoutReject);
}

#[tokio::test]
async fn a_reviewer_before_the_deadline_wins_and_the_timer_does_nothing() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ", timeout: 0.3"));
    let run_id = waiting_run(&env).await;
    let outcome = env
        .engine
        .decide(&RunId::new(&run_id), "review", GateRequest::approve("ci"))
        .await
        .expect("approve");
    outcome.handle.expect("resumed").wait().await.expect("wait");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = detail(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(d.gate_decisions.len(), 1);
}

#[tokio::test]
async fn cancelling_a_waiting_run_ends_it_cancelled() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ""));
    let run_id = waiting_run(&env).await;
    let id = RunId::new(&run_id);
    env.engine.cancel(&id, "ops", None).await.expect("cancel");
    let d = detail(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Cancelled);
    assert!(d.pending_gates.is_empty());
    assert!(env.history.pending_gates().await.expect("pending").is_empty());
    assert_eq!(d.gate_decisions[0].by, "ops");
    // A cancelled run is not waiting any more.
    let again = env.engine.cancel(&id, "ops", None).await;
    assert!(matches!(again, Err(Error::RunFinished { .. })), "{again:?}");
    let late = env.engine.decide(&id, "review", GateRequest::approve("ci")).await;
    assert!(matches!(late, Err(Error::RunNotWaiting { .. })), "{late:?}");
    let types: Vec<String> = env.events(&run_id).into_iter().map(|e| e.event_type).collect();
    assert!(types.ends_with(&["run.cancelled".to_owned(), "workflow.completed".to_owned()]));
}

/// A second engine over the same history and data folder, as after a restart.
fn restarted(env: &Env) -> Engine {
    let config = load(
        env.dir.path(),
        &std::fs::read_to_string(env.dir.path().join(".aegis.yaml")).expect("yaml"),
    );
    Engine::builder(config, Arc::clone(&env.history)).build().expect("engine")
}

#[tokio::test]
async fn a_waiting_run_survives_a_restart_and_is_approvable() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ", timeout: 3600"));
    let run_id = waiting_run(&env).await;
    env.engine.shutdown(Duration::from_secs(1)).await.expect("shutdown");
    let engine = restarted(&env);
    let recovery = engine.recover().await.expect("recover");
    assert_eq!(recovery.waiting, [RunId::new(&run_id)]);
    assert!(recovery.expired.is_empty());
    let outcome = engine
        .decide(&RunId::new(&run_id), "review", GateRequest::approve("ci"))
        .await
        .expect("approve");
    let summary = outcome.handle.expect("resumed").wait().await.expect("wait");
    assert_eq!(summary.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_deadline_that_passed_while_stopped_is_decided_at_start() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ", timeout: 0.3, on_timeout: approve"));
    let run_id = waiting_run(&env).await;
    // The first engine stops before the deadline; its timer must not decide.
    env.engine.shutdown(Duration::from_secs(1)).await.expect("shutdown");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(detail(&env.history, &run_id).await.run.status, RunStatus::Waiting);
    let engine = restarted(&env);
    let recovery = engine.recover().await.expect("recover");
    assert_eq!(recovery.expired, [RunId::new(&run_id)]);
    assert!(recovery.waiting.is_empty());
    let d = settled(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(d.gate_decisions[0].by, "timeout");
}

#[tokio::test]
async fn a_decision_recorded_before_a_crash_is_carried_out_at_start() {
    let svc = qa_service().await;
    let env = env(&review_yaml(&svc.url(), ""));
    let run_id = waiting_run(&env).await;
    // The process recorded the decision and died before resuming the run.
    let decision = aegis_history::GateDecision {
        gate_id: "review".into(),
        decision: GateDecisionKind::Approve,
        by: "ci".into(),
        at: jiff::Timestamp::now(),
        comment: None,
        patch: None,
        artifact_before: None,
        artifact_after: None,
    };
    env.history.record_gate_decision(&RunId::new(&run_id), &decision).await.expect("record");
    let engine = restarted(&env);
    let recovery = engine.recover().await.expect("recover");
    assert_eq!(recovery.resumed, [RunId::new(&run_id)]);
    let d = settled(&env.history, &run_id).await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_gate_without_an_artifact_times_out_to_reject_by_default() {
    let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load(
        dir.path(),
        "data_dir: ./data\nworkflows:\n  w:\n    steps:\n      - { id: review, type: gate, timeout: 0.1 }\n      - { id: report, type: report }\n",
    );
    let engine = Engine::builder(config, Arc::clone(&history)).build().expect("engine");
    let run = engine.run("w", RunOptions::new(Trigger::Api)).await.expect("run");
    let d = settled(&history, &run.run_id).await;
    assert_eq!(d.run.status, RunStatus::Rejected);
}
