//! How many history commits a run costs: a step's result commits with the
//! next step's start, and a run admitted at once is created and started with
//! its first step's start, so a run of `n` steps (run or skipped) takes
//! `n_run + 1` commits — one per step started, and its end — and never acts
//! ahead of history. A run that must queue is created first, on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use aegis_core::{Engine, RunOptions};
use aegis_history::{
    Delivery, DeliveryClaim, DeliveryPage, DeliveryQuery, DeliveryStatus, EventRecord,
    GateDecision, HistoryBackend, InMemoryHistory, ListQuery, NewRun, Page, PendingGate, Result,
    RunDetail, RunId, RunStatus, RunUpdate, StepRecord, StepStatus, Trigger, UnfinishedRuns, Write,
};

use crate::common::load;

/// An in-memory history that counts the calls that write, and refuses the
/// commits that create a run while `refuse_creation` is set.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemoryHistory,
    writes: AtomicUsize,
    refuse_creation: AtomicBool,
}

impl Counting {
    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl HistoryBackend for Counting {
    async fn create_run(&self, run: &NewRun) -> Result<()> {
        self.wrote();
        self.inner.create_run(run).await
    }
    async fn update_run(&self, run_id: &RunId, update: &RunUpdate) -> Result<()> {
        self.wrote();
        self.inner.update_run(run_id, update).await
    }
    async fn record_step(&self, run_id: &RunId, step: &StepRecord) -> Result<()> {
        self.wrote();
        self.inner.record_step(run_id, step).await
    }
    async fn add_pending_gate(&self, gate: &PendingGate) -> Result<()> {
        self.wrote();
        self.inner.add_pending_gate(gate).await
    }
    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<()>> {
        self.wrote();
        self.inner.write_batch(writes).await
    }
    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        self.wrote();
        if self.refuse_creation.load(Ordering::SeqCst)
            && let Some(Write::CreateRun(run)) =
                writes.iter().find(|w| matches!(w, Write::CreateRun(_)))
        {
            return Err(aegis_history::Error::DuplicateRun { run_id: run.id.to_string() });
        }
        self.inner.commit(writes).await
    }
    async fn events(&self, run_id: &RunId, after: u64, limit: u32) -> Result<Vec<EventRecord>> {
        self.inner.events(run_id, after, limit).await
    }
    async fn last_seq(&self, run_id: &RunId) -> Result<u64> {
        self.inner.last_seq(run_id).await
    }
    async fn finished_since(&self, since: jiff::Timestamp) -> Result<Vec<RunId>> {
        self.inner.finished_since(since).await
    }
    async fn record_gate_decision(&self, run_id: &RunId, decision: &GateDecision) -> Result<()> {
        self.wrote();
        self.inner.record_gate_decision(run_id, decision).await
    }
    async fn pending_gates(&self) -> Result<Vec<PendingGate>> {
        self.inner.pending_gates().await
    }
    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunDetail>> {
        self.inner.get_run(run_id).await
    }
    async fn list_runs(&self, query: &ListQuery) -> Result<Page> {
        self.inner.list_runs(query).await
    }
    async fn unfinished(&self) -> Result<UnfinishedRuns> {
        self.inner.unfinished().await
    }
    async fn apply_retention(&self) -> Result<u64> {
        self.wrote();
        self.inner.apply_retention().await
    }
    async fn claim_deliveries(&self, claim: &DeliveryClaim) -> Result<Vec<Delivery>> {
        self.wrote();
        self.inner.claim_deliveries(claim).await
    }
    async fn release_delivery_claims(&self) -> Result<u64> {
        self.wrote();
        self.inner.release_delivery_claims().await
    }
    async fn next_delivery_due(&self, webhook: u32) -> Result<Option<jiff::Timestamp>> {
        self.inner.next_delivery_due(webhook).await
    }
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage> {
        self.inner.list_deliveries(query).await
    }
    async fn delivery_counts(&self) -> Result<Vec<(u32, DeliveryStatus, u64)>> {
        self.inner.delivery_counts().await
    }
    async fn prune_deliveries(&self, before: jiff::Timestamp) -> Result<u64> {
        self.wrote();
        self.inner.prune_deliveries(before).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

/// An engine over `yaml` whose history counts its writes.
fn counting_engine(
    yaml: &str,
) -> (tempfile::TempDir, Arc<Counting>, Arc<dyn HistoryBackend>, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load(dir.path(), yaml);
    let counting = Arc::new(Counting::default());
    let history: Arc<dyn HistoryBackend> = Arc::clone(&counting) as Arc<dyn HistoryBackend>;
    let engine = Engine::builder(config, Arc::clone(&history)).build().expect("engine");
    (dir, counting, history, engine)
}

#[tokio::test]
async fn a_step_result_commits_with_the_next_steps_start() {
    let (_dir, counting, history, engine) = counting_engine(
        r#"
data_dir: ./data
workflows:
  five:
    steps:
      - { id: one, type: command, argv: [sh, -c, "true"] }
      - { id: two, type: command, argv: [sh, -c, "true"] }
      - { id: three, type: command, argv: [sh, -c, "true"] }
      - { id: never, type: command, argv: [sh, -c, "true"], condition: has_failures }
      - { id: last, type: report }
"#,
    );

    let summary = engine.run("five", RunOptions::new(Trigger::Cli)).await.expect("run");
    assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");
    // One commit per step started (the first with the run's creation and
    // start, each with the results before it), then the end with the last
    // result: 4 steps run, 1 skipped → 5. Creating the run on its own took 6;
    // committing each start and result on its own, 12.
    assert_eq!(counting.writes.load(Ordering::SeqCst), 5);

    // Nothing was lost by folding: every step is recorded, in order.
    let run_id = RunId::new(summary.run_id.clone());
    let detail = history.get_run(&run_id).await.expect("read").expect("stored");
    let statuses: Vec<_> = detail.steps.iter().map(|s| (s.step_id.as_str(), s.status)).collect();
    assert_eq!(
        statuses,
        [
            ("one", StepStatus::Succeeded),
            ("two", StepStatus::Succeeded),
            ("three", StepStatus::Succeeded),
            ("never", StepStatus::Skipped),
            ("last", StepStatus::Succeeded),
        ]
    );
    let events = engine.run_events(&run_id, 0).await.expect("events");
    let types: Vec<_> = events.iter().map(|e| e.event_type.clone()).collect();
    let started = types.iter().position(|t| t == "workflow.started");
    let first_step = types.iter().position(|t| t == "step.started");
    assert!(started < first_step, "{types:?}");
    assert_eq!(types.last().map(String::as_str), Some("workflow.completed"), "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "step.completed").count(), 4, "{types:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_run_that_waits_before_any_step_still_starts_first() {
    let (_dir, counting, history, engine) = counting_engine(
        r#"
data_dir: ./data
workflows:
  gated:
    steps:
      - { id: review, type: gate }
      - { id: last, type: report }
"#,
    );

    let summary = engine.run("gated", RunOptions::new(Trigger::Cli)).await.expect("run");
    assert_eq!(summary.status, RunStatus::Waiting, "{summary:?}");
    // Created and started (queued → running: no step starts with it), then
    // waiting: the state machine's path, each transition a compare-and-set.
    assert_eq!(counting.writes.load(Ordering::SeqCst), 2);
    let run_id = RunId::new(summary.run_id.clone());
    let detail = history.get_run(&run_id).await.expect("read").expect("stored");
    assert!(detail.run.started_at.is_some());
    let events = engine.run_events(&run_id, 0).await.expect("events");
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["run.queued", "workflow.started", "gate.waiting"]);
}

/// A run admitted at once is created by its first commit: when history
/// refuses that commit, the submit fails with history's error, nothing of the
/// run is stored, and no step ran (the marker file is never written).
#[tokio::test]
async fn a_refused_creation_fails_the_submit_and_runs_nothing() {
    let (dir, counting, history, engine) = counting_engine(
        r#"
data_dir: ./data
workflows:
  marks:
    steps:
      - { id: mark, type: command, cwd: ".", argv: [sh, -c, "touch marked"] }
"#,
    );
    counting.refuse_creation.store(true, Ordering::SeqCst);
    let refused = engine.submit("marks", RunOptions::new(Trigger::Cli)).await;
    match refused {
        Err(aegis_core::Error::History(aegis_history::Error::DuplicateRun { .. })) => {}
        other => panic!("expected history's refusal, got {other:?}"),
    }
    let stored = history.list_runs(&ListQuery::default()).await.expect("list");
    assert!(stored.runs.is_empty(), "{stored:?}");
    assert!(!dir.path().join("marked").exists(), "the step ran for a run never stored");

    // The slot was given back: with history willing, the next run goes through.
    counting.refuse_creation.store(false, Ordering::SeqCst);
    let summary = engine.run("marks", RunOptions::new(Trigger::Cli)).await.expect("run");
    assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");
    assert!(dir.path().join("marked").exists());
}

/// A run that must wait for a slot is created (and answered) at once, on its
/// own commit, and stays `queued` in history until a slot frees.
#[tokio::test]
async fn a_run_that_queues_is_created_on_its_own_first() {
    let (_dir, _counting, history, engine) = counting_engine(
        r#"
data_dir: ./data
server: { max_concurrent_runs: 1 }
workflows:
  slow:
    steps:
      - { id: nap, type: command, argv: [sh, -c, "sleep 0.5"] }
"#,
    );
    let first = engine.submit("slow", RunOptions::new(Trigger::Cli)).await.expect("first");
    let second = engine.submit("slow", RunOptions::new(Trigger::Cli)).await.expect("second");
    let queued = history.get_run(second.id()).await.expect("read").expect("stored at once");
    assert_eq!(queued.run.status, RunStatus::Queued);
    let events = engine.run_events(second.id(), 0).await.expect("events");
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["run.queued"]);
    assert_eq!(first.wait().await.expect("first").status, RunStatus::Succeeded);
    assert_eq!(second.wait().await.expect("second").status, RunStatus::Succeeded);
}
