//! The [`Engine`]: admission (concurrency limits and the bounded queue),
//! run lifecycle, cancellation, recovery at start and the event bus.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::Config;
use aegis_history::{
    HistoryBackend, NewRun, RunId, RunRecord, RunStatus, RunUpdate, StepStatus, Trigger,
};
use indexmap::IndexMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::event::{
    EVENTS_FILE, Event, EventBus, EventData, EventLogs, RunCancelled, RunEvents, RunInterrupted,
    RunLog, RunQueued, Subscription, WorkflowCompleted, read_events,
};
use crate::health::{ServiceHealth, check_services};
use crate::recorder::{Progress, Recorder};
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
    /// Runs whose gate was decided but not yet resumed when the process
    /// stopped: resumed now as the recorded decision says.
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
}

impl EngineBuilder {
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

    /// Checks that every step type the workflows use is registered and builds the engine.
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
        let logs = EventLogs::start().map_err(|e| Error::io(&runs_dir, e))?;
        let inner = Inner {
            runs_dir,
            logs,
            bus: Arc::new(EventBus::new(self.bus_capacity, self.config.event_log_size())),
            global: Arc::new(Semaphore::new(server.max_concurrent_runs().max(1))),
            max_queued: server.max_queued_runs(),
            queued: AtomicUsize::new(0),
            workflow_limits,
            active: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            deciding: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            interrupting: AtomicBool::new(false),
            live: crate::artifact::LiveArtifacts::default(),
            progress: Progress::new(Arc::clone(&self.history)),
            history: self.history,
            registry: self.registry,
            client,
            config: self.config,
        };
        let inner = Arc::new(inner);
        // Removes the folders of runs retention deletes (see `retention`).
        crate::retention::spawn(Arc::downgrade(&inner));
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
    pub(crate) bus: Arc<EventBus>,
    /// Step data not yet in history, served as `<step_id>.json` meanwhile.
    pub(crate) live: crate::artifact::LiveArtifacts,
    /// Writes the runs' progress to history behind them.
    pub(crate) progress: Progress,
    runs_dir: PathBuf,
    /// The runs' `events.jsonl` files, written behind the runs by one thread.
    logs: EventLogs,
    global: Arc<Semaphore>,
    workflow_limits: HashMap<String, Arc<Semaphore>>,
    max_queued: usize,
    pub(crate) queued: AtomicUsize,
    /// The runs executing in this process, each with the generation of its
    /// execution (a run resumed after a gate is a new execution of the same id).
    active: Mutex<HashMap<RunId, (u64, CancellationToken)>>,
    generation: AtomicU64,
    /// Held while a gate is decided or a waiting run is cancelled, so that the
    /// checks and the changes of one decision are never interleaved with
    /// another's in this process; across processes the history store's
    /// `record_gate_decision` is the arbiter.
    pub(crate) deciding: tokio::sync::Mutex<()>,
    /// Set by [`Engine::shutdown`]: no new runs are accepted.
    closing: AtomicBool,
    /// Set by [`Engine::shutdown`] once the grace period is over: a run stopped now
    /// ends `interrupted` rather than `cancelled`, and a queued one stays queued.
    pub(crate) interrupting: AtomicBool,
}

impl Inner {
    pub(crate) fn run_dir(&self, run_id: &RunId) -> PathBuf {
        self.runs_dir.join(run_id.as_str())
    }

    /// The events of a run just created: no file I/O, `seq` from 0.
    pub(crate) fn create_events(
        &self,
        run_id: &RunId,
        workflow: &str,
        request_id: Option<String>,
    ) -> RunEvents {
        let log = self.logs.create(&self.run_dir(run_id), run_id.as_str());
        RunEvents::new(
            &self.logs,
            log,
            run_id.as_str(),
            workflow,
            request_id,
            Arc::clone(&self.bus),
        )
    }

    /// The events of an existing run, continuing after its last `seq` (from
    /// memory when its log is alive in this process, else from its file).
    pub(crate) fn open_events(
        &self,
        run_id: &RunId,
        workflow: &str,
        request_id: Option<String>,
    ) -> RunEvents {
        let log = self.logs.open(&self.run_dir(run_id), run_id.as_str());
        RunEvents::new(
            &self.logs,
            log,
            run_id.as_str(),
            workflow,
            request_id,
            Arc::clone(&self.bus),
        )
    }

    /// A run's `events.jsonl` log, when it is alive in this process; when it
    /// is not, the file holds every event. Its `sync` blocks on file I/O:
    /// call it off the async threads.
    pub(crate) fn live_events_log(&self, run_id: &RunId) -> Option<Arc<RunLog>> {
        self.logs.live(run_id.as_str())
    }

    /// Forgets a run that reached a final status or paused at a gate, so that
    /// [`Engine::cancel`] no longer finds it; called before the event that
    /// announces it.
    pub(crate) fn settled(&self, run_id: &RunId, generation: u64) {
        let mut active = self.active();
        if active.get(run_id).is_some_and(|(g, _)| *g == generation) {
            active.remove(run_id);
        }
    }

    /// Whether the engine is shutting down.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
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
    cancel: CancellationToken,
    done: watch::Receiver<Option<Arc<RunSummary>>>,
}

impl RunHandle {
    /// The run id.
    pub fn id(&self) -> &RunId {
        &self.run_id
    }

    /// Asks the run to stop; the current step is abandoned promptly.
    pub fn cancel(&self) {
        self.cancel.cancel();
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

    /// The shared HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }

    /// Follows every event from now on.
    pub fn subscribe(&self) -> Subscription {
        self.inner.bus.subscribe()
    }

    /// The last `event_log_size` events, oldest first.
    pub fn recent_events(&self) -> Vec<Arc<Event>> {
        self.inner.bus.recent()
    }

    /// The folder of a run's events and artifacts, `data_dir/runs/<run_id>/`.
    ///
    /// Its `events.jsonl` is written behind the run, within milliseconds; read
    /// a run's events with [`Engine::run_events`], or call
    /// [`Engine::sync_events`] before reading the file.
    pub fn run_dir(&self, run_id: &RunId) -> PathBuf {
        self.inner.run_dir(run_id)
    }

    /// A run's events with `seq > after`, in order, as in its `events.jsonl`:
    /// every event emitted before the call is included (the run's lines not
    /// yet written behind it are written out first). Lines that do not parse
    /// (a write cut short by a crash) are skipped with a warning. Empty when
    /// the run has no events.
    pub async fn run_events(&self, run_id: &RunId, after: u64) -> Result<Vec<Event>> {
        let live = self.inner.live_events_log(run_id);
        let path = self.inner.run_dir(run_id).join(EVENTS_FILE);
        let owned = path.clone();
        let read = tokio::task::spawn_blocking(move || {
            if let Some(log) = live {
                log.sync();
            }
            read_events(&owned, after)
        })
        .await
        .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
        read.map_err(|e| Error::io(&path, e))
    }

    /// Writes out every run's event lines not yet in its `events.jsonl`, so
    /// that the files hold every event emitted before the call. The engine
    /// does this behind the runs anyway, within milliseconds, and
    /// [`Engine::shutdown`] ends with it. Blocks on file I/O: from async code,
    /// call it in `spawn_blocking`.
    pub fn sync_events(&self) {
        self.inner.logs.sync_all();
    }

    /// Checks every configured service's health concurrently.
    pub async fn check_services(&self) -> Vec<ServiceHealth> {
        check_services(&self.inner.client, &self.inner.config).await
    }

    /// Submits a run of a workflow. It starts at once if a slot is free, else
    /// waits in the queue; fails with [`Error::QueueFull`] when the queue is full.
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
        self.inner.history.create_run(&run).await?;
        let events = Arc::new(self.inner.create_events(&run.id, workflow, options.request_id));
        events.emit(EventData::RunQueued(RunQueued { trigger: run.trigger.as_str().to_owned() }));
        log::debug!("run_id={}: queued for workflow {workflow}", run.id);
        Ok(self.spawn(run.id, workflow.to_owned(), run.trigger, events, admission, None))
    }

    /// Submits a run and waits for it to finish (or pause at a gate).
    pub async fn run(&self, workflow: &str, options: RunOptions) -> Result<Arc<RunSummary>> {
        self.submit(workflow, options).await?.wait().await
    }

    /// Cancels a queued or running run of this process. Returns whether the
    /// run was found.
    pub fn cancel(&self, run_id: &RunId) -> bool {
        match self.inner.active().get(run_id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
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
        // Stopping abandons the current step at once; recording takes a moment.
        let settle = Instant::now() + Duration::from_secs(10);
        while !self.inner.active().is_empty() && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped: Vec<RunId> = remaining.into_iter().map(|(id, _)| id).collect();
        // Every run's events.jsonl holds every event emitted so far.
        let engine = self.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || engine.sync_events()).await {
            log::error!("cannot write out the runs' events.jsonl: {err}");
        }
        Ok(Shutdown { finished: before.saturating_sub(stopped.len()), stopped })
    }

    /// Recovers the runs a previous process left unfinished. Call once at
    /// start, before serving: runs left `running` become `interrupted` (with a
    /// `run.interrupted` event), runs left `queued` are started again, runs
    /// `waiting` at a gate keep waiting.
    pub async fn recover(&self) -> Result<Recovery> {
        let unfinished = self.inner.history.unfinished().await?;
        let mut recovery = Recovery::default();
        for run in unfinished.running {
            self.interrupt(&run).await?;
            recovery.interrupted.push(run.id);
        }
        for run in unfinished.queued {
            let events =
                Arc::new(self.inner.open_events(&run.id, &run.workflow, run.request_id.clone()));
            if !self.inner.config.workflows().contains_key(&run.workflow) {
                let reason = format!("workflow {:?} no longer exists", run.workflow);
                self.end_unstarted(&run.id, &events, RunStatus::Interrupted, &reason).await?;
                recovery.interrupted.push(run.id);
                continue;
            }
            self.inner.queued.fetch_add(1, Ordering::AcqRel);
            let place = Admission::Queued(QueuePlace(Arc::clone(&self.inner)));
            self.spawn(run.id.clone(), run.workflow.clone(), run.trigger, events, place, None);
            recovery.requeued.push(run.id);
        }
        for run in unfinished.waiting {
            if self.resume_decided(&run.id).await? {
                recovery.resumed.push(run.id);
            } else {
                recovery.waiting.push(run.id);
            }
        }
        recovery.expired = self.arm_gate_timers().await?;
        recovery.waiting.retain(|id| !recovery.expired.contains(id));
        log::info!(
            "recovered runs: {} interrupted, {} requeued, {} waiting, {} gates expired, {} resumed",
            recovery.interrupted.len(),
            recovery.requeued.len(),
            recovery.waiting.len(),
            recovery.expired.len(),
            recovery.resumed.len()
        );
        Ok(recovery)
    }

    async fn interrupt(&self, run: &RunRecord) -> Result<()> {
        let events = self.inner.open_events(&run.id, &run.workflow, run.request_id.clone());
        let now = jiff::Timestamp::now();
        let mut step_id = None;
        if let Some(detail) = self.inner.history.get_run(&run.id).await? {
            for mut step in detail.steps.into_iter().filter(|s| s.status == StepStatus::Running) {
                step_id = Some(step.step_id.clone());
                step.status = StepStatus::Failed;
                step.error = Some("interrupted: the process stopped during this step".into());
                step.completed_at = Some(now);
                self.inner.history.record_step(&run.id, &step).await?;
            }
        }
        let reason = "the process stopped while the run was running".to_owned();
        let duration_ms =
            run.started_at.and_then(|s| now.duration_since(s).try_into().ok()).map(millis);
        let update = RunUpdate {
            status: RunStatus::Interrupted,
            started_at: None,
            completed_at: Some(now),
            duration_ms,
            error: Some(reason.clone()),
        };
        self.inner.history.update_run(&run.id, &update).await?;
        events.emit(EventData::RunInterrupted(RunInterrupted { step_id, reason: reason.clone() }));
        events.emit(EventData::WorkflowCompleted(WorkflowCompleted {
            status: RunStatus::Interrupted.as_str().to_owned(),
            success: false,
            duration_ms: duration_ms.unwrap_or(0),
            summary: Default::default(),
            error: Some(reason),
        }));
        log::warn!("run_id={}: marked interrupted", run.id);
        Ok(())
    }

    /// Ends a run that never started (cancelled in the queue, or unrunnable).
    async fn end_unstarted(
        &self,
        run_id: &RunId,
        events: &RunEvents,
        status: RunStatus,
        reason: &str,
    ) -> Result<()> {
        end_unstarted(&self.inner, run_id, events, status, reason, 0).await
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
        run_id: RunId,
        workflow: String,
        trigger: Trigger,
        events: Arc<RunEvents>,
        admission: Admission,
        resume: Option<Resume>,
    ) -> RunHandle {
        let cancel = CancellationToken::new();
        let (done_tx, done) = watch::channel(None);
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.active().insert(run_id.clone(), (generation, cancel.clone()));
        let handle = RunHandle { run_id: run_id.clone(), cancel: cancel.clone(), done };
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let summary = drive(
                Arc::clone(&inner),
                run_id.clone(),
                workflow,
                trigger,
                events,
                admission,
                cancel,
                generation,
                resume,
            )
            .await;
            inner.settled(&run_id, generation);
            done_tx.send_replace(Some(Arc::new(summary)));
        });
        handle
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

/// Waits for slots (unless admitted at once), then executes the run.
#[expect(clippy::too_many_arguments, reason = "a private function called from one place")]
async fn drive(
    inner: Arc<Inner>,
    run_id: RunId,
    workflow_key: String,
    trigger: Trigger,
    events: Arc<RunEvents>,
    admission: Admission,
    cancel: CancellationToken,
    generation: u64,
    resume: Option<Resume>,
) -> RunSummary {
    let unstarted = |status: RunStatus, error: &str| RunSummary {
        run_id: run_id.to_string(),
        workflow: workflow_key.clone(),
        status,
        trigger,
        started_at: None,
        completed_at: Some(jiff::Timestamp::now()),
        duration_ms: 0,
        error: Some(error.to_owned()),
        waiting_at: None,
        steps: Vec::new(),
    };
    let Some(workflow) = inner.config.workflows().get(&workflow_key).cloned() else {
        return unstarted(RunStatus::Failed, "unknown workflow");
    };
    let slots = match admission {
        Admission::Now(slots) => slots,
        Admission::Queued(place) => {
            let acquire = async {
                let workflow_slot = match inner.workflow_limits.get(&workflow_key) {
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
                Some(_) => {
                    // The semaphores are never closed; treat it as a cancellation.
                    let _ = end_unstarted(
                        &inner,
                        &run_id,
                        &events,
                        RunStatus::Cancelled,
                        "engine closed",
                        generation,
                    )
                    .await;
                    return unstarted(RunStatus::Cancelled, "engine closed");
                }
                None if inner.interrupting.load(Ordering::Acquire) => {
                    // Shutting down: the run stays queued in history for the next start.
                    return unstarted(
                        RunStatus::Queued,
                        "the server shut down before the run started",
                    );
                }
                None => {
                    if let Err(err) = end_unstarted(
                        &inner,
                        &run_id,
                        &events,
                        RunStatus::Cancelled,
                        "cancelled",
                        generation,
                    )
                    .await
                    {
                        log::error!("run_id={run_id}: cannot record the cancellation: {err}");
                    }
                    return unstarted(RunStatus::Cancelled, "cancelled");
                }
            }
        }
    };
    let exec = RunExec {
        recorder: Recorder::new(run_id.clone(), &inner.progress),
        inner: Arc::clone(&inner),
        run_id,
        workflow,
        trigger,
        events,
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

async fn end_unstarted(
    inner: &Inner,
    run_id: &RunId,
    events: &RunEvents,
    status: RunStatus,
    reason: &str,
    generation: u64,
) -> Result<()> {
    let update = RunUpdate {
        status,
        started_at: None,
        completed_at: Some(jiff::Timestamp::now()),
        duration_ms: Some(0),
        error: Some(reason.to_owned()),
    };
    inner.history.update_run(run_id, &update).await?;
    inner.settled(run_id, generation);
    if status == RunStatus::Cancelled {
        events.emit(EventData::RunCancelled(RunCancelled { step_id: None }));
    } else {
        events.emit(EventData::RunInterrupted(RunInterrupted {
            step_id: None,
            reason: reason.to_owned(),
        }));
    }
    events.emit(EventData::WorkflowCompleted(WorkflowCompleted {
        status: status.as_str().to_owned(),
        success: false,
        duration_ms: 0,
        summary: counts(0, &IndexMap::new()),
        error: Some(reason.to_owned()),
    }));
    Ok(())
}
