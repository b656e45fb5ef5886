//! One run's execution: the state machine that walks a workflow's steps,
//! evaluates conditions, retries, times out, runs parallel batches, pauses at
//! gates and records everything in history and events.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::{Condition, StepKind, Workflow};
use aegis_history::{
    Attempt, PendingGate, RunId, RunStatus, RunUpdate, StepRecord, StepStatus, Trigger,
};
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::engine::Inner;
use crate::event::{
    ArtifactCreated, EventData, FailureDetected, GateWaiting, RunCancelled, RunEvents,
    RunInterrupted, StepCompleted, StepCounts, StepRetrying, StepSkipped, StepStarted,
    WorkflowCompleted, WorkflowStarted,
};
use crate::http::describe_timeout;
use crate::recorder::{Recorder, Write};
use crate::step::{AttemptOutcome, StepContext, StepError, StepOutcome};

/// The longest wait between two attempts of a step.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// A run as it ended (or paused).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The run id (UUIDv7).
    pub run_id: String,
    /// The workflow key.
    pub workflow: String,
    /// Final status, or `waiting` when paused at a gate.
    #[serde(serialize_with = "status_text")]
    pub status: RunStatus,
    /// What started the run.
    #[serde(serialize_with = "trigger_text")]
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
    /// Whether the run succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// The outcome of one step, by id.
    pub fn step(&self, step_id: &str) -> Option<&StepOutcome> {
        self.steps.iter().find(|s| s.step_id == step_id)
    }
}

fn status_text<S: serde::Serializer>(status: &RunStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

fn trigger_text<S: serde::Serializer>(trigger: &Trigger, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(trigger.as_str())
}

/// The delay before attempt `failed + 1`: `retry_delay * 2^(failed-1)`, capped.
pub fn retry_delay(base: Duration, failed_attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(failed_attempt.saturating_sub(1));
    base.checked_mul(factor).unwrap_or(MAX_RETRY_DELAY).min(MAX_RETRY_DELAY)
}

/// Whether a step's condition holds, given the steps before it.
pub(crate) fn condition_holds(
    condition: Condition,
    earlier: &IndexMap<String, StepOutcome>,
) -> bool {
    match condition {
        Condition::OnSuccess => earlier.values().all(|o| o.success),
        Condition::OnFailure => earlier.values().any(|o| !o.success),
        Condition::HasFailures => earlier.values().any(|o| !o.failures().is_empty()),
        Condition::Always => true,
        // A condition this engine does not know: run the step rather than drop it.
        _ => true,
    }
}

/// Why a run stopped by [`crate::Engine::shutdown`] is interrupted.
const SHUTDOWN_REASON: &str = "the server shut down while the run was running";

/// How one step execution ended.
struct Executed {
    outcome: StepOutcome,
    cancelled: bool,
}

/// The execution of one run.
pub(crate) struct RunExec {
    pub(crate) inner: Arc<Inner>,
    pub(crate) run_id: RunId,
    pub(crate) workflow: Workflow,
    pub(crate) trigger: Trigger,
    pub(crate) events: Arc<RunEvents>,
    pub(crate) cancel: CancellationToken,
    pub(crate) outcomes: IndexMap<String, StepOutcome>,
    pub(crate) recorder: Recorder,
    /// Which execution of the run this is in the engine's table of active runs.
    pub(crate) generation: u64,
    /// The execution number of the steps this pass records (0, then +1 for
    /// each gate rejection that sends the run back).
    pub(crate) execution: u32,
    /// When the run first started, if this pass resumes it after a gate.
    pub(crate) resumed: Option<jiff::Timestamp>,
}

impl RunExec {
    /// Runs the workflow from step `start`, returning how the run ended.
    pub(crate) async fn execute(mut self, start: usize) -> RunSummary {
        let now = jiff::Timestamp::now();
        let (started_at, update) = match self.resumed {
            Some(started_at) => (started_at, RunUpdate::status(RunStatus::Running)),
            None => {
                (now, RunUpdate { started_at: Some(now), ..RunUpdate::status(RunStatus::Running) })
            }
        };
        // A resumed run's duration counts from its first start, gate wait included.
        let before: Duration = now.duration_since(started_at).try_into().unwrap_or_default();
        let clock = Instant::now().checked_sub(before).unwrap_or_else(Instant::now);
        self.recorder.record(Write::Run(update));
        if self.resumed.is_none() {
            self.events.emit(EventData::WorkflowStarted(WorkflowStarted {
                name: self.workflow.name().to_owned(),
                trigger: self.trigger.as_str().to_owned(),
                steps: self.workflow.steps().iter().map(|s| s.id().to_owned()).collect(),
            }));
        }
        log::info!("run_id={}: workflow {} started", self.run_id, self.workflow.key());

        let steps = self.workflow.steps().to_vec();
        let mut cancelled_at: Option<Option<String>> = None;
        let mut index = start;
        while index < steps.len() {
            if self.cancel.is_cancelled() {
                cancelled_at = Some(None);
                break;
            }
            let is_gate = |s: &aegis_config::Step| matches!(s.kind(), StepKind::Gate(_));
            let mut end = index + 1;
            if steps[index].parallel() && !is_gate(&steps[index]) {
                while end < steps.len() && steps[end].parallel() && !is_gate(&steps[end]) {
                    end += 1;
                }
            }
            if let StepKind::Gate(gate) = steps[index].kind()
                && condition_holds(steps[index].condition(), &self.outcomes)
            {
                return self.wait_at_gate(&steps[index], gate, index, started_at, clock).await;
            }
            let earlier = Arc::new(self.outcomes.clone());
            let mut runnable = Vec::new();
            let mut batch: Vec<(usize, Option<StepOutcome>)> = Vec::new();
            for (offset, step) in steps[index..end].iter().enumerate() {
                let step_index = index + offset;
                if !condition_holds(step.condition(), &earlier) {
                    batch.push((step_index, Some(self.skip(step, step_index).await)));
                } else {
                    batch.push((step_index, None));
                    runnable.push(self.run_step(step, step_index, Arc::clone(&earlier)));
                }
            }
            let mut executed = futures_util::future::join_all(runnable).await.into_iter();
            for (_, skipped) in batch {
                let outcome = match skipped {
                    Some(outcome) => outcome,
                    None => match executed.next() {
                        Some(Executed { outcome, cancelled }) => {
                            if cancelled && cancelled_at.is_none() {
                                cancelled_at = Some(Some(outcome.step_id.clone()));
                            }
                            outcome
                        }
                        None => continue,
                    },
                };
                self.outcomes.insert(outcome.step_id.clone(), outcome);
            }
            if cancelled_at.is_some() {
                break;
            }
            index = end;
        }
        self.finish(cancelled_at, started_at, clock).await
    }

    async fn finish(
        self,
        cancelled_at: Option<Option<String>>,
        started_at: jiff::Timestamp,
        clock: Instant,
    ) -> RunSummary {
        let interrupted = cancelled_at.is_some() && self.inner.interrupting.load(Ordering::Acquire);
        let (status, error) = if interrupted {
            (RunStatus::Interrupted, Some(SHUTDOWN_REASON.to_owned()))
        } else if cancelled_at.is_some() {
            (RunStatus::Cancelled, Some("cancelled".to_owned()))
        } else if let Some(failed) = self.outcomes.values().find(|o| !o.success) {
            let error = format!(
                "step {} failed: {}",
                failed.step_id,
                failed.error.as_deref().unwrap_or("unknown error")
            );
            (RunStatus::Failed, Some(error))
        } else {
            (RunStatus::Succeeded, None)
        };
        let completed_at = jiff::Timestamp::now();
        let duration_ms = millis(clock.elapsed());
        let update = RunUpdate {
            status,
            started_at: None,
            completed_at: Some(completed_at),
            duration_ms: Some(duration_ms),
            error: error.clone(),
        };
        self.recorder.record(Write::Run(update));
        // The run is in history, and no longer cancellable, before anyone
        // hears that it finished.
        self.recorder.flush().await;
        self.inner.live.forget(&self.run_id);
        self.inner.settled(&self.run_id, self.generation);
        match cancelled_at {
            Some(step_id) if interrupted => {
                self.events.emit(EventData::RunInterrupted(RunInterrupted {
                    step_id,
                    reason: SHUTDOWN_REASON.to_owned(),
                }));
            }
            Some(step_id) => {
                self.events.emit(EventData::RunCancelled(RunCancelled { step_id }));
            }
            None => {}
        }
        let summary = counts(self.workflow.steps().len(), &self.outcomes);
        self.events.emit(EventData::WorkflowCompleted(WorkflowCompleted {
            status: status.as_str().to_owned(),
            success: status == RunStatus::Succeeded,
            duration_ms,
            summary,
            error: error.clone(),
        }));
        log::info!("run_id={}: finished {status} in {duration_ms} ms", self.run_id);
        RunSummary {
            run_id: self.run_id.to_string(),
            workflow: self.workflow.key().to_owned(),
            status,
            trigger: self.trigger,
            started_at: Some(started_at),
            completed_at: Some(completed_at),
            duration_ms,
            error,
            waiting_at: None,
            steps: self.outcomes.into_values().collect(),
        }
    }

    /// Pauses the run at a gate: the gate is recorded as pending and the run
    /// as `waiting`, and the execution ends (releasing its slot). Deciding
    /// the gate resumes the run at the step after it.
    async fn wait_at_gate(
        self,
        step: &aegis_config::Step,
        gate: &aegis_config::GateStep,
        index: usize,
        started_at: jiff::Timestamp,
        clock: Instant,
    ) -> RunSummary {
        let since = jiff::Timestamp::now();
        let deadline = step.timeout().and_then(|d| since.checked_add(d).ok());
        let record = StepRecord {
            execution: self.execution,
            index: index as u32,
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            status: StepStatus::Running,
            error: None,
            started_at: Some(since),
            completed_at: None,
            duration_ms: None,
            data: None,
            attempts: Vec::new(),
        };
        self.recorder.record(Write::Step(record.clone()));
        let pending = PendingGate {
            run_id: self.run_id.clone(),
            gate_id: step.id().to_owned(),
            step_index: index as u32,
            message: gate.message().map(str::to_owned),
            artifact: gate.artifact().map(str::to_owned),
            since,
            deadline,
        };
        self.recorder.record(Write::Gate(pending.clone()));
        let duration_ms = millis(clock.elapsed());
        let update =
            RunUpdate { duration_ms: Some(duration_ms), ..RunUpdate::status(RunStatus::Waiting) };
        self.recorder.record(Write::Run(update));
        self.recorder.flush().await;
        self.inner.live.forget(&self.run_id);
        self.inner.settled(&self.run_id, self.generation);
        self.events.emit(EventData::GateWaiting(GateWaiting {
            gate_id: step.id().to_owned(),
            index: index as u32,
            message: pending.message.clone(),
            artifact: pending.artifact.clone(),
            deadline: deadline.map(|d| d.to_string()),
        }));
        log::info!("run_id={}: waiting at gate {}", self.run_id, step.id());
        if let Some(deadline) = deadline {
            crate::gate::arm_timer(
                Arc::clone(&self.inner),
                self.run_id.clone(),
                step.id().to_owned(),
                deadline,
            );
        }
        RunSummary {
            run_id: self.run_id.to_string(),
            workflow: self.workflow.key().to_owned(),
            status: RunStatus::Waiting,
            trigger: self.trigger,
            started_at: Some(started_at),
            completed_at: None,
            duration_ms,
            error: None,
            waiting_at: Some(step.id().to_owned()),
            steps: self.outcomes.into_values().collect(),
        }
    }

    async fn skip(&self, step: &aegis_config::Step, index: usize) -> StepOutcome {
        let now = jiff::Timestamp::now();
        let record = StepRecord {
            execution: self.execution,
            index: index as u32,
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            status: StepStatus::Skipped,
            error: None,
            started_at: Some(now),
            completed_at: Some(now),
            duration_ms: Some(0),
            data: None,
            attempts: Vec::new(),
        };
        self.recorder.record(Write::Step(record.clone()));
        self.events.emit(EventData::StepSkipped(StepSkipped {
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            index: index as u32,
            condition: step.condition().as_str().to_owned(),
        }));
        StepOutcome {
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            index: index as u32,
            success: true,
            skipped: true,
            error: None,
            data: Value::Null,
            duration_ms: 0,
            attempts: Vec::new(),
        }
    }

    async fn run_step(
        &self,
        step: &aegis_config::Step,
        index: usize,
        earlier: Arc<IndexMap<String, StepOutcome>>,
    ) -> Executed {
        let step_id = step.id().to_owned();
        let step_type = step.type_name().to_owned();
        let started_at = jiff::Timestamp::now();
        let clock = Instant::now();
        let mut record = StepRecord {
            execution: self.execution,
            index: index as u32,
            step_id: step_id.clone(),
            step_type: step_type.clone(),
            status: StepStatus::Running,
            error: None,
            started_at: Some(started_at),
            completed_at: None,
            duration_ms: None,
            data: None,
            attempts: Vec::new(),
        };
        self.recorder.record(Write::Step(record.clone()));
        self.events.emit(EventData::StepStarted(StepStarted {
            step_id: step_id.clone(),
            step_type: step_type.clone(),
            index: index as u32,
        }));

        let mut ctx = StepContext {
            run_id: self.run_id.to_string(),
            workflow: self.workflow.key().to_owned(),
            step: step.clone(),
            index: index as u32,
            attempt: 1,
            earlier,
            config: Arc::clone(&self.inner.config),
            client: self.inner.client.clone(),
            run_dir: self.inner.run_dir(&self.run_id),
            artifacts: Mutex::new(Vec::new()),
        };
        let implementation = self.inner.registry.get(&step_type).cloned();
        let max_attempts = step.retries().saturating_add(1);
        let mut attempts = Vec::new();
        let mut cancelled = false;
        let mut result: Result<Value, StepError> = Err(StepError::new("step never ran"));
        for attempt in 1..=max_attempts {
            ctx.attempt = attempt;
            let attempt_start = jiff::Timestamp::now();
            let attempt_clock = Instant::now();
            let outcome = match &implementation {
                None => {
                    Err(StepError::new(format!("no step is registered for type {step_type:?}")))
                }
                Some(implementation) => {
                    let call = with_timeout(step.timeout(), implementation.execute(&ctx));
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => {
                            cancelled = true;
                            Err(StepError::new("cancelled"))
                        }
                        outcome = call => crate::limits::storable_outcome(outcome),
                    }
                }
            };
            attempts.push(AttemptOutcome {
                attempt,
                success: outcome.is_ok(),
                error: outcome.as_ref().err().map(|e| e.message().to_owned()),
                duration_ms: millis(attempt_clock.elapsed()),
                started_at: attempt_start,
            });
            let failed = outcome.is_err();
            result = outcome;
            if !failed || cancelled || attempt == max_attempts {
                break;
            }
            let delay = retry_delay(step.retry_delay(), attempt);
            let error = result.as_ref().err().map(|e| e.message().to_owned()).unwrap_or_default();
            log::info!(
                "run_id={}: step {step_id} attempt {attempt} failed ({error}), retrying in {delay:?}",
                self.run_id
            );
            self.events.emit(EventData::StepRetrying(StepRetrying {
                step_id: step_id.clone(),
                attempt,
                next_attempt: attempt + 1,
                delay_ms: millis(delay),
                error,
            }));
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    cancelled = true;
                    result = Err(StepError::new("cancelled"));
                    break;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }

        let (success, data, error) = match result {
            Ok(data) => (true, data, None),
            Err(err) => {
                let (message, data) = err.into_parts();
                (false, data.unwrap_or(Value::Null), Some(message))
            }
        };
        let duration_ms = millis(clock.elapsed());
        let mut artifacts = ctx.take_artifacts();
        match self.data_artifact(&step_id, &data) {
            Ok(bytes) => artifacts.push((format!("{step_id}.json"), bytes)),
            Err(err) => {
                log::error!("run_id={}: cannot encode step {step_id}'s data: {err}", self.run_id)
            }
        }
        for (name, bytes) in artifacts {
            self.events.emit(EventData::ArtifactCreated(ArtifactCreated {
                step_id: step_id.clone(),
                name,
                bytes,
            }));
        }
        let outcome = StepOutcome {
            step_id: step_id.clone(),
            step_type: step_type.clone(),
            index: index as u32,
            success,
            skipped: false,
            error: error.clone(),
            data,
            duration_ms,
            attempts,
        };
        if !outcome.failures().is_empty() {
            self.events.emit(EventData::FailureDetected(FailureDetected {
                step_id: step_id.clone(),
                count: outcome.failures().len() as u32,
                failures: outcome.failures().to_vec(),
            }));
        }
        self.events.emit(EventData::StepCompleted(StepCompleted {
            step_id: step_id.clone(),
            step_type,
            index: index as u32,
            success,
            error: error.clone(),
            duration_ms,
            attempts: outcome.attempts.len() as u32,
        }));
        record.status = if success { StepStatus::Succeeded } else { StepStatus::Failed };
        record.error = error;
        record.completed_at = Some(jiff::Timestamp::now());
        record.duration_ms = Some(duration_ms);
        record.data = Some(outcome.data.clone());
        record.attempts = outcome
            .attempts
            .iter()
            .map(|a| Attempt {
                attempt: a.attempt,
                success: a.success,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
                started_at: a.started_at,
            })
            .collect();
        self.recorder.record(Write::Step(record.clone()));
        Executed { outcome, cancelled }
    }

    /// Makes the step's data available as its artifact `<step_id>.json`: from
    /// memory now, from history (the step record's `data`) once the run's
    /// records are flushed (see `crate::artifact`). Returns its size.
    fn data_artifact(&self, step_id: &str, data: &Value) -> serde_json::Result<u64> {
        let bytes: Arc<[u8]> = Arc::from(serde_json::to_vec_pretty(data)?);
        let size = bytes.len() as u64;
        self.inner.live.insert(&self.run_id, format!("{step_id}.json"), bytes);
        Ok(size)
    }
}

async fn with_timeout<F>(limit: Option<Duration>, call: F) -> Result<Value, StepError>
where
    F: Future<Output = Result<Value, StepError>>,
{
    match limit {
        Some(limit) => tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(StepError::new(describe_timeout(limit)))),
        None => call.await,
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_are_capped() {
        let base = Duration::from_millis(500);
        assert_eq!(retry_delay(base, 1), Duration::from_millis(500));
        assert_eq!(retry_delay(base, 2), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 3), Duration::from_secs(2));
        assert_eq!(retry_delay(base, 40), MAX_RETRY_DELAY);
    }

    fn outcome(id: &str, success: bool, failures: usize) -> (String, StepOutcome) {
        let failures: Vec<Value> = (0..failures).map(|i| Value::from(i as u64)).collect();
        (
            id.to_owned(),
            StepOutcome {
                step_id: id.into(),
                step_type: "test".into(),
                index: 0,
                success,
                skipped: false,
                error: None,
                data: serde_json::json!({ "failures": failures }),
                duration_ms: 0,
                attempts: Vec::new(),
            },
        )
    }

    #[test]
    fn conditions_true_and_false() {
        let ok: IndexMap<_, _> = [outcome("a", true, 0)].into_iter().collect();
        let failed: IndexMap<_, _> =
            [outcome("a", true, 0), outcome("b", false, 0)].into_iter().collect();
        let with_failures: IndexMap<_, _> = [outcome("a", true, 2)].into_iter().collect();
        let check = |c, earlier: &IndexMap<String, StepOutcome>, expected: bool| {
            assert_eq!(condition_holds(c, earlier), expected, "{c:?}");
        };
        check(Condition::OnSuccess, &ok, true);
        check(Condition::OnSuccess, &failed, false);
        check(Condition::OnFailure, &ok, false);
        check(Condition::OnFailure, &failed, true);
        check(Condition::HasFailures, &ok, false);
        check(Condition::HasFailures, &with_failures, true);
        check(Condition::Always, &failed, true);
        check(Condition::OnSuccess, &IndexMap::new(), true);
    }
}
