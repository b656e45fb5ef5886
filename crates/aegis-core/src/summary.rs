//! How a run stands, read back: [`RunSummary`] (a run as it ended or
//! paused), its steps' outcomes rebuilt from history, and the counts its
//! `workflow.completed` carries.

use std::collections::BTreeMap;
use std::time::Duration;

use aegis_history::{RunDetail, RunId, RunStatus, StepRecord, StepStatus, Trigger};
use indexmap::IndexMap;
use serde_json::Value;

use crate::event::StepCounts;
use crate::step::StepOutcome;

/// A run as it ended (or paused), for embedders. It has no JSON form of its
/// own: the JSON of a run is the API's (`aegis-wire`), read back from
/// history, so a run prints one way wherever it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run id (UUIDv7).
    pub run_id: String,
    /// The workflow key.
    pub workflow: String,
    /// Final status, or `waiting` when paused at a gate.
    pub status: RunStatus,
    /// What started the run.
    pub trigger: Trigger,
    /// When the run started executing.
    pub started_at: Option<jiff::Timestamp>,
    /// When it finished.
    pub completed_at: Option<jiff::Timestamp>,
    /// Wall time from start to finish (or to the pause).
    pub duration_ms: u64,
    /// Why the run did not succeed.
    pub error: Option<String>,
    /// The gate the run waits at, when `waiting`.
    pub waiting_at: Option<String>,
    /// The steps that finished or were skipped, in workflow order.
    pub steps: Vec<StepOutcome>,
}

impl RunSummary {
    /// A run that ran no step in this execution: where it stands and why.
    pub(crate) fn unstarted(
        run_id: &RunId,
        workflow: &str,
        trigger: Trigger,
        status: RunStatus,
        error: &str,
    ) -> Self {
        RunSummary {
            run_id: run_id.to_string(),
            workflow: workflow.to_owned(),
            status,
            trigger,
            started_at: None,
            completed_at: Some(jiff::Timestamp::now()),
            duration_ms: 0,
            error: Some(error.to_owned()),
            waiting_at: None,
            steps: Vec::new(),
        }
    }

    /// Whether the run succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// The outcome of one step, by id.
    pub fn step(&self, step_id: &str) -> Option<&StepOutcome> {
        self.steps.iter().find(|s| s.step_id == step_id)
    }
}

/// A run as history has it now, as a [`RunSummary`].
pub(crate) fn stored_summary(detail: &RunDetail) -> RunSummary {
    RunSummary {
        run_id: detail.run.id.to_string(),
        workflow: detail.run.workflow.clone(),
        status: detail.run.status,
        trigger: detail.run.trigger,
        started_at: detail.run.started_at,
        completed_at: detail.run.completed_at,
        duration_ms: detail.run.duration_ms.unwrap_or(0),
        error: detail.run.error.clone(),
        waiting_at: detail.pending_gates.first().map(|g| g.gate_id.clone()),
        steps: rebuild(&detail.steps, usize::MAX).into_values().collect(),
    }
}

/// The outcomes of the steps before `end`, each from its latest execution,
/// as a resumed run sees them.
pub(crate) fn rebuild(steps: &[StepRecord], end: usize) -> IndexMap<String, StepOutcome> {
    let mut latest: BTreeMap<u32, &StepRecord> = BTreeMap::new();
    for step in steps.iter().filter(|s| (s.index as usize) < end) {
        match latest.get(&step.index) {
            Some(seen) if seen.execution >= step.execution => {}
            _ => {
                latest.insert(step.index, step);
            }
        }
    }
    latest
        .into_values()
        .map(|r| {
            let outcome = StepOutcome {
                step_id: r.step_id.clone(),
                step_type: r.step_type.clone(),
                index: r.index,
                success: matches!(r.status, StepStatus::Succeeded | StepStatus::Skipped),
                skipped: r.skipped(),
                error: r.error.clone(),
                data: r.data.clone().unwrap_or(Value::Null),
                duration_ms: r.duration_ms.unwrap_or(0),
                attempts: r.attempts.clone(),
            };
            (r.step_id.clone(), outcome)
        })
        .collect()
}

/// Whole milliseconds of `duration`.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The counts of a run's steps for `workflow.completed`.
pub(crate) fn counts(total: usize, outcomes: &IndexMap<String, StepOutcome>) -> StepCounts {
    let mut counts = StepCounts { total: total as u32, ..StepCounts::default() };
    for outcome in outcomes.values() {
        if outcome.skipped {
            counts.skipped += 1;
        } else if outcome.success {
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    counts
}
