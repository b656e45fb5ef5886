//! The events a run emits: the envelope ([`Event`]), the typed data of every
//! event type ([`EventData`], matched on [`EventType`]), and their JSON
//! Schemas (`docs/events/`). Publishing lives in `crate::bus`; what makes an
//! event durable before anyone sees it, in `crate::ledger`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// The webhook's position in the configuration's `webhooks` list.
    pub webhook: u32,
    /// The webhook URL, without credentials.
    pub url: String,
    /// The delivery that gave up (see `GET /api/webhooks/deliveries`).
    pub delivery_id: String,
    /// The event that could not be delivered.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Attempts made.
    pub attempts: u32,
    /// The status code of the last attempt, when the receiver answered.
    pub status_code: Option<u16>,
    /// What went wrong on the last attempt.
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

impl EventData {
    /// Reads the data of an event of type `event_type` from its JSON, so an
    /// embedder can match on the variant and read typed fields.
    pub fn from_value(event_type: EventType, data: Value) -> Result<EventData> {
        use serde_json::from_value as read;
        Ok(match event_type {
            EventType::RunQueued => EventData::RunQueued(read(data)?),
            EventType::WorkflowStarted => EventData::WorkflowStarted(read(data)?),
            EventType::StepStarted => EventData::StepStarted(read(data)?),
            EventType::StepRetrying => EventData::StepRetrying(read(data)?),
            EventType::StepCompleted => EventData::StepCompleted(read(data)?),
            EventType::StepSkipped => EventData::StepSkipped(read(data)?),
            EventType::FailureDetected => EventData::FailureDetected(read(data)?),
            EventType::ArtifactCreated => EventData::ArtifactCreated(read(data)?),
            EventType::GateWaiting => EventData::GateWaiting(read(data)?),
            EventType::GateApproved => EventData::GateApproved(read(data)?),
            EventType::GateRejected => EventData::GateRejected(read(data)?),
            EventType::GateExpired => EventData::GateExpired(read(data)?),
            EventType::RunCancelled => EventData::RunCancelled(read(data)?),
            EventType::RunInterrupted => EventData::RunInterrupted(read(data)?),
            EventType::WorkflowCompleted => EventData::WorkflowCompleted(read(data)?),
            EventType::WebhookFailed => EventData::WebhookFailed(read(data)?),
        })
    }
}

impl Event {
    /// The event's type, when it is one this version knows (a newer server
    /// may send others).
    pub fn kind(&self) -> Option<EventType> {
        EventType::parse(&self.event_type)
    }

    /// The event's data, typed. Fails with [`Error::UnknownEventType`] for a
    /// type this version does not know, and with [`Error::Json`] when the
    /// data does not have its type's shape.
    pub fn typed(&self) -> Result<EventData> {
        let kind = self.kind().ok_or_else(|| Error::UnknownEventType(self.event_type.clone()))?;
        EventData::from_value(kind, self.data.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, data: Value) -> Event {
        Event {
            schema_version: SCHEMA_VERSION.to_owned(),
            id: "e".into(),
            seq: 1,
            event_type: event_type.into(),
            time: jiff::Timestamp::UNIX_EPOCH,
            run_id: "r".into(),
            workflow: "w".into(),
            request_id: None,
            data,
        }
    }

    #[test]
    fn an_event_reads_back_as_its_typed_data() {
        let completed = EventData::WorkflowCompleted(WorkflowCompleted {
            status: "failed".into(),
            success: false,
            duration_ms: 12,
            summary: StepCounts { total: 3, passed: 1, failed: 1, skipped: 1 },
            error: Some("step b failed".into()),
        });
        let read = event("workflow.completed", completed.to_value().unwrap());
        assert_eq!(read.kind(), Some(EventType::WorkflowCompleted));
        match read.typed().unwrap() {
            EventData::WorkflowCompleted(data) => {
                assert_eq!(
                    (data.summary.failed, data.error.as_deref()),
                    (1, Some("step b failed"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read.typed().unwrap(), completed);
        // A type this version does not know, and data of the wrong shape.
        let newer = event("run.teleported", Value::Null);
        assert_eq!(newer.kind(), None);
        assert!(matches!(newer.typed(), Err(Error::UnknownEventType(t)) if t == "run.teleported"));
        let broken = event("step.started", serde_json::json!({"step_id": 7}));
        assert!(matches!(broken.typed(), Err(Error::Json(_))));
    }

    #[test]
    fn event_types_match_the_configuration_list() {
        let ours: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(ours, aegis_config::EVENT_TYPES.to_vec());
        for name in aegis_config::EVENT_TYPES {
            assert_eq!(EventType::parse(name).map(EventType::as_str), Some(name));
        }
    }
}
