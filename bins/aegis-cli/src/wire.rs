//! Runs as the API sends them (`GET /api/runs`, `GET /api/runs/{id}`), and conversions
//! from the history store's records, so a command prints the same thing in-process and
//! against a server.

use aegis_history::{Attempt, GateDecision, PendingGate, RunDetail, RunRecord, StepRecord};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

fn time(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_string())
}

/// A run without its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) workflow: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) trigger: String,
    #[serde(default)]
    pub(crate) created_at: String,
    #[serde(default)]
    pub(crate) started_at: Option<String>,
    #[serde(default)]
    pub(crate) completed_at: Option<String>,
    #[serde(default)]
    pub(crate) duration_ms: Option<u64>,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) request_id: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepAttempt {
    pub(crate) attempt: u32,
    pub(crate) success: bool,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) duration_ms: u64,
    #[serde(default)]
    pub(crate) started_at: String,
}

impl From<&Attempt> for StepAttempt {
    fn from(a: &Attempt) -> StepAttempt {
        StepAttempt {
            attempt: a.attempt,
            success: a.success,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
            started_at: a.started_at.to_string(),
        }
    }
}

/// One step execution of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) id: String,
    #[serde(rename = "type", default)]
    pub(crate) step_type: String,
    #[serde(default)]
    pub(crate) index: u32,
    #[serde(default)]
    pub(crate) execution: u32,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) success: bool,
    #[serde(default)]
    pub(crate) skipped: bool,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) started_at: Option<String>,
    #[serde(default)]
    pub(crate) completed_at: Option<String>,
    #[serde(default)]
    pub(crate) duration_ms: Option<u64>,
    #[serde(default)]
    pub(crate) data: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) attempts: Vec<StepAttempt>,
}

impl From<&StepRecord> for Step {
    fn from(s: &StepRecord) -> Step {
        Step {
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
            attempts: s.attempts.iter().map(StepAttempt::from).collect(),
        }
    }
}

/// A decision taken at a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Decision {
    pub(crate) gate: String,
    pub(crate) decision: String,
    #[serde(default)]
    pub(crate) by: String,
    #[serde(default)]
    pub(crate) at: String,
    #[serde(default)]
    pub(crate) comment: Option<String>,
    #[serde(default)]
    pub(crate) patch: Option<serde_json::Value>,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Gate {
    pub(crate) run_id: String,
    pub(crate) gate: String,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) artifact: Option<String>,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) deadline: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunWithSteps {
    #[serde(flatten)]
    pub(crate) run: Run,
    #[serde(default)]
    pub(crate) steps: Vec<Step>,
    #[serde(default)]
    pub(crate) gate_decisions: Vec<Decision>,
    #[serde(default)]
    pub(crate) pending_gates: Vec<Gate>,
}

impl From<&RunDetail> for RunWithSteps {
    fn from(d: &RunDetail) -> RunWithSteps {
        RunWithSteps {
            run: Run::from(&d.run),
            steps: d.steps.iter().map(Step::from).collect(),
            gate_decisions: d.gate_decisions.iter().map(Decision::from).collect(),
            pending_gates: d.pending_gates.iter().map(Gate::from).collect(),
        }
    }
}

/// A page of `GET /api/runs`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RunPage {
    pub(crate) runs: Vec<Run>,
    #[serde(default)]
    pub(crate) next_cursor: Option<String>,
}

/// The `202 Accepted` answer of `POST /api/workflows/{key}/run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Accepted {
    pub(crate) run_id: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) links: serde_json::Value,
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` UTC, or the text unchanged if it does not
/// parse.
pub(crate) fn short_time(text: &str) -> String {
    match text.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => text.to_owned(),
    }
}

/// A duration for people: `850 ms`, `12.3 s`, `4m 05s`.
pub(crate) fn short_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(short_duration(0), "0 ms");
        assert_eq!(short_duration(999), "999 ms");
        assert_eq!(short_duration(12_345), "12.3 s");
        assert_eq!(short_duration(245_000), "4m 05s");
        assert_eq!(short_time("2026-11-23T14:33:53.123456Z"), "2026-11-23 14:33:53");
        assert_eq!(short_time("yesterday"), "yesterday");
    }

    #[test]
    fn an_api_run_with_steps_parses() {
        let body = serde_json::json!({
            "id": "r1", "workflow": "w", "status": "failed", "trigger": "api",
            "created_at": "2026-01-01T00:00:00Z", "started_at": null, "completed_at": null,
            "duration_ms": 5, "error": "boom", "request_id": null, "extra": 1,
            "steps": [{"id": "s", "type": "command", "index": 0, "execution": 0,
                "status": "failed", "success": false, "skipped": false, "error": "boom",
                "attempts": [{"attempt": 1, "success": false, "error": "boom", "duration_ms": 5,
                    "started_at": "2026-01-01T00:00:00Z"}]}],
            "gate_decisions": [], "pending_gates": []
        });
        let run: RunWithSteps = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.run.status, "failed");
        assert_eq!(run.steps[0].attempts.len(), 1);
    }
}
