//! Gate decisions: a reviewer's approve or reject (with an optional RFC 6902
//! patch of the gate's artifact) and the `on_timeout` decision at a gate's
//! deadline. A decision is one commit: the decision row (which removes the
//! pending gate, so a second decision fails), the patched artifact, the gate
//! step's result, the run's move out of `waiting` (a compare-and-set) and the
//! decision's events; then the run resumes, or has ended `rejected`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use aegis_config::{GateStep, OnTimeout, StepKind, Workflow};
use aegis_history::{
    GateDecision, GateDecisionKind, RunDetail, RunId, RunStatus, StepRecord, StepStatus, Write,
};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::event::{EventData, GateDecided, GateExpired};
use crate::lifecycle::{Command, End};
use crate::run::{Resume, RunHandle};
use crate::state::{Deadline, Inner, elapsed_ms, run_ref};
use crate::summary::{counts, rebuild};

/// Who decides at the deadline.
pub const TIMEOUT_DECIDER: &str = "timeout";

/// A reviewer's decision at a gate, for [`crate::Engine::decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct GateRequest {
    approve: bool,
    by: String,
    comment: Option<String>,
    patch: Option<Value>,
    request_id: Option<String>,
}

impl GateRequest {
    /// An approval by `by` (an API key id, or a name).
    pub fn approve(by: impl Into<String>) -> Self {
        Self { approve: true, by: by.into(), comment: None, patch: None, request_id: None }
    }

    /// A rejection by `by`.
    pub fn reject(by: impl Into<String>) -> Self {
        Self { approve: false, ..Self::approve(by) }
    }

    /// The reviewer's comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// An RFC 6902 JSON Patch (an array of operations) for the gate's artifact.
    pub fn patch(mut self, patch: Value) -> Self {
        self.patch = Some(patch);
        self
    }

    /// Ties the decision's events to the HTTP request that made it.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// What a decision did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateOutcome {
    /// The run.
    pub run_id: RunId,
    /// The gate step id.
    pub gate_id: String,
    /// What was decided.
    pub decision: GateDecisionKind,
    /// `running` when the run goes on (after the gate, or again from
    /// `retry_from`), `rejected` when it ended.
    pub status: RunStatus,
    /// The gate's artifact after the patch (the data later steps see).
    pub artifact: Option<Value>,
    /// The resumed run, to wait for; `None` when the run ended.
    pub handle: Option<RunHandle>,
}

impl Inner {
    /// Decides a gate a run is waiting at.
    ///
    /// The patch is checked against the artifact before anything changes, so
    /// a patch that does not apply fails with [`Error::InvalidPatch`] and the
    /// gate stays pending. The decision then commits as one compare-and-set:
    /// of two decisions (or a decision and a cancel or the gate's timeout)
    /// exactly one wins; the loser fails with [`Error::GateNotPending`] (or
    /// [`Error::RunNotWaiting`]). Only the winner changes the artifact,
    /// emits `gate.approved` or `gate.rejected`, and resumes the run (after
    /// the gate, or from `retry_from` with a new execution number) or ends
    /// it `rejected`.
    pub(crate) async fn decide(
        self: &Arc<Self>,
        run_id: &RunId,
        gate_id: &str,
        request: GateRequest,
    ) -> Result<GateOutcome> {
        if self.closing() {
            return Err(Error::ShuttingDown);
        }
        let (detail, workflow, index, gate) = self.waiting_gate(run_id, gate_id).await?;
        let before = artifact_data(&detail, &gate);
        let after = apply_patch(gate_id, &gate, before.as_ref(), request.patch.as_ref())?;
        let decision = GateDecision {
            gate_id: gate_id.to_owned(),
            decision: if request.approve {
                GateDecisionKind::Approve
            } else {
                GateDecisionKind::Reject
            },
            by: request.by,
            at: Timestamp::now(),
            comment: request.comment,
            patch: request.patch,
            artifact_before: before,
            artifact_after: after,
        };
        let outcome = self
            .proceed(detail, &workflow, index, &gate, &decision, request.request_id, true)
            .await?;
        log::info!(
            "run_id={run_id}: gate {gate_id} decided {} by {}",
            decision.decision,
            decision.by
        );
        Ok(outcome)
    }

    /// Arms a timer for every pending gate with a deadline, from the deadline
    /// stored in history; gates whose deadline has already passed (while no
    /// process was running) are decided now by their `on_timeout`. Returns the
    /// runs decided now. `Engine::recover` calls it.
    pub(crate) async fn arm_gate_timers(self: &Arc<Self>) -> Result<Vec<RunId>> {
        let now = Timestamp::now();
        let mut expired = Vec::new();
        for gate in self.history.pending_gates().await? {
            let Some(deadline) = gate.deadline else { continue };
            if deadline <= now {
                match self.expire(&gate.run_id, &gate.gate_id).await {
                    Ok(true) => expired.push(gate.run_id),
                    Ok(false) => {}
                    Err(err) => log::error!(
                        "run_id={}: cannot decide gate {} at its deadline: {err}",
                        gate.run_id,
                        gate.gate_id
                    ),
                }
            } else {
                arm_timer(Arc::clone(self), gate.run_id, gate.gate_id, deadline);
            }
        }
        Ok(expired)
    }

    /// Decides a gate whose deadline passed, by its `on_timeout`, as
    /// `timeout`. Returns whether this call decided it (a reviewer or a
    /// cancel may have been first).
    pub(crate) async fn expire(self: &Arc<Self>, run_id: &RunId, gate_id: &str) -> Result<bool> {
        if self.closing() {
            return Ok(false);
        }
        let (detail, workflow, index, gate) = match self.waiting_gate(run_id, gate_id).await {
            Ok(found) => found,
            Err(Error::History(err)) => return Err(Error::History(err)),
            Err(_) => return Ok(false),
        };
        let now = Timestamp::now();
        let deadline = detail
            .pending_gates
            .iter()
            .find(|g| g.gate_id == gate_id)
            .and_then(|g| g.deadline)
            .filter(|d| *d <= now);
        // A timer of an earlier wait at this gate (before a `retry_from`) must
        // not decide the new wait, whose deadline is later.
        let Some(deadline) = deadline else { return Ok(false) };
        let before = artifact_data(&detail, &gate);
        let decision = GateDecision {
            gate_id: gate_id.to_owned(),
            decision: match gate.on_timeout() {
                OnTimeout::Approve => GateDecisionKind::TimeoutApprove,
                _ => GateDecisionKind::TimeoutReject,
            },
            by: TIMEOUT_DECIDER.to_owned(),
            at: now,
            comment: Some(format!("no decision before the deadline {deadline}")),
            patch: None,
            artifact_before: before.clone(),
            artifact_after: before,
        };
        match self.proceed(detail, &workflow, index, &gate, &decision, None, true).await {
            Ok(_) => {}
            Err(Error::GateNotPending { .. } | Error::RunNotWaiting { .. }) => return Ok(false),
            Err(err) => return Err(err),
        }
        log::info!("run_id={run_id}: gate {gate_id} expired, decided {}", decision.decision);
        Ok(true)
    }

    /// Carries out a decision an earlier version of Aegis recorded apart
    /// from the run's status and did not get to carry out (it stopped in
    /// between): a run `waiting` with no pending gate. Returns whether it did.
    pub(crate) async fn resume_decided(self: &Arc<Self>, run_id: &RunId) -> Result<bool> {
        let Some(detail) = self.history.get_run(run_id).await? else { return Ok(false) };
        if detail.run.status != RunStatus::Waiting || !detail.pending_gates.is_empty() {
            return Ok(false);
        }
        let Some(decision) = detail.gate_decisions.last().cloned() else { return Ok(false) };
        let Some(workflow) = self.config.workflows().get(&detail.run.workflow).cloned() else {
            return Ok(false);
        };
        let Some((index, gate)) = find_gate(&workflow, &decision.gate_id) else {
            return Ok(false);
        };
        log::warn!(
            "run_id={run_id}: resuming after gate {} decided before a restart",
            decision.gate_id
        );
        match self.proceed(detail, &workflow, index, &gate, &decision, None, false).await {
            Ok(_) => Ok(true),
            Err(Error::RunNotWaiting { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The run, its workflow and the gate, when the run waits at that gate.
    async fn waiting_gate(
        &self,
        run_id: &RunId,
        gate_id: &str,
    ) -> Result<(RunDetail, Workflow, usize, GateStep)> {
        let Some(detail) = self.history.get_run(run_id).await? else {
            return Err(Error::UnknownRun(run_id.to_string()));
        };
        let Some(workflow) = self.config.workflows().get(&detail.run.workflow).cloned() else {
            return Err(Error::UnknownWorkflow(detail.run.workflow.clone()));
        };
        let Some((index, gate)) = find_gate(&workflow, gate_id) else {
            return Err(Error::UnknownGate {
                run_id: run_id.to_string(),
                gate_id: gate_id.to_owned(),
            });
        };
        if detail.run.status != RunStatus::Waiting {
            return Err(Error::RunNotWaiting {
                run_id: run_id.to_string(),
                status: detail.run.status.as_str().to_owned(),
            });
        }
        if !detail.pending_gates.iter().any(|g| g.gate_id == gate_id) {
            return Err(Error::GateNotPending {
                run_id: run_id.to_string(),
                gate_id: gate_id.to_owned(),
            });
        }
        Ok((detail, workflow, index, gate))
    }

    /// Commits a decision and carries it out: the patched artifact becomes
    /// the step's data (history and `<step>.json`), the gate step is
    /// recorded as decided, the run leaves `waiting` (compare-and-set) and
    /// the decision's events are emitted, all in one commit; then the run
    /// resumes, or has ended.
    #[expect(clippy::too_many_arguments, reason = "private, called from three places")]
    async fn proceed(
        self: &Arc<Self>,
        detail: RunDetail,
        workflow: &Workflow,
        index: usize,
        gate: &GateStep,
        decision: &GateDecision,
        request_id: Option<String>,
        record: bool,
    ) -> Result<GateOutcome> {
        let inner = Arc::clone(self);
        let run_id = detail.run.id.clone();
        let reference = run_ref(&detail.run).with_request(request_id);
        let mut writes = Vec::new();
        if record {
            writes.push(Write::DecideGate(run_id.clone(), decision.clone()));
        }
        let mut steps = detail.steps;
        if decision.patch.is_some()
            && let (Some(artifact), Some(after)) = (gate.artifact(), &decision.artifact_after)
            && let Some(record) = latest_mut(&mut steps, artifact)
        {
            record.data = Some(after.clone());
            // The step's data in history is its artifact `<step>.json`.
            writes.push(Write::RecordStep(run_id.clone(), record.clone()));
        }
        let approved = matches!(
            decision.decision,
            GateDecisionKind::Approve | GateDecisionKind::TimeoutApprove
        );
        let gate_id = decision.gate_id.clone();

        let now = Timestamp::now();
        let gate_execution = latest_at(&steps, index as u32).map_or(0, |r| r.execution);
        let started = latest_at(&steps, index as u32).and_then(|r| r.started_at);
        let data = json!({
            "decision": decision.decision.as_str(),
            "by": decision.by,
            "comment": decision.comment,
        });
        let record = StepRecord {
            execution: gate_execution,
            index: index as u32,
            step_id: gate_id.clone(),
            step_type: "gate".to_owned(),
            status: if approved { StepStatus::Succeeded } else { StepStatus::Failed },
            error: (!approved).then(|| format!("rejected by {}", decision.by)),
            started_at: started.or(Some(now)),
            completed_at: Some(now),
            duration_ms: Some(started.map_or(0, |s| elapsed_ms(s, now))),
            data: Some(data),
            attempts: Vec::new(),
        };
        // Its data in history is its artifact `<gate>.json`.
        writes.push(Write::RecordStep(run_id.clone(), record.clone()));
        steps.retain(|s| !(s.execution == gate_execution && s.index == index as u32));
        steps.push(record);

        let mut events = vec![match decision.decision {
            GateDecisionKind::Approve | GateDecisionKind::Reject => {
                let data = GateDecided {
                    gate_id: gate_id.clone(),
                    by: decision.by.clone(),
                    comment: decision.comment.clone(),
                    patch: decision.patch.clone(),
                };
                if approved { EventData::GateApproved(data) } else { EventData::GateRejected(data) }
            }
            _ => EventData::GateExpired(GateExpired {
                gate_id: gate_id.clone(),
                decision: if approved { "approve" } else { "reject" }.to_owned(),
                by: decision.by.clone(),
                comment: decision.comment.clone(),
                patch: decision.patch.clone(),
            }),
        }];

        let artifact = decision.artifact_after.clone();
        let retry = if approved {
            None
        } else {
            gate.retry_from().and_then(|from| workflow.steps().iter().position(|s| s.id() == from))
        };
        let resume = if approved {
            Some(Resume {
                start: index + 1,
                execution: gate_execution,
                outcomes: rebuild(&steps, index + 1),
                started_at: detail.run.started_at,
            })
        } else {
            retry.map(|start| Resume {
                start,
                execution: steps.iter().map(|s| s.execution).max().unwrap_or(0) + 1,
                outcomes: rebuild(&steps, start),
                started_at: detail.run.started_at,
            })
        };
        let status = if resume.is_some() {
            writes.push(Command::Resume.status_write(&run_id));
            RunStatus::Running
        } else {
            let (end, announced) = End {
                command: Command::Reject,
                at: now,
                duration_ms: detail.run.started_at.map_or(0, |s| elapsed_ms(s, now)),
                error: Some(format!("gate {gate_id} rejected by {}", decision.by)),
                cause: None,
                close_running: None,
                summary: counts(workflow.steps().len(), &rebuild(&steps, index + 1)),
            }
            .change(&run_id);
            writes.extend(end);
            events.extend(announced);
            RunStatus::Rejected
        };
        match inner.ledger.commit(&reference, writes, events).await {
            Ok(_) => {}
            Err(aegis_history::Error::GateNotPending { run_id, gate_id }) => {
                return Err(Error::GateNotPending { run_id, gate_id });
            }
            Err(aegis_history::Error::StatusConflict { run_id, status }) => {
                return Err(Error::RunNotWaiting { run_id, status });
            }
            Err(err) => return Err(err.into()),
        }
        let Some(resume) = resume else {
            inner.ledger.forget(&run_id);
            log::info!("run_id={run_id}: rejected at gate {gate_id}");
            return Ok(GateOutcome {
                run_id,
                gate_id,
                decision: decision.decision,
                status,
                artifact,
                handle: None,
            });
        };
        let admission = self.admit_accepted(workflow.key());
        let handle =
            crate::run::spawn(self, reference, detail.run.trigger, admission, Some(resume), None);
        Ok(GateOutcome {
            run_id,
            gate_id,
            decision: decision.decision,
            status,
            artifact,
            handle: Some(handle),
        })
    }
}

/// Receives the gates runs wait at with a deadline (`Inner::arm_deadline`)
/// and arms a timer for each, until the engine is gone.
pub(crate) fn start_timers(inner: &Arc<Inner>, mut deadlines: mpsc::UnboundedReceiver<Deadline>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    inner.spawn(async move {
        while let Some(deadline) = deadlines.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            arm_timer(inner, deadline.run_id, deadline.gate_id, deadline.at);
        }
    });
}

/// Starts a task that decides the gate at its deadline, unless a reviewer
/// decides first or the engine is gone.
pub(crate) fn arm_timer(inner: Arc<Inner>, run_id: RunId, gate_id: String, deadline: Timestamp) {
    // The timer does not keep the engine (and its history store) alive.
    let weak: Weak<Inner> = Arc::downgrade(&inner);
    inner.spawn(async move {
        loop {
            let left = deadline.duration_since(Timestamp::now());
            if left.is_negative() || left.is_zero() {
                break;
            }
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            // Wall clock and timer clock may drift apart; check again after waking.
            tokio::time::sleep(left.max(Duration::from_millis(1))).await;
        }
        let Some(inner) = weak.upgrade() else { return };
        if let Err(err) = inner.expire(&run_id, &gate_id).await {
            log::error!("run_id={run_id}: cannot decide gate {gate_id} at its deadline: {err}");
        }
    });
}

fn find_gate(workflow: &Workflow, gate_id: &str) -> Option<(usize, GateStep)> {
    workflow.steps().iter().enumerate().find_map(|(index, step)| match step.kind() {
        StepKind::Gate(gate) if step.id() == gate_id => Some((index, gate.clone())),
        _ => None,
    })
}

/// The data of the latest execution of the gate's artifact step.
fn artifact_data(detail: &RunDetail, gate: &GateStep) -> Option<Value> {
    let artifact = gate.artifact()?;
    detail
        .steps
        .iter()
        .filter(|s| s.step_id == artifact)
        .max_by_key(|s| s.execution)
        .and_then(|s| s.data.clone())
}

/// Applies a reviewer's patch to a copy of the artifact; the artifact as it
/// will be after the decision.
fn apply_patch(
    gate_id: &str,
    gate: &GateStep,
    before: Option<&Value>,
    patch: Option<&Value>,
) -> Result<Option<Value>> {
    let Some(patch) = patch else { return Ok(before.cloned()) };
    let Some(artifact) = gate.artifact() else {
        return Err(Error::InvalidPatch(format!(
            "gate {gate_id} names no artifact, so there is nothing to patch"
        )));
    };
    let after =
        crate::patch::apply_patch(patch, before.unwrap_or(&Value::Null)).map_err(|refusal| {
            Error::InvalidPatch(format!("the patch to the data of step {artifact}: {refusal}"))
        })?;
    Ok(Some(after))
}

fn latest_at(steps: &[StepRecord], index: u32) -> Option<&StepRecord> {
    steps.iter().filter(|s| s.index == index).max_by_key(|s| s.execution)
}

fn latest_mut<'a>(steps: &'a mut [StepRecord], step_id: &str) -> Option<&'a mut StepRecord> {
    steps.iter_mut().filter(|s| s.step_id == step_id).max_by_key(|s| s.execution)
}
