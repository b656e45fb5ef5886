//! Cancelling a run from outside it: by a user (`Engine::cancel`, the
//! API) or through its handle. The cancel is the run's end, committed as a
//! compare-and-set before anyone hears of it: it wins over anything not
//! committed yet (a decision, a step's result, the run's own end), and the
//! execution, if it runs here, is stopped after the commit.

use aegis_history::{GateDecision, GateDecisionKind, RunId, StepStatus, Write};

use crate::error::{Error, Result};
use crate::event::{EventData, RunCancelled};
use crate::lifecycle::{Command, End};
use crate::state::{Inner, elapsed_ms, run_ref};
use crate::summary::{counts, rebuild};

/// How many times a cancel that lost a race to another commit looks again.
const RETRIES: usize = 16;

/// Cancels a run that is queued, running or waiting at a gate, as `by`: see
/// `Engine::cancel`.
pub(crate) async fn cancel(
    inner: &Inner,
    run_id: &RunId,
    by: &str,
    request_id: Option<String>,
) -> Result<()> {
    // A lost race (a decision or a step committed between the read and
    // the commit) is retried on the new state; each retry follows a
    // commit by someone else, so this ends.
    for _ in 0..RETRIES {
        let Some(detail) = inner.history.get_run(run_id).await? else {
            return Err(Error::UnknownRun(run_id.to_string()));
        };
        if detail.run.status.is_finished() {
            return Err(Error::RunFinished {
                run_id: run_id.to_string(),
                status: detail.run.status.as_str().to_owned(),
            });
        }
        let now = jiff::Timestamp::now();
        let reason = "cancelled".to_owned();
        let mut decisions = Vec::new();
        let mut step_id = detail
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Running)
            .map(|s| s.step_id.clone())
            .next();
        for pending in &detail.pending_gates {
            step_id = Some(pending.gate_id.clone());
            decisions.push(Write::DecideGate(
                run_id.clone(),
                GateDecision {
                    gate_id: pending.gate_id.clone(),
                    decision: GateDecisionKind::Reject,
                    by: by.to_owned(),
                    at: now,
                    comment: Some("the run was cancelled".to_owned()),
                    patch: None,
                    artifact_before: None,
                    artifact_after: None,
                },
            ));
        }
        let total =
            inner.config.workflows().get(&detail.run.workflow).map_or(0, |w| w.steps().len());
        let (mut writes, events) = End {
            command: Command::Cancel,
            at: now,
            duration_ms: detail.run.started_at.map_or(0, |s| elapsed_ms(s, now)),
            error: Some(reason.clone()),
            cause: Some(EventData::RunCancelled(RunCancelled { step_id })),
            close_running: Some(reason),
            summary: counts(total, &rebuild(&detail.steps, usize::MAX)),
        }
        .change(run_id);
        writes.extend(decisions);
        let reference = run_ref(&detail.run).with_request(request_id.clone());
        match inner.ledger.commit(&reference, writes, events).await {
            Ok(_) => {
                inner.stop(run_id);
                inner.ledger.forget(run_id);
                log::info!("run_id={run_id}: cancelled by {by}");
                return Ok(());
            }
            Err(
                aegis_history::Error::StatusConflict { .. }
                | aegis_history::Error::GateNotPending { .. },
            ) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::Contended(run_id.to_string()))
}
