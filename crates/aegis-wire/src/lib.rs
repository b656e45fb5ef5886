//! The JSON shapes of the Aegis HTTP API, in one place: `aegis-api` serializes them and
//! `aegis-cli` deserializes them, and both convert the history store's records into
//! them, so a run prints the same in-process and against a server. The types derive
//! `ToSchema` for the OpenAPI document; nothing here knows an HTTP framework.
//!
//! Deserialization is lenient (missing fields take their defaults, unknown ones are
//! ignored) so a client keeps working against a newer server.

use aegis_history::{GateDecision, PendingGate, RunDetail, RunRecord, StepRecord};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn time(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_string())
}

/// A run, as listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Run {
    /// Time-ordered id (UUIDv7).
    pub id: String,
    /// Workflow key.
    pub workflow: String,
    /// `queued`, `running`, `waiting`, `succeeded`, `failed`, `rejected`, `cancelled`, `interrupted`.
    pub status: String,
    /// `api`, `cli`, `webhook` or `schedule`.
    pub trigger: String,
    /// When the run was accepted (RFC 3339).
    pub created_at: String,
    /// When it started executing.
    pub started_at: Option<String>,
    /// When it finished.
    pub completed_at: Option<String>,
    /// Execution time in milliseconds.
    pub duration_ms: Option<u64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The request that started it.
    pub request_id: Option<String>,
}

impl From<&RunRecord> for Run {
    fn from(r: &RunRecord) -> Run {
        Run {
            id: r.id.to_string(),
            workflow: r.workflow.clone(),
            status: r.status.as_str().to_owned(),
            trigger: r.trigger.as_str().to_owned(),
            created_at: r.created_at.to_string(),
            started_at: time(r.started_at),
            completed_at: time(r.completed_at),
            duration_ms: r.duration_ms,
            error: r.error.clone(),
            request_id: r.request_id.clone(),
        }
    }
}

/// One attempt of a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Attempt {
    /// From 1.
    pub attempt: u32,
    /// Whether this attempt succeeded.
    pub success: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// When it started.
    pub started_at: String,
}

impl From<&aegis_history::Attempt> for Attempt {
    fn from(a: &aegis_history::Attempt) -> Attempt {
        Attempt {
            attempt: a.attempt,
            success: a.success,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
            started_at: a.started_at.to_string(),
        }
    }
}

/// One step of a run (one execution of it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct RunStep {
    /// The step id from the workflow.
    pub id: String,
    /// The step type.
    #[serde(rename = "type")]
    pub step_type: String,
    /// Position in the workflow, from 0.
    pub index: u32,
    /// Pass number: goes up each time a gate rejection re-runs the step.
    pub execution: u32,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    /// Succeeded or skipped.
    pub success: bool,
    /// Skipped by its condition.
    pub skipped: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub completed_at: Option<String>,
    /// How long it took.
    pub duration_ms: Option<u64>,
    /// The step's data (also its artifact).
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
}

impl From<&StepRecord> for RunStep {
    fn from(s: &StepRecord) -> RunStep {
        RunStep {
            id: s.step_id.clone(),
            step_type: s.step_type.clone(),
            index: s.index,
            execution: s.execution,
            status: s.status.as_str().to_owned(),
            success: s.success() || s.skipped(),
            skipped: s.skipped(),
            error: s.error.clone(),
            started_at: time(s.started_at),
            completed_at: time(s.completed_at),
            duration_ms: s.duration_ms,
            data: s.data.clone(),
            attempts: s.attempts.iter().map(Attempt::from).collect(),
        }
    }
}

/// A decision taken at a gate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Decision {
    /// The gate step's id.
    pub gate: String,
    /// `approve`, `reject`, `timeout_approve` or `timeout_reject`.
    pub decision: String,
    /// The key id that decided, or `timeout`.
    pub by: String,
    /// When.
    pub at: String,
    /// The reviewer's comment.
    pub comment: Option<String>,
    /// The RFC 6902 patch applied.
    #[schema(value_type = Object)]
    pub patch: Option<serde_json::Value>,
}

impl From<&GateDecision> for Decision {
    fn from(d: &GateDecision) -> Decision {
        Decision {
            gate: d.gate_id.clone(),
            decision: d.decision.as_str().to_owned(),
            by: d.by.clone(),
            at: d.at.to_string(),
            comment: d.comment.clone(),
            patch: d.patch.clone(),
        }
    }
}

/// A gate waiting for a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Gate {
    /// The run.
    pub run_id: String,
    /// The gate step's id.
    pub gate: String,
    /// What the reviewer is asked.
    pub message: Option<String>,
    /// The step whose data the reviewer may edit.
    pub artifact: Option<String>,
    /// Waiting since.
    pub since: String,
    /// Decided automatically at.
    pub deadline: Option<String>,
}

impl From<&PendingGate> for Gate {
    fn from(g: &PendingGate) -> Gate {
        Gate {
            run_id: g.run_id.to_string(),
            gate: g.gate_id.clone(),
            message: g.message.clone(),
            artifact: g.artifact.clone(),
            since: g.since.to_string(),
            deadline: time(g.deadline),
        }
    }
}

/// A run with its steps, attempts and gates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct RunWithSteps {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Steps in order, latest pass last.
    pub steps: Vec<RunStep>,
    /// Gate decisions, oldest first.
    pub gate_decisions: Vec<Decision>,
    /// Gates waiting now.
    pub pending_gates: Vec<Gate>,
}

impl From<&RunDetail> for RunWithSteps {
    fn from(d: &RunDetail) -> RunWithSteps {
        RunWithSteps {
            run: Run::from(&d.run),
            steps: d.steps.iter().map(RunStep::from).collect(),
            gate_decisions: d.gate_decisions.iter().map(Decision::from).collect(),
            pending_gates: d.pending_gates.iter().map(Gate::from).collect(),
        }
    }
}

/// A page of runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<Run>,
    /// Pass back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One attempt of a webhook delivery.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeliveryAttempt {
    /// 1 for the first attempt (from 1 again after a redelivery).
    pub attempt: u32,
    /// When the request was sent (RFC 3339).
    pub at: String,
    /// The receiver's status code; null when it did not answer.
    pub status_code: Option<u16>,
    /// Why the attempt failed; null when it succeeded.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// A webhook delivery: one event for one webhook, with every attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Delivery {
    /// The delivery id (for redelivery).
    pub id: String,
    /// The webhook's position in the configuration's `webhooks` list.
    pub webhook: u32,
    /// The webhook URL, without credentials.
    pub url: String,
    /// The event delivered (sent as `webhook-id`).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The run it belongs to.
    pub run_id: String,
    /// `pending`, `delivered`, `failed` or `gone`.
    pub status: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next attempt is due (RFC 3339); null unless pending.
    pub next_attempt_at: Option<String>,
}

impl Delivery {
    /// The delivery as shown, with its webhook's URL as shown.
    pub fn from_detail(detail: &aegis_history::DeliveryDetail, url: String) -> Delivery {
        let d = &detail.delivery;
        Delivery {
            id: d.enqueued.id.clone(),
            webhook: d.enqueued.webhook,
            url,
            event_id: d.enqueued.event_id.clone(),
            event_type: d.enqueued.event_type.clone(),
            run_id: d.enqueued.run_id.to_string(),
            status: d.status.as_str().to_owned(),
            attempts: detail
                .attempts
                .iter()
                .map(|a| DeliveryAttempt {
                    attempt: a.attempt,
                    at: a.at.to_string(),
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
            next_attempt_at: time(d.next_attempt_at),
        }
    }
}

/// One page of the delivery log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeliveryPage {
    /// The deliveries.
    pub deliveries: Vec<Delivery>,
    /// Pass back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The answer to a redelivery: the delivery is queued again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Redelivery {
    /// The delivery id.
    pub id: String,
    /// `pending`.
    pub status: String,
}
