//! The records the history store keeps: runs, steps, attempts and gates.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde_json::Value;

use crate::error::Error;

/// The id of a run.
///
/// The engine uses UUIDv7 text, so ids of runs created later sort later; the
/// store orders by `(created_at, id)` and never parses the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for RunId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for RunId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// Declares a `#[non_exhaustive]` enum stored as lowercase text, with
/// `as_str`, `Display`, `FromStr` and `ALL`.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored and displayed text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(Error::InvalidStoredValue { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

pub(crate) use text_enum;

text_enum! {
    /// Where a run is in its life.
    RunStatus, "run status" {
        /// Accepted, not started yet.
        Queued => "queued",
        /// Executing steps.
        Running => "running",
        /// Paused at a gate until a human (or the timeout) decides.
        Waiting => "waiting",
        /// Every step passed.
        Succeeded => "succeeded",
        /// A step failed.
        Failed => "failed",
        /// A gate rejected the run.
        Rejected => "rejected",
        /// Cancelled by a user.
        Cancelled => "cancelled",
        /// The process stopped while the run was mid-step.
        Interrupted => "interrupted",
    }
}

impl RunStatus {
    /// Whether the run has finished: finished runs never change again and are
    /// the only runs retention may delete.
    pub fn is_finished(self) -> bool {
        !self.is_active()
    }

    /// Whether the run is still queued, running or waiting.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running | Self::Waiting)
    }
}

text_enum! {
    /// What started a run.
    Trigger, "trigger" {
        /// `POST /api/workflows/{name}/run`.
        Api => "api",
        /// `aegis-cli run`.
        Cli => "cli",
        /// An incoming webhook.
        Webhook => "webhook",
        /// A schedule.
        Schedule => "schedule",
    }
}

text_enum! {
    /// Where a step execution is.
    StepStatus, "step status" {
        /// Started, not finished.
        Running => "running",
        /// Finished successfully.
        Succeeded => "succeeded",
        /// Finished with an error after its last attempt.
        Failed => "failed",
        /// Not executed because its condition was false.
        Skipped => "skipped",
    }
}

text_enum! {
    /// A decision taken at a gate.
    GateDecisionKind, "gate decision" {
        /// A reviewer approved.
        Approve => "approve",
        /// A reviewer rejected.
        Reject => "reject",
        /// The gate timed out with `on_timeout: approve`.
        TimeoutApprove => "timeout_approve",
        /// The gate timed out with `on_timeout: reject`.
        TimeoutReject => "timeout_reject",
    }
}

/// A run as created: it starts `queued`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The run id (UUIDv7 text from the engine).
    pub id: RunId,
    /// The workflow key.
    pub workflow: String,
    /// What started the run.
    pub trigger: Trigger,
    /// The id of the HTTP request that started it, if any.
    pub request_id: Option<String>,
    /// When the run was accepted; lists sort on it.
    pub created_at: Timestamp,
}

/// One write of a batch given to [`crate::HistoryBackend::write_batch`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Write {
    /// [`crate::HistoryBackend::create_run`].
    CreateRun(NewRun),
    /// [`crate::HistoryBackend::update_run`].
    UpdateRun(RunId, RunUpdate),
    /// [`crate::HistoryBackend::record_step`].
    RecordStep(RunId, StepRecord),
    /// [`crate::HistoryBackend::add_pending_gate`].
    AddPendingGate(PendingGate),
    /// A compare-and-set on a run's status: applies the update only while the
    /// run's committed status is one of `from`, else the write fails with
    /// `StatusConflict` (and, inside [`crate::HistoryBackend::commit`], so
    /// does the whole transaction).
    Transition(RunId, Transition),
    /// Appends one event to a run's ledger. Its `seq` must be exactly one
    /// more than the run's last (the first is 1), else `SeqConflict`.
    AppendEvent(EventRecord),
    /// [`crate::HistoryBackend::record_gate_decision`]: fails with
    /// `GateNotPending` when the gate is not waiting.
    DecideGate(RunId, GateDecision),
    /// Closes every step of the run still recorded `running` (a cancel or
    /// an interruption ends the step that was executing).
    CloseSteps(RunId, CloseSteps),
    /// Adds a webhook delivery to the outbox, pending and due at its
    /// `created_at`. Committed with the event it carries, so a committed
    /// event always has its deliveries. An id is delivered once however
    /// often it is enqueued: a duplicate fails with `DuplicateDelivery` when
    /// the store can tell at commit, and is otherwise dropped (SQLite spools
    /// the deliveries committed with their events and finds a duplicate only
    /// when it unpacks them; the ledger's ids never repeat).
    EnqueueDelivery(crate::outbox::NewDelivery),
    /// Records an attempt of a delivery and its outcome, releasing the
    /// delivery's claim. Fails with `DeliveryNotFound` for an unknown id.
    RecordDeliveryAttempt(crate::outbox::DeliveryResult),
    /// Makes a delivery pending again, due at the given time, with a fresh
    /// attempt count (its earlier attempts stay in the log). Fails with
    /// `DeliveryNotFound` for an unknown id.
    Redeliver(String, Timestamp),
}

impl Write {
    /// Whether the write is to the webhook outbox (it touches no run).
    pub fn is_outbox(&self) -> bool {
        matches!(
            self,
            Write::EnqueueDelivery(_) | Write::RecordDeliveryAttempt(_) | Write::Redeliver(..)
        )
    }
}

/// A compare-and-set on a run's status (see [`Write::Transition`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The statuses the change is allowed from.
    pub from: Vec<RunStatus>,
    /// The change.
    pub update: RunUpdate,
}

/// How [`Write::CloseSteps`] closes the steps still `running`.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseSteps {
    /// Their new status.
    pub status: StepStatus,
    /// Their error.
    pub error: String,
    /// When they ended.
    pub at: Timestamp,
}

/// One event of a run's ledger, as stored: the envelope exactly as it was
/// published, plus the fields stores index on.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The run.
    pub run_id: RunId,
    /// Position in the run's ledger: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// The event id (unique across runs).
    pub id: String,
    /// The event type, such as `step.completed`.
    pub event_type: String,
    /// When it was emitted.
    pub time: Timestamp,
    /// The envelope as JSON text, byte for byte as published.
    pub envelope: String,
}

/// A change to a run. `None` fields keep their stored value.
#[derive(Debug, Clone, PartialEq)]
pub struct RunUpdate {
    /// The new status.
    pub status: RunStatus,
    /// When the first step started.
    pub started_at: Option<Timestamp>,
    /// When the run finished.
    pub completed_at: Option<Timestamp>,
    /// Wall time from start to finish.
    pub duration_ms: Option<u64>,
    /// Why the run failed.
    pub error: Option<String>,
}

impl RunUpdate {
    /// A status change that leaves every other field as stored.
    pub fn status(status: RunStatus) -> Self {
        Self { status, started_at: None, completed_at: None, duration_ms: None, error: None }
    }
}

/// A run without its steps, as lists return it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run id.
    pub id: RunId,
    /// The workflow key.
    pub workflow: String,
    /// Current status.
    pub status: RunStatus,
    /// What started the run.
    pub trigger: Trigger,
    /// The id of the HTTP request that started it, if any.
    pub request_id: Option<String>,
    /// When the run was accepted.
    pub created_at: Timestamp,
    /// When the first step started.
    pub started_at: Option<Timestamp>,
    /// When the run finished.
    pub completed_at: Option<Timestamp>,
    /// Wall time from start to finish.
    pub duration_ms: Option<u64>,
    /// Why the run failed.
    pub error: Option<String>,
}

impl RunRecord {
    /// The record a freshly created run has.
    pub fn from_new(run: &NewRun) -> Self {
        Self {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            status: RunStatus::Queued,
            trigger: run.trigger,
            request_id: run.request_id.clone(),
            created_at: run.created_at,
            started_at: None,
            completed_at: None,
            duration_ms: None,
            error: None,
        }
    }

    /// Applies an update the way every backend must.
    pub fn apply(&mut self, update: &RunUpdate) {
        self.status = update.status;
        if update.started_at.is_some() {
            self.started_at = update.started_at;
        }
        if update.completed_at.is_some() {
            self.completed_at = update.completed_at;
        }
        if update.duration_ms.is_some() {
            self.duration_ms = update.duration_ms;
        }
        if update.error.is_some() {
            self.error.clone_from(&update.error);
        }
    }
}

/// One attempt of a step (steps with `retries` have several).
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Whether this attempt succeeded.
    pub success: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// When it started.
    pub started_at: Timestamp,
}

/// One execution of one step of a run.
///
/// A step is recorded when it starts and again when it finishes: recording
/// the same `(execution, index)` replaces the earlier record and its
/// attempts. When a gate rejects with `retry_from`, the engine re-executes
/// steps with `execution` increased by one, so earlier executions stay in
/// history.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// 0 for the first pass; +1 each time a gate sends the run back.
    pub execution: u32,
    /// The step's position in the workflow, from 0.
    pub index: u32,
    /// The step id from the workflow.
    pub step_id: String,
    /// The step type (`http`, `gate`, `run_tests`, ...).
    pub step_type: String,
    /// Where the step is.
    pub status: StepStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub completed_at: Option<Timestamp>,
    /// Wall time over all attempts.
    pub duration_ms: Option<u64>,
    /// The step's output data.
    pub data: Option<Value>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

impl StepRecord {
    /// Whether the step finished successfully.
    pub fn success(&self) -> bool {
        self.status == StepStatus::Succeeded
    }

    /// Whether the step was skipped.
    pub fn skipped(&self) -> bool {
        self.status == StepStatus::Skipped
    }
}

/// A decision taken at a gate.
#[derive(Debug, Clone, PartialEq)]
pub struct GateDecision {
    /// The gate step id.
    pub gate_id: String,
    /// What was decided.
    pub decision: GateDecisionKind,
    /// Who decided: an API key id, or `timeout`.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// The reviewer's comment.
    pub comment: Option<String>,
    /// The RFC 6902 JSON Patch the reviewer sent.
    pub patch: Option<Value>,
    /// The artifact before the patch.
    pub artifact_before: Option<Value>,
    /// The artifact after the patch.
    pub artifact_after: Option<Value>,
}

/// A gate waiting for a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingGate {
    /// The run.
    pub run_id: RunId,
    /// The gate step id.
    pub gate_id: String,
    /// The gate step's position in the workflow.
    pub step_index: u32,
    /// The message shown to the reviewer.
    pub message: Option<String>,
    /// The step id whose data the reviewer may edit.
    pub artifact: Option<String>,
    /// When the gate started waiting.
    pub since: Timestamp,
    /// When `on_timeout` applies; `None` waits forever.
    pub deadline: Option<Timestamp>,
}

/// A run with everything recorded about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail {
    /// The run itself.
    pub run: RunRecord,
    /// Step executions ordered by `(execution, index)`.
    pub steps: Vec<StepRecord>,
    /// Gate decisions in the order they were recorded.
    pub gate_decisions: Vec<GateDecision>,
    /// Gates of this run still waiting.
    pub pending_gates: Vec<PendingGate>,
}

/// The largest page a list returns; larger limits are clamped to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// What to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this workflow's runs.
    pub workflow: Option<String>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// At most this many runs (clamped to [`MAX_PAGE_SIZE`]; 0 returns an empty page).
    pub limit: u32,
    /// Continue after the page that returned this cursor.
    pub cursor: Option<String>,
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Pass this as [`ListQuery::cursor`] for the next page; `None` when
    /// there are no older runs.
    pub next_cursor: Option<String>,
}
