//! One run's execution: walks a workflow's steps, evaluates conditions,
//! retries, times out, runs parallel batches and pauses at gates. Every
//! change it makes (a step started or finished, the gate reached, the end)
//! is committed with its events through the ledger as a command of the state
//! machine (`crate::lifecycle`) before the run goes on: a step never starts
//! for a run history does not call `running`, and when someone else ended the
//! run (a cancel), its next commit is refused and the execution stops.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aegis_config::{Condition, StepKind, Workflow};
use aegis_history::{
    Attempt, NewRun, PendingGate, RunId, RunStatus, RunUpdate, StepRecord, StepStatus, Trigger,
    Write,
};
use indexmap::IndexMap;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::event::{
    ArtifactCreated, EventData, FailureDetected, GateWaiting, RunInterrupted, StepCompleted,
    StepRetrying, StepSkipped, StepStarted, WorkflowStarted,
};
use crate::http::describe_timeout;
use crate::ledger::RunRef;
use crate::lifecycle::{Command, End};
use crate::state::{Admission, Deadline, Inner};
use crate::step::{StepContext, StepError, StepOutcome};
use crate::summary::{RunSummary, counts, millis, stored_summary};

/// A submitted run: its id, a way to cancel it and to wait for its end.
#[derive(Debug, Clone)]
pub struct RunHandle {
    run_id: RunId,
    engine: Weak<Inner>,
    done: watch::Receiver<Option<Arc<RunSummary>>>,
}

impl RunHandle {
    /// The run id.
    pub fn id(&self) -> &RunId {
        &self.run_id
    }

    /// Asks the run to stop, as [`crate::Engine::cancel`] does (by `handle`); the
    /// current step is abandoned promptly. Returns at once.
    pub fn cancel(&self) {
        let Some(inner) = self.engine.upgrade() else { return };
        let run_id = self.run_id.clone();
        let owner = Arc::clone(&inner);
        inner.spawn(async move {
            match crate::cancel::cancel(&owner, &run_id, "handle", None).await {
                Ok(()) | Err(Error::RunFinished { .. }) => {}
                Err(err) => log::error!("run_id={run_id}: cannot cancel: {err}"),
            }
        });
    }

    /// Waits until the run finishes or pauses at a gate.
    pub async fn wait(mut self) -> Result<Arc<RunSummary>> {
        loop {
            if let Some(summary) = self.done.borrow_and_update().clone() {
                return Ok(summary);
            }
            if self.done.changed().await.is_err() {
                return Err(Error::RunAborted(self.run_id.to_string()));
            }
        }
    }
}

/// Where a run resumed after a gate decision continues.
#[derive(Debug)]
pub(crate) struct Resume {
    /// The step index to continue from.
    pub(crate) start: usize,
    /// The execution number of the steps run from now on.
    pub(crate) execution: u32,
    /// The outcomes of the steps before `start`, as recorded.
    pub(crate) outcomes: IndexMap<String, crate::step::StepOutcome>,
    /// When the run first started.
    pub(crate) started_at: Option<jiff::Timestamp>,
}

/// A run that is not in history yet, admitted at once: it is created by its
/// first commit (with its first steps' start), and `done` hears how that
/// commit went, so that [`crate::Engine::submit`] answers only once the run
/// is stored. One commit less per run than creating it first.
#[derive(Debug)]
pub(crate) struct Creation {
    pub(crate) run: NewRun,
    /// The `run.queued` event, the run's first.
    pub(crate) queued: EventData,
    pub(crate) done: oneshot::Sender<aegis_history::Result<()>>,
}

/// Starts executing a run on the engine's runtime (once it has its slots),
/// from the start or as `resume` says; a run with a `creation` is created by
/// its first commit.
pub(crate) fn spawn(
    inner: &Arc<Inner>,
    run: RunRef,
    trigger: Trigger,
    admission: Admission,
    resume: Option<Resume>,
    creation: Option<Creation>,
) -> RunHandle {
    let cancel = CancellationToken::new();
    let (done_tx, done) = watch::channel(None);
    let generation = inner.track(&run.id, cancel.clone());
    let handle = RunHandle { run_id: run.id.clone(), engine: Arc::downgrade(inner), done };
    let owner = Arc::clone(inner);
    inner.spawn(async move {
        let run_id = run.id.clone();
        let start = Start { admission, resume, creation };
        let summary = drive(Arc::clone(&owner), run, trigger, start, cancel, generation).await;
        owner.settled(&run_id, generation);
        done_tx.send_replace(Some(Arc::new(summary)));
    });
    handle
}

/// How a run's execution begins: its slots (or its place in the queue),
/// where it resumes, and its creation when it is not in history yet.
struct Start {
    admission: Admission,
    resume: Option<Resume>,
    creation: Option<Creation>,
}

/// Waits for slots (unless admitted at once), then executes the run.
async fn drive(
    inner: Arc<Inner>,
    run: RunRef,
    trigger: Trigger,
    start: Start,
    cancel: CancellationToken,
    generation: u64,
) -> RunSummary {
    let Start { admission, resume, creation } = start;
    let unstarted = |status: RunStatus, error: &str| {
        RunSummary::unstarted(&run.id, &run.workflow, trigger, status, error)
    };
    let Some(workflow) = inner.config.workflows().get(&run.workflow).cloned() else {
        return unstarted(RunStatus::Failed, "unknown workflow");
    };
    let slots = match admission {
        Admission::Now(slots) => slots,
        Admission::Queued(place) => {
            let acquired = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                acquired = inner.slots(&run.workflow) => Some(acquired),
            };
            drop(place);
            match acquired {
                Some(Some(slots)) => slots,
                // The semaphores are never closed.
                Some(None) => return unstarted(RunStatus::Queued, "engine closed"),
                None if inner.interrupting() => {
                    // Shutting down: the run stays queued in history for the next start.
                    return unstarted(
                        RunStatus::Queued,
                        "the server shut down before the run started",
                    );
                }
                // Cancelled: the cancel committed the run's end already.
                None => return unstarted(RunStatus::Cancelled, "cancelled"),
            }
        }
    };
    let exec = RunExec {
        inner: Arc::clone(&inner),
        run,
        workflow,
        trigger,
        cancel,
        generation,
        execution: resume.as_ref().map_or(0, |r| r.execution),
        resumed: resume.as_ref().and_then(|r| r.started_at),
        outcomes: IndexMap::new(),
        carry: Carry { create: creation, ..Carry::default() },
    };
    let (start, exec) = match resume {
        Some(resume) => (resume.start, RunExec { outcomes: resume.outcomes, ..exec }),
        None => (0, exec),
    };
    let summary = exec.execute(start).await;
    drop(slots);
    summary
}

/// The longest wait between two attempts of a step.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

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

/// Why the execution stopped before the run's end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Someone else committed a change first (a cancel): the run is theirs.
    Lost,
    /// History refused the commit: the run cannot go on durably.
    Failed(aegis_history::Error),
    /// History refused the commit that creates the run: there is no run
    /// (`Engine::submit` fails with the error).
    Unborn,
}

impl From<aegis_history::Error> for Stop {
    fn from(err: aegis_history::Error) -> Self {
        match err {
            aegis_history::Error::StatusConflict { .. } => Stop::Lost,
            err => Stop::Failed(err),
        }
    }
}

/// How one step execution ended.
struct Executed {
    outcome: StepOutcome,
    cancelled: bool,
    /// The step's result and its events, for the run's next commit (none
    /// when the run was cancelled: whoever stopped it closes the step).
    result: Option<(Write, Vec<EventData>)>,
}

/// What a run has done but not yet committed. It joins the run's next
/// commit, and that commit always comes before the run acts again: before
/// the next steps start, before it waits at a gate, before it ends. A step's
/// result therefore commits with the next step's start (or the run's end),
/// and the run's start with its first steps': half the commits of a run,
/// while no reader and no crash can see the run ahead of history (a step
/// whose result is not committed yet is `running`, and the run does nothing
/// meanwhile).
#[derive(Debug, Default)]
pub(crate) struct Carry {
    /// The run's creation, when it is not in history yet, until its first
    /// commit.
    create: Option<Creation>,
    /// The run's own start (`queued` → `running`), until its first commit.
    start: Option<RunUpdate>,
    writes: Vec<Write>,
    events: Vec<EventData>,
}

impl Carry {
    fn push(&mut self, write: Write, events: impl IntoIterator<Item = EventData>) {
        self.writes.push(write);
        self.events.extend(events);
    }
}

/// The execution of one run.
pub(crate) struct RunExec {
    pub(crate) inner: Arc<Inner>,
    pub(crate) run: RunRef,
    pub(crate) workflow: Workflow,
    pub(crate) trigger: Trigger,
    pub(crate) cancel: CancellationToken,
    pub(crate) outcomes: IndexMap<String, StepOutcome>,
    /// Which execution of the run this is in the engine's table of active runs.
    pub(crate) generation: u64,
    /// The execution number of the steps this pass records (0, then +1 for
    /// each gate rejection that sends the run back).
    pub(crate) execution: u32,
    /// When the run first started, if this pass resumes it after a gate.
    pub(crate) resumed: Option<jiff::Timestamp>,
    /// What the run did since its last commit.
    pub(crate) carry: Carry,
}

impl RunExec {
    /// Commits a change the run makes to itself, after what it carries.
    async fn commit(
        &mut self,
        command: Command,
        update: RunUpdate,
        writes: Vec<Write>,
        events: Vec<EventData>,
    ) -> Result<(), Stop> {
        let mut change = vec![command.write(&self.run.id, update)];
        change.extend(writes);
        self.commit_change(command, change, events).await
    }

    /// Ends the run, with what it carries (its last steps' results).
    async fn end(&mut self, end: End) -> Result<(), Stop> {
        let command = end.command;
        let (change, events) = end.change(&self.run.id);
        self.commit_change(command, change, events).await
    }

    /// Commits `change`, whose first write is `command`'s transition, with
    /// what the run carries.
    async fn commit_change(
        &mut self,
        command: Command,
        mut change: Vec<Write>,
        events: Vec<EventData>,
    ) -> Result<(), Stop> {
        let mut creation = self.carry.create.take();
        if let Some(start) = self.carry.start.take() {
            if command == Command::Progress {
                // The first progress is the start: the same change, and more.
                change[0] = Command::Start.write(&self.run.id, start);
            } else {
                // A run that waits or ends before any step ran still goes
                // through `running`, as the state machine says.
                let mut opening = vec![Command::Start.write(&self.run.id, start)];
                opening.append(&mut self.carry.writes);
                let opened = std::mem::take(&mut self.carry.events);
                self.commit_first(creation.take(), opening, opened).await?;
            }
        }
        // The run's earlier results come before what this change closes.
        change.splice(1..1, std::mem::take(&mut self.carry.writes));
        let mut announced = std::mem::take(&mut self.carry.events);
        announced.extend(events);
        self.commit_first(creation, change, announced).await
    }

    /// Commits `writes` and `events`, first creating the run (and its
    /// `run.queued`) when `creation` says it is not in history yet; tells the
    /// creation's waiter how that went.
    async fn commit_first(
        &self,
        creation: Option<Creation>,
        mut writes: Vec<Write>,
        mut events: Vec<EventData>,
    ) -> Result<(), Stop> {
        let Some(Creation { run, queued, done }) = creation else {
            self.inner.ledger.commit(&self.run, writes, events).await?;
            return Ok(());
        };
        writes.insert(0, Write::CreateRun(run));
        events.insert(0, queued);
        match self.inner.ledger.commit_new(&self.run, writes, events).await {
            Ok(_) => {
                log::debug!("run_id={}: created for workflow {}", self.run.id, self.run.workflow);
                let _ = done.send(Ok(()));
                Ok(())
            }
            Err(err) => {
                self.inner.ledger.forget(&self.run.id);
                let _ = done.send(Err(err));
                Err(Stop::Unborn)
            }
        }
    }

    /// Records a step's progress while it runs (a failed attempt before the
    /// next): only while the run is still `running`. The run carries nothing
    /// then, its steps' start having committed it.
    async fn record(&self, write: Write, event: EventData) -> Result<(), Stop> {
        let writes = vec![
            Command::Progress.write(&self.run.id, RunUpdate::status(RunStatus::Running)),
            write,
        ];
        self.inner.ledger.commit(&self.run, writes, vec![event]).await?;
        Ok(())
    }

    /// Runs the workflow from step `start`, returning how the run ended.
    pub(crate) async fn execute(mut self, start: usize) -> RunSummary {
        let now = jiff::Timestamp::now();
        let started_at = self.resumed.unwrap_or(now);
        // A resumed run's duration counts from its first start, gate wait included.
        let before: Duration = now.duration_since(started_at).try_into().unwrap_or_default();
        let clock = Instant::now().checked_sub(before).unwrap_or_else(Instant::now);
        if self.resumed.is_none() {
            let started = EventData::WorkflowStarted(WorkflowStarted {
                name: self.workflow.name().to_owned(),
                trigger: self.trigger.as_str().to_owned(),
                steps: self.workflow.steps().iter().map(|s| s.id().to_owned()).collect(),
            });
            // Committed with the first steps' start (or the run's end), before
            // any step runs: a crash from then on interrupts the run instead of
            // running it again.
            self.carry.start =
                Some(RunUpdate { started_at: Some(now), ..RunUpdate::status(RunStatus::Running) });
            self.carry.events.push(started);
        }
        log::info!("run_id={}: workflow {} started", self.run.id, self.workflow.key());
        match self.walk(start, started_at, clock).await {
            Ok(summary) => summary,
            Err((exec, stop)) => exec.stopped(stop).await,
        }
    }

    async fn walk(
        mut self,
        start: usize,
        started_at: jiff::Timestamp,
        clock: Instant,
    ) -> Result<RunSummary, (RunExec, Stop)> {
        let steps = self.workflow.steps().to_vec();
        let mut cancelled_at: Option<Option<String>> = None;
        let mut index = start;
        while index < steps.len() {
            if self.cancel.is_cancelled() {
                cancelled_at = Some(None);
                break;
            }
            let is_gate = |s: &aegis_config::StepDef| matches!(s.kind(), StepKind::Gate(_));
            let mut end = index + 1;
            if steps[index].parallel() && !is_gate(&steps[index]) {
                while end < steps.len() && steps[end].parallel() && !is_gate(&steps[end]) {
                    end += 1;
                }
            }
            if let StepKind::Gate(gate) = steps[index].kind()
                && condition_holds(steps[index].condition(), &self.outcomes)
            {
                return match self.wait_at_gate(&steps[index], gate, index, started_at, clock).await
                {
                    Ok(summary) => Ok(summary),
                    Err(stop) => Err((self, stop)),
                };
            }
            let earlier = Arc::new(self.outcomes.clone());
            let mut batch: Vec<(usize, Result<StepRecord, StepOutcome>)> = Vec::new();
            let mut starts = Vec::new();
            let mut started = Vec::new();
            for (offset, step) in steps[index..end].iter().enumerate() {
                let step_index = index + offset;
                if condition_holds(step.condition(), &earlier) {
                    let (record, event) = self.begin(step, step_index);
                    starts.push(Write::RecordStep(self.run.id.clone(), record.clone()));
                    started.push(event);
                    batch.push((step_index, Ok(record)));
                } else {
                    let (outcome, write, event) = self.skip(step, step_index);
                    self.carry.push(write, [event]);
                    batch.push((step_index, Err(outcome)));
                }
            }
            if !starts.is_empty() {
                // The steps start only once history says they have (and the
                // run is still running), with what the run did before them:
                // a crash from now on shows them, and they never run again on
                // their own.
                let update = RunUpdate::status(RunStatus::Running);
                if let Err(stop) = self.commit(Command::Progress, update, starts, started).await {
                    return Err((self, stop));
                }
            }
            let runnable: Vec<_> = batch
                .iter()
                .filter_map(|(i, step)| step.as_ref().ok().map(|record| (*i, record.clone())))
                .map(|(i, record)| self.run_step(&steps[i], i, Arc::clone(&earlier), record))
                .collect();
            let mut stop = None;
            let mut executed = Vec::new();
            for result in futures_util::future::join_all(runnable).await {
                match result {
                    Ok(done) => executed.push(done),
                    Err(err) => stop = stop.or(Some(err)),
                }
            }
            if let Some(stop) = stop {
                return Err((self, stop));
            }
            let mut executed = executed.into_iter();
            for (_, step) in batch {
                let outcome = match step {
                    Err(skipped) => skipped,
                    Ok(_) => match executed.next() {
                        Some(Executed { outcome, cancelled, result }) => {
                            if cancelled && cancelled_at.is_none() {
                                cancelled_at = Some(Some(outcome.step_id.clone()));
                            }
                            if let Some((write, events)) = result {
                                self.carry.push(write, events);
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
        match self.finish(cancelled_at, started_at, clock).await {
            Ok(summary) => Ok(summary),
            Err(stop) => Err((self, stop)),
        }
    }

    /// The execution stopped before the run's end: when someone else ended
    /// the run (a cancel), the run is as they committed it; when history
    /// failed, the run is ended `failed` if history takes that, else left for
    /// recovery (it will be `interrupted`).
    async fn stopped(mut self, stop: Stop) -> RunSummary {
        self.inner.settled(&self.run.id, self.generation);
        if let Stop::Unborn = stop {
            // Nothing of the run is stored, and its submitter has the error.
            return RunSummary::unstarted(
                &self.run.id,
                &self.run.workflow,
                self.trigger,
                RunStatus::Failed,
                "history refused to create the run",
            );
        }
        if let Stop::Failed(err) = &stop {
            log::error!("run_id={}: history refused the run's progress: {err}", self.run.id);
            let reason = format!("history refused the run's progress: {err}");
            // What the run carried was refused with the commit that failed;
            // the run is given up from whatever status history has.
            self.carry = Carry::default();
            let end = End::abandon(reason, counts(self.workflow.steps().len(), &self.outcomes));
            let _ = self.end(end).await;
        }
        self.inner.ledger.forget(&self.run.id);
        match self.inner.history.get_run(&self.run.id).await {
            Ok(Some(detail)) => stored_summary(&detail),
            _ => RunSummary {
                run_id: self.run.id.to_string(),
                workflow: self.workflow.key().to_owned(),
                status: RunStatus::Cancelled,
                trigger: self.trigger,
                started_at: None,
                completed_at: None,
                duration_ms: 0,
                error: Some("the run was ended by someone else".to_owned()),
                waiting_at: None,
                steps: self.outcomes.into_values().collect(),
            },
        }
    }

    async fn finish(
        &mut self,
        cancelled_at: Option<Option<String>>,
        started_at: jiff::Timestamp,
        clock: Instant,
    ) -> Result<RunSummary, Stop> {
        if cancelled_at.is_some() && !self.inner.interrupting() {
            // A cancel stopped the run: its end is committed already.
            return Err(Stop::Lost);
        }
        let interrupted = cancelled_at.is_some();
        let (command, status, error) = if interrupted {
            (Command::Interrupt, RunStatus::Interrupted, Some(SHUTDOWN_REASON.to_owned()))
        } else if let Some(failed) = self.outcomes.values().find(|o| !o.success) {
            let error = format!(
                "step {} failed: {}",
                failed.step_id,
                failed.error.as_deref().unwrap_or("unknown error")
            );
            (Command::Finish { succeeded: false }, RunStatus::Failed, Some(error))
        } else {
            (Command::Finish { succeeded: true }, RunStatus::Succeeded, None)
        };
        let completed_at = jiff::Timestamp::now();
        let duration_ms = millis(clock.elapsed());
        let end = End {
            command,
            at: completed_at,
            duration_ms,
            error: error.clone(),
            close_running: interrupted
                .then(|| "interrupted: the server shut down during this step".to_owned()),
            cause: cancelled_at.map(|step_id| {
                EventData::RunInterrupted(RunInterrupted {
                    step_id,
                    reason: SHUTDOWN_REASON.to_owned(),
                })
            }),
            summary: counts(self.workflow.steps().len(), &self.outcomes),
        };
        // The end, and the event that announces it, are in history before
        // anyone hears of it; the run is no longer executing here.
        self.end(end).await?;
        self.inner.settled(&self.run.id, self.generation);
        self.inner.ledger.forget(&self.run.id);
        log::info!("run_id={}: finished {status} in {duration_ms} ms", self.run.id);
        Ok(RunSummary {
            run_id: self.run.id.to_string(),
            workflow: self.workflow.key().to_owned(),
            status,
            trigger: self.trigger,
            started_at: Some(started_at),
            completed_at: Some(completed_at),
            duration_ms,
            error,
            waiting_at: None,
            steps: std::mem::take(&mut self.outcomes).into_values().collect(),
        })
    }

    /// Pauses the run at a gate: the gate step, the pending gate, the
    /// `waiting` status and `gate.waiting` commit together, then the
    /// execution ends (releasing its slot). Deciding the gate resumes the run
    /// at the step after it.
    async fn wait_at_gate(
        &mut self,
        step: &aegis_config::StepDef,
        gate: &aegis_config::GateStep,
        index: usize,
        started_at: jiff::Timestamp,
        clock: Instant,
    ) -> Result<RunSummary, Stop> {
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
        let pending = PendingGate {
            run_id: self.run.id.clone(),
            gate_id: step.id().to_owned(),
            step_index: index as u32,
            message: gate.message().map(str::to_owned),
            artifact: gate.artifact().map(str::to_owned),
            since,
            deadline,
        };
        let duration_ms = millis(clock.elapsed());
        let update =
            RunUpdate { duration_ms: Some(duration_ms), ..RunUpdate::status(RunStatus::Waiting) };
        let waiting = EventData::GateWaiting(GateWaiting {
            gate_id: step.id().to_owned(),
            index: index as u32,
            message: pending.message.clone(),
            artifact: pending.artifact.clone(),
            deadline: deadline.map(|d| d.to_string()),
        });
        let writes =
            vec![Write::RecordStep(self.run.id.clone(), record), Write::AddPendingGate(pending)];
        self.commit(Command::Wait, update, writes, vec![waiting]).await?;
        self.inner.settled(&self.run.id, self.generation);
        self.inner.ledger.forget(&self.run.id);
        log::info!("run_id={}: waiting at gate {}", self.run.id, step.id());
        if let Some(deadline) = deadline {
            self.inner.arm_deadline(Deadline {
                run_id: self.run.id.clone(),
                gate_id: step.id().to_owned(),
                at: deadline,
            });
        }
        Ok(RunSummary {
            run_id: self.run.id.to_string(),
            workflow: self.workflow.key().to_owned(),
            status: RunStatus::Waiting,
            trigger: self.trigger,
            started_at: Some(started_at),
            completed_at: None,
            duration_ms,
            error: None,
            waiting_at: Some(step.id().to_owned()),
            steps: std::mem::take(&mut self.outcomes).into_values().collect(),
        })
    }

    /// A step skipped by its condition: its outcome, its record and its event.
    fn skip(&self, step: &aegis_config::StepDef, index: usize) -> (StepOutcome, Write, EventData) {
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
        let skipped = EventData::StepSkipped(StepSkipped {
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            index: index as u32,
            condition: step.condition().as_str().to_owned(),
        });
        let outcome = StepOutcome {
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            index: index as u32,
            success: true,
            skipped: true,
            error: None,
            data: Value::Null,
            duration_ms: 0,
            attempts: Vec::new(),
        };
        (outcome, Write::RecordStep(self.run.id.clone(), record), skipped)
    }

    /// A step about to start: its `running` record and `step.started`.
    fn begin(&self, step: &aegis_config::StepDef, index: usize) -> (StepRecord, EventData) {
        let record = StepRecord {
            execution: self.execution,
            index: index as u32,
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            status: StepStatus::Running,
            error: None,
            started_at: Some(jiff::Timestamp::now()),
            completed_at: None,
            duration_ms: None,
            data: None,
            attempts: Vec::new(),
        };
        let started = EventData::StepStarted(StepStarted {
            step_id: step.id().to_owned(),
            step_type: step.type_name().to_owned(),
            index: index as u32,
        });
        (record, started)
    }

    /// Runs a step whose start is committed, returning its result for the
    /// run's next commit.
    async fn run_step(
        &self,
        step: &aegis_config::StepDef,
        index: usize,
        earlier: Arc<IndexMap<String, StepOutcome>>,
        mut record: StepRecord,
    ) -> Result<Executed, Stop> {
        let step_id = step.id().to_owned();
        let step_type = step.type_name().to_owned();
        let clock = Instant::now();

        let mut ctx = StepContext {
            run_id: self.run.id.to_string(),
            workflow: self.workflow.key().to_owned(),
            step: step.clone(),
            index: index as u32,
            attempt: 1,
            earlier,
            config: Arc::clone(&self.inner.config),
            client: self.inner.client.clone(),
            run_dir: self.inner.run_dir(&self.run.id),
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
            attempts.push(Attempt {
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
                self.run.id
            );
            let retrying = EventData::StepRetrying(StepRetrying {
                step_id: step_id.clone(),
                attempt,
                next_attempt: attempt + 1,
                delay_ms: millis(delay),
                error,
            });
            record.attempts.clone_from(&attempts);
            // The failed attempt is in history before the next one starts.
            self.record(Write::RecordStep(self.run.id.clone(), record.clone()), retrying).await?;
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
        if cancelled {
            // Whoever stopped the run records its end (and closes this step).
            return Ok(Executed { outcome, cancelled, result: None });
        }
        let mut artifacts = ctx.take_artifacts();
        match serde_json::to_vec_pretty(&outcome.data) {
            Ok(bytes) => artifacts.push((format!("{step_id}.json"), bytes.len() as u64)),
            Err(err) => {
                log::error!("run_id={}: cannot encode step {step_id}'s data: {err}", self.run.id)
            }
        }
        let mut events: Vec<EventData> = artifacts
            .into_iter()
            .map(|(name, bytes)| {
                EventData::ArtifactCreated(ArtifactCreated {
                    step_id: step_id.clone(),
                    name,
                    bytes,
                })
            })
            .collect();
        if !outcome.failures().is_empty() {
            events.push(EventData::FailureDetected(FailureDetected {
                step_id: step_id.clone(),
                count: outcome.failures().len() as u32,
                failures: outcome.failures().to_vec(),
            }));
        }
        events.push(EventData::StepCompleted(StepCompleted {
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
        record.attempts.clone_from(&outcome.attempts);
        // The result, its data (`<step>.json`) and its events commit
        // together with the run's next change, before the next batch starts.
        let result = Some((Write::RecordStep(self.run.id.clone(), record), events));
        Ok(Executed { outcome, cancelled, result })
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
