//! What the engine's parts share: the configuration, history, the ledger,
//! the step registry and HTTP client, the runtime every task runs on, and
//! the bookkeeping of runs in this process (slots, the bounded queue, the
//! runs executing, shutdown flags, gate deadlines to arm).
//!
//! This module sits below every part that acts on runs (`run`, `gate`,
//! `cancel`, `folder`, `engine`), which reach each other only through it:
//! the modules of the crate form no cycle (a test checks it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aegis_config::Config;
use aegis_history::{HistoryBackend, RunId, RunRecord};
use jiff::Timestamp;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::ledger::{Ledger, RunRef};
use crate::step::StepRegistry;
use crate::summary::millis;

/// A gate that waits with a deadline, for the gate timers (`crate::gate`).
#[derive(Debug)]
pub(crate) struct Deadline {
    pub(crate) run_id: RunId,
    pub(crate) gate_id: String,
    pub(crate) at: Timestamp,
}

/// The engine's shared state.
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
    /// Where the webhook dispatcher's tasks run (see `dispatch`).
    webhook_runtime: Handle,
    runs_dir: PathBuf,
    global: Arc<Semaphore>,
    workflow_limits: HashMap<String, Arc<Semaphore>>,
    max_queued: usize,
    queued: AtomicUsize,
    /// The runs executing in this process, each with the generation of its
    /// execution (a run resumed after a gate is a new execution of the same id).
    active: Mutex<HashMap<RunId, (u64, CancellationToken)>>,
    generation: AtomicU64,
    /// Set by `Engine::shutdown`: no new runs are accepted.
    closing: AtomicBool,
    /// Set by `Engine::shutdown` once the grace period is over: a run stopped now
    /// ends `interrupted` rather than `cancelled`, and a queued one stays queued.
    interrupting: AtomicBool,
    /// Gates to decide at their deadline (the gate timers receive them).
    deadlines: mpsc::UnboundedSender<Deadline>,
}

impl Inner {
    /// The shared state of an engine over `config` and `history`, with its
    /// slots and queue sized by `config.server`.
    pub(crate) fn new(
        config: Arc<Config>,
        history: Arc<dyn HistoryBackend>,
        registry: StepRegistry,
        client: reqwest::Client,
        ledger: Ledger,
        runtime: Handle,
        deadlines: mpsc::UnboundedSender<Deadline>,
    ) -> Self {
        let server = config.server();
        let workflow_limits = config
            .workflows()
            .values()
            .filter_map(|w| {
                w.concurrency().map(|n| (w.key().to_owned(), Arc::new(Semaphore::new(n.max(1)))))
            })
            .collect();
        Self {
            runs_dir: config.data_dir().join("runs"),
            global: Arc::new(Semaphore::new(server.max_concurrent_runs().max(1))),
            max_queued: server.max_queued_runs(),
            queued: AtomicUsize::new(0),
            workflow_limits,
            active: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            interrupting: AtomicBool::new(false),
            deadlines,
            ledger,
            webhook_runtime: runtime.clone(),
            runtime,
            history,
            registry,
            client,
            config,
        }
    }

    /// The runtime the engine's tasks run on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Runs the webhook dispatcher on `runtime` rather than the engine's.
    pub(crate) fn with_webhook_runtime(mut self, runtime: Handle) -> Self {
        self.webhook_runtime = runtime;
        self
    }

    /// The runtime the webhook dispatcher's tasks run on.
    pub(crate) fn webhook_runtime(&self) -> &Handle {
        &self.webhook_runtime
    }

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

    /// Records a run executing in this process; returns the generation of
    /// this execution.
    pub(crate) fn track(&self, run_id: &RunId, cancel: CancellationToken) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel);
        self.active().insert(run_id.clone(), (generation, cancel));
        generation
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
    pub(crate) fn stop(&self, run_id: &RunId) {
        if let Some((_, token)) = self.active().get(run_id) {
            token.cancel();
        }
    }

    /// The runs executing in this process, with the tokens that stop them.
    pub(crate) fn executing(&self) -> Vec<(RunId, CancellationToken)> {
        self.active().iter().map(|(id, (_, token))| (id.clone(), token.clone())).collect()
    }

    /// Whether no run executes in this process.
    pub(crate) fn idle(&self) -> bool {
        self.active().is_empty()
    }

    /// Whether the engine is shutting down.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// From now on no new run is accepted.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether runs stopped now are interrupted by the shutdown.
    pub(crate) fn interrupting(&self) -> bool {
        self.interrupting.load(Ordering::Acquire)
    }

    /// From now on a run stopped is interrupted, and a queued one stays queued.
    pub(crate) fn interrupt_all(&self) {
        self.interrupting.store(true, Ordering::Release);
    }

    /// How many runs wait for a slot.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Asks the gate timers to decide a gate at its deadline.
    pub(crate) fn arm_deadline(&self, deadline: Deadline) {
        // The receiver lives as long as the engine's runtime does.
        if let Err(err) = self.deadlines.send(deadline) {
            log::warn!("run_id={}: gate timers are gone", err.0.run_id);
        }
    }

    fn active(&self) -> MutexGuard<'_, HashMap<RunId, (u64, CancellationToken)>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Slots for a new run of `workflow`: now if both are free, else a place
    /// in the bounded queue; [`Error::QueueFull`] when the queue is full.
    pub(crate) fn admit(self: &Arc<Self>, workflow: &str) -> Result<Admission> {
        let workflow_slot = match self.workflow_limits.get(workflow) {
            Some(limit) => Arc::clone(limit).try_acquire_owned().ok().map(Some),
            None => Some(None),
        };
        if let Some(workflow_slot) = workflow_slot
            && let Ok(global) = Arc::clone(&self.global).try_acquire_owned()
        {
            return Ok(Admission::Now(Slots { _workflow: workflow_slot, _global: global }));
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::QueueFull { limit: self.max_queued });
        }
        Ok(Admission::Queued(QueuePlace(Arc::clone(self))))
    }

    /// Slots for a run that was already accepted (resumed after a gate,
    /// requeued at recovery): like [`Inner::admit`], but never refused for a
    /// full queue.
    pub(crate) fn admit_accepted(self: &Arc<Self>, workflow: &str) -> Admission {
        match self.admit(workflow) {
            Ok(admission) => admission,
            Err(_) => self.queue_place(),
        }
    }

    /// A place in the queue, whatever its limit.
    pub(crate) fn queue_place(self: &Arc<Self>) -> Admission {
        self.queued.fetch_add(1, Ordering::AcqRel);
        Admission::Queued(QueuePlace(Arc::clone(self)))
    }

    /// Waits for a free slot of `workflow` and a global one; `None` only if
    /// the semaphores closed (they never are).
    pub(crate) async fn slots(&self, workflow: &str) -> Option<Slots> {
        let workflow_slot = match self.workflow_limits.get(workflow) {
            Some(limit) => Some(Arc::clone(limit).acquire_owned().await.ok()?),
            None => None,
        };
        let global = Arc::clone(&self.global).acquire_owned().await.ok()?;
        Some(Slots { _workflow: workflow_slot, _global: global })
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

/// How a run got its slots.
#[derive(Debug)]
pub(crate) enum Admission {
    Now(Slots),
    Queued(QueuePlace),
}

/// The reference of a stored run, for its commits.
pub(crate) fn run_ref(run: &RunRecord) -> RunRef {
    RunRef {
        id: run.id.clone(),
        workflow: run.workflow.clone(),
        request_id: run.request_id.clone(),
    }
}

/// Milliseconds from `since` to `now` (0 if `now` is earlier).
pub(crate) fn elapsed_ms(since: Timestamp, now: Timestamp) -> u64 {
    now.duration_since(since).try_into().map(millis).unwrap_or(0)
}
