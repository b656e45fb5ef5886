//! The `HistoryBackend` trait every store implements.

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{
    EventRecord, GateDecision, ListQuery, NewRun, Page, PendingGate, RunDetail, RunId, RunRecord,
    RunUpdate, StepRecord, Write,
};
use crate::outbox::{Delivery, DeliveryClaim, DeliveryPage, DeliveryQuery, DeliveryStatus};

/// Durable history of runs, shared as `Arc<dyn HistoryBackend>` by the
/// engine, the API and embedders.
///
/// Every write is durable when its future resolves with `Ok`: a process that
/// dies afterwards does not lose it. Lists are newest first by
/// `(created_at, id)`. The behaviour every implementation must have is
/// pinned down by `aegis_history::conformance` (feature `test-support`).
#[async_trait]
pub trait HistoryBackend: Send + Sync + std::fmt::Debug {
    /// Records a new run with status `queued`.
    ///
    /// Fails with `DuplicateRun` if the id exists.
    async fn create_run(&self, run: &NewRun) -> Result<()>;

    /// Changes a run's status and, where `Some`, its timestamps, duration and
    /// error. Moving a run to a finished status applies retention to its
    /// workflow.
    ///
    /// Fails with `RunNotFound` if the run does not exist.
    async fn update_run(&self, run_id: &RunId, update: &RunUpdate) -> Result<()>;

    /// Records a step execution with all its attempts, replacing an earlier
    /// record of the same `(execution, index)` (the record made when the
    /// step started).
    ///
    /// Fails with `RunNotFound` if the run does not exist.
    async fn record_step(&self, run_id: &RunId, step: &StepRecord) -> Result<()>;

    /// Marks a gate as waiting for a decision, replacing an earlier pending
    /// record of the same gate.
    ///
    /// Fails with `RunNotFound` if the run does not exist.
    async fn add_pending_gate(&self, gate: &PendingGate) -> Result<()>;

    /// Applies several writes in order, with one result per write, in the
    /// order given.
    ///
    /// A store that can makes the batch visible at once (SQLite: one
    /// transaction), so that a reader never sees, say, a run `waiting`
    /// without its pending gate. A write that fails is rolled back alone and
    /// reported; the others still apply. The default applies them one by one.
    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(match write {
                Write::CreateRun(run) => self.create_run(&run).await,
                Write::UpdateRun(run_id, update) => self.update_run(&run_id, &update).await,
                Write::RecordStep(run_id, step) => self.record_step(&run_id, &step).await,
                Write::AddPendingGate(gate) => self.add_pending_gate(&gate).await,
                other => self.commit(vec![other]).await,
            });
        }
        results
    }

    /// Applies every write, in order, in one atomic transaction: either all
    /// of them commit or none does, and readers see all or nothing. This is
    /// how the engine changes a run's state together with the events that
    /// describe it (a [`Write::Transition`] is a compare-and-set, so of two
    /// competing changes exactly one commits).
    ///
    /// Fails with the first failing write's error, having recorded nothing.
    /// Stores may commit the transactions of several callers together
    /// (group commit); each stays atomic.
    async fn commit(&self, writes: Vec<Write>) -> Result<()>;

    /// A run's ledger after `after`, in `seq` order, at most `limit` events.
    async fn events(&self, run_id: &RunId, after: u64, limit: u32) -> Result<Vec<EventRecord>>;

    /// The last `seq` of a run's ledger (0 when it has no events).
    async fn last_seq(&self, run_id: &RunId) -> Result<u64>;

    /// Runs that finished at or after `since`, for completing their
    /// `events.jsonl` after a crash.
    async fn finished_since(&self, since: jiff::Timestamp) -> Result<Vec<RunId>>;

    /// Records a decision and removes the gate from the pending gates, in one
    /// atomic change.
    ///
    /// Fails with `GateNotPending`, recording nothing, if the gate is not
    /// waiting: a second decision on the same gate loses (HTTP 409).
    async fn record_gate_decision(&self, run_id: &RunId, decision: &GateDecision) -> Result<()>;

    /// Gates waiting for a decision across all runs, oldest first.
    async fn pending_gates(&self) -> Result<Vec<PendingGate>>;

    /// One run with its steps, attempts, gate decisions and pending gates.
    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunDetail>>;

    /// Runs matching the query, newest first, one page at a time.
    ///
    /// Every run that existed when the first page was read is returned
    /// exactly once across the pages, however many runs are added
    /// meanwhile. Fails with `InvalidCursor` for a cursor this store did not
    /// produce.
    async fn list_runs(&self, query: &ListQuery) -> Result<Page>;

    /// The `limit` most recent runs across workflows.
    async fn recent(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let page = self.list_runs(&ListQuery { limit, ..ListQuery::default() }).await?;
        Ok(page.runs)
    }

    /// One workflow's runs, newest first.
    async fn workflow_runs(
        &self,
        workflow: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page> {
        let query = ListQuery {
            workflow: Some(workflow.to_owned()),
            status: None,
            limit,
            cursor: cursor.map(str::to_owned),
        };
        self.list_runs(&query).await
    }

    /// Runs a previous process left unfinished, oldest first, for recovery
    /// at start.
    async fn unfinished(&self) -> Result<UnfinishedRuns>;

    /// Applies retention to every workflow now (retention otherwise runs
    /// when a run finishes). Returns how many runs were deleted.
    async fn apply_retention(&self) -> Result<u64>;

    /// Runs retention deleted whose files (`data_dir/runs/<id>/`) may still be
    /// on disk, oldest deletion first, at most `limit`. A store keeps this
    /// list durably with the deletions themselves, so that a crash between a
    /// deletion and the folder's removal leaves the id listed; the engine
    /// removes each folder, then calls [`HistoryBackend::forget_pruned`].
    ///
    /// The default lists nothing, for stores that never delete runs.
    async fn pruned_runs(&self, limit: u32) -> Result<Vec<RunId>> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// Drops ids from the [`HistoryBackend::pruned_runs`] list once their
    /// folders are gone; ids that are not listed are ignored.
    async fn forget_pruned(&self, run_ids: &[RunId]) -> Result<()> {
        let _ = run_ids;
        Ok(())
    }

    /// Claims up to `claim.limit` of one webhook's pending deliveries that
    /// are due at `claim.now` and not claimed (or whose claim lapsed),
    /// earliest due first, and marks them claimed until `claim.until`.
    /// A delivery is claimed by one caller at a time; recording an attempt
    /// ([`Write::RecordDeliveryAttempt`]) releases it. A store shared by
    /// several processes claims with `FOR UPDATE SKIP LOCKED` or the like.
    async fn claim_deliveries(&self, claim: &DeliveryClaim) -> Result<Vec<Delivery>>;

    /// Releases every claim on pending deliveries, so they are claimable at
    /// once; returns how many. For a store one process uses, called when it
    /// starts: claims of a process that died are then not waited out. (A
    /// store shared by several processes releases only the claims of an
    /// instance whose lease lapsed.)
    async fn release_delivery_claims(&self) -> Result<u64>;

    /// When the earliest pending delivery of `webhook` becomes claimable:
    /// its due time, or its claim's end if later. `None` when none is pending.
    async fn next_delivery_due(&self, webhook: u32) -> Result<Option<jiff::Timestamp>>;

    /// The delivery log, newest first, with every attempt of each delivery.
    /// Fails with `InvalidCursor` for a cursor this store did not produce.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage>;

    /// How many deliveries each webhook has in each status, by webhook.
    async fn delivery_counts(&self) -> Result<Vec<(u32, DeliveryStatus, u64)>>;

    /// Deletes delivered deliveries (and their attempts) whose last attempt
    /// was before `before`. Pending, failed and gone ones stay. Returns how
    /// many were deleted.
    async fn prune_deliveries(&self, before: jiff::Timestamp) -> Result<u64>;

    /// Checks that the store answers (for `/health/ready`).
    async fn ping(&self) -> Result<()>;
}

/// Runs left unfinished, split by what recovery does with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnfinishedRuns {
    /// Accepted but never started: recovery may start or re-queue them.
    pub queued: Vec<RunRecord>,
    /// Mid-step when the process stopped: recovery marks them `interrupted`.
    pub running: Vec<RunRecord>,
    /// Waiting at a gate: they keep waiting (their pending gates are kept).
    pub waiting: Vec<RunRecord>,
}

impl UnfinishedRuns {
    /// Sorts runs into the three lists by status; finished runs are ignored.
    pub fn from_runs(runs: impl IntoIterator<Item = RunRecord>) -> Self {
        let mut out = Self::default();
        for run in runs {
            match run.status {
                crate::RunStatus::Queued => out.queued.push(run),
                crate::RunStatus::Running => out.running.push(run),
                crate::RunStatus::Waiting => out.waiting.push(run),
                _ => {}
            }
        }
        out
    }

    /// How many runs in all.
    pub fn len(&self) -> usize {
        self.queued.len() + self.running.len() + self.waiting.len()
    }

    /// Whether nothing was left unfinished.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
