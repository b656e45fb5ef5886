//! Gate decisions: a reviewer's approve or reject (with an optional RFC 6902
//! patch of the gate's artifact), the `on_timeout` decision at a gate's
//! deadline, cancelling a waiting run, and resuming a run after its gate.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aegis_config::{GateStep, OnTimeout, StepKind, Workflow};
use aegis_history::{
    GateDecision, GateDecisionKind, RunDetail, RunId, RunStatus, RunUpdate, StepRecord, StepStatus,
};
use indexmap::IndexMap;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::engine::{Engine, Inner, Resume, RunHandle};
use crate::error::{Error, Result};
use crate::event::{
    EventData, GateDecided, GateExpired, RunCancelled, RunEvents, WorkflowCompleted,
};
use crate::run::{counts, millis};
use crate::step::{AttemptOutcome, StepOutcome};

/// Who decides at the deadline.
pub const TIMEOUT_DECIDER: &str = "timeout";

/// A reviewer's decision at a gate, for [`Engine::decide`].
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

impl Engine {
    /// Decides a gate a run is waiting at.
    ///
    /// The patch is checked against the artifact before anything changes, so
    /// a patch that does not apply fails with [`Error::InvalidPatch`] and the
    /// gate stays pending. The decision is then recorded by the history
    /// store's `record_gate_decision`, which accepts exactly one decision per
    /// pending gate: a second one fails with [`Error::GateNotPending`]. Only the
    /// winner changes the artifact, emits `gate.approved` or `gate.rejected`,
    /// and resumes the run (after the gate, or from `retry_from` with a new
    /// execution number) or ends it `rejected`.
    pub async fn decide(
        &self,
        run_id: &RunId,
        gate_id: &str,
        request: GateRequest,
    ) -> Result<GateOutcome> {
        if self.inner().closing() {
            return Err(Error::ShuttingDown);
        }
        let _deciding = self.inner().deciding.lock().await;
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
        self.record_decision(run_id, &decision).await?;
        log::info!(
            "run_id={run_id}: gate {gate_id} decided {} by {}",
            decision.decision,
            decision.by
        );
        self.proceed(detail, &workflow, index, &gate, &decision, request.request_id).await
    }

    /// Ends a run waiting at a gate as `cancelled`. Its pending gates are
    /// closed with a `reject` decision by `by` (comment "the run was
    /// cancelled"), so the audit trail says who ended the wait. Returns
    /// `false` when the run is not waiting.
    pub async fn cancel_waiting(
        &self,
        run_id: &RunId,
        by: &str,
        request_id: Option<String>,
    ) -> Result<bool> {
        let _deciding = self.inner().deciding.lock().await;
        let inner = self.inner();
        let Some(detail) = inner.history.get_run(run_id).await? else {
            return Err(Error::UnknownRun(run_id.to_string()));
        };
        if detail.run.status != RunStatus::Waiting {
            return Ok(false);
        }
        let now = Timestamp::now();
        let mut gate_id = None;
        for pending in &detail.pending_gates {
            let decision = GateDecision {
                gate_id: pending.gate_id.clone(),
                decision: GateDecisionKind::Reject,
                by: by.to_owned(),
                at: now,
                comment: Some("the run was cancelled".to_owned()),
                patch: None,
                artifact_before: None,
                artifact_after: None,
            };
            match self.record_decision(run_id, &decision).await {
                Ok(()) | Err(Error::GateNotPending { .. }) => {}
                Err(err) => return Err(err),
            }
            if let Some(mut record) = latest_at(&detail.steps, pending.step_index).cloned() {
                record.status = StepStatus::Failed;
                record.error = Some("cancelled".to_owned());
                record.completed_at = Some(now);
                record.duration_ms = record.started_at.map(|s| elapsed_ms(s, now));
                inner.history.record_step(run_id, &record).await?;
            }
            gate_id = Some(pending.gate_id.clone());
        }
        let duration_ms = detail.run.started_at.map_or(0, |s| elapsed_ms(s, now));
        let update = RunUpdate {
            status: RunStatus::Cancelled,
            started_at: None,
            completed_at: Some(now),
            duration_ms: Some(duration_ms),
            error: Some("cancelled".to_owned()),
        };
        inner.history.update_run(run_id, &update).await?;
        let events = self.open_events(&detail, request_id);
        events.emit(EventData::RunCancelled(RunCancelled { step_id: gate_id }));
        let total =
            self.config().workflows().get(&detail.run.workflow).map_or(0, |w| w.steps().len());
        events.emit(EventData::WorkflowCompleted(WorkflowCompleted {
            status: RunStatus::Cancelled.as_str().to_owned(),
            success: false,
            duration_ms,
            summary: counts(total, &rebuild(&detail.steps, usize::MAX)),
            error: Some("cancelled".to_owned()),
        }));
        log::info!("run_id={run_id}: cancelled while waiting at a gate");
        Ok(true)
    }

    /// Arms a timer for every pending gate with a deadline, from the deadline
    /// stored in history; gates whose deadline has already passed (while no
    /// process was running) are decided now by their `on_timeout`. Returns the
    /// runs decided now. [`Engine::recover`] calls it.
    pub async fn arm_gate_timers(&self) -> Result<Vec<RunId>> {
        let now = Timestamp::now();
        let mut expired = Vec::new();
        for gate in self.inner().history.pending_gates().await? {
            let Some(deadline) = gate.deadline else { continue };
            if deadline <= now {
                if self.expire(&gate.run_id, &gate.gate_id).await? {
                    expired.push(gate.run_id);
                }
            } else {
                arm_timer(Arc::clone(self.inner()), gate.run_id, gate.gate_id, deadline);
            }
        }
        Ok(expired)
    }

    /// Decides a gate whose deadline passed, by its `on_timeout`, as
    /// `timeout`. Returns whether this call decided it (a reviewer may have
    /// been first).
    pub(crate) async fn expire(&self, run_id: &RunId, gate_id: &str) -> Result<bool> {
        if self.inner().closing() {
            return Ok(false);
        }
        let _deciding = self.inner().deciding.lock().await;
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
        match self.record_decision(run_id, &decision).await {
            Ok(()) => {}
            Err(Error::GateNotPending { .. }) => return Ok(false),
            Err(err) => return Err(err),
        }
        log::info!("run_id={run_id}: gate {gate_id} expired, decided {}", decision.decision);
        self.proceed(detail, &workflow, index, &gate, &decision, None).await?;
        Ok(true)
    }

    /// Resumes a run whose gate was decided but that the previous process did
    /// not get to resume (it stopped in between). Returns whether it did.
    pub(crate) async fn resume_decided(&self, run_id: &RunId) -> Result<bool> {
        let _deciding = self.inner().deciding.lock().await;
        let Some(detail) = self.inner().history.get_run(run_id).await? else { return Ok(false) };
        if detail.run.status != RunStatus::Waiting || !detail.pending_gates.is_empty() {
            return Ok(false);
        }
        let Some(decision) = detail.gate_decisions.last().cloned() else { return Ok(false) };
        let Some(workflow) = self.config().workflows().get(&detail.run.workflow).cloned() else {
            return Ok(false);
        };
        let Some((index, gate)) = find_gate(&workflow, &decision.gate_id) else {
            return Ok(false);
        };
        log::warn!(
            "run_id={run_id}: resuming after gate {} decided before a restart",
            decision.gate_id
        );
        self.proceed(detail, &workflow, index, &gate, &decision, None).await?;
        Ok(true)
    }

    /// The run, its workflow and the gate, when the run waits at that gate.
    async fn waiting_gate(
        &self,
        run_id: &RunId,
        gate_id: &str,
    ) -> Result<(RunDetail, Workflow, usize, GateStep)> {
        let Some(detail) = self.inner().history.get_run(run_id).await? else {
            return Err(Error::UnknownRun(run_id.to_string()));
        };
        let Some(workflow) = self.config().workflows().get(&detail.run.workflow).cloned() else {
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

    async fn record_decision(&self, run_id: &RunId, decision: &GateDecision) -> Result<()> {
        match self.inner().history.record_gate_decision(run_id, decision).await {
            Ok(()) => Ok(()),
            Err(aegis_history::Error::GateNotPending { run_id, gate_id }) => {
                Err(Error::GateNotPending { run_id, gate_id })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The run's events, continuing its `seq` (from memory when the run's log
    /// is still alive in this process, else from its `events.jsonl`).
    fn open_events(&self, detail: &RunDetail, request_id: Option<String>) -> RunEvents {
        self.inner().open_events(
            &detail.run.id,
            &detail.run.workflow,
            request_id.or_else(|| detail.run.request_id.clone()),
        )
    }

    /// Carries out a recorded decision: the patched artifact becomes the
    /// step's data (history and `<step>.json`), the gate step is recorded as
    /// decided, the decision's event is emitted, and the run resumes or ends.
    async fn proceed(
        &self,
        detail: RunDetail,
        workflow: &Workflow,
        index: usize,
        gate: &GateStep,
        decision: &GateDecision,
        request_id: Option<String>,
    ) -> Result<GateOutcome> {
        let inner = Arc::clone(self.inner());
        let run_id = detail.run.id.clone();
        let events = Arc::new(self.open_events(&detail, request_id));
        let mut steps = detail.steps;
        if decision.patch.is_some()
            && let (Some(artifact), Some(after)) = (gate.artifact(), &decision.artifact_after)
            && let Some(record) = latest_mut(&mut steps, artifact)
        {
            record.data = Some(after.clone());
            // The step's data in history is its artifact `<step>.json`.
            inner.history.record_step(&run_id, record).await?;
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
        inner.history.record_step(&run_id, &record).await?;
        steps.retain(|s| !(s.execution == gate_execution && s.index == index as u32));
        steps.push(record);

        match decision.decision {
            GateDecisionKind::Approve | GateDecisionKind::Reject => {
                let data = GateDecided {
                    gate_id: gate_id.clone(),
                    by: decision.by.clone(),
                    comment: decision.comment.clone(),
                    patch: decision.patch.clone(),
                };
                events.emit(if approved {
                    EventData::GateApproved(data)
                } else {
                    EventData::GateRejected(data)
                });
            }
            _ => {
                events.emit(EventData::GateExpired(GateExpired {
                    gate_id: gate_id.clone(),
                    decision: if approved { "approve" } else { "reject" }.to_owned(),
                    by: decision.by.clone(),
                    comment: decision.comment.clone(),
                    patch: decision.patch.clone(),
                }));
            }
        }

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
        let Some(resume) = resume else {
            let duration_ms = detail.run.started_at.map_or(0, |s| elapsed_ms(s, now));
            let error = format!("gate {gate_id} rejected by {}", decision.by);
            let update = RunUpdate {
                status: RunStatus::Rejected,
                started_at: None,
                completed_at: Some(now),
                duration_ms: Some(duration_ms),
                error: Some(error.clone()),
            };
            inner.history.update_run(&run_id, &update).await?;
            events.emit(EventData::WorkflowCompleted(WorkflowCompleted {
                status: RunStatus::Rejected.as_str().to_owned(),
                success: false,
                duration_ms,
                summary: counts(workflow.steps().len(), &rebuild(&steps, index + 1)),
                error: Some(error),
            }));
            log::info!("run_id={run_id}: rejected at gate {gate_id}");
            return Ok(GateOutcome {
                run_id,
                gate_id,
                decision: decision.decision,
                status: RunStatus::Rejected,
                artifact,
                handle: None,
            });
        };
        let admission = self.admit_resumed(workflow.key());
        let handle = self.spawn(
            run_id.clone(),
            workflow.key().to_owned(),
            detail.run.trigger,
            events,
            admission,
            Some(resume),
        );
        Ok(GateOutcome {
            run_id,
            gate_id,
            decision: decision.decision,
            status: RunStatus::Running,
            artifact,
            handle: Some(handle),
        })
    }
}

/// Starts a task that decides the gate at its deadline, unless a reviewer
/// decides first or the engine is gone.
pub(crate) fn arm_timer(inner: Arc<Inner>, run_id: RunId, gate_id: String, deadline: Timestamp) {
    // The timer does not keep the engine (and its history store) alive.
    let weak: Weak<Inner> = Arc::downgrade(&inner);
    drop(inner);
    tokio::spawn(async move {
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
        let engine = Engine::from_inner(inner);
        if let Err(err) = engine.expire(&run_id, &gate_id).await {
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

/// The outcomes of the steps before `end`, each from its latest execution,
/// as a resumed run sees them.
fn rebuild(steps: &[StepRecord], end: usize) -> IndexMap<String, StepOutcome> {
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
                attempts: r
                    .attempts
                    .iter()
                    .map(|a| AttemptOutcome {
                        attempt: a.attempt,
                        success: a.success,
                        error: a.error.clone(),
                        duration_ms: a.duration_ms,
                        started_at: a.started_at,
                    })
                    .collect(),
            };
            (r.step_id.clone(), outcome)
        })
        .collect()
}

fn elapsed_ms(since: Timestamp, now: Timestamp) -> u64 {
    now.duration_since(since).try_into().map(millis).unwrap_or(0)
}
