//! The [`Step`] trait every step type implements, the context a step runs in,
//! and the registry of step types.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aegis_config::{Config, Service};
use aegis_history::Attempt;
use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::Value;

/// One step type: what a step of that type does when it runs.
///
/// The engine calls [`Step::execute`] once per attempt and takes care of
/// conditions, retries, timeouts, cancellation, events, artifacts and history.
/// The future may be dropped at any await point (timeout or cancellation), so
/// an implementation should not leave work half-done across awaits; child
/// processes should be spawned with `kill_on_drop`.
///
/// ```
/// use aegis_core::{Step, StepContext, StepError};
/// use async_trait::async_trait;
/// use serde_json::{json, Value};
///
/// #[derive(Debug)]
/// struct Hello;
///
/// #[async_trait]
/// impl Step for Hello {
///     async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
///         Ok(json!({ "greeting": format!("hello from {}", ctx.step().id()) }))
///     }
/// }
/// ```
#[async_trait]
pub trait Step: Send + Sync + fmt::Debug {
    /// Runs one attempt and returns the step's data.
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError>;
}

/// Why one attempt of a step failed, as recorded in the run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepError {
    message: String,
    data: Option<Value>,
}

impl StepError {
    /// A failure with a message (a lowercase fragment, like "connection refused").
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), data: None }
    }

    /// Keeps data with the failure (the response body, the command's exit code, ...).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The data kept with the failure.
    pub fn data(&self) -> Option<&Value> {
        self.data.as_ref()
    }

    pub(crate) fn into_parts(self) -> (String, Option<Value>) {
        (self.message, self.data)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

/// What a finished (or skipped) step left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// The step id.
    pub step_id: String,
    /// The step type.
    pub step_type: String,
    /// Position in the workflow, from 0.
    pub index: u32,
    /// Whether it succeeded; a skipped step counts as successful.
    pub success: bool,
    /// Whether it was skipped by its condition.
    pub skipped: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// The step's data (`null` when skipped).
    pub data: Value,
    /// Wall time over all attempts.
    pub duration_ms: u64,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

impl StepOutcome {
    /// The entries of the data's `failures` array (empty when there is none).
    pub fn failures(&self) -> &[Value] {
        self.data.get("failures").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    /// Whether the step failed (not skipped, not successful).
    pub fn failed(&self) -> bool {
        !self.success
    }
}

/// Everything a step can see while it runs.
#[derive(Debug)]
pub struct StepContext {
    pub(crate) run_id: String,
    pub(crate) workflow: String,
    pub(crate) step: aegis_config::StepDef,
    pub(crate) index: u32,
    pub(crate) attempt: u32,
    pub(crate) earlier: Arc<IndexMap<String, StepOutcome>>,
    pub(crate) config: Arc<Config>,
    pub(crate) client: reqwest::Client,
    pub(crate) run_dir: PathBuf,
    pub(crate) artifacts: Mutex<Vec<(String, u64)>>,
}

impl StepContext {
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The workflow key.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// The step's configuration.
    pub fn step(&self) -> &aegis_config::StepDef {
        &self.step
    }

    /// The step's position in the workflow, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The attempt being made, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The outcome of an earlier step of this run, by id.
    pub fn earlier(&self, step_id: &str) -> Option<&StepOutcome> {
        self.earlier.get(step_id)
    }

    /// The outcomes of the steps finished before this one, in workflow order.
    pub fn earlier_steps(&self) -> impl Iterator<Item = &StepOutcome> {
        self.earlier.values()
    }

    /// The whole configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The service the step names, if any.
    pub fn service(&self) -> Option<&Service> {
        self.step.service().and_then(|key| self.config.services().get(key))
    }

    /// The engine's shared HTTP client (connection pooling, rustls).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The run's folder, `data_dir/runs/<run_id>/`. It may not exist yet (the
    /// engine creates it when it first writes the run's `events.jsonl`, behind
    /// the run): create it before writing into it, or use
    /// [`StepContext::write_artifact`], which does.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Writes a file into the run's folder; the engine announces it with an
    /// `artifact.created` event when the step finishes.
    ///
    /// `name` must be a name the artifact list and download serve
    /// ([`crate::is_artifact_name`]: 1-255 ASCII letters, digits, `.`, `_`,
    /// `-`), and neither `events.jsonl` nor `<step_id>.json` of a step of the
    /// workflow, which the engine serves itself. A symbolic link already
    /// there is not followed: the write fails instead.
    pub async fn write_artifact(&self, name: &str, contents: &[u8]) -> Result<PathBuf, StepError> {
        use tokio::io::AsyncWriteExt as _;
        let (mut file, path) = self.create_artifact(name).await?;
        let cannot = |err: std::io::Error| {
            StepError::new(format!("cannot write artifact {}: {err}", path.display()))
        };
        file.write_all(contents).await.map_err(cannot)?;
        file.flush().await.map_err(cannot)?;
        self.note_artifact(name, contents.len() as u64);
        Ok(path)
    }

    /// Creates (or truncates) the artifact file `name` for writing, with the
    /// checks of [`StepContext::write_artifact`]; announce it with
    /// [`StepContext::note_artifact`] once written.
    pub(crate) async fn create_artifact(
        &self,
        name: &str,
    ) -> Result<(tokio::fs::File, PathBuf), StepError> {
        let step_ids = self
            .config
            .workflows()
            .get(&self.workflow)
            .into_iter()
            .flat_map(|w| w.steps().iter().map(aegis_config::StepDef::id));
        if let Some(reason) = crate::artifact::refuse_step_artifact(name, step_ids) {
            return Err(StepError::new(format!("invalid artifact name {name:?}: {reason}")));
        }
        let path = self.run_dir.join(name);
        match crate::artifact::create_file(&self.run_dir, name).await {
            Ok(file) => Ok((file, path)),
            Err(err) => {
                Err(StepError::new(format!("cannot write artifact {}: {err}", path.display())))
            }
        }
    }

    /// Records an artifact file the step wrote, for its `artifact.created` event.
    pub(crate) fn note_artifact(&self, name: &str, size: u64) {
        let mut artifacts = match self.artifacts.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        artifacts.push((name.to_owned(), size));
    }

    pub(crate) fn take_artifacts(&self) -> Vec<(String, u64)> {
        match self.artifacts.lock() {
            Ok(mut a) => std::mem::take(&mut *a),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// The step types an engine knows, by type name.
#[derive(Debug, Clone)]
pub struct StepRegistry {
    steps: HashMap<String, Arc<dyn Step>>,
}

impl Default for StepRegistry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl StepRegistry {
    /// A registry without any step type.
    pub fn empty() -> Self {
        Self { steps: HashMap::new() }
    }

    /// Registers (or replaces) a step type.
    pub fn register(&mut self, type_name: impl Into<String>, step: Arc<dyn Step>) -> &mut Self {
        self.steps.insert(type_name.into(), step);
        self
    }

    /// The step type registered under a name.
    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn Step>> {
        self.steps.get(type_name)
    }

    /// Whether a type name is registered.
    pub fn contains(&self, type_name: &str) -> bool {
        self.steps.contains_key(type_name)
    }
}
