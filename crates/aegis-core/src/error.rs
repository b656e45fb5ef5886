//! The engine's error type.

use std::path::PathBuf;

/// Why an engine operation failed.
///
/// A step that fails is not an error of the engine: it is recorded in the run
/// (see [`crate::StepError`]). These errors are about the engine itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The workflow named in a request does not exist in the configuration.
    #[error("unknown workflow {0:?}")]
    UnknownWorkflow(String),
    /// A workflow uses a step type no [`crate::Step`] is registered for.
    #[error(
        "workflow {workflow:?} step {step:?} has type {type_name:?}, which no step is registered for"
    )]
    UnknownStepType {
        /// The workflow key.
        workflow: String,
        /// The step id.
        step: String,
        /// The unregistered type name.
        type_name: String,
    },
    /// The queue of runs waiting for a slot is full (the API answers 429).
    #[error("run queue is full ({limit} runs waiting)")]
    QueueFull {
        /// `server.max_queued_runs`.
        limit: usize,
    },
    /// The engine is shutting down and accepts no new runs (the API answers 503).
    #[error("the server is shutting down and accepts no new runs")]
    ShuttingDown,
    /// No run with this id is known.
    #[error("unknown run {0}")]
    UnknownRun(String),
    /// The run's workflow has no gate step with this id (the API answers 404).
    #[error("run {run_id} has no gate {gate_id:?}")]
    UnknownGate {
        /// The run id.
        run_id: String,
        /// The gate step id asked for.
        gate_id: String,
    },
    /// A decision for a run that is not waiting at a gate (the API answers 409).
    #[error("run {run_id} is {status}, not waiting at a gate")]
    RunNotWaiting {
        /// The run id.
        run_id: String,
        /// Its status.
        status: String,
    },
    /// The gate is not waiting for a decision: it was decided already, or the
    /// run waits at another gate (the API answers 409).
    #[error("gate {gate_id} of run {run_id} is not waiting for a decision")]
    GateNotPending {
        /// The run id.
        run_id: String,
        /// The gate step id.
        gate_id: String,
    },
    /// The run already ended: it cannot be cancelled (HTTP 409).
    #[error("run {run_id} already ended {status}")]
    RunFinished {
        /// The run id.
        run_id: String,
        /// Its final status.
        status: String,
    },

    /// A reviewer's patch is not a JSON Patch array or does not apply to the
    /// artifact; nothing was changed (the API answers 422).
    #[error("invalid patch: {0}")]
    InvalidPatch(String),
    /// A run's task ended without reporting how the run ended (it panicked).
    #[error("run {0} ended without a result")]
    RunAborted(String),
    /// An event of a type this version does not know.
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    /// A cancel kept losing races to other changes of the run (each retry
    /// follows someone else's commit); asking again is safe.
    #[error("run {0} kept changing while it was being cancelled; try again")]
    Contended(String),
    /// [`crate::EngineBuilder::build`] was called outside a tokio runtime
    /// without [`crate::EngineBuilder::runtime`].
    #[error("the engine needs a tokio runtime: build it on one or pass one to the builder")]
    NoRuntime,
    /// The history store failed.
    #[error("history store failed")]
    History(#[from] aegis_history::Error),
    /// A file under `data_dir` could not be read or written.
    #[error("cannot write {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An event or artifact could not be encoded as JSON.
    #[error("cannot encode json")]
    Json(#[from] serde_json::Error),
    /// A service answered a call with a redirect to another scheme, host or port,
    /// which is not followed so the service's key is not sent on.
    #[error("redirected to {to} (another origin); not followed")]
    CrossOriginRedirect {
        /// Where the redirect pointed (a password in it shown as `***`).
        to: String,
    },
    /// A service redirected a call more times than are followed.
    #[error("more than {limit} redirects; not followed")]
    TooManyRedirects {
        /// How many are followed.
        limit: usize,
    },
    /// The shared HTTP client could not be built.
    #[error("cannot build the http client")]
    HttpClient(#[source] reqwest::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
