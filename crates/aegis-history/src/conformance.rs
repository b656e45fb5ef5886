//! The backend-agnostic conformance suite every `HistoryBackend` must pass.
//!
//! Each check is an async function taking a [`Store`], a way to open (and,
//! for persistent stores, reopen) one backend. [`conformance_tests!`](crate::conformance_tests)
//! expands to one `#[tokio::test]` per check, so an embedder runs the whole
//! suite on its own backend with:
//!
//! ```ignore
//! mod my_backend {
//!     aegis_history::conformance_tests!(crate::MyStore::new());
//! }
//! ```
//!
//! (the calling crate needs `tokio` with the `macros` and `rt-multi-thread`
//! features as a dev-dependency). Checks panic on failure, like tests do.

#![expect(clippy::unwrap_used, reason = "test support code: a failed check panics")]

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::json;

use crate::{
    Attempt, CloseSteps, Error, EventRecord, GateDecision, GateDecisionKind, HistoryBackend,
    HistoryOptions, ListQuery, MAX_PAGE_SIZE, NewRun, PendingGate, Result, RunDetail, RunId,
    RunRecord, RunStatus, RunUpdate, StepRecord, StepStatus, Transition, Trigger, Write,
};
use crate::{
    Delivery, DeliveryAttempt, DeliveryClaim, DeliveryOutcome, DeliveryQuery, DeliveryResult,
    DeliveryStatus, NewDelivery,
};

/// Opens the backend under test.
#[async_trait]
pub trait Store: Send {
    /// Opens the store with these options. For a persistent store, opening
    /// again after every handle of the previous backend was dropped must see
    /// the same data.
    async fn open(&mut self, options: HistoryOptions) -> Result<Arc<dyn HistoryBackend>>;

    /// Whether data survives dropping the backend and opening it again.
    fn is_persistent(&self) -> bool;
}

/// Expands to one `#[tokio::test]` per conformance check, each calling
/// `$store` for a fresh [`Store`].
#[macro_export]
macro_rules! conformance_tests {
    ($store:expr) => {
        $crate::conformance_tests!(@each $store;
            create_and_get_round_trip,
            write_errors,
            step_upsert_and_reexecution,
            gates,
            list_filters_and_order,
            pagination_exactly_once_while_inserting,
            invalid_cursor,
            retention_keeps_newest_finished,
            retention_lists_the_runs_it_deleted,
            concurrent_writers_lose_nothing,
            write_batches,
            ledger_append_only_and_contiguous,
            transitions_compare_and_set,
            commits_are_atomic,
            concurrent_transitions_one_winner,
            recovery_query,
            persistence_across_reopen,
            outbox_claim_and_complete,
            outbox_retry_scheduling,
            outbox_redeliver,
            outbox_log_and_retention,
            outbox_commits_with_its_event,
        );
    };
    (@each $store:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::$check($store).await;
            }
        )+
    };
}

/// A timestamp `secs` seconds after a fixed origin, plus some nanoseconds so
/// backends must keep full precision.
pub fn ts(secs: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(1_700_000_000 + secs) * 1_000_000_000 + 123_456_789)
        .unwrap()
}

/// A new run of `workflow` created at [`ts`]`(secs)`.
pub fn new_run(id: &str, workflow: &str, secs: i64) -> NewRun {
    NewRun {
        id: RunId::new(id),
        workflow: workflow.to_owned(),
        trigger: Trigger::Api,
        request_id: Some(format!("req-{id}")),
        created_at: ts(secs),
    }
}

/// A finished step with one successful attempt.
pub fn finished_step(index: u32, at: i64) -> StepRecord {
    StepRecord {
        execution: 0,
        index,
        step_id: format!("step{index}"),
        step_type: "http".to_owned(),
        status: StepStatus::Succeeded,
        error: None,
        started_at: Some(ts(at)),
        completed_at: Some(ts(at + 1)),
        duration_ms: Some(1000),
        data: Some(json!({ "index": index })),
        attempts: vec![Attempt {
            attempt: 1,
            success: true,
            error: None,
            duration_ms: 1000,
            started_at: ts(at),
        }],
    }
}

fn finish(status: RunStatus, at: i64) -> RunUpdate {
    RunUpdate {
        status,
        started_at: None,
        completed_at: Some(ts(at)),
        duration_ms: Some(5),
        error: None,
    }
}

async fn create(history: &dyn HistoryBackend, runs: &[NewRun]) {
    for run in runs {
        history.create_run(run).await.unwrap();
    }
}

/// Reads every page of `query` and returns the runs in order.
async fn all_pages(history: &dyn HistoryBackend, mut query: ListQuery) -> Vec<RunRecord> {
    let mut out = Vec::new();
    loop {
        let page = history.list_runs(&query).await.unwrap();
        assert!(page.runs.len() <= query.limit as usize);
        out.extend(page.runs);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return out,
        }
    }
}

fn ids(runs: &[RunRecord]) -> Vec<&str> {
    runs.iter().map(|r| r.id.as_str()).collect()
}

/// Sorts runs the way lists must return them: newest first by `(created_at, id)`.
fn newest_first(runs: &mut [RunRecord]) {
    runs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
}

/// A run is stored with every field, and reads back exactly as written.
pub async fn create_and_get_round_trip(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("r1", "nightly", 0);
    history.create_run(&run).await.unwrap();

    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run, RunRecord::from_new(&run));
    assert_eq!(detail.run.status, RunStatus::Queued);
    assert!(detail.steps.is_empty());

    let started = RunUpdate { started_at: Some(ts(1)), ..RunUpdate::status(RunStatus::Running) };
    history.update_run(&run.id, &started).await.unwrap();
    let mut failing = finished_step(0, 1);
    failing.status = StepStatus::Running;
    failing.completed_at = None;
    failing.duration_ms = None;
    failing.data = None;
    failing.attempts.clear();
    history.record_step(&run.id, &failing).await.unwrap();

    let retried = StepRecord {
        status: StepStatus::Failed,
        error: Some("connection refused".to_owned()),
        completed_at: Some(ts(3)),
        duration_ms: Some(2000),
        data: Some(json!({ "failures": [{ "id": 1, "title": "login" }] })),
        attempts: vec![
            Attempt {
                attempt: 1,
                success: false,
                error: Some("timeout".to_owned()),
                duration_ms: 900,
                started_at: ts(1),
            },
            Attempt {
                attempt: 2,
                success: false,
                error: Some("connection refused".to_owned()),
                duration_ms: 1100,
                started_at: ts(2),
            },
        ],
        ..failing.clone()
    };
    history.record_step(&run.id, &retried).await.unwrap();
    let skipped = StepRecord {
        index: 1,
        step_id: "notify".to_owned(),
        status: StepStatus::Skipped,
        started_at: None,
        ..failing.clone()
    };
    history.record_step(&run.id, &skipped).await.unwrap();
    let failed = RunUpdate {
        status: RunStatus::Failed,
        started_at: None,
        completed_at: Some(ts(4)),
        duration_ms: Some(3000),
        error: Some("step step0 failed".to_owned()),
    };
    history.update_run(&run.id, &failed).await.unwrap();

    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    let mut expected = RunRecord::from_new(&run);
    expected.apply(&started);
    expected.apply(&failed);
    assert_eq!(detail.run, expected);
    assert_eq!(detail.run.started_at, Some(ts(1)), "None fields keep the stored value");
    assert_eq!(detail.steps, vec![retried.clone(), skipped.clone()]);
    assert!(detail.steps[1].skipped());
    assert!(!detail.steps[0].success());

    assert_eq!(history.get_run(&RunId::new("missing")).await.unwrap(), None);
    history.ping().await.unwrap();
}

/// Writes that cannot apply fail with the matching error and change nothing.
pub async fn write_errors(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("r1", "nightly", 0);
    history.create_run(&run).await.unwrap();

    let mut duplicate = run.clone();
    duplicate.workflow = "other".to_owned();
    let err = history.create_run(&duplicate).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateRun { ref run_id } if run_id == "r1"), "{err:?}");
    assert_eq!(history.get_run(&run.id).await.unwrap().unwrap().run.workflow, "nightly");

    let missing = RunId::new("missing");
    let err = history.update_run(&missing, &RunUpdate::status(RunStatus::Running)).await;
    assert!(matches!(err, Err(Error::RunNotFound { .. })), "{err:?}");
    let err = history.record_step(&missing, &finished_step(0, 0)).await;
    assert!(matches!(err, Err(Error::RunNotFound { .. })), "{err:?}");
    let gate = PendingGate {
        run_id: missing.clone(),
        gate_id: "review".to_owned(),
        step_index: 0,
        message: None,
        artifact: None,
        since: ts(0),
        deadline: None,
    };
    let err = history.add_pending_gate(&gate).await;
    assert!(matches!(err, Err(Error::RunNotFound { .. })), "{err:?}");
    assert!(history.pending_gates().await.unwrap().is_empty());
    assert!(history.get_run(&missing).await.unwrap().is_none());
    assert_eq!(history.recent(10).await.unwrap().len(), 1);
}

/// A step recorded when it starts and again when it ends is one record; a
/// re-execution after a gate rejection is a separate record.
pub async fn step_upsert_and_reexecution(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("r1", "nightly", 0);
    history.create_run(&run).await.unwrap();

    let mut three_attempts = finished_step(2, 10);
    three_attempts.attempts = (1..=3)
        .map(|attempt| Attempt {
            attempt,
            success: attempt == 3,
            error: (attempt < 3).then(|| format!("attempt {attempt} failed")),
            duration_ms: 10,
            started_at: ts(10 + i64::from(attempt)),
        })
        .collect();
    history.record_step(&run.id, &three_attempts).await.unwrap();
    // Recording again replaces the record and all its attempts.
    let replaced = finished_step(2, 20);
    history.record_step(&run.id, &replaced).await.unwrap();
    let first = finished_step(0, 1);
    history.record_step(&run.id, &first).await.unwrap();
    let rerun = StepRecord { execution: 1, ..finished_step(0, 30) };
    history.record_step(&run.id, &rerun).await.unwrap();

    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.steps, vec![first, replaced, rerun]);
}

/// Pending gates are listed across runs; a decision removes its gate
/// atomically and a second decision on the same gate is refused.
pub async fn gates(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let a = new_run("a", "triage", 0);
    let b = new_run("b", "triage", 1);
    create(&*history, &[a.clone(), b.clone()]).await;
    for run in [&a, &b] {
        history.update_run(&run.id, &RunUpdate::status(RunStatus::Waiting)).await.unwrap();
    }
    let gate_b = PendingGate {
        run_id: b.id.clone(),
        gate_id: "review".to_owned(),
        step_index: 3,
        message: Some("Check the failures".to_owned()),
        artifact: Some("analyze".to_owned()),
        since: ts(5),
        deadline: Some(ts(3605)),
    };
    let gate_a = PendingGate {
        run_id: a.id.clone(),
        gate_id: "review".to_owned(),
        step_index: 2,
        message: None,
        artifact: None,
        since: ts(6),
        deadline: None,
    };
    history.add_pending_gate(&gate_b).await.unwrap();
    history.add_pending_gate(&gate_a).await.unwrap();
    assert_eq!(history.pending_gates().await.unwrap(), vec![gate_b.clone(), gate_a.clone()]);
    assert_eq!(history.get_run(&b.id).await.unwrap().unwrap().pending_gates, vec![gate_b.clone()]);

    let reject = GateDecision {
        gate_id: "review".to_owned(),
        decision: GateDecisionKind::Reject,
        by: "key-ops".to_owned(),
        at: ts(10),
        comment: Some("two are flaky".to_owned()),
        patch: Some(json!([{ "op": "remove", "path": "/failures/1" }])),
        artifact_before: Some(json!({ "failures": [1, 2] })),
        artifact_after: Some(json!({ "failures": [1] })),
    };
    history.record_gate_decision(&b.id, &reject).await.unwrap();
    assert_eq!(history.pending_gates().await.unwrap(), vec![gate_a.clone()]);

    let second = GateDecision { decision: GateDecisionKind::Approve, ..reject.clone() };
    let err = history.record_gate_decision(&b.id, &second).await.unwrap_err();
    assert!(matches!(err, Error::GateNotPending { .. }), "{err:?}");

    // retry_from sends the run back through the gate: it waits again and
    // gets a second decision.
    let again = PendingGate { since: ts(20), deadline: None, ..gate_b.clone() };
    history.add_pending_gate(&again).await.unwrap();
    let timeout = GateDecision {
        decision: GateDecisionKind::TimeoutApprove,
        by: "timeout".to_owned(),
        at: ts(30),
        comment: None,
        patch: None,
        artifact_before: None,
        artifact_after: None,
        ..reject.clone()
    };
    history.record_gate_decision(&b.id, &timeout).await.unwrap();
    let detail = history.get_run(&b.id).await.unwrap().unwrap();
    assert_eq!(detail.gate_decisions, vec![reject, timeout]);
    assert!(detail.pending_gates.is_empty());
    assert_eq!(history.pending_gates().await.unwrap(), vec![gate_a]);
}

/// Lists filter by workflow and status and return the newest first, ties
/// broken by id.
pub async fn list_filters_and_order(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let mut all = Vec::new();
    for i in 0..30_i64 {
        let workflow = ["nightly", "smoke", "triage"][(i % 3) as usize];
        // Pairs of runs share a creation time, so the id must break ties.
        let run = new_run(&format!("run-{i:03}"), workflow, i / 2);
        history.create_run(&run).await.unwrap();
        let mut record = RunRecord::from_new(&run);
        if i % 4 == 0 {
            let update = finish(RunStatus::Failed, 100);
            history.update_run(&run.id, &update).await.unwrap();
            record.apply(&update);
        }
        all.push(record);
    }
    newest_first(&mut all);

    let page = history.list_runs(&ListQuery { limit: 100, ..ListQuery::default() }).await.unwrap();
    assert_eq!(page.runs, all);
    assert_eq!(page.next_cursor, None);
    assert_eq!(history.recent(5).await.unwrap(), all[..5].to_vec());

    let smoke: Vec<RunRecord> = all.iter().filter(|r| r.workflow == "smoke").cloned().collect();
    let page = history.workflow_runs("smoke", 100, None).await.unwrap();
    assert_eq!(ids(&page.runs), ids(&smoke));

    let failed: Vec<RunRecord> =
        all.iter().filter(|r| r.status == RunStatus::Failed).cloned().collect();
    let query = ListQuery { status: Some(RunStatus::Failed), limit: 100, ..ListQuery::default() };
    assert_eq!(history.list_runs(&query).await.unwrap().runs, failed);

    let both: Vec<RunRecord> = failed.iter().filter(|r| r.workflow == "nightly").cloned().collect();
    assert!(!both.is_empty());
    let query = ListQuery {
        workflow: Some("nightly".to_owned()),
        status: Some(RunStatus::Failed),
        limit: 100,
        cursor: None,
    };
    assert_eq!(history.list_runs(&query).await.unwrap().runs, both);

    let query = ListQuery { workflow: Some("unknown".to_owned()), ..query };
    assert!(history.list_runs(&query).await.unwrap().runs.is_empty());
    assert!(history.recent(0).await.unwrap().is_empty());
    let huge = ListQuery { limit: u32::MAX, ..ListQuery::default() };
    let page = history.list_runs(&huge).await.unwrap();
    assert_eq!(page.runs.len(), all.len().min(MAX_PAGE_SIZE as usize));
}

/// Paging returns every run that existed when paging began exactly once,
/// in order, while newer runs keep arriving (from this task between pages
/// and from a concurrent task).
pub async fn pagination_exactly_once_while_inserting(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let mut existing = Vec::new();
    for i in 0..120_i64 {
        let workflow = if i % 2 == 0 { "even" } else { "odd" };
        // Groups of three share a creation time.
        let run = new_run(&format!("old-{i:04}"), workflow, i / 3);
        history.create_run(&run).await.unwrap();
        existing.push(RunRecord::from_new(&run));
    }
    newest_first(&mut existing);

    let writer = {
        let history = Arc::clone(&history);
        tokio::spawn(async move {
            for i in 0..200_i64 {
                let workflow = if i % 2 == 0 { "even" } else { "odd" };
                history.create_run(&new_run(&format!("bg-{i:04}"), workflow, 1000 + i)).await?;
            }
            Ok::<(), Error>(())
        })
    };

    for workflow in [None, Some("even")] {
        let expected: Vec<&RunRecord> =
            existing.iter().filter(|r| workflow.is_none_or(|w| r.workflow == w)).collect();
        let mut query =
            ListQuery { workflow: workflow.map(str::to_owned), limit: 7, ..ListQuery::default() };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = history.list_runs(&query).await.unwrap();
            pages += 1;
            // Newer runs arrive between pages.
            for j in 0..3 {
                let id = format!("new-{}-{pages:03}-{j}", workflow.unwrap_or("all"));
                history.create_run(&new_run(&id, "even", 500 + pages)).await.unwrap();
            }
            seen.extend(page.runs);
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        // The first page may include runs created before it was read; drop
        // those newer than the snapshot and check the rest exactly.
        let old: Vec<&RunRecord> =
            seen.iter().filter(|r| r.id.as_str().starts_with("old-")).collect();
        assert_eq!(ids_ref(&old), ids_ref(&expected), "workflow {workflow:?}");
        let unique: BTreeSet<&str> = seen.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(unique.len(), seen.len(), "a run was returned twice");
        for pair in seen.windows(2) {
            assert!(
                (pair[0].created_at, &pair[0].id) > (pair[1].created_at, &pair[1].id),
                "out of order: {} then {}",
                pair[0].id,
                pair[1].id
            );
        }
    }
    writer.await.unwrap().unwrap();
}

fn ids_ref<'a>(runs: &[&'a RunRecord]) -> Vec<&'a str> {
    runs.iter().map(|r| r.id.as_str()).collect()
}

/// A cursor the store did not produce is an error, not a panic.
pub async fn invalid_cursor(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    history.create_run(&new_run("r1", "nightly", 0)).await.unwrap();
    for cursor in ["", "garbage", "zz", "63313a", "\u{1f600}"] {
        let query =
            ListQuery { cursor: Some(cursor.to_owned()), limit: 10, ..ListQuery::default() };
        let err = history.list_runs(&query).await.unwrap_err();
        assert!(matches!(err, Error::InvalidCursor { .. }), "{cursor:?}: {err:?}");
    }
}

/// Every run retention deletes is listed by `pruned_runs`, oldest deletion
/// first, until `forget_pruned` drops it; a persistent store keeps the list
/// across a reopen (the engine removes the runs' folders from it).
pub async fn retention_lists_the_runs_it_deleted(mut store: impl Store) {
    let history = store.open(HistoryOptions::with_max_records(2)).await.unwrap();
    assert!(history.pruned_runs(100).await.unwrap().is_empty());
    for i in 0..5_i64 {
        let run = new_run(&format!("done-{i}"), "nightly", i);
        history.create_run(&run).await.unwrap();
        history.update_run(&run.id, &finish(RunStatus::Succeeded, 10 + i)).await.unwrap();
    }
    let pruned = history.pruned_runs(100).await.unwrap();
    assert_eq!(pruned, [RunId::new("done-0"), RunId::new("done-1"), RunId::new("done-2")]);
    assert_eq!(history.pruned_runs(2).await.unwrap(), pruned[..2]);
    history.forget_pruned(&[RunId::new("done-1"), RunId::new("never")]).await.unwrap();
    assert_eq!(
        history.pruned_runs(100).await.unwrap(),
        [RunId::new("done-0"), RunId::new("done-2")]
    );
    if store.is_persistent() {
        drop(history);
        let history = store.open(HistoryOptions::with_max_records(2)).await.unwrap();
        assert_eq!(
            history.pruned_runs(100).await.unwrap(),
            [RunId::new("done-0"), RunId::new("done-2")]
        );
        history.forget_pruned(&[RunId::new("done-0"), RunId::new("done-2")]).await.unwrap();
        assert!(history.pruned_runs(100).await.unwrap().is_empty());
    }
}

/// `max_records` keeps the newest N finished runs per workflow, deletes the
/// rest with their steps and gates, and never deletes an active run.
pub async fn retention_keeps_newest_finished(mut store: impl Store) {
    let history = store.open(HistoryOptions::with_max_records(3)).await.unwrap();
    // Active runs older than everything else.
    let active = [
        (new_run("active-queued", "nightly", 0), RunStatus::Queued),
        (new_run("active-running", "nightly", 1), RunStatus::Running),
        (new_run("active-waiting", "nightly", 2), RunStatus::Waiting),
    ];
    for (run, status) in &active {
        history.create_run(run).await.unwrap();
        history.update_run(&run.id, &RunUpdate::status(*status)).await.unwrap();
    }
    for i in 0..8_i64 {
        let run = new_run(&format!("done-{i}"), "nightly", 10 + i);
        history.create_run(&run).await.unwrap();
        history.record_step(&run.id, &finished_step(0, 10 + i)).await.unwrap();
        let status = if i % 2 == 0 { RunStatus::Succeeded } else { RunStatus::Failed };
        history.update_run(&run.id, &finish(status, 20 + i)).await.unwrap();
    }
    for i in 0..2_i64 {
        let run = new_run(&format!("other-{i}"), "smoke", i);
        history.create_run(&run).await.unwrap();
        history.update_run(&run.id, &finish(RunStatus::Succeeded, 5)).await.unwrap();
    }

    let nightly = all_pages(
        &*history,
        ListQuery { workflow: Some("nightly".to_owned()), limit: 50, ..ListQuery::default() },
    )
    .await;
    assert_eq!(
        ids(&nightly),
        ["done-7", "done-6", "done-5", "active-waiting", "active-running", "active-queued"]
    );
    assert_eq!(history.workflow_runs("smoke", 50, None).await.unwrap().runs.len(), 2);
    assert!(history.get_run(&RunId::new("done-0")).await.unwrap().is_none());
    assert_eq!(history.apply_retention().await.unwrap(), 0);

    // Finishing an active run makes it eligible like any other.
    let run = &active[1].0;
    history.update_run(&run.id, &finish(RunStatus::Interrupted, 40)).await.unwrap();
    let nightly = history.workflow_runs("nightly", 50, None).await.unwrap();
    assert_eq!(
        ids(&nightly.runs),
        ["done-7", "done-6", "done-5", "active-waiting", "active-queued"]
    );
}

/// 16 tasks writing whole runs at once lose nothing.
pub async fn concurrent_writers_lose_nothing(mut store: impl Store) {
    const WRITERS: usize = 16;
    const RUNS: usize = 25;
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let history = Arc::clone(&history);
            tokio::spawn(async move {
                for r in 0..RUNS {
                    let run =
                        new_run(&format!("w{w:02}-r{r:03}"), &format!("wf{}", w % 4), r as i64);
                    history.create_run(&run).await?;
                    history.update_run(&run.id, &RunUpdate::status(RunStatus::Running)).await?;
                    for s in 0..3 {
                        history.record_step(&run.id, &finished_step(s, r as i64)).await?;
                    }
                    history
                        .update_run(&run.id, &finish(RunStatus::Succeeded, r as i64 + 5))
                        .await?;
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let runs = all_pages(&*history, ListQuery { limit: 97, ..ListQuery::default() }).await;
    assert_eq!(runs.len(), WRITERS * RUNS);
    for run in &runs {
        assert_eq!(run.status, RunStatus::Succeeded, "{}", run.id);
        let detail: RunDetail = history.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(detail.steps.len(), 3, "{}", run.id);
    }
}

/// A batch applies in order with one result per write; a failing write is
/// reported and changes nothing, the others apply. Concurrent batches lose
/// nothing.
pub async fn write_batches(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("r1", "nightly", 0);
    let gate = PendingGate {
        run_id: run.id.clone(),
        gate_id: "review".to_owned(),
        step_index: 1,
        message: Some("look".to_owned()),
        artifact: None,
        since: ts(3),
        deadline: None,
    };
    let missing = RunId::new("missing");
    let waiting = RunUpdate { duration_ms: Some(3), ..RunUpdate::status(RunStatus::Waiting) };
    let results = history
        .write_batch(vec![
            Write::CreateRun(run.clone()),
            Write::UpdateRun(run.id.clone(), RunUpdate::status(RunStatus::Running)),
            Write::RecordStep(missing.clone(), finished_step(0, 1)),
            Write::RecordStep(run.id.clone(), finished_step(0, 1)),
            Write::AddPendingGate(gate.clone()),
            Write::UpdateRun(run.id.clone(), waiting),
            Write::CreateRun(run.clone()),
        ])
        .await;
    assert_eq!(results.len(), 7);
    assert!(matches!(results[2], Err(Error::RunNotFound { .. })), "{results:?}");
    assert!(matches!(results[6], Err(Error::DuplicateRun { .. })), "{results:?}");
    for (i, result) in results.iter().enumerate().filter(|(i, _)| ![2, 6].contains(i)) {
        assert!(result.is_ok(), "write {i}: {result:?}");
    }
    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Waiting);
    assert_eq!(detail.run.duration_ms, Some(3));
    assert_eq!(detail.steps, vec![finished_step(0, 1)]);
    assert_eq!(detail.pending_gates, vec![gate]);
    assert!(history.get_run(&missing).await.unwrap().is_none());
    assert!(history.write_batch(vec![]).await.is_empty());

    const WRITERS: usize = 8;
    const RUNS: usize = 20;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let history = Arc::clone(&history);
            tokio::spawn(async move {
                for r in 0..RUNS {
                    let run = new_run(&format!("b{w}-{r:02}"), "batched", r as i64);
                    let id = run.id.clone();
                    let mut writes = vec![Write::CreateRun(run)];
                    writes
                        .extend((0..3).map(|s| Write::RecordStep(id.clone(), finished_step(s, 1))));
                    writes.push(Write::UpdateRun(id, finish(RunStatus::Succeeded, r as i64 + 5)));
                    for result in history.write_batch(writes).await {
                        result?;
                    }
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let query =
        ListQuery { workflow: Some("batched".to_owned()), limit: 500, ..ListQuery::default() };
    let runs = all_pages(&*history, query).await;
    assert_eq!(runs.len(), WRITERS * RUNS);
    for run in &runs {
        assert_eq!(run.status, RunStatus::Succeeded, "{}", run.id);
        assert_eq!(history.get_run(&run.id).await.unwrap().unwrap().steps.len(), 3);
    }
}

/// `unfinished` returns the queued, running and waiting runs, oldest first,
/// each in its own list.
pub async fn recovery_query(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let statuses = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Queued,
        RunStatus::Waiting,
        RunStatus::Failed,
        RunStatus::Running,
        RunStatus::Cancelled,
        RunStatus::Queued,
        RunStatus::Interrupted,
        RunStatus::Rejected,
    ];
    for (i, status) in statuses.iter().enumerate() {
        let run = new_run(&format!("run-{i}"), "nightly", i as i64);
        history.create_run(&run).await.unwrap();
        if *status != RunStatus::Queued {
            history.update_run(&run.id, &RunUpdate::status(*status)).await.unwrap();
        }
    }
    let unfinished = history.unfinished().await.unwrap();
    let names = |runs: &[RunRecord]| runs.iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&unfinished.running), ["run-0", "run-5"]);
    assert_eq!(names(&unfinished.queued), ["run-2", "run-7"]);
    assert_eq!(names(&unfinished.waiting), ["run-3"]);
    assert_eq!(unfinished.len(), 5);

    // Recovery marks the running ones interrupted; they are then finished.
    for run in &unfinished.running {
        history.update_run(&run.id, &finish(RunStatus::Interrupted, 50)).await.unwrap();
    }
    let unfinished = history.unfinished().await.unwrap();
    assert!(unfinished.running.is_empty());
    assert_eq!(unfinished.len(), 3);
}

/// For persistent stores: everything written is there after reopening.
pub async fn persistence_across_reopen(mut store: impl Store) {
    if !store.is_persistent() {
        return;
    }
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..20_i64 {
        let run = new_run(&format!("run-{i:02}"), "nightly", i);
        history.create_run(&run).await.unwrap();
        history.record_step(&run.id, &finished_step(0, i)).await.unwrap();
        if i % 2 == 0 {
            history.update_run(&run.id, &finish(RunStatus::Succeeded, i + 1)).await.unwrap();
        } else {
            history.update_run(&run.id, &RunUpdate::status(RunStatus::Waiting)).await.unwrap();
            let gate = PendingGate {
                run_id: run.id.clone(),
                gate_id: "review".to_owned(),
                step_index: 1,
                message: Some("look".to_owned()),
                artifact: Some("step0".to_owned()),
                since: ts(i),
                deadline: Some(ts(i + 60)),
            };
            history.add_pending_gate(&gate).await.unwrap();
        }
        ids.push(run.id);
    }
    let mut before = Vec::new();
    for id in &ids {
        before.push(history.get_run(id).await.unwrap().unwrap());
    }
    let pending = history.pending_gates().await.unwrap();
    drop(history);

    let history = store.open(HistoryOptions::default()).await.unwrap();
    let mut after = Vec::new();
    for id in &ids {
        after.push(history.get_run(id).await.unwrap().unwrap());
    }
    assert_eq!(after, before);
    assert_eq!(history.pending_gates().await.unwrap(), pending);
    assert_eq!(history.unfinished().await.unwrap().waiting.len(), 10);
    // And the reopened store still accepts writes.
    history.create_run(&new_run("after", "nightly", 100)).await.unwrap();
    assert_eq!(history.recent(1).await.unwrap()[0].id.as_str(), "after");
}

/// An event record of run `run` with `seq`.
pub fn event(run: &RunId, seq: u64) -> EventRecord {
    EventRecord {
        run_id: run.clone(),
        seq,
        id: format!("{run}-{seq}"),
        event_type: "step.completed".to_owned(),
        time: ts(seq as i64),
        envelope: format!("{{\"seq\":{seq},\"run_id\":\"{run}\"}}"),
    }
}

/// The ledger is append-only: `seq` starts at 1 and grows by one; a gap, a
/// reuse or an event of an unknown run is refused; reads after a `seq` are
/// in order and bounded; the envelope comes back byte for byte; retention
/// deletes a run's events with it.
pub async fn ledger_append_only_and_contiguous(mut store: impl Store) {
    let history =
        store.open(HistoryOptions { max_records: 1, ..HistoryOptions::default() }).await.unwrap();
    let run = new_run("l1", "nightly", 0);
    history.create_run(&run).await.unwrap();
    assert_eq!(history.last_seq(&run.id).await.unwrap(), 0);
    assert!(matches!(
        history.commit(vec![Write::AppendEvent(event(&run.id, 2))]).await,
        Err(Error::SeqConflict { seq: 2, .. })
    ));
    for seq in 1..=5 {
        history.commit(vec![Write::AppendEvent(event(&run.id, seq))]).await.unwrap();
    }
    for seq in [1, 5, 7] {
        assert!(
            matches!(
                history.commit(vec![Write::AppendEvent(event(&run.id, seq))]).await,
                Err(Error::SeqConflict { .. })
            ),
            "seq {seq} accepted"
        );
    }
    let missing = RunId::new("missing");
    assert!(history.commit(vec![Write::AppendEvent(event(&missing, 1))]).await.is_err());
    assert_eq!(history.last_seq(&run.id).await.unwrap(), 5);
    let all = history.events(&run.id, 0, 100).await.unwrap();
    assert_eq!(all, (1..=5).map(|seq| event(&run.id, seq)).collect::<Vec<_>>());
    let tail = history.events(&run.id, 3, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(history.events(&run.id, 1, 2).await.unwrap().len(), 2);
    assert!(history.events(&missing, 0, 10).await.unwrap().is_empty());

    // Two events in one transaction take consecutive seqs.
    history
        .commit(vec![Write::AppendEvent(event(&run.id, 6)), Write::AppendEvent(event(&run.id, 7))])
        .await
        .unwrap();
    assert_eq!(history.last_seq(&run.id).await.unwrap(), 7);
    // Several at once (more than one statement's worth): refused whole when
    // they start past the end, reuse a seq, or skip one; else all in order.
    let events = |seqs: std::ops::RangeInclusive<u64>, id: &RunId| -> Vec<Write> {
        seqs.map(|seq| Write::AppendEvent(event(id, seq))).collect()
    };
    for (seqs, refused) in [(9..=12, 9), (7..=10, 7)] {
        let result = history.commit(events(seqs, &run.id)).await;
        assert!(
            matches!(&result, Err(Error::SeqConflict { seq, .. }) if *seq == refused),
            "{result:?}"
        );
    }
    let mut skipping = events(8..=10, &run.id);
    skipping.push(Write::AppendEvent(event(&run.id, 12)));
    assert!(matches!(history.commit(skipping).await, Err(Error::SeqConflict { seq: 12, .. })));
    assert_eq!(history.last_seq(&run.id).await.unwrap(), 7);
    assert!(history.commit(events(1..=3, &missing)).await.is_err());
    let other = new_run("l3", "nightly", 1);
    history.create_run(&other).await.unwrap();
    let mut mixed = events(8..=20, &run.id);
    mixed.extend(events(1..=2, &other.id));
    mixed.extend(events(21..=22, &run.id));
    history.commit(mixed).await.unwrap();
    let all = history.events(&run.id, 0, 100).await.unwrap();
    assert_eq!(all, (1..=22).map(|seq| event(&run.id, seq)).collect::<Vec<_>>());
    assert_eq!(history.last_seq(&other.id).await.unwrap(), 2);
    history.update_run(&other.id, &finish(RunStatus::Succeeded, 2)).await.unwrap();

    // Retention deletes the ledger with the run.
    history.update_run(&run.id, &finish(RunStatus::Succeeded, 1)).await.unwrap();
    let newer = new_run("l2", "nightly", 5);
    history.create_run(&newer).await.unwrap();
    history.update_run(&newer.id, &finish(RunStatus::Succeeded, 6)).await.unwrap();
    assert!(history.get_run(&run.id).await.unwrap().is_none());
    assert!(history.events(&run.id, 0, 100).await.unwrap().is_empty());
    let since = history.finished_since(ts(6)).await.unwrap();
    assert_eq!(since, vec![newer.id.clone()]);
}

/// A transition applies only from the statuses it names; otherwise it
/// fails with the committed status and changes nothing.
pub async fn transitions_compare_and_set(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("t1", "nightly", 0);
    history.create_run(&run).await.unwrap();
    let to = |status, from: &[RunStatus]| {
        Write::Transition(
            run.id.clone(),
            Transition { from: from.to_vec(), update: RunUpdate::status(status) },
        )
    };
    history.commit(vec![to(RunStatus::Running, &[RunStatus::Queued])]).await.unwrap();
    match history.commit(vec![to(RunStatus::Running, &[RunStatus::Queued])]).await {
        Err(Error::StatusConflict { status, .. }) => assert_eq!(status, "running"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // "Still running" (each step's start) holds and changes nothing; "still
    // waiting" does not hold.
    history.commit(vec![to(RunStatus::Running, &[RunStatus::Running])]).await.unwrap();
    assert_eq!(history.get_run(&run.id).await.unwrap().unwrap().run.status, RunStatus::Running);
    match history.commit(vec![to(RunStatus::Waiting, &[RunStatus::Waiting])]).await {
        Err(Error::StatusConflict { status, .. }) => assert_eq!(status, "running"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    history
        .commit(vec![to(RunStatus::Cancelled, &[RunStatus::Queued, RunStatus::Running])])
        .await
        .unwrap();
    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Cancelled);
    // No transition leaves a finished run.
    let every: Vec<RunStatus> =
        RunStatus::ALL.iter().copied().filter(|s| !s.is_finished()).collect();
    assert!(matches!(
        history.commit(vec![to(RunStatus::Running, &every)]).await,
        Err(Error::StatusConflict { .. })
    ));
    assert!(matches!(
        history
            .commit(vec![Write::Transition(
                RunId::new("missing"),
                Transition { from: every.clone(), update: RunUpdate::status(RunStatus::Running) },
            )])
            .await,
        Err(Error::RunNotFound { .. })
    ));
}

/// A commit whose last write fails records none of its writes: not the
/// run it creates, not its events, not its status change, not its
/// decision; a reader never sees half of one.
pub async fn commits_are_atomic(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("a1", "nightly", 0);
    let failed = history
        .commit(vec![
            Write::CreateRun(run.clone()),
            Write::AppendEvent(event(&run.id, 1)),
            Write::AppendEvent(event(&run.id, 3)),
        ])
        .await;
    assert!(matches!(failed, Err(Error::SeqConflict { seq: 3, .. })), "{failed:?}");
    assert!(history.get_run(&run.id).await.unwrap().is_none());
    history
        .commit(vec![Write::CreateRun(run.clone()), Write::AppendEvent(event(&run.id, 1))])
        .await
        .unwrap();
    let gate = PendingGate {
        run_id: run.id.clone(),
        gate_id: "review".to_owned(),
        step_index: 1,
        message: None,
        artifact: None,
        since: ts(1),
        deadline: None,
    };
    history
        .commit(vec![
            Write::Transition(
                run.id.clone(),
                Transition {
                    from: vec![RunStatus::Queued],
                    update: RunUpdate::status(RunStatus::Waiting),
                },
            ),
            Write::AddPendingGate(gate.clone()),
            Write::AppendEvent(event(&run.id, 2)),
        ])
        .await
        .unwrap();
    let decision = GateDecision {
        gate_id: "review".to_owned(),
        decision: GateDecisionKind::Approve,
        by: "lead".to_owned(),
        at: ts(2),
        comment: None,
        patch: None,
        artifact_before: None,
        artifact_after: None,
    };
    // The decision, its running step closed and the status change would
    // commit, but the event's seq is taken: nothing of it stays.
    let mut running = finished_step(1, 1);
    running.status = StepStatus::Running;
    history.record_step(&run.id, &running).await.unwrap();
    let lost = history
        .commit(vec![
            Write::DecideGate(run.id.clone(), decision.clone()),
            Write::CloseSteps(
                run.id.clone(),
                CloseSteps { status: StepStatus::Failed, error: "cancelled".to_owned(), at: ts(3) },
            ),
            Write::Transition(
                run.id.clone(),
                Transition {
                    from: vec![RunStatus::Waiting],
                    update: RunUpdate::status(RunStatus::Running),
                },
            ),
            Write::AppendEvent(event(&run.id, 2)),
        ])
        .await;
    assert!(lost.is_err());
    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Waiting);
    assert_eq!(detail.pending_gates, vec![gate]);
    assert!(detail.gate_decisions.is_empty());
    assert_eq!(detail.steps[0].status, StepStatus::Running);
    assert_eq!(history.last_seq(&run.id).await.unwrap(), 2);
    // Now it commits, and a second decision loses.
    history
        .commit(vec![
            Write::DecideGate(run.id.clone(), decision.clone()),
            Write::CloseSteps(
                run.id.clone(),
                CloseSteps { status: StepStatus::Failed, error: "cancelled".to_owned(), at: ts(3) },
            ),
            Write::AppendEvent(event(&run.id, 3)),
        ])
        .await
        .unwrap();
    assert!(matches!(
        history.commit(vec![Write::DecideGate(run.id.clone(), decision)]).await,
        Err(Error::GateNotPending { .. })
    ));
    let detail = history.get_run(&run.id).await.unwrap().unwrap();
    assert!(detail.pending_gates.is_empty());
    assert_eq!(detail.gate_decisions.len(), 1);
    assert_eq!(detail.steps[0].status, StepStatus::Failed);
    assert_eq!(detail.steps[0].error.as_deref(), Some("cancelled"));
}

/// Of many concurrent compare-and-sets from the same status, exactly one
/// commits, with its event; the others fail and append nothing.
pub async fn concurrent_transitions_one_winner(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    for round in 0..10 {
        let run = new_run(&format!("c{round}"), "nightly", round);
        history.create_run(&run).await.unwrap();
        let tasks: Vec<_> = [RunStatus::Running, RunStatus::Cancelled]
            .into_iter()
            .cycle()
            .take(8)
            .map(|status| {
                let history = Arc::clone(&history);
                let id = run.id.clone();
                tokio::spawn(async move {
                    history
                        .commit(vec![
                            Write::Transition(
                                id.clone(),
                                Transition {
                                    from: vec![RunStatus::Queued],
                                    update: RunUpdate::status(status),
                                },
                            ),
                            Write::AppendEvent(event(&id, 1)),
                        ])
                        .await
                        .map(|()| status)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            if let Ok(status) = task.await.unwrap() {
                winners.push(status);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let detail = history.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(detail.run.status, winners[0]);
        assert_eq!(history.events(&run.id, 0, 10).await.unwrap().len(), 1);
    }
}

/// A delivery of event `seq` of run `run` to webhook `webhook`, due at `secs`.
pub fn delivery(id: &str, run: &RunId, seq: u64, webhook: u32, secs: i64) -> NewDelivery {
    NewDelivery {
        id: id.to_owned(),
        webhook,
        event_id: format!("{run}-{seq}"),
        run_id: run.clone(),
        event_type: "step.completed".to_owned(),
        envelope: format!("{{\"seq\":{seq},\"run_id\":\"{run}\"}}"),
        created_at: ts(secs),
    }
}

/// Creates run `run` with events `1..=n`, each with one delivery `"{run}-d{seq}"`
/// to `webhook`, due at `seq` seconds.
async fn run_with_deliveries(history: &dyn HistoryBackend, run: &str, n: u64, webhook: u32) {
    let new = new_run(run, "nightly", 0);
    let mut writes = vec![Write::CreateRun(new.clone())];
    for seq in 1..=n {
        writes.push(Write::AppendEvent(event(&new.id, seq)));
        writes.push(Write::EnqueueDelivery(delivery(
            &format!("{run}-d{seq}"),
            &new.id,
            seq,
            webhook,
            seq as i64,
        )));
    }
    history.commit(writes).await.unwrap();
}

fn claim(webhook: u32, now: i64, until: i64, limit: u32) -> DeliveryClaim {
    DeliveryClaim { webhook, now: ts(now), until: ts(until), limit }
}

fn delivery_ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.enqueued.id.as_str()).collect()
}

fn result(id: &str, attempt: u32, secs: i64, outcome: DeliveryOutcome) -> Write {
    Write::RecordDeliveryAttempt(DeliveryResult {
        id: id.to_owned(),
        attempt: DeliveryAttempt {
            attempt,
            at: ts(secs),
            status_code: Some(500),
            error: Some("status 500".to_owned()),
            duration_ms: 7,
        },
        outcome,
    })
}

async fn one(history: &dyn HistoryBackend, id: &str) -> crate::DeliveryDetail {
    let page = history
        .list_deliveries(&DeliveryQuery { limit: MAX_PAGE_SIZE, ..DeliveryQuery::default() })
        .await
        .unwrap();
    page.deliveries.into_iter().find(|d| d.delivery.enqueued.id == id).unwrap()
}

/// Claims take one webhook's due deliveries, earliest first, at most the
/// limit, each by one claimant until its lease lapses; recording an attempt
/// completes a delivery and keeps the attempt.
pub async fn outbox_claim_and_complete(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    run_with_deliveries(&*history, "o1", 3, 0).await;
    run_with_deliveries(&*history, "o2", 1, 1).await;
    // Not due yet: nothing.
    assert!(history.claim_deliveries(&claim(0, 0, 100, 10)).await.unwrap().is_empty());
    assert_eq!(history.next_delivery_due(0).await.unwrap(), Some(ts(1)));
    assert_eq!(history.next_delivery_due(7).await.unwrap(), None);
    let first = history.claim_deliveries(&claim(0, 10, 100, 2)).await.unwrap();
    assert_eq!(delivery_ids(&first), vec!["o1-d1", "o1-d2"]);
    assert_eq!(first[0].enqueued.envelope, event(&RunId::new("o1"), 1).envelope);
    assert_eq!(first[0].status, DeliveryStatus::Pending);
    assert_eq!(first[0].next_attempt_at, Some(ts(1)));
    let second = history.claim_deliveries(&claim(0, 10, 100, 10)).await.unwrap();
    assert_eq!(delivery_ids(&second), vec!["o1-d3"]);
    // Everything is claimed now; the other webhook's delivery is its own.
    assert!(history.claim_deliveries(&claim(0, 10, 100, 10)).await.unwrap().is_empty());
    assert_eq!(history.next_delivery_due(0).await.unwrap(), Some(ts(100)));
    // Releasing the claims makes them claimable at once (a restart).
    assert_eq!(history.release_delivery_claims().await.unwrap(), 3);
    assert_eq!(history.next_delivery_due(0).await.unwrap(), Some(ts(1)));
    assert_eq!(history.claim_deliveries(&claim(0, 10, 100, 10)).await.unwrap().len(), 3);
    assert_eq!(
        delivery_ids(&history.claim_deliveries(&claim(1, 10, 100, 10)).await.unwrap()),
        vec!["o2-d1"]
    );
    // One completes; the lease of the others lapses and they are claimable again.
    history.commit(vec![result("o1-d1", 1, 11, DeliveryOutcome::Delivered)]).await.unwrap();
    let again = history.claim_deliveries(&claim(0, 100, 200, 10)).await.unwrap();
    assert_eq!(delivery_ids(&again), vec!["o1-d2", "o1-d3"]);
    let done = one(&*history, "o1-d1").await;
    assert_eq!(done.delivery.status, DeliveryStatus::Delivered);
    assert_eq!(done.delivery.attempt_count, 1);
    assert_eq!(done.delivery.next_attempt_at, None);
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].status_code, Some(500));
    assert_eq!(done.attempts[0].duration_ms, 7);
    assert_eq!(done.attempts[0].at, ts(11));
    // Unknown deliveries are refused.
    assert!(matches!(
        history.commit(vec![result("nope", 1, 1, DeliveryOutcome::Delivered)]).await,
        Err(Error::DeliveryNotFound { .. })
    ));
}

/// A retry is due at the time it names and not before; gone and failed
/// deliveries are never claimed again.
pub async fn outbox_retry_scheduling(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    run_with_deliveries(&*history, "r1", 3, 0).await;
    assert_eq!(history.claim_deliveries(&claim(0, 5, 6, 10)).await.unwrap().len(), 3);
    history
        .commit(vec![
            result("r1-d1", 1, 5, DeliveryOutcome::Retry { at: ts(20) }),
            result("r1-d2", 1, 5, DeliveryOutcome::Gone),
            result("r1-d3", 1, 5, DeliveryOutcome::Failed),
        ])
        .await
        .unwrap();
    // The claim is released by the record: only the retry's time counts.
    assert_eq!(history.next_delivery_due(0).await.unwrap(), Some(ts(20)));
    assert!(history.claim_deliveries(&claim(0, 19, 30, 10)).await.unwrap().is_empty());
    let due = history.claim_deliveries(&claim(0, 20, 30, 10)).await.unwrap();
    assert_eq!(delivery_ids(&due), vec!["r1-d1"]);
    assert_eq!(due[0].attempt_count, 1);
    assert_eq!(due[0].next_attempt_at, Some(ts(20)));
    history
        .commit(vec![result("r1-d1", 2, 21, DeliveryOutcome::Retry { at: ts(40) })])
        .await
        .unwrap();
    let d1 = one(&*history, "r1-d1").await;
    assert_eq!(d1.delivery.status, DeliveryStatus::Pending);
    assert_eq!(d1.delivery.attempt_count, 2);
    assert_eq!(d1.delivery.next_attempt_at, Some(ts(40)));
    assert_eq!(
        d1.attempts.iter().map(|a| (a.attempt, a.at)).collect::<Vec<_>>(),
        vec![(1, ts(5)), (2, ts(21))]
    );
    assert_eq!(one(&*history, "r1-d2").await.delivery.status, DeliveryStatus::Gone);
    assert_eq!(one(&*history, "r1-d3").await.delivery.status, DeliveryStatus::Failed);
    assert!(history.claim_deliveries(&claim(0, 1000, 1001, 10)).await.unwrap().len() == 1);
}

/// Redelivering makes any delivery pending again, due at once, with a fresh
/// attempt count and its id; its earlier attempts stay in the log.
pub async fn outbox_redeliver(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    run_with_deliveries(&*history, "x1", 2, 0).await;
    history.claim_deliveries(&claim(0, 5, 6, 10)).await.unwrap();
    history
        .commit(vec![
            result("x1-d1", 1, 5, DeliveryOutcome::Failed),
            result("x1-d2", 1, 5, DeliveryOutcome::Delivered),
        ])
        .await
        .unwrap();
    history
        .commit(vec![
            Write::Redeliver("x1-d1".to_owned(), ts(50)),
            Write::Redeliver("x1-d2".to_owned(), ts(50)),
        ])
        .await
        .unwrap();
    for id in ["x1-d1", "x1-d2"] {
        let d = one(&*history, id).await;
        assert_eq!(d.delivery.status, DeliveryStatus::Pending, "{id}");
        assert_eq!(d.delivery.attempt_count, 0, "{id}");
        assert_eq!(d.delivery.next_attempt_at, Some(ts(50)), "{id}");
        assert_eq!(d.attempts.len(), 1, "{id}");
    }
    let due = history.claim_deliveries(&claim(0, 50, 60, 10)).await.unwrap();
    assert_eq!(delivery_ids(&due), vec!["x1-d1", "x1-d2"]);
    assert_eq!(due[0].enqueued.event_id, "x1-1");
    assert!(matches!(
        history.commit(vec![Write::Redeliver("nope".to_owned(), ts(1))]).await,
        Err(Error::DeliveryNotFound { .. })
    ));
}

/// The log lists newest first with its filters, each delivery once across
/// pages; retention deletes delivered rows older than the cut-off only.
pub async fn outbox_log_and_retention(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    run_with_deliveries(&*history, "g1", 3, 0).await;
    run_with_deliveries(&*history, "g2", 2, 1).await;
    let all = |query: DeliveryQuery| {
        let history = Arc::clone(&history);
        async move {
            let mut query = DeliveryQuery { limit: 2, ..query };
            let mut out = Vec::new();
            loop {
                let page = history.list_deliveries(&query).await.unwrap();
                out.extend(page.deliveries.into_iter().map(|d| d.delivery.enqueued.id));
                match page.next_cursor {
                    Some(cursor) => query.cursor = Some(cursor),
                    None => return out,
                }
            }
        }
    };
    assert_eq!(
        all(DeliveryQuery::default()).await,
        vec!["g2-d2", "g2-d1", "g1-d3", "g1-d2", "g1-d1"]
    );
    assert_eq!(
        all(DeliveryQuery { webhook: Some(1), ..DeliveryQuery::default() }).await,
        vec!["g2-d2", "g2-d1"]
    );
    assert_eq!(
        all(DeliveryQuery { run_id: Some(RunId::new("g1")), ..DeliveryQuery::default() }).await,
        vec!["g1-d3", "g1-d2", "g1-d1"]
    );
    history.claim_deliveries(&claim(0, 10, 11, 10)).await.unwrap();
    history
        .commit(vec![
            result("g1-d1", 1, 10, DeliveryOutcome::Delivered),
            result("g1-d2", 1, 20, DeliveryOutcome::Delivered),
            result("g1-d3", 1, 10, DeliveryOutcome::Failed),
        ])
        .await
        .unwrap();
    let delivered =
        DeliveryQuery { status: Some(DeliveryStatus::Delivered), ..DeliveryQuery::default() };
    assert_eq!(all(delivered.clone()).await, vec!["g1-d2", "g1-d1"]);
    let counts = history.delivery_counts().await.unwrap();
    assert!(counts.contains(&(0, DeliveryStatus::Delivered, 2)), "{counts:?}");
    assert!(counts.contains(&(0, DeliveryStatus::Failed, 1)), "{counts:?}");
    assert!(counts.contains(&(1, DeliveryStatus::Pending, 2)), "{counts:?}");
    assert!(matches!(
        history
            .list_deliveries(&DeliveryQuery {
                limit: 1,
                cursor: Some("zz".to_owned()),
                ..DeliveryQuery::default()
            })
            .await,
        Err(Error::InvalidCursor { .. })
    ));
    // Retention: only the delivered row older than the cut-off goes.
    assert_eq!(history.prune_deliveries(ts(15)).await.unwrap(), 1);
    assert_eq!(all(delivered).await, vec!["g1-d2"]);
    assert_eq!(all(DeliveryQuery::default()).await.len(), 4);
    // Retention of runs leaves their deliveries (each keeps its envelope).
    assert_eq!(
        one(&*history, "g1-d3").await.delivery.enqueued.envelope,
        event(&RunId::new("g1"), 3).envelope
    );
}

/// A delivery commits with its event or not at all, and survives a reopen.
pub async fn outbox_commits_with_its_event(mut store: impl Store) {
    let history = store.open(HistoryOptions::default()).await.unwrap();
    let run = new_run("e1", "nightly", 0);
    // The event's transaction fails: its delivery is not recorded.
    let failed = history
        .commit(vec![
            Write::CreateRun(run.clone()),
            Write::AppendEvent(event(&run.id, 1)),
            Write::EnqueueDelivery(delivery("e1-d1", &run.id, 1, 0, 1)),
            Write::AppendEvent(event(&run.id, 3)),
        ])
        .await;
    assert!(matches!(failed, Err(Error::SeqConflict { .. })), "{failed:?}");
    assert!(
        history
            .list_deliveries(&DeliveryQuery { limit: 10, ..DeliveryQuery::default() })
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    assert_eq!(history.next_delivery_due(0).await.unwrap(), None);
    // A duplicate delivery fails the transaction: its event is not recorded.
    history
        .commit(vec![
            Write::CreateRun(run.clone()),
            Write::AppendEvent(event(&run.id, 1)),
            Write::EnqueueDelivery(delivery("e1-d1", &run.id, 1, 0, 1)),
        ])
        .await
        .unwrap();
    let duplicate = history
        .commit(vec![
            Write::AppendEvent(event(&run.id, 2)),
            Write::EnqueueDelivery(delivery("e1-d1", &run.id, 2, 0, 2)),
        ])
        .await;
    // A duplicate id is refused with its transaction, or dropped: the log
    // holds one delivery of that id, the first.
    match duplicate {
        Err(Error::DuplicateDelivery { .. }) => {
            assert_eq!(history.last_seq(&run.id).await.unwrap(), 1)
        }
        Ok(()) => assert_eq!(history.last_seq(&run.id).await.unwrap(), 2),
        Err(other) => panic!("a duplicate delivery: {other:?}"),
    }
    let all = history
        .list_deliveries(&DeliveryQuery { limit: 10, ..DeliveryQuery::default() })
        .await
        .unwrap()
        .deliveries;
    assert_eq!(all.iter().filter(|d| d.delivery.enqueued.id == "e1-d1").count(), 1);
    let d = one(&*history, "e1-d1").await;
    assert_eq!(d.delivery.enqueued.event_id, "e1-1");
    assert_eq!(d.delivery.status, DeliveryStatus::Pending);
    if store.is_persistent() {
        drop(history);
        let history = store.open(HistoryOptions::default()).await.unwrap();
        let due = history.claim_deliveries(&claim(0, 5, 6, 10)).await.unwrap();
        assert_eq!(delivery_ids(&due), vec!["e1-d1"]);
    }
}
