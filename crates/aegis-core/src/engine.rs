//! The [`Engine`]: admission (concurrency limits and the bounded queue),
//! submitting, cancelling, recovery at start, shutdown. Every change of a
//! run's status goes through the state machine (`crate::lifecycle`) and is
//! committed with its events by the ledger (`crate::ledger`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_config::Config;
use aegis_history::{HistoryBackend, NewRun, RunId, RunRecord, StepStatus, Trigger, Write};
use indexmap::IndexMap;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::artifact::{Artifact, ArtifactBody};
use crate::bus::{EventBus, Subscription};
use crate::error::{Error, Result};
use crate::event::{Event, EventData, RunInterrupted, RunQueued};
use crate::gate::{GateOutcome, GateRequest};
use crate::health::{ServiceHealth, check_services};
use crate::ledger::{Ledger, RunRef};
use crate::lifecycle::{Command, End};
use crate::run::{Creation, RunHandle};
use crate::state::{Admission, Inner, elapsed_ms, run_ref};
use crate::step::{Step, StepRegistry};
use crate::summary::{RunSummary, counts, rebuild};

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
    webhook_runtime: Option<Handle>,
    cpu_counters: Option<PathBuf>,
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

    /// Delivers webhooks on this runtime instead of the engine's. Its tasks
    /// only send requests and wait: the history writes they cause are
    /// committed where every write is, on the store's own runtime. A server
    /// gives it threads of a lower
    /// scheduling priority, so that deliveries yield the CPU to runs when
    /// both want it (SPEC section 6: delivery never slows a run).
    pub fn webhook_runtime(mut self, runtime: Handle) -> Self {
        self.webhook_runtime = Some(runtime);
        self
    }

    /// Where the webhook dispatcher reads the machine's CPU time counters, a
    /// file in the format of Linux's `/proc/stat` (default: `/proc/stat` on
    /// Linux; elsewhere none, and deliveries never give way). While runs are
    /// in flight and these counters show the machine at least three quarters
    /// busy, deliveries give way to runs: a batch a second per webhook. A
    /// container whose `/proc/stat` shows the host's CPUs can point this at
    /// its own (lxcfs).
    pub fn cpu_counters(mut self, path: impl Into<PathBuf>) -> Self {
        self.cpu_counters = Some(path.into());
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
        let runs_dir = self.config.data_dir().join("runs");
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Handle::try_current().map_err(|_| Error::NoRuntime)?,
        };
        let bus = Arc::new(EventBus::new(self.bus_capacity, self.config.event_log_size()));
        let ledger = Ledger::new(Arc::clone(&self.history), bus, runs_dir.clone())
            .map_err(|e| Error::io(&runs_dir, e))?
            .with_outbox(Arc::new(crate::webhook::Outbox::new(self.config.webhooks())));
        let (deadlines, armed) = mpsc::unbounded_channel();
        let webhook_runtime = self.webhook_runtime.unwrap_or_else(|| runtime.clone());
        let inner = Arc::new(
            Inner::new(
                self.config,
                self.history,
                self.registry,
                client,
                ledger,
                runtime,
                deadlines,
            )
            .with_webhook_runtime(webhook_runtime),
        );
        // Decides gates at their deadlines (see `gate`).
        crate::gate::start_timers(&inner, armed);
        // Removes the folders of runs retention deletes (see `folder`).
        crate::folder::sweep(&inner);
        // Delivers the webhook outbox (see `webhook`).
        let counters = self.cpu_counters.or_else(crate::cpu::default_counters);
        crate::dispatch::spawn(&inner, counters);
        Ok(Engine { inner })
    }
}

/// The pipeline engine. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
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
            webhook_runtime: None,
            cpu_counters: None,
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
        self.inner.runtime()
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
        if self.inner.closing() {
            return Err(Error::ShuttingDown);
        }
        if !self.inner.config.workflows().contains_key(workflow) {
            return Err(Error::UnknownWorkflow(workflow.to_owned()));
        }
        let admission = self.inner.admit(workflow)?;
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
        let trigger = run.trigger;
        if let Admission::Now(_) = admission {
            // Admitted at once: the run is created by its first commit, with
            // its start and its first steps' (one commit less per run).
            let (done, created) = tokio::sync::oneshot::channel();
            let creation = Creation { run, queued, done };
            let handle =
                crate::run::spawn(&self.inner, reference, trigger, admission, None, Some(creation));
            return match created.await {
                Ok(Ok(())) => Ok(handle),
                Ok(Err(err)) => Err(err.into()),
                // The execution ended before its first commit: the engine closed.
                Err(_) => Err(Error::ShuttingDown),
            };
        }
        self.inner.ledger.commit_new(&reference, vec![Write::CreateRun(run)], vec![queued]).await?;
        log::debug!("run_id={}: queued for workflow {workflow}", reference.id);
        Ok(crate::run::spawn(&self.inner, reference, trigger, admission, None, None))
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
        crate::cancel::cancel(&self.inner, run_id, by, request_id).await
    }

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
    pub async fn decide(
        &self,
        run_id: &RunId,
        gate_id: &str,
        request: GateRequest,
    ) -> Result<GateOutcome> {
        self.inner.decide(run_id, gate_id, request).await
    }

    /// Arms a timer for every pending gate with a deadline, from the deadline
    /// stored in history; gates whose deadline has already passed (while no
    /// process was running) are decided now by their `on_timeout`. Returns the
    /// runs decided now. [`Engine::recover`] calls it.
    pub async fn arm_gate_timers(&self) -> Result<Vec<RunId>> {
        self.inner.arm_gate_timers().await
    }

    /// The artifacts of a run, by name: the files in its folder and each
    /// step's data as `<step_id>.json`. `None` when history has no such run.
    pub async fn artifacts(&self, run_id: &RunId) -> Result<Option<Vec<Artifact>>> {
        self.inner.artifacts(run_id).await
    }

    /// The contents of one artifact of a run; `None` when there is no such
    /// run or artifact (or `name` is not a plain file name, or names a link
    /// or anything but a regular file). A file comes back open, to be
    /// streamed.
    pub async fn artifact(&self, run_id: &RunId, name: &str) -> Result<Option<ArtifactBody>> {
        self.inner.artifact(run_id, name).await
    }

    /// Removes the folders (`data_dir/runs/<id>/`) of the runs retention
    /// deleted from history, and returns how many deleted runs it handled.
    /// The engine does this on its own every second; a run whose events are
    /// still being written out waits for the next time.
    pub async fn remove_pruned_runs(&self) -> Result<usize> {
        self.inner.remove_pruned_runs().await
    }

    /// Queues a webhook delivery again (any status): pending, due now, with
    /// a fresh attempt count and the same event (`webhook-id`).
    ///
    /// Fails with `DeliveryNotFound` for an unknown id.
    pub async fn redeliver(&self, delivery_id: &str) -> aegis_history::Result<()> {
        let write = Write::Redeliver(delivery_id.to_owned(), jiff::Timestamp::now());
        self.inner.history.commit(vec![write]).await?;
        self.inner.ledger.outbox().wake_all();
        Ok(())
    }

    /// How many runs wait for a slot right now.
    pub fn queued_runs(&self) -> usize {
        self.inner.queued()
    }

    /// Stops the engine for a process shutdown: refuses new runs, gives the runs in
    /// progress up to `grace` to finish, then stops the rest, recording them
    /// `interrupted` (with a `run.interrupted` event); runs still queued stay queued
    /// in history so that [`Engine::recover`] runs them at the next start. Ends by
    /// writing out every run's pending `events.jsonl` lines ([`Engine::sync_events`]).
    pub async fn shutdown(&self, grace: Duration) -> Result<Shutdown> {
        self.inner.close();
        let before = self.inner.executing().len();
        let deadline = Instant::now() + grace;
        while !self.inner.idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining = self.inner.executing();
        self.inner.interrupt_all();
        for (_, token) in &remaining {
            token.cancel();
        }
        // Stopping abandons the current step at once; committing takes a moment.
        let settle = Instant::now() + Duration::from_secs(2);
        while !self.inner.idle() && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped: Vec<RunId> = remaining.into_iter().map(|(id, _)| id).collect();
        let engine = self.clone();
        let marker = self.process_marker();
        let synced = self.inner.runtime().spawn_blocking(move || {
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
            let place = self.inner.queue_place();
            crate::run::spawn(&self.inner, reference, run.trigger, place, None, None);
            recovery.requeued.push(run.id);
        }
        for run in unfinished.waiting {
            match self.inner.resume_decided(&run.id).await {
                Ok(true) => recovery.resumed.push(run.id),
                Ok(false) => recovery.waiting.push(run.id),
                Err(err) => self.fail_unreadable(&run, &err).await,
            }
        }
        recovery.expired = self.inner.arm_gate_timers().await?;
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
        self.inner
            .runtime()
            .spawn_blocking(move || {
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
        let (writes, events) = End::abandon(reason, counts(0, &IndexMap::new())).change(&run.id);
        if let Err(err) = self.inner.ledger.commit(&run_ref(run), writes, events).await {
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
        let summary = detail.as_ref().map(|d| rebuild(&d.steps, usize::MAX));
        let reason = "the process stopped while the run was running".to_owned();
        let total = self.inner.config.workflows().get(&run.workflow).map_or(0, |w| w.steps().len());
        let (writes, events) = End {
            command: Command::Interrupt,
            at: now,
            duration_ms: run.started_at.map_or(0, |s| elapsed_ms(s, now)),
            error: Some(reason.clone()),
            cause: Some(EventData::RunInterrupted(RunInterrupted { step_id, reason })),
            close_running: Some("interrupted: the process stopped during this step".to_owned()),
            summary: counts(total, &summary.unwrap_or_default()),
        }
        .change(&run.id);
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
        let (writes, events) = End {
            command: Command::Interrupt,
            at: jiff::Timestamp::now(),
            duration_ms: 0,
            error: Some(reason.to_owned()),
            cause: Some(EventData::RunInterrupted(RunInterrupted {
                step_id: None,
                reason: reason.to_owned(),
            })),
            close_running: None,
            summary: counts(0, &IndexMap::new()),
        }
        .change(&run.id);
        match self.inner.ledger.commit(run, writes, events).await {
            Ok(_) | Err(aegis_history::Error::StatusConflict { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.inner.ledger.forget(&run.id);
        Ok(())
    }
}
