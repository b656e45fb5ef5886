//! The [`Engine`]: admission (concurrency limits and the bounded queue),
//! submitting, cancelling, recovery at start, shutdown. Every change of a
//! run's status goes through the state machine (`crate::lifecycle`) and is
//! committed with its events by the ledger (`crate::ledger`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::Config;
use aegis_history::{
    CloseSteps, GateDecision, GateDecisionKind, HistoryBackend, NewRun, RunDetail, RunId,
    RunRecord, RunStatus, RunUpdate, StepStatus, Trigger, Write,
};
use indexmap::IndexMap;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::{EventBus, Subscription};
use crate::error::{Error, Result};
use crate::event::{Event, EventData, RunCancelled, RunInterrupted, RunQueued, WorkflowCompleted};
use crate::health::{ServiceHealth, check_services};
use crate::ledger::{Ledger, RunRef};
use crate::lifecycle::Command;
use crate::run::{RunExec, RunSummary, counts, millis};
use crate::step::{Step, StepRegistry};

/// How many events a subscriber may fall behind before it lags.
const DEFAULT_BUS_CAPACITY: usize = 4096;

/// How a run is started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    trigger: Trigger,
    request_id: Option<String>,
}

impl RunOptions {
    /// A run started by `trigger`.
    pub fn new(trigger: Trigger) -> Self {
        Self { trigger, request_id: None }
    }

    /// Ties the run to the HTTP request that started it.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// What [`Engine::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Shutdown {
    /// Runs that finished within the grace period.
    pub finished: usize,
    /// Runs stopped after it: running ones are now `interrupted`, queued ones
    /// stay `queued` for the next start.
    pub stopped: Vec<RunId>,
}

/// What [`Engine::recover`] did with the runs a previous process left unfinished.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Recovery {
    /// Runs that were mid-step and are now `interrupted`.
    pub interrupted: Vec<RunId>,
    /// Runs that were queued and have been started again.
    pub requeued: Vec<RunId>,
    /// Runs waiting at a gate, left waiting.
    pub waiting: Vec<RunId>,
    /// Runs whose gate deadline passed while no process was running: decided
    /// now by the gate's `on_timeout`.
    pub expired: Vec<RunId>,
    /// Runs whose gate an earlier version recorded as decided but did not
    /// resume before it stopped: resumed now as the recorded decision says.
    pub resumed: Vec<RunId>,
}

/// Builds an [`Engine`].
#[derive(Debug)]
pub struct EngineBuilder {
    config: Arc<Config>,
    history: Arc<dyn HistoryBackend>,
    registry: StepRegistry,
    client: Option<reqwest::Client>,
    bus_capacity: usize,
    runtime: Option<Handle>,
}

impl EngineBuilder {
    /// Runs the engine's tasks (runs, gate timers) on this runtime. By
    /// default, the runtime that calls [`EngineBuilder::build`]. Every task
    /// the engine starts is spawned here, whichever runtime calls it, so a
    /// caller on another runtime (actix-web's workers) needs no hop.
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Registers a step type (or replaces a built-in one).
    pub fn step_type(mut self, type_name: impl Into<String>, step: Arc<dyn Step>) -> Self {
        self.registry.register(type_name, step);
        self
    }

    /// Uses this HTTP client instead of building one.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// How many events a subscriber may fall behind before it lags (default 4096).
    pub fn bus_capacity(mut self, capacity: usize) -> Self {
        self.bus_capacity = capacity;
        self
    }

    /// Checks that every step type the workflows use is registered and builds
    /// the engine. Without [`EngineBuilder::runtime`], must be called on a
    /// tokio runtime (the engine's).
    pub fn build(self) -> Result<Engine> {
        for workflow in self.config.workflows().values() {
            for step in workflow.steps() {
                let type_name = step.type_name();
                if type_name != "gate" && !self.registry.contains(type_name) {
                    return Err(Error::UnknownStepType {
                        workflow: workflow.key().to_owned(),
                        step: step.id().to_owned(),
                        type_name: type_name.to_owned(),
                    });
                }
            }
        }
        let client = match self.client {
            Some(client) => client,
            None => crate::http::build_client()?,
        };
        let server = self.config.server();
        let workflow_limits = self
            .config
            .workflows()
            .values()
            .filter_map(|w| {
                w.concurrency().map(|n| (w.key().to_owned(), Arc::new(Semaphore::new(n.max(1)))))
            })
            .collect();
        let runs_dir = self.config.data_dir().join("runs");
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Handle::try_current().map_err(|_| Error::NoRuntime)?,
        };
        let bus = Arc::new(EventBus::new(self.bus_capacity, self.config.event_log_size()));
        let ledger = Ledger::new(Arc::clone(&self.history), bus, runs_dir.clone())
            .map_err(|e| Error::io(&runs_dir, e))?
            .with_outbox(Arc::new(crate::webhook::Outbox::new(self.config.webhooks())));
        let inner = Inner {
            runs_dir,
            ledger,
            runtime,
            global: Arc::new(Semaphore::new(server.max_concurrent_runs().max(1))),
            max_queued: server.max_queued_runs(),
            queued: AtomicUsize::new(0),
            workflow_limits,
            active: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            interrupting: AtomicBool::new(false),
            history: self.history,
            registry: self.registry,
            client,
            config: self.config,
        };
        let inner = Arc::new(inner);
        // Removes the folders of runs retention deletes (see `retention`).
        crate::retention::spawn(&inner);
        // Delivers the webhook outbox (see `webhook`).
        crate::webhook::spawn(&inner);
        Ok(Engine { inner })
    }
}

/// The pipeline engine. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pub(crate) history: Arc<dyn HistoryBackend>,
    pub(crate) registry: StepRegistry,
    pub(crate) client: reqwest::Client,
    /// Commits state changes with their events, then publishes them.
    pub(crate) ledger: Ledger,
    /// Where every task of the engine runs.
    runtime: Handle,
    runs_dir: PathBuf,
    global: Arc<Semaphore>,
    workflow_limits: HashMap<String, Arc<Semaphore>>,
    max_queued: usize,
    queued: AtomicUsize,
    /// The runs executing in this process, each with the generation of its
    /// execution (a run resumed after a gate is a new execution of the same id).
    active: Mutex<HashMap<RunId, (u64, CancellationToken)>>,
    generation: AtomicU64,
    /// Set by [`Engine::shutdown`]: no new runs are accepted.
    closing: AtomicBool,
    /// Set by [`Engine::shutdown`] once the grace period is over: a run stopped now
    /// ends `interrupted` rather than `cancelled`, and a queued one stays queued.
    interrupting: AtomicBool,
}

impl Inner {
    pub(crate) fn run_dir(&self, run_id: &RunId) -> PathBuf {
        self.runs_dir.join(run_id.as_str())
    }

    /// Starts a task of the engine on its own runtime.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(task);
    }

    /// Forgets a run that reached a final status or paused at a gate: it
    /// is no longer executing here. Called after the commit that says so.
    pub(crate) fn settled(&self, run_id: &RunId, generation: u64) {
        let mut active = self.active();
        if active.get(run_id).is_some_and(|(g, _)| *g == generation) {
            active.remove(run_id);
        }
    }

    /// Stops the execution of a run in this process, if there is one (its
    /// end was committed by someone else).
    fn stop(&self, run_id: &RunId) {
        if let Some((_, token)) = self.active().get(run_id) {
            token.cancel();
        }
    }

    /// Whether the engine is shutting down.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether runs stopped now are interrupted by the shutdown.
    pub(crate) fn interrupting(&self) -> bool {
        self.interrupting.load(Ordering::Acquire)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, (u64, CancellationToken)>> {
        match self.active.lock() {
            Ok(active) => active,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The slots a running run holds: one of `max_concurrent_runs` and one of its
/// workflow's `concurrency`. Dropping them lets the next queued run start.
#[derive(Debug)]
pub(crate) struct Slots {
    _workflow: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
}

/// A place in the bounded queue; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct QueuePlace(Arc<Inner>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) enum Admission {
    Now(Slots),
    Queued(QueuePlace),
}

/// A submitted run: its id, a way to cancel it and to wait for its end.
#[derive(Debug, Clone)]
pub struct RunHandle {
    run_id: RunId,
    engine: std::sync::Weak<Inner>,
    done: watch::Receiver<Option<Arc<RunSummary>>>,
}

impl RunHandle {
    /// The run id.
    pub fn id(&self) -> &RunId {
        &self.run_id
    }

    /// Asks the run to stop, as [`Engine::cancel`] does (by `handle`); the
    /// current step is abandoned promptly. Returns at once.
    pub fn cancel(&self) {
        let Some(inner) = self.engine.upgrade() else { return };
        let engine = Engine { inner: Arc::clone(&inner) };
        let run_id = self.run_id.clone();
        inner.spawn(async move {
            match engine.cancel(&run_id, "handle", None).await {
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

impl Engine {
    /// Starts building an engine for a configuration and a history store.
    pub fn builder(
        config: impl Into<Arc<Config>>,
        history: Arc<dyn HistoryBackend>,
    ) -> EngineBuilder {
        EngineBuilder {
            config: config.into(),
            history,
            registry: StepRegistry::with_builtins(),
            client: None,
            bus_capacity: DEFAULT_BUS_CAPACITY,
            runtime: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The history store.
    pub fn history(&self) -> &Arc<dyn HistoryBackend> {
        &self.inner.history
    }

    /// The runtime the engine's tasks run on.
    pub fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// The shared HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }

    /// Follows every event from now on.
    pub fn subscribe(&self) -> Subscription {
        self.inner.ledger.bus().subscribe()
    }

    /// The last `event_log_size` events, oldest first.
    pub fn recent_events(&self) -> Vec<Arc<Event>> {
        self.inner.ledger.bus().recent()
    }

    /// The folder of a run's events and artifacts, `data_dir/runs/<run_id>/`.
    ///
    /// Its `events.jsonl` is written from the ledger and may trail it by
    /// moments: read a run's events with [`Engine::run_events`], or call
    /// [`Engine::sync_events`] before reading the file.
    pub fn run_dir(&self, run_id: &RunId) -> PathBuf {
        self.inner.run_dir(run_id)
    }

    /// A run's committed events with `seq > after`, in order, from the
    /// ledger in history: every event anyone has seen is there. Empty when
    /// the run has no events.
    pub async fn run_events(&self, run_id: &RunId, after: u64) -> Result<Vec<Event>> {
        Ok(self.inner.ledger.events(run_id, after).await?)
    }

    /// Writes out every run's committed event lines not yet in its
    /// `events.jsonl`. Blocks on file I/O: from async code, call it in
    /// `spawn_blocking`.
    pub fn sync_events(&self) {
        self.inner.ledger.sync(None);
    }

    /// Checks every configured service's health concurrently.
    pub async fn check_services(&self) -> Vec<ServiceHealth> {
        check_services(&self.inner.client, &self.inner.config).await
    }

    /// Submits a run of a workflow. It starts at once if a slot is free, else
    /// waits in the queue; fails with [`Error::QueueFull`] when the queue is full.
    /// The run and its `run.queued` event are committed before this returns.
    pub async fn submit(&self, workflow: &str, options: RunOptions) -> Result<RunHandle> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        if !self.inner.config.workflows().contains_key(workflow) {
            return Err(Error::UnknownWorkflow(workflow.to_owned()));
        }
        let admission = self.admit(workflow)?;
        let run = NewRun {
            id: RunId::new(uuid::Uuid::now_v7().to_string()),
            workflow: workflow.to_owned(),
            trigger: options.trigger,
            request_id: options.request_id.clone(),
            created_at: jiff::Timestamp::now(),
        };
        let reference = RunRef {
            id: run.id.clone(),
            workflow: workflow.to_owned(),
            request_id: options.request_id,
        };
        let queued = EventData::RunQueued(RunQueued { trigger: run.trigger.as_str().to_owned() });
        self.inner
            .ledger
            .commit_new(&reference, vec![Write::CreateRun(run.clone())], vec![queued])
            .await?;
        log::debug!("run_id={}: queued for workflow {workflow}", run.id);
        Ok(self.spawn(reference, run.trigger, admission, None))
    }

    /// Submits a run and waits for it to finish (or pause at a gate).
    pub async fn run(&self, workflow: &str, options: RunOptions) -> Result<Arc<RunSummary>> {
        self.submit(workflow, options).await?.wait().await
    }

    /// Cancels a run that is queued, running or waiting at a gate, as `by`
    /// (a key id; recorded as the rejection of a pending gate). The run's
    /// end (`cancelled`, `run.cancelled`, `workflow.completed`) is committed
    /// before this returns, as a compare-and-set: it wins over anything not
    /// committed yet (a decision, the run's own completion), and when it
    /// returns `Ok` the run ends `cancelled`. Fails with
    /// [`Error::RunFinished`] when the run had already ended, and
    /// [`Error::UnknownRun`] when there is no such run.
    pub async fn cancel(&self, run_id: &RunId, by: &str, request_id: Option<String>) -> Result<()> {
        // A lost race (a decision or a step committed between the read and
        // the commit) is retried on the new state; each retry follows a
        // commit by someone else, so this ends.
        for _ in 0..16 {
            let Some(detail) = self.inner.history.get_run(run_id).await? else {
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
            let duration_ms = detail.run.started_at.map_or(0, |s| elapsed_ms(s, now));
            let update = RunUpdate {
                status: RunStatus::Cancelled,
                started_at: None,
                completed_at: Some(now),
                duration_ms: Some(duration_ms),
                error: Some(reason.clone()),
            };
            let mut writes = vec![
                Command::Cancel.write(run_id, update),
                Write::CloseSteps(
                    run_id.clone(),
                    CloseSteps { status: StepStatus::Failed, error: reason.clone(), at: now },
                ),
            ];
            let mut step_id = detail
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Running)
                .map(|s| s.step_id.clone())
                .next();
            for pending in &detail.pending_gates {
                step_id = Some(pending.gate_id.clone());
                writes.push(Write::DecideGate(
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
            let total = self
                .inner
                .config
                .workflows()
                .get(&detail.run.workflow)
                .map_or(0, |w| w.steps().len());
            let events = vec![
                EventData::RunCancelled(RunCancelled { step_id }),
                EventData::WorkflowCompleted(WorkflowCompleted {
                    status: RunStatus::Cancelled.as_str().to_owned(),
                    success: false,
                    duration_ms,
                    summary: counts(total, &crate::gate::rebuild(&detail.steps, usize::MAX)),
                    error: Some(reason),
                }),
            ];
            let reference = run_ref(&detail.run).with_request(request_id.clone());
            match self.inner.ledger.commit(&reference, writes, events).await {
                Ok(_) => {
                    self.inner.stop(run_id);
                    self.inner.ledger.forget(run_id);
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
        Err(Error::RunAborted(run_id.to_string()))
    }

    /// How many runs wait for a slot right now.
    pub fn queued_runs(&self) -> usize {
        self.inner.queued.load(Ordering::Acquire)
    }

    /// Stops the engine for a process shutdown: refuses new runs, gives the runs in
    /// progress up to `grace` to finish, then stops the rest, recording them
    /// `interrupted` (with a `run.interrupted` event); runs still queued stay queued
    /// in history so that [`Engine::recover`] runs them at the next start. Ends by
    /// writing out every run's pending `events.jsonl` lines ([`Engine::sync_events`]).
    pub async fn shutdown(&self, grace: Duration) -> Result<Shutdown> {
        self.inner.closing.store(true, Ordering::Release);
        let before = self.inner.active().len();
        let deadline = Instant::now() + grace;
        while !self.inner.active().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining: Vec<(RunId, CancellationToken)> = self
            .inner
            .active()
            .iter()
            .map(|(id, (_, token))| (id.clone(), token.clone()))
            .collect();
        self.inner.interrupting.store(true, Ordering::Release);
        for (_, token) in &remaining {
            token.cancel();
        }
        // Stopping abandons the current step at once; committing takes a moment.
        let settle = Instant::now() + Duration::from_secs(2);
        while !self.inner.active().is_empty() && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped: Vec<RunId> = remaining.into_iter().map(|(id, _)| id).collect();
        let engine = self.clone();
        let marker = self.process_marker();
        let synced = tokio::task::spawn_blocking(move || {
            engine.sync_events();
            // Every file holds its ledger: the next start need not check them.
            if marker.exists()
                && let Err(err) = std::fs::write(&marker, "clean\n")
            {
                log::warn!("cannot write {}: {err}", marker.display());
            }
        });
        if let Err(err) = synced.await {
            log::error!("cannot write out the runs' events.jsonl: {err}");
        }
        Ok(Shutdown { finished: before.saturating_sub(stopped.len()), stopped })
    }

    /// Recovers the runs a previous process left unfinished. Call once at
    /// start, before serving: runs left `running` become `interrupted` (with a
    /// `run.interrupted` event) and are never executed again, runs left
    /// `queued` are started, runs `waiting` at a gate keep waiting (gates
    /// whose deadline passed meanwhile are decided now). A run whose records
    /// cannot be read is marked `failed` with the reason; one bad run never
    /// stops the start. The `events.jsonl` of every unfinished run, and of
    /// runs finished since `since` (the previous process's start), is
    /// completed from the ledger: `data_dir/.aegis-process` says when the
    /// previous process started, and whether it stopped cleanly.
    pub async fn recover(&self) -> Result<Recovery> {
        let since = self.mark_process_start().await;
        let unfinished = self.inner.history.unfinished().await?;
        let mut recovery = Recovery::default();
        let mut files: Vec<RunId> = Vec::new();
        for run in unfinished.running.iter().chain(&unfinished.queued).chain(&unfinished.waiting) {
            if let Err(err) = self.inner.ledger.import_file(&run.id).await {
                log::error!(
                    "run_id={}: cannot take its events.jsonl into the ledger: {err}",
                    run.id
                );
            }
            files.push(run.id.clone());
        }
        if let Some(since) = since {
            files.extend(self.inner.history.finished_since(since).await?);
        }
        // Before this start commits anything: from then on the writer
        // appends the new lines after what is completed here.
        for run_id in &files {
            if let Err(err) = self.inner.ledger.complete_file(run_id).await {
                log::error!("run_id={run_id}: cannot complete events.jsonl: {err}");
            }
        }
        for run in unfinished.running {
            match self.interrupt(&run).await {
                Ok(()) => recovery.interrupted.push(run.id),
                Err(err) => self.fail_unreadable(&run, &err).await,
            }
        }
        for run in unfinished.queued {
            let reference = run_ref(&run);
            if !self.inner.config.workflows().contains_key(&run.workflow) {
                let reason = format!("workflow {:?} no longer exists", run.workflow);
                match self.end_unstarted(&reference, &reason).await {
                    Ok(()) => recovery.interrupted.push(run.id),
                    Err(err) => self.fail_unreadable(&run, &err).await,
                }
                continue;
            }
            self.inner.queued.fetch_add(1, Ordering::AcqRel);
            let place = Admission::Queued(QueuePlace(Arc::clone(&self.inner)));
            self.spawn(reference, run.trigger, place, None);
            recovery.requeued.push(run.id);
        }
        for run in unfinished.waiting {
            match self.resume_decided(&run.id).await {
                Ok(true) => recovery.resumed.push(run.id),
                Ok(false) => recovery.waiting.push(run.id),
                Err(err) => self.fail_unreadable(&run, &err).await,
            }
        }
        recovery.expired = self.arm_gate_timers().await?;
        recovery.waiting.retain(|id| !recovery.expired.contains(id));
        log::info!(
            "recovered runs: {} interrupted, {} requeued, {} waiting, {} gates expired",
            recovery.interrupted.len(),
            recovery.requeued.len(),
            recovery.waiting.len(),
            recovery.expired.len(),
        );
        Ok(recovery)
    }

    /// The marker of this process's run in `data_dir`: when the previous
    /// process started, unless it shut down cleanly. Writes this start.
    async fn mark_process_start(&self) -> Option<jiff::Timestamp> {
        let path = self.process_marker();
        let now = jiff::Timestamp::now();
        tokio::task::spawn_blocking(move || {
            let previous = std::fs::read_to_string(&path).ok().and_then(|text| {
                let nanos = text.trim().strip_prefix("running ")?.parse::<i128>().ok()?;
                jiff::Timestamp::from_nanosecond(nanos).ok()
            });
            if let Some(dir) = path.parent()
                && let Err(err) = std::fs::create_dir_all(dir).and_then(|()| {
                    std::fs::write(&path, format!("running {}\n", now.as_nanosecond()))
                })
            {
                log::warn!("cannot write {}: {err}", path.display());
            }
            previous
        })
        .await
        .ok()
        .flatten()
    }

    fn process_marker(&self) -> PathBuf {
        self.inner.config.data_dir().join(".aegis-process")
    }

    /// Marks a run whose records cannot be read (or recovered) `failed`,
    /// with the reason, so that it never blocks a start again.
    async fn fail_unreadable(&self, run: &RunRecord, err: &Error) {
        let reason = format!("cannot recover the run: {err}");
        log::error!("run_id={}: {reason}", run.id);
        let update = RunUpdate {
            status: RunStatus::Failed,
            started_at: None,
            completed_at: Some(jiff::Timestamp::now()),
            duration_ms: None,
            error: Some(reason.clone()),
        };
        let write = Write::Transition(
            run.id.clone(),
            aegis_history::Transition {
                from: vec![RunStatus::Queued, RunStatus::Running, RunStatus::Waiting],
                update,
            },
        );
        let events = vec![EventData::WorkflowCompleted(WorkflowCompleted {
            status: RunStatus::Failed.as_str().to_owned(),
            success: false,
            duration_ms: 0,
            summary: counts(0, &IndexMap::new()),
            error: Some(reason),
        })];
        if let Err(err) = self.inner.ledger.commit(&run_ref(run), vec![write], events).await {
            log::error!("run_id={}: cannot mark it failed: {err}", run.id);
        }
        self.inner.ledger.forget(&run.id);
    }

    /// Ends a run left `running` by a previous process: `interrupted`, with
    /// the step it was in closed, in one commit.
    async fn interrupt(&self, run: &RunRecord) -> Result<()> {
        let now = jiff::Timestamp::now();
        let detail = self.inner.history.get_run(&run.id).await?;
        let step_id = detail.as_ref().and_then(|d| {
            d.steps.iter().find(|s| s.status == StepStatus::Running).map(|s| s.step_id.clone())
        });
        let summary = detail.as_ref().map(|d| crate::gate::rebuild(&d.steps, usize::MAX));
        let reason = "the process stopped while the run was running".to_owned();
        let duration_ms = run.started_at.map(|s| elapsed_ms(s, now));
        let writes = vec![
            Command::Interrupt.write(
                &run.id,
                RunUpdate {
                    status: RunStatus::Interrupted,
                    started_at: None,
                    completed_at: Some(now),
                    duration_ms,
                    error: Some(reason.clone()),
                },
            ),
            Write::CloseSteps(
                run.id.clone(),
                CloseSteps {
                    status: StepStatus::Failed,
                    error: "interrupted: the process stopped during this step".to_owned(),
                    at: now,
                },
            ),
        ];
        let total = self.inner.config.workflows().get(&run.workflow).map_or(0, |w| w.steps().len());
        let events = vec![
            EventData::RunInterrupted(RunInterrupted { step_id, reason: reason.clone() }),
            EventData::WorkflowCompleted(WorkflowCompleted {
                status: RunStatus::Interrupted.as_str().to_owned(),
                success: false,
                duration_ms: duration_ms.unwrap_or(0),
                summary: counts(total, &summary.unwrap_or_default()),
                error: Some(reason),
            }),
        ];
        match self.inner.ledger.commit(&run_ref(run), writes, events).await {
            Ok(_) | Err(aegis_history::Error::StatusConflict { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.inner.ledger.forget(&run.id);
        log::warn!("run_id={}: marked interrupted", run.id);
        Ok(())
    }

    /// Ends a queued run that can never start (its workflow is gone).
    async fn end_unstarted(&self, run: &RunRef, reason: &str) -> Result<()> {
        let update = RunUpdate {
            status: RunStatus::Interrupted,
            started_at: None,
            completed_at: Some(jiff::Timestamp::now()),
            duration_ms: Some(0),
            error: Some(reason.to_owned()),
        };
        let events = vec![
            EventData::RunInterrupted(RunInterrupted { step_id: None, reason: reason.to_owned() }),
            EventData::WorkflowCompleted(WorkflowCompleted {
                status: RunStatus::Interrupted.as_str().to_owned(),
                success: false,
                duration_ms: 0,
                summary: counts(0, &IndexMap::new()),
                error: Some(reason.to_owned()),
            }),
        ];
        let write = Write::Transition(
            run.id.clone(),
            aegis_history::Transition { from: vec![RunStatus::Queued], update },
        );
        match self.inner.ledger.commit(run, vec![write], events).await {
            Ok(_) | Err(aegis_history::Error::StatusConflict { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.inner.ledger.forget(&run.id);
        Ok(())
    }

    /// Slots for a run resumed after a gate: like [`Engine::admit`], but a run
    /// that was already accepted is never refused for a full queue.
    pub(crate) fn admit_resumed(&self, workflow: &str) -> Admission {
        match self.admit(workflow) {
            Ok(admission) => admission,
            Err(_) => {
                self.inner.queued.fetch_add(1, Ordering::AcqRel);
                Admission::Queued(QueuePlace(Arc::clone(&self.inner)))
            }
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Engine {
        Engine { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    fn admit(&self, workflow: &str) -> Result<Admission> {
        let inner = &self.inner;
        let workflow_slot = match inner.workflow_limits.get(workflow) {
            Some(limit) => Arc::clone(limit).try_acquire_owned().ok().map(Some),
            None => Some(None),
        };
        if let Some(workflow_slot) = workflow_slot
            && let Ok(global) = Arc::clone(&inner.global).try_acquire_owned()
        {
            return Ok(Admission::Now(Slots { _workflow: workflow_slot, _global: global }));
        }
        let before = inner.queued.fetch_add(1, Ordering::AcqRel);
        if before >= inner.max_queued {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::QueueFull { limit: inner.max_queued });
        }
        Ok(Admission::Queued(QueuePlace(Arc::clone(inner))))
    }

    pub(crate) fn spawn(
        &self,
        run: RunRef,
        trigger: Trigger,
        admission: Admission,
        resume: Option<Resume>,
    ) -> RunHandle {
        let cancel = CancellationToken::new();
        let (done_tx, done) = watch::channel(None);
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.active().insert(run.id.clone(), (generation, cancel.clone()));
        let handle =
            RunHandle { run_id: run.id.clone(), engine: Arc::downgrade(&self.inner), done };
        let inner = Arc::clone(&self.inner);
        self.inner.spawn(async move {
            let run_id = run.id.clone();
            let summary =
                drive(Arc::clone(&inner), run, trigger, admission, cancel, generation, resume)
                    .await;
            inner.settled(&run_id, generation);
            done_tx.send_replace(Some(Arc::new(summary)));
        });
        handle
    }
}

/// The reference of a stored run, for its commits.
pub(crate) fn run_ref(run: &RunRecord) -> RunRef {
    RunRef {
        id: run.id.clone(),
        workflow: run.workflow.clone(),
        request_id: run.request_id.clone(),
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
        steps: crate::gate::rebuild(&detail.steps, usize::MAX).into_values().collect(),
    }
}

pub(crate) fn elapsed_ms(since: jiff::Timestamp, now: jiff::Timestamp) -> u64 {
    now.duration_since(since).try_into().map(millis).unwrap_or(0)
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

/// Waits for slots (unless admitted at once), then executes the run.
async fn drive(
    inner: Arc<Inner>,
    run: RunRef,
    trigger: Trigger,
    admission: Admission,
    cancel: CancellationToken,
    generation: u64,
    resume: Option<Resume>,
) -> RunSummary {
    let unstarted = |status: RunStatus, error: &str| RunSummary {
        run_id: run.id.to_string(),
        workflow: run.workflow.clone(),
        status,
        trigger,
        started_at: None,
        completed_at: Some(jiff::Timestamp::now()),
        duration_ms: 0,
        error: Some(error.to_owned()),
        waiting_at: None,
        steps: Vec::new(),
    };
    let Some(workflow) = inner.config.workflows().get(&run.workflow).cloned() else {
        return unstarted(RunStatus::Failed, "unknown workflow");
    };
    let slots = match admission {
        Admission::Now(slots) => slots,
        Admission::Queued(place) => {
            let acquire = async {
                let workflow_slot = match inner.workflow_limits.get(&run.workflow) {
                    Some(limit) => Some(Arc::clone(limit).acquire_owned().await),
                    None => None,
                };
                let global = Arc::clone(&inner.global).acquire_owned().await;
                (workflow_slot, global)
            };
            let acquired = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                acquired = acquire => Some(acquired),
            };
            drop(place);
            match acquired {
                Some((Some(Ok(w)), Ok(g))) => Slots { _workflow: Some(w), _global: g },
                Some((None, Ok(g))) => Slots { _workflow: None, _global: g },
                // The semaphores are never closed.
                Some(_) => return unstarted(RunStatus::Queued, "engine closed"),
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
    };
    let (start, exec) = match resume {
        Some(resume) => (resume.start, RunExec { outcomes: resume.outcomes, ..exec }),
        None => (0, exec),
    };
    let summary = exec.execute(start).await;
    drop(slots);
    summary
}
