//! What every handler shares.

use std::sync::Arc;
use std::time::Instant;

use aegis_auth::Authenticator;
use aegis_config::Config;
use aegis_core::{Engine, RunHandle, RunOptions};

use crate::error::ApiError;
use crate::metrics::Metrics;
use aegis_history::HistoryBackend;

/// The application state behind `web::Data`.
pub struct AppState {
    engine: Engine,
    auth: Authenticator,
    started: Instant,
    runtime: Option<tokio::runtime::Handle>,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// Builds the state around a running engine (which holds the configuration and the
    /// history store).
    pub fn new(engine: Engine) -> AppState {
        let auth = Authenticator::new(engine.config().auth());
        let metrics = Metrics::new(&engine);
        AppState { engine, auth, started: Instant::now(), runtime: None, metrics }
    }

    /// Runs started through the API execute on this runtime instead of the HTTP worker
    /// that accepted the request, so they outlive the worker and shutdown can wait for
    /// them or record them interrupted.
    pub fn with_runtime(mut self, runtime: tokio::runtime::Handle) -> AppState {
        // The metrics follow the engine's events on the engine's runtime too.
        self.metrics.start(&runtime);
        self.runtime = Some(runtime);
        self
    }

    /// Submits a run on the engine's runtime.
    pub(crate) async fn submit(
        &self,
        workflow: &str,
        options: RunOptions,
    ) -> crate::error::Result<RunHandle> {
        let Some(runtime) = &self.runtime else {
            return Ok(self.engine.submit(workflow, options).await?);
        };
        let engine = self.engine.clone();
        let workflow = workflow.to_owned();
        let submitted = runtime.spawn(async move { engine.submit(&workflow, options).await });
        match submitted.await {
            Ok(result) => Ok(result?),
            Err(err) => Err(ApiError::Internal(format!("run submission failed: {err}"))),
        }
    }

    /// Runs `work` on the engine's runtime (or here, without one), so that
    /// what it spawns, such as a run resumed after a gate decision, outlives
    /// the HTTP worker like runs started through [`AppState::submit`].
    pub(crate) async fn on_engine<T, F, Fut>(&self, work: F) -> crate::error::Result<T>
    where
        F: FnOnce(Engine) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let engine = self.engine.clone();
        let Some(runtime) = &self.runtime else {
            return Ok(work(engine).await);
        };
        match runtime.spawn(work(engine)).await {
            Ok(result) => Ok(result),
            Err(err) => Err(ApiError::Internal(format!("engine task failed: {err}"))),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The history store.
    pub fn history(&self) -> &Arc<dyn HistoryBackend> {
        self.engine.history()
    }

    /// The `/metrics` figures.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The credential checker.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// Seconds since the state was built.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// A path under `server.base_path`, for links in responses.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.config().server().base_path())
    }
}
