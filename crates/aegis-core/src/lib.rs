//! The Aegis pipeline engine: runs workflows of steps against QA services,
//! records them in history and publishes their events.
//!
//! ```
//! use std::sync::Arc;
//! use aegis_config::StepKind;
//! use aegis_core::{Engine, Received, RunOptions, Step, StepContext, StepError};
//! use aegis_history::{HistoryBackend, InMemoryHistory, Trigger};
//! use serde_json::{json, Value};
//!
//! // A step type of our own, registered under the name `greet`.
//! #[derive(Debug)]
//! struct Greet;
//!
//! #[async_trait::async_trait]
//! impl Step for Greet {
//!     async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
//!         let StepKind::Custom(custom) = ctx.step().kind() else {
//!             return Err(StepError::new("greet needs `with:` options"));
//!         };
//!         Ok(json!({ "hello": custom.with()["name"] }))
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join(".aegis.yaml"), "
//! data_dir: ./data
//! workflows:
//!   hello:
//!     steps:
//!       - { id: greet, type: greet, with: { name: world } }
//!       - { id: report, type: report }
//! ")?;
//! let config = aegis_config::LoadOptions::new().cwd(dir.path()).step_types(["greet"]).load()?;
//! let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
//! let engine = Engine::builder(config, history).step_type("greet", Arc::new(Greet)).build()?;
//!
//! let mut events = engine.subscribe();
//! let summary = engine.run("hello", RunOptions::new(Trigger::Cli)).await?;
//! assert!(summary.succeeded());
//! assert_eq!(summary.step("greet").map(|s| s.data.clone()), Some(json!({ "hello": "world" })));
//! // Every run's events start with `run.queued`, seq 1, and are also in
//! // data_dir/runs/<run_id>/events.jsonl (see `Engine::run_events`).
//! if let Some(Received::Event(event)) = events.recv().await {
//!     assert_eq!((event.event_type.as_str(), event.seq), ("run.queued", 1));
//! }
//! # Ok(())
//! # })
//! # }
//! ```
//!
//! # Semantics
//!
//! * **Steps.** A step succeeds when its call succeeds: a 2xx answer (or one of
//!   `expect_status`), or exit code 0 for `command`. A `command` with `junit:`
//!   succeeds when its report parses, whatever its exit code: test failures are
//!   data (`failures`), as for `test`. A missing or malformed report fails the
//!   step with an error naming the file.
//! * **Conditions** look at the steps before the step (for a parallel batch,
//!   before the batch): `on_success` (the default) holds when every earlier step
//!   succeeded or was skipped; `on_failure` when one failed; `has_failures` when
//!   one's data has a non-empty `failures` array; `always` always. A step whose
//!   condition is false is skipped (`step.skipped`), which counts as success.
//! * **Retries.** A step makes up to `retries + 1` attempts; the wait before
//!   attempt `n + 1` is `retry_delay * 2^(n-1)`, capped at [`MAX_RETRY_DELAY`].
//!   Every attempt is recorded. Each attempt is limited by the step's `timeout`
//!   ("timed out after 60s", distinct from "connection refused" and
//!   "HTTP 500: `<body>`").
//! * **Parallel batches.** Consecutive `parallel: true` steps run together;
//!   a gate always runs alone.
//! * **Runs.** A run succeeds when every step succeeded or was skipped. Ids are
//!   UUIDv7. At most `server.max_concurrent_runs` runs execute at once, and at
//!   most `concurrency` of one workflow; the others wait in a queue of at most
//!   `server.max_queued_runs` runs, beyond which [`Engine::submit`] fails with
//!   [`Error::QueueFull`]. Cancelling stops the current step at once (its future
//!   is dropped; a command's process is killed).
//! * **Gates.** A run that reaches a gate is recorded as `waiting` with a pending
//!   gate and its execution ends, freeing its slot. [`Engine::decide`] applies
//!   the reviewer's RFC 6902 patch to the gate's artifact (refusing, with nothing
//!   changed, a patch that does not apply), records the decision (exactly one
//!   wins per pending gate), then resumes the run after the gate (approve),
//!   again from `retry_from` with the next `execution` number (reject), or ends
//!   it `rejected`. A gate with a `timeout` is decided by its `on_timeout` at the
//!   deadline, by `timeout`; timers are re-armed from the stored deadline by
//!   [`Engine::recover`], which decides deadlines that passed meanwhile.
//! * **Durable first.** Every change of a run (its start, a step started or
//!   finished, the gate reached, a decision, a cancel, its end) is a command
//!   of one state machine (`lifecycle`), committed to history as a
//!   compare-and-set on the run's status together with the events it emits,
//!   in one transaction, before the run acts on it and before anyone hears
//!   of it: of two competing changes exactly one wins ([`Error::GateNotPending`],
//!   [`Error::RunNotWaiting`], [`Error::RunFinished`] for the other), and a run
//!   ends exactly once, with `workflow.completed` as its last event. A step's
//!   result commits with the next step's start (or the run's end), so a run
//!   of `n` steps costs `n + 2` commits.
//! * **Events** have a per-run `seq` from 1, contiguous and never reused; they
//!   are rows of the history ledger ([`Engine::run_events`] reads it), then
//!   published on the bus, then appended to `data_dir/runs/<run_id>/events.jsonl`
//!   by one writer thread (the file may trail the ledger by moments, never lead
//!   it; [`Engine::sync_events`] writes out what is pending, and
//!   [`Engine::recover`] completes the files after a crash). Publishing never
//!   waits for a subscriber.
//! * **Artifacts.** Each step's data is served as `<step_id>.json` from
//!   history; `command` adds `<step_id>.stdout.txt` and `.stderr.txt` in the
//!   run's folder.
//! * **Recovery.** [`Engine::recover`] marks runs left `running` as
//!   `interrupted` (they are never executed again), restarts runs left
//!   `queued`, leaves `waiting` runs waiting (deciding gates whose deadline
//!   passed), and marks a run whose records cannot be read `failed`.
//! * **Runtime.** The engine runs every task on the runtime it was built on
//!   ([`EngineBuilder::runtime`]), whatever runtime calls it.
//!
//! # Modules
//!
//! Layers, each using only those below it (a test checks there is no cycle):
//! `engine` (the public [`Engine`]) → `gate`, `cancel`, `folder`, `dispatch`
//! (webhook delivery) → `run` (one execution) → `state` (what the parts
//! share) → `ledger`, `lifecycle`, `summary`, `step`, `http` → `webhook` (the
//! outbox rows and signatures), `bus`, `event`, `artifact`, `patch`, `limits`.

#![warn(missing_docs)]

mod artifact;
mod bus;
mod cancel;
mod cpu;
mod dispatch;
mod engine;
mod error;
mod event;
mod folder;
mod gate;
mod health;
mod http;
mod ledger;
mod lifecycle;
pub mod limits;
mod patch;
mod run;
mod state;
mod step;
mod steps;
mod summary;
#[cfg(feature = "test-support")]
pub mod testing;
mod webhook;

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): internal
/// parsers that have no public API of their own. Not part of the stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a JUnit XML report as a `command` step with `junit:` does, into the
    /// step data it would record.
    pub fn parse_junit(xml: &str) -> Result<serde_json::Value, String> {
        crate::steps::junit::parse(xml).map(|report| report.to_data(Some(0)))
    }
}

pub use aegis_history::Attempt;
pub use artifact::{Artifact, ArtifactBody, is_artifact_name};
pub use bus::{EventBus, RECENT_MAX_BYTES, Received, Subscription, event_size};
pub use engine::{Engine, EngineBuilder, Recovery, RunOptions, Shutdown};
pub use error::{Error, Result};
pub use event::{
    ArtifactCreated, Event, EventData, EventType, FailureDetected, GateDecided, GateExpired,
    GateWaiting, RunCancelled, RunInterrupted, RunQueued, SCHEMA_VERSION, StepCompleted,
    StepCounts, StepRetrying, StepSkipped, StepStarted, WebhookFailed, WorkflowCompleted,
    WorkflowStarted, event_schemas,
};
pub use gate::{GateOutcome, GateRequest, TIMEOUT_DECIDER};
pub use health::{HEALTH_TIMEOUT, HealthStatus, ServiceHealth, check_service, check_services};
pub use http::build_client;
pub use patch::{MAX_PATCH_DEPTH, PatchRefusal, apply_patch};
pub use run::{MAX_RETRY_DELAY, RunHandle, retry_delay};
pub use step::{Step, StepContext, StepError, StepOutcome, StepRegistry};
pub use summary::RunSummary;
