//! Events: the envelope, the typed data of every event type, the in-process
//! bus and the per-run `events.jsonl` log.
//!
//! # The per-run log is written behind the run
//!
//! Emitting an event does no file I/O: under the run's lock it takes the next
//! `seq`, adds the event's line to the run's pending lines and publishes the
//! event on the bus (so the file and the bus see the same order). The first
//! event of a burst hands the run's log to the engine's one writer thread
//! (`aegis-events`), which waits 2 ms for the burst to grow (so that runs
//! seldom pay for waking it), then creates the run's folder and
//! `events.jsonl` the first time and appends the pending lines with one
//! write: the file is a few milliseconds behind the bus. A new run touches no
//! file at all until then.
//!
//! Readers never see a partial picture: [`Engine::run_events`] and the
//! artifact listing first write out the run's pending lines themselves, and
//! [`Engine::sync_events`] (called at the end of [`Engine::shutdown`]) does so
//! for every run; dropping the engine lets the thread drain its queue. A
//! `kill -9` can lose the last few milliseconds of a run's lines (they were
//! published live); recovery continues `seq` after the last line in the file.
//!
//! A run's log stays alive in this process while anything uses it (the run,
//! a resumed run, a pending write), and reopening it then continues `seq` from
//! memory; only when none is alive is `seq` read back from the file.
//!
//! [`Engine::run_events`]: crate::Engine::run_events
//! [`Engine::sync_events`]: crate::Engine::sync_events
//! [`Engine::shutdown`]: crate::Engine::shutdown

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak, mpsc};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::Result;

/// The version of the event envelope; bumped when the format changes incompatibly.
pub const SCHEMA_VERSION: &str = "1.0";

macro_rules! event_types {
    ($( $(#[$meta:meta])* $variant:ident => $text:literal, )+) => {
        /// The type of an event, as written in its `type` field.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum EventType {
            $( $(#[$meta])* $variant, )+
        }

        impl EventType {
            /// Every event type, in the order of `aegis_config::EVENT_TYPES`.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The type's name (`run.queued`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $text,)+
                }
            }

            /// Parses a type name.
            pub fn parse(name: &str) -> Option<EventType> {
                match name {
                    $($text => Some(EventType::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    /// A run was accepted and waits for a slot.
    RunQueued => "run.queued",
    /// A run started executing its steps.
    WorkflowStarted => "workflow.started",
    /// A step started its first attempt.
    StepStarted => "step.started",
    /// An attempt failed and another follows after a delay.
    StepRetrying => "step.retrying",
    /// A step finished, successfully or not.
    StepCompleted => "step.completed",
    /// A step did not run because its condition was false.
    StepSkipped => "step.skipped",
    /// A step's data holds test failures.
    FailureDetected => "failure.detected",
    /// A file was written under the run's folder.
    ArtifactCreated => "artifact.created",
    /// A run paused at a gate.
    GateWaiting => "gate.waiting",
    /// A reviewer approved a gate.
    GateApproved => "gate.approved",
    /// A reviewer rejected a gate.
    GateRejected => "gate.rejected",
    /// A gate's deadline passed.
    GateExpired => "gate.expired",
    /// A run was cancelled.
    RunCancelled => "run.cancelled",
    /// A run was found mid-step after a restart.
    RunInterrupted => "run.interrupted",
    /// A run reached a final status.
    WorkflowCompleted => "workflow.completed",
    /// A webhook delivery gave up.
    WebhookFailed => "webhook.failed",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as published on the bus and written to `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: String,
    /// A unique id (UUIDv7).
    pub id: String,
    /// Position in the run's events: 1 for the first, then +1 each.
    pub seq: u64,
    /// The event type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened (RFC 3339).
    pub time: jiff::Timestamp,
    /// The run.
    pub run_id: String,
    /// The workflow key.
    pub workflow: String,
    /// The id of the HTTP request that started the run, if any.
    pub request_id: Option<String>,
    /// The type's data (see [`EventData`]).
    pub data: Value,
}

/// Counts of a run's steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepCounts {
    /// Steps in the workflow.
    pub total: u32,
    /// Steps that succeeded.
    pub passed: u32,
    /// Steps that failed.
    pub failed: u32,
    /// Steps skipped by their condition.
    pub skipped: u32,
}

/// `run.queued` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunQueued {
    /// What started the run (`api`, `cli`, `webhook`, `schedule`).
    pub trigger: String,
}

/// `workflow.started` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStarted {
    /// The workflow's display name.
    pub name: String,
    /// What started the run.
    pub trigger: String,
    /// The step ids, in order.
    pub steps: Vec<String>,
}

/// `step.started` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepStarted {
    /// The step id.
    pub step_id: String,
    /// The step type.
    pub step_type: String,
    /// Position in the workflow, from 0.
    pub index: u32,
}

/// `step.retrying` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepRetrying {
    /// The step id.
    pub step_id: String,
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// The attempt that follows.
    pub next_attempt: u32,
    /// The wait before it.
    pub delay_ms: u64,
    /// Why the attempt failed.
    pub error: String,
}

/// `step.completed` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepCompleted {
    /// The step id.
    pub step_id: String,
    /// The step type.
    pub step_type: String,
    /// Position in the workflow, from 0.
    pub index: u32,
    /// Whether the step succeeded.
    pub success: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time over all attempts.
    pub duration_ms: u64,
    /// How many attempts were made.
    pub attempts: u32,
}

/// `step.skipped` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepSkipped {
    /// The step id.
    pub step_id: String,
    /// The step type.
    pub step_type: String,
    /// Position in the workflow, from 0.
    pub index: u32,
    /// The condition that was false.
    pub condition: String,
}

/// `failure.detected` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FailureDetected {
    /// The step whose data holds the failures.
    pub step_id: String,
    /// How many failures.
    pub count: u32,
    /// The failures, as the step reported them.
    pub failures: Vec<Value>,
}

/// `artifact.created` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactCreated {
    /// The step that produced it.
    pub step_id: String,
    /// The file name under `data_dir/runs/<run_id>/`.
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// `gate.waiting` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateWaiting {
    /// The gate step id.
    pub gate_id: String,
    /// Position in the workflow, from 0.
    pub index: u32,
    /// Shown to the reviewer.
    pub message: Option<String>,
    /// The earlier step whose data the reviewer may edit.
    pub artifact: Option<String>,
    /// When the gate times out (RFC 3339); absent waits forever.
    pub deadline: Option<String>,
}

/// `gate.approved` and `gate.rejected` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateDecided {
    /// The gate step id.
    pub gate_id: String,
    /// Who decided (an API key id).
    pub by: String,
    /// The reviewer's comment.
    pub comment: Option<String>,
    /// The RFC 6902 JSON Patch applied to the gate's artifact, if any.
    pub patch: Option<Value>,
}

/// `gate.expired` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateExpired {
    /// The gate step id.
    pub gate_id: String,
    /// The decision taken at the deadline (`approve` or `reject`).
    pub decision: String,
    /// Who decided: always `timeout`.
    pub by: String,
    /// Why: the deadline that passed.
    pub comment: Option<String>,
    /// Always absent: nobody edited the artifact.
    pub patch: Option<Value>,
}

/// `run.cancelled` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCancelled {
    /// The step that was stopped, if one was running.
    pub step_id: Option<String>,
}

/// `run.interrupted` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunInterrupted {
    /// The step that was running when the process stopped, if known.
    pub step_id: Option<String>,
    /// Why the run is considered interrupted.
    pub reason: String,
}

/// `workflow.completed` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowCompleted {
    /// The final status (`succeeded`, `failed`, `rejected`, `cancelled`, `interrupted`).
    pub status: String,
    /// Whether the run succeeded.
    pub success: bool,
    /// Wall time from start to finish.
    pub duration_ms: u64,
    /// Step counts.
    pub summary: StepCounts,
    /// Why the run did not succeed.
    pub error: Option<String>,
}

/// `webhook.failed` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookFailed {
    /// The webhook URL (credentials redacted).
    pub url: String,
    /// The event that could not be delivered.
    pub event_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// The data of an event, one variant per [`EventType`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventData {
    /// `run.queued`.
    RunQueued(RunQueued),
    /// `workflow.started`.
    WorkflowStarted(WorkflowStarted),
    /// `step.started`.
    StepStarted(StepStarted),
    /// `step.retrying`.
    StepRetrying(StepRetrying),
    /// `step.completed`.
    StepCompleted(StepCompleted),
    /// `step.skipped`.
    StepSkipped(StepSkipped),
    /// `failure.detected`.
    FailureDetected(FailureDetected),
    /// `artifact.created`.
    ArtifactCreated(ArtifactCreated),
    /// `gate.waiting`.
    GateWaiting(GateWaiting),
    /// `gate.approved`.
    GateApproved(GateDecided),
    /// `gate.rejected`.
    GateRejected(GateDecided),
    /// `gate.expired`.
    GateExpired(GateExpired),
    /// `run.cancelled`.
    RunCancelled(RunCancelled),
    /// `run.interrupted`.
    RunInterrupted(RunInterrupted),
    /// `workflow.completed`.
    WorkflowCompleted(WorkflowCompleted),
    /// `webhook.failed`.
    WebhookFailed(WebhookFailed),
}

impl EventData {
    /// The event type of this data.
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::RunQueued(_) => EventType::RunQueued,
            EventData::WorkflowStarted(_) => EventType::WorkflowStarted,
            EventData::StepStarted(_) => EventType::StepStarted,
            EventData::StepRetrying(_) => EventType::StepRetrying,
            EventData::StepCompleted(_) => EventType::StepCompleted,
            EventData::StepSkipped(_) => EventType::StepSkipped,
            EventData::FailureDetected(_) => EventType::FailureDetected,
            EventData::ArtifactCreated(_) => EventType::ArtifactCreated,
            EventData::GateWaiting(_) => EventType::GateWaiting,
            EventData::GateApproved(_) => EventType::GateApproved,
            EventData::GateRejected(_) => EventType::GateRejected,
            EventData::GateExpired(_) => EventType::GateExpired,
            EventData::RunCancelled(_) => EventType::RunCancelled,
            EventData::RunInterrupted(_) => EventType::RunInterrupted,
            EventData::WorkflowCompleted(_) => EventType::WorkflowCompleted,
            EventData::WebhookFailed(_) => EventType::WebhookFailed,
        }
    }

    /// The data as JSON.
    pub fn to_value(&self) -> Result<Value> {
        let value = match self {
            EventData::RunQueued(d) => serde_json::to_value(d),
            EventData::WorkflowStarted(d) => serde_json::to_value(d),
            EventData::StepStarted(d) => serde_json::to_value(d),
            EventData::StepRetrying(d) => serde_json::to_value(d),
            EventData::StepCompleted(d) => serde_json::to_value(d),
            EventData::StepSkipped(d) => serde_json::to_value(d),
            EventData::FailureDetected(d) => serde_json::to_value(d),
            EventData::ArtifactCreated(d) => serde_json::to_value(d),
            EventData::GateWaiting(d) => serde_json::to_value(d),
            EventData::GateApproved(d) | EventData::GateRejected(d) => serde_json::to_value(d),
            EventData::GateExpired(d) => serde_json::to_value(d),
            EventData::RunCancelled(d) => serde_json::to_value(d),
            EventData::RunInterrupted(d) => serde_json::to_value(d),
            EventData::WorkflowCompleted(d) => serde_json::to_value(d),
            EventData::WebhookFailed(d) => serde_json::to_value(d),
        }?;
        Ok(value)
    }
}

/// The envelope as documented by the JSON Schemas: an [`Event`] whose `data`
/// has the type `T`.
#[derive(Debug, Serialize, JsonSchema)]
struct EventSchema<T> {
    /// Always "1.0".
    schema_version: String,
    /// A unique id (UUIDv7).
    id: String,
    /// Position in the run's events: 1 for the first, then +1 each.
    seq: u64,
    /// The event type name.
    #[serde(rename = "type")]
    event_type: String,
    /// When the event happened (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    time: String,
    /// The run id.
    run_id: String,
    /// The workflow key.
    workflow: String,
    /// The id of the HTTP request that started the run, if any.
    request_id: Option<String>,
    /// The type's data.
    data: T,
}

/// The JSON Schema of every event type, keyed by type name, as kept in `docs/events/`.
pub fn event_schemas() -> Vec<(EventType, Value)> {
    fn schema<T: JsonSchema>(event_type: EventType) -> (EventType, Value) {
        let mut value = schemars::schema_for!(EventSchema<T>).to_value();
        if let Some(object) = value.as_object_mut() {
            object.insert("title".into(), Value::String(event_type.as_str().to_owned()));
            object.insert("$id".into(), Value::String(format!("{}.json", event_type.as_str())));
        }
        if let Some(ty) = value.pointer_mut("/properties/type") {
            *ty = serde_json::json!({ "description": "The event type name.", "const": event_type.as_str() });
        }
        if let Some(version) = value.pointer_mut("/properties/schema_version") {
            *version = serde_json::json!({ "description": "The envelope version.", "const": SCHEMA_VERSION });
        }
        (event_type, value)
    }
    EventType::ALL
        .iter()
        .map(|&t| match t {
            EventType::RunQueued => schema::<RunQueued>(t),
            EventType::WorkflowStarted => schema::<WorkflowStarted>(t),
            EventType::StepStarted => schema::<StepStarted>(t),
            EventType::StepRetrying => schema::<StepRetrying>(t),
            EventType::StepCompleted => schema::<StepCompleted>(t),
            EventType::StepSkipped => schema::<StepSkipped>(t),
            EventType::FailureDetected => schema::<FailureDetected>(t),
            EventType::ArtifactCreated => schema::<ArtifactCreated>(t),
            EventType::GateWaiting => schema::<GateWaiting>(t),
            EventType::GateApproved | EventType::GateRejected => schema::<GateDecided>(t),
            EventType::GateExpired => schema::<GateExpired>(t),
            EventType::RunCancelled => schema::<RunCancelled>(t),
            EventType::RunInterrupted => schema::<RunInterrupted>(t),
            EventType::WorkflowCompleted => schema::<WorkflowCompleted>(t),
            EventType::WebhookFailed => schema::<WebhookFailed>(t),
        })
        .collect()
}

/// What a [`Subscription`] receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// The subscriber fell behind and this many events were dropped for it;
    /// the engine never waits for a subscriber.
    Lagged(u64),
}

/// The in-process bus every event is published on.
///
/// Publishing never blocks: each subscriber has a bounded buffer and a slow one
/// lags (and is told by how much) instead of slowing runs. The bus also keeps
/// the last `event_log_size` events for late readers.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    recent_capacity: usize,
}

impl EventBus {
    /// A bus whose subscribers each buffer up to `capacity` events and which
    /// remembers the last `recent_capacity` events.
    pub fn new(capacity: usize, recent_capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            recent: Mutex::new(VecDeque::with_capacity(recent_capacity)),
            recent_capacity,
        }
    }

    /// Follows every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription { receiver: self.sender.subscribe() }
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<Arc<Event>> {
        match self.recent.lock() {
            Ok(recent) => recent.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    /// Publishes an event to every subscriber without waiting for any.
    pub fn publish(&self, event: Arc<Event>) {
        if self.recent_capacity > 0 {
            let mut recent = match self.recent.lock() {
                Ok(recent) => recent,
                Err(poisoned) => poisoned.into_inner(),
            };
            if recent.len() == self.recent_capacity {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(&event));
        }
        // An error only means nobody is subscribed right now.
        let _ = self.sender.send(event);
    }
}

/// A follower of the [`EventBus`].
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
}

impl Subscription {
    /// The next event, or how many were missed; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.receiver.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Received::Lagged(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The name of a run's event log in its folder.
pub(crate) const EVENTS_FILE: &str = "events.jsonl";

/// The registry of live logs is pruned of dead entries when it holds this
/// many, or twice as many as were alive at the last pruning, whichever is more.
const PRUNE_MIN: usize = 64;

/// How long the writer thread waits, once woken, before it writes: the
/// events runs emit meanwhile join the pending lines without waking the
/// thread again. Waking a waiting thread costs the emitting run about 8 µs
/// here (median, this VM), six times a 400-byte `write(2)`; handing a log to a
/// thread that sleeps costs tens of ns. Without this wait, 19 events 100 µs
/// apart cost a run ~320 µs; with it ~40 µs, and the file is at most a few ms
/// behind.
const GATHER: Duration = Duration::from_millis(2);

/// Room reserved in an empty buffer of pending lines: a burst of a few events
/// is then serialized without growing it.
const PENDING_CAPACITY: usize = 4096;

/// Locks a mutex, going on with the data of a poisoned one: every critical
/// section here leaves its data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine's writer of the runs' `events.jsonl` files: one thread
/// (`aegis-events`) that writes each run's pending lines behind the run, and
/// the registry of the run logs alive in this process, so that reopening a
/// run's log reuses the live one.
///
/// Dropping it closes the channel, which is the thread's signal to write out
/// what is queued and stop; the drop waits for it.
#[derive(Debug)]
pub(crate) struct EventLogs {
    wake: Arc<Wake>,
    registry: Mutex<Registry>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The way to the writer thread, shared by every run's [`RunEvents`]; empty
/// once the [`EventLogs`] are dropped.
#[derive(Debug)]
struct Wake(Mutex<Option<mpsc::Sender<Arc<RunLog>>>>);

impl Wake {
    /// Hands a log with pending lines to the writer thread; `false` when there
    /// is no thread any more.
    fn send(&self, log: Arc<RunLog>) -> bool {
        match lock(&self.0).as_ref() {
            Some(sender) => sender.send(log).is_ok(),
            None => false,
        }
    }
}

/// The run logs of this process by run id. An entry whose log is gone is
/// dead; dead entries are pruned as the map grows.
#[derive(Debug, Default)]
struct Registry {
    runs: HashMap<String, Weak<RunLog>>,
    prune_at: usize,
}

impl Registry {
    fn live(&self, run_id: &str) -> Option<Arc<RunLog>> {
        self.runs.get(run_id).and_then(Weak::upgrade)
    }

    fn insert(&mut self, run_id: &str, log: &Arc<RunLog>) {
        if self.runs.len() >= self.prune_at {
            self.runs.retain(|_, log| log.strong_count() > 0);
            self.prune_at = (self.runs.len() * 2).max(PRUNE_MIN);
        }
        self.runs.insert(run_id.to_owned(), Arc::downgrade(log));
    }
}

impl EventLogs {
    /// Starts the writer thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Arc<RunLog>>();
        let thread =
            std::thread::Builder::new().name("aegis-events".to_owned()).spawn(move || {
                // Ends when the channel closes (the engine is gone) and is drained.
                while let Ok(first) = receiver.recv() {
                    // Let bursts grow before writing: while this thread sleeps
                    // rather than waits on the channel, handing it a log costs
                    // a run nanoseconds instead of a thread wake-up.
                    std::thread::sleep(GATHER);
                    first.sync();
                    for log in receiver.try_iter() {
                        log.sync();
                    }
                }
            })?;
        Ok(Self::with(sender, Some(thread)))
    }

    fn with(
        sender: mpsc::Sender<Arc<RunLog>>,
        thread: Option<std::thread::JoinHandle<()>>,
    ) -> Self {
        Self {
            wake: Arc::new(Wake(Mutex::new(Some(sender)))),
            registry: Mutex::new(Registry::default()),
            thread,
        }
    }

    /// The log of a run that was just created: nothing of it is on disk, so
    /// `seq` starts at 0, and nothing is read or created now.
    pub(crate) fn create(&self, run_dir: &Path, run_id: &str) -> Arc<RunLog> {
        let log = Arc::new(RunLog::new(run_id, run_dir.join(EVENTS_FILE), 0));
        lock(&self.registry).insert(run_id, &log);
        log
    }

    /// The log of an existing run: the one alive in this process, which
    /// continues `seq` from memory; or else a new one that continues after the
    /// last event in `events.jsonl`. A log that is gone has nothing pending
    /// (the writer thread keeps it alive while it has), so the file is then
    /// complete. The file is read under the registry's lock, so that two
    /// opens of a run never both start from it.
    pub(crate) fn open(&self, run_dir: &Path, run_id: &str) -> Arc<RunLog> {
        let mut registry = lock(&self.registry);
        if let Some(log) = registry.live(run_id) {
            return log;
        }
        let path = run_dir.join(EVENTS_FILE);
        let seq = last_seq(&path);
        let log = Arc::new(RunLog::new(run_id, path, seq));
        registry.insert(run_id, &log);
        log
    }

    /// The log of a run, if one is alive in this process.
    pub(crate) fn live(&self, run_id: &str) -> Option<Arc<RunLog>> {
        lock(&self.registry).live(run_id)
    }

    /// Writes out the pending lines of every live log, on the calling thread.
    pub(crate) fn sync_all(&self) {
        let live: Vec<Arc<RunLog>> =
            lock(&self.registry).runs.values().filter_map(Weak::upgrade).collect();
        for log in live {
            log.sync();
        }
    }
}

impl Drop for EventLogs {
    fn drop(&mut self) {
        // The only sender: the thread drains the queue and stops. Logs that
        // outlive us write inline from now on.
        lock(&self.wake.0).take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            log::error!("the events.jsonl writer thread panicked");
        }
    }
}

/// One run's `events.jsonl`: the last `seq` given, the lines not written yet,
/// and the file, opened (creating the run's folder) on the first write.
#[derive(Debug)]
pub(crate) struct RunLog {
    run_id: String,
    path: PathBuf,
    state: Mutex<LogState>,
    file: Mutex<Option<File>>,
}

#[derive(Debug)]
struct LogState {
    seq: u64,
    pending: Vec<u8>,
}

impl RunLog {
    fn new(run_id: &str, path: PathBuf, seq: u64) -> Self {
        Self {
            run_id: run_id.to_owned(),
            path,
            state: Mutex::new(LogState { seq, pending: Vec::new() }),
            file: Mutex::new(None),
        }
    }

    /// Writes the pending lines to the file. Locks the file, then takes the
    /// pending lines under the state lock, then writes: whoever syncs (the
    /// writer thread or a reader) the lines reach the file in `seq` order,
    /// and once this returns every event emitted before the call is in the
    /// file. A failure is logged; those lines are lost to the file (they were
    /// published).
    pub(crate) fn sync(&self) {
        let mut file = lock(&self.file);
        let bytes = std::mem::take(&mut lock(&self.state).pending);
        if bytes.is_empty() {
            return;
        }
        if file.is_none() {
            match open_append(&self.path) {
                Ok(opened) => *file = Some(opened),
                Err(err) => {
                    log::error!(
                        "run_id={}: cannot open {}: {err}",
                        self.run_id,
                        self.path.display()
                    );
                    return;
                }
            }
        }
        if let Some(open) = file.as_mut()
            && let Err(err) = open.write_all(&bytes)
        {
            log::error!("run_id={}: cannot append to {}: {err}", self.run_id, self.path.display());
        }
    }
}

/// Opens a run's `events.jsonl` for appending, creating it and its folder.
fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// The events of one run: assigns `seq`, adds the line to the run's pending
/// lines and publishes, under one lock so that the file and the bus see the
/// same order. The engine's writer thread writes the lines behind the run.
#[derive(Debug)]
pub(crate) struct RunEvents {
    run_id: String,
    workflow: String,
    request_id: Option<String>,
    log: Arc<RunLog>,
    wake: Arc<Wake>,
    bus: Arc<EventBus>,
}

impl RunEvents {
    /// The events of a run whose log is `log` (from `EventLogs::create` for
    /// a new run, `EventLogs::open` for an existing one).
    pub(crate) fn new(
        logs: &EventLogs,
        log: Arc<RunLog>,
        run_id: &str,
        workflow: &str,
        request_id: Option<String>,
        bus: Arc<EventBus>,
    ) -> Self {
        Self {
            run_id: run_id.to_owned(),
            workflow: workflow.to_owned(),
            request_id,
            log,
            wake: Arc::clone(&logs.wake),
            bus,
        }
    }

    /// Emits one event: the next `seq`, its line added to the pending lines,
    /// published. Does no file I/O: the first event of a burst hands the log
    /// to the writer thread (or, once the engine is gone, writes inline).
    /// A line that cannot be encoded is logged, and the event still published.
    pub(crate) fn emit(&self, data: EventData) -> Arc<Event> {
        let event_type = data.event_type();
        let data = data.to_value().unwrap_or_else(|err| {
            log::error!("run_id={}: cannot encode {event_type} event: {err}", self.run_id);
            Value::Null
        });
        let (event, first) = {
            let mut state = lock(&self.log.state);
            state.seq += 1;
            let event = Arc::new(Event {
                schema_version: SCHEMA_VERSION.to_owned(),
                id: uuid::Uuid::now_v7().to_string(),
                seq: state.seq,
                event_type: event_type.as_str().to_owned(),
                time: jiff::Timestamp::now(),
                run_id: self.run_id.clone(),
                workflow: self.workflow.clone(),
                request_id: self.request_id.clone(),
                data,
            });
            let first = state.pending.is_empty();
            if first && state.pending.capacity() == 0 {
                state.pending.reserve(PENDING_CAPACITY);
            }
            let before = state.pending.len();
            match serde_json::to_writer(&mut state.pending, &*event) {
                Ok(()) => state.pending.push(b'\n'),
                Err(err) => {
                    state.pending.truncate(before);
                    log::error!(
                        "run_id={}: cannot encode event {} for {}: {err}",
                        self.run_id,
                        event.seq,
                        self.log.path.display()
                    );
                }
            }
            self.bus.publish(Arc::clone(&event));
            (event, first && !state.pending.is_empty())
        };
        // Lines were pending before this one: the writer has been told already.
        if first && !self.wake.send(Arc::clone(&self.log)) {
            self.log.sync();
        }
        event
    }
}

/// The `seq` of the last event in an `events.jsonl` file; 0 when there is none.
fn last_seq(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else { return 0 };
    let mut last = 0;
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        if let Ok(event) = serde_json::from_str::<Value>(&line)
            && let Some(seq) = event.get("seq").and_then(Value::as_u64)
        {
            last = last.max(seq);
        }
    }
    last
}

/// The events with `seq > after` in an `events.jsonl` file, in file order;
/// none when there is no file. A line that does not parse (one cut short by a
/// crash) is skipped with a warning.
pub(crate) fn read_events(path: &Path, after: u64) -> std::io::Result<Vec<Event>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut events = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(event) if event.seq > after => events.push(event),
            Ok(_) => {}
            Err(err) => {
                log::warn!("skipping line {} of {}: {err}", number + 1, path.display());
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(
        logs: &EventLogs,
        dir: &Path,
        run_id: &str,
        request_id: Option<String>,
        bus: Arc<EventBus>,
    ) -> RunEvents {
        RunEvents::new(logs, logs.create(dir, run_id), run_id, "wf", request_id, bus)
    }

    fn opened(
        logs: &EventLogs,
        dir: &Path,
        run_id: &str,
        request_id: Option<String>,
        bus: Arc<EventBus>,
    ) -> RunEvents {
        RunEvents::new(logs, logs.open(dir, run_id), run_id, "wf", request_id, bus)
    }

    #[test]
    fn event_types_match_the_configuration_list() {
        let ours: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(ours, aegis_config::EVENT_TYPES.to_vec());
        for name in aegis_config::EVENT_TYPES {
            assert_eq!(EventType::parse(name).map(EventType::as_str), Some(name));
        }
    }

    /// Engine-less logs whose "writer thread" is the test: it receives the
    /// wake-ups and syncs when it wants.
    fn manual_logs() -> (EventLogs, mpsc::Receiver<Arc<RunLog>>) {
        let (sender, receiver) = mpsc::channel();
        (EventLogs::with(sender, None), receiver)
    }

    /// A logger that keeps the error lines, to check what was logged.
    struct Captured(Mutex<Vec<String>>);

    impl log::Log for Captured {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Error
        }

        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                lock(&self.0).push(record.args().to_string());
            }
        }

        fn flush(&self) {}
    }

    static CAPTURED: Captured = Captured(Mutex::new(Vec::new()));

    /// The error lines logged so far in this process (by any test).
    fn logged_errors() -> Vec<String> {
        // Fails only when another logger is set; then nothing is captured.
        if log::set_logger(&CAPTURED).is_ok() {
            log::set_max_level(log::LevelFilter::Error);
        }
        lock(&CAPTURED.0).clone()
    }

    fn cancelled() -> EventData {
        EventData::RunCancelled(RunCancelled { step_id: None })
    }

    fn file_seqs(path: &Path) -> Vec<u64> {
        let text = std::fs::read_to_string(path).expect("events.jsonl");
        text.lines()
            .map(|line| serde_json::from_str::<Event>(line).expect("a whole event line").seq)
            .collect()
    }

    #[test]
    fn run_events_continue_seq_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = Arc::new(EventBus::new(16, 4));
        let logs = EventLogs::start().expect("writer thread");
        let log = created(&logs, dir.path(), "r1", None, Arc::clone(&bus));
        log.emit(EventData::RunQueued(RunQueued { trigger: "cli".into() }));
        log.emit(cancelled());
        drop(log);
        let log = opened(&logs, dir.path(), "r1", None, bus);
        let event = log.emit(cancelled());
        assert_eq!(event.seq, 3);
        drop(log);
        drop(logs);
        assert_eq!(file_seqs(&dir.path().join(EVENTS_FILE)), vec![1, 2, 3]);
    }

    #[test]
    fn a_new_runs_log_touches_no_file_until_the_writer_runs() {
        let root = tempfile::tempdir().expect("tempdir");
        let run_dir = root.path().join("runs").join("r1");
        let bus = Arc::new(EventBus::new(16, 0));
        let (logs, writer) = manual_logs();
        let events = created(&logs, &run_dir, "r1", None, bus);
        for _ in 0..3 {
            events.emit(cancelled());
        }
        assert!(!root.path().join("runs").exists(), "nothing is created before the writer runs");
        // One wake-up for the burst, not one per event.
        let woken = writer.try_recv().expect("the writer is woken");
        assert!(writer.try_recv().is_err());
        woken.sync();
        assert_eq!(file_seqs(&run_dir.join(EVENTS_FILE)), vec![1, 2, 3]);
        // The next burst wakes the writer again.
        events.emit(cancelled());
        events.emit(cancelled());
        writer.try_recv().expect("woken again").sync();
        assert!(writer.try_recv().is_err());
        assert_eq!(file_seqs(&run_dir.join(EVENTS_FILE)), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn reopening_a_live_log_continues_seq_from_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(EVENTS_FILE);
        std::fs::write(&path, "{\"seq\":7}\n").expect("write");
        let bus = Arc::new(EventBus::new(16, 0));
        let (logs, _writer) = manual_logs();
        let first = opened(&logs, dir.path(), "r", None, Arc::clone(&bus));
        assert_eq!(first.emit(cancelled()).seq, 8);
        // Were the file read again, the next seq would be 101.
        std::fs::write(&path, "{\"seq\":100}\n").expect("write");
        let second = opened(&logs, dir.path(), "r", Some("req".into()), bus);
        assert!(Arc::ptr_eq(&first.log, &second.log));
        let event = second.emit(cancelled());
        assert_eq!((event.seq, event.request_id.as_deref()), (9, Some("req")));
        assert_eq!(first.emit(cancelled()).seq, 10);
    }

    #[test]
    fn reopening_after_the_log_is_gone_continues_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = Arc::new(EventBus::new(16, 0));
        let logs = EventLogs::start().expect("writer thread");
        let events = created(&logs, dir.path(), "r", None, Arc::clone(&bus));
        for _ in 0..3 {
            events.emit(cancelled());
        }
        drop(events);
        // The writer thread keeps the log alive until its lines are written.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while logs.live("r").is_some() {
            assert!(std::time::Instant::now() < deadline, "the writer drains the log");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(file_seqs(&dir.path().join(EVENTS_FILE)), vec![1, 2, 3]);
        let events = opened(&logs, dir.path(), "r", None, bus);
        assert_eq!(events.emit(cancelled()).seq, 4);
    }

    #[tokio::test]
    async fn a_write_error_is_logged_and_events_are_still_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The run's folder is a regular file: neither it nor the log can be created.
        let run_dir = dir.path().join("r");
        std::fs::write(&run_dir, "not a folder").expect("write");
        let bus = Arc::new(EventBus::new(16, 0));
        let mut sub = bus.subscribe();
        logged_errors();
        let logs = EventLogs::start().expect("writer thread");
        let events = created(&logs, &run_dir, "r", None, bus);
        events.emit(cancelled());
        events.emit(cancelled());
        events.log.sync();
        events.emit(cancelled());
        drop(events);
        drop(logs);
        for seq in 1..=3 {
            match sub.recv().await {
                Some(Received::Event(e)) => assert_eq!(e.seq, seq),
                other => panic!("expected event {seq}, got {other:?}"),
            }
        }
        assert!(run_dir.is_file());
        let wanted = format!("run_id=r: cannot open {}", run_dir.join(EVENTS_FILE).display());
        assert!(
            logged_errors().iter().any(|line| line.starts_with(&wanted)),
            "{wanted:?} in {:?}",
            logged_errors()
        );
    }

    #[test]
    fn racing_syncs_keep_the_file_in_seq_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = Arc::new(EventBus::new(4, 0));
        let logs = EventLogs::start().expect("writer thread");
        let events = created(&logs, dir.path(), "r", None, bus);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..250 {
                        events.emit(cancelled());
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..200 {
                    events.log.sync();
                }
            });
        });
        events.log.sync();
        assert_eq!(file_seqs(&dir.path().join(EVENTS_FILE)), (1..=1000).collect::<Vec<_>>());
    }

    #[test]
    fn events_emitted_after_the_writer_is_gone_are_written_inline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = Arc::new(EventBus::new(4, 0));
        let logs = EventLogs::start().expect("writer thread");
        let events = created(&logs, dir.path(), "r", None, bus);
        drop(logs);
        events.emit(cancelled());
        assert_eq!(file_seqs(&dir.path().join(EVENTS_FILE)), vec![1]);
    }

    #[test]
    fn the_registry_forgets_dead_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (logs, _writer) = manual_logs();
        let kept = logs.create(dir.path(), "kept");
        for n in 0..1000 {
            drop(logs.create(dir.path(), &format!("r{n}")));
        }
        let registry = lock(&logs.registry);
        assert!(registry.runs.len() <= PRUNE_MIN, "{} entries", registry.runs.len());
        assert!(registry.live("kept").is_some_and(|log| Arc::ptr_eq(&log, &kept)));
    }

    #[test]
    fn read_events_skips_lines_that_do_not_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = Arc::new(EventBus::new(4, 0));
        let (logs, _writer) = manual_logs();
        let events = created(&logs, dir.path(), "r", None, bus);
        for _ in 0..3 {
            events.emit(cancelled());
        }
        events.log.sync();
        let path = dir.path().join(EVENTS_FILE);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"seq\":4,\"cut sh").expect("write");
        let seqs: Vec<u64> =
            read_events(&path, 1).expect("read").into_iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert!(read_events(&dir.path().join("none"), 0).expect("read").is_empty());
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_many_it_missed() {
        let bus = EventBus::new(2, 0);
        let mut sub = bus.subscribe();
        let dir = tempfile::tempdir().expect("tempdir");
        let (logs, _writer) = manual_logs();
        let log = created(&logs, dir.path(), "r", None, Arc::new(bus));
        for _ in 0..5 {
            log.emit(cancelled());
        }
        match sub.recv().await {
            Some(Received::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("expected lag, got {other:?}"),
        }
        match sub.recv().await {
            Some(Received::Event(e)) => assert_eq!(e.seq, 4),
            other => panic!("expected event, got {other:?}"),
        }
    }
}
