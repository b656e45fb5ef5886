//! Events: the envelope, the typed data of every event type, the in-process
//! bus and the per-run `events.jsonl` log.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, Result};

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

/// The events of one run: assigns `seq`, appends to `events.jsonl` and
/// publishes, in that order, under one lock so that the file and the bus see
/// the same order.
#[derive(Debug)]
pub(crate) struct RunEvents {
    run_id: String,
    workflow: String,
    request_id: Option<String>,
    path: PathBuf,
    bus: Arc<EventBus>,
    state: Mutex<RunLogState>,
}

#[derive(Debug)]
struct RunLogState {
    seq: u64,
    file: Option<std::fs::File>,
}

impl RunEvents {
    /// Opens (or creates) `events.jsonl` in `run_dir`, continuing after the
    /// last event already in it.
    pub(crate) fn open(
        run_dir: &Path,
        run_id: &str,
        workflow: &str,
        request_id: Option<String>,
        bus: Arc<EventBus>,
    ) -> Result<Self> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let path = run_dir.join("events.jsonl");
        let seq = last_seq(&path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            run_id: run_id.to_owned(),
            workflow: workflow.to_owned(),
            request_id,
            path,
            bus,
            state: Mutex::new(RunLogState { seq, file: Some(file) }),
        })
    }

    /// Emits one event. A failure to append to the file is logged, and the
    /// event is still published.
    pub(crate) fn emit(&self, data: EventData) -> Arc<Event> {
        let event_type = data.event_type();
        let data = data.to_value().unwrap_or_else(|err| {
            log::error!("run_id={}: cannot encode {event_type} event: {err}", self.run_id);
            Value::Null
        });
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
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
        if let Some(file) = state.file.as_mut() {
            let written =
                serde_json::to_vec(&*event).map_err(std::io::Error::other).and_then(|mut line| {
                    line.push(b'\n');
                    file.write_all(&line)
                });
            if let Err(err) = written {
                log::error!(
                    "run_id={}: cannot append to {}: {err}",
                    self.run_id,
                    self.path.display()
                );
            }
        }
        self.bus.publish(Arc::clone(&event));
        event
    }
}

/// The `seq` of the last event in an `events.jsonl` file; 0 when there is none.
fn last_seq(path: &Path) -> u64 {
    let Ok(file) = std::fs::File::open(path) else { return 0 };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_match_the_configuration_list() {
        let ours: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(ours, aegis_config::EVENT_TYPES.to_vec());
        for name in aegis_config::EVENT_TYPES {
            assert_eq!(EventType::parse(name).map(EventType::as_str), Some(name));
        }
    }

    #[test]
    fn run_events_continue_seq_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = Arc::new(EventBus::new(16, 4));
        let log = RunEvents::open(dir.path(), "r1", "wf", None, Arc::clone(&bus)).expect("open");
        log.emit(EventData::RunQueued(RunQueued { trigger: "cli".into() }));
        log.emit(EventData::RunCancelled(RunCancelled { step_id: None }));
        drop(log);
        let log = RunEvents::open(dir.path(), "r1", "wf", None, bus).expect("reopen");
        let event = log.emit(EventData::RunCancelled(RunCancelled { step_id: None }));
        assert_eq!(event.seq, 3);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_many_it_missed() {
        let bus = EventBus::new(2, 0);
        let mut sub = bus.subscribe();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RunEvents::open(dir.path(), "r", "wf", None, Arc::new(bus)).expect("open");
        for _ in 0..5 {
            log.emit(EventData::RunCancelled(RunCancelled { step_id: None }));
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
