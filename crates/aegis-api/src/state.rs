//! What every handler shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_auth::Authenticator;
use aegis_config::Config;
use aegis_core::{Engine, ServiceHealth};
use tokio::sync::{Mutex, watch};

use crate::metrics::Metrics;
use crate::middleware::RequestLog;
use aegis_history::HistoryBackend;

/// The application state behind `web::Data`.
pub struct AppState {
    engine: Engine,
    auth: Authenticator,
    started: Instant,
    health: Mutex<Option<CheckedServices>>,
    closing: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    request_log: Option<Arc<dyn RequestLog>>,
}

/// How old the service checks behind `GET /api/services` and `/health/status` may be.
pub(crate) const HEALTH_MAX_AGE: Duration = Duration::from_secs(2);

/// The last round of service checks and when it was taken.
struct CheckedServices {
    at: Instant,
    services: Arc<[ServiceHealth]>,
}

impl AppState {
    /// Builds the state around a running engine (which holds the configuration and the
    /// history store).
    pub fn new(engine: Engine) -> AppState {
        let auth = Authenticator::new(engine.config().auth());
        let metrics = Metrics::new(&engine);
        // The metrics follow the engine's events on the engine's runtime.
        metrics.start(engine.runtime());
        AppState {
            engine,
            auth,
            started: Instant::now(),
            health: Mutex::new(None),
            closing: watch::Sender::new(false),
            metrics,
            request_log: None,
        }
    }

    /// Sends the request lines to `sink` instead of the `log` crate (still only when
    /// the `aegis::request` target is enabled at `info`).
    pub fn with_request_log(mut self, sink: Arc<dyn RequestLog>) -> AppState {
        self.request_log = Some(sink);
        self
    }

    /// Where request lines go, when not to the `log` crate.
    pub(crate) fn request_log(&self) -> Option<&dyn RequestLog> {
        self.request_log.as_deref()
    }

    /// The `/metrics` figures.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every service's health from checks at most [`HEALTH_MAX_AGE`] old. One caller
    /// checks while the others wait for its result, so concurrent (anonymous) reads
    /// cause one round of outbound calls, not one each.
    pub(crate) async fn service_health(&self) -> Arc<[ServiceHealth]> {
        let mut cached = self.health.lock().await;
        if let Some(checked) = cached.as_ref()
            && checked.at.elapsed() <= HEALTH_MAX_AGE
        {
            return Arc::clone(&checked.services);
        }
        let services: Arc<[ServiceHealth]> = self.engine.check_services().await.into();
        *cached = Some(CheckedServices { at: Instant::now(), services: Arc::clone(&services) });
        services
    }

    /// Ends every open event stream now and refuses new ones: called when shutdown
    /// starts, so SSE clients do not hold the server's graceful stop.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`AppState::close_streams`] was called.
    pub(crate) fn streams_closed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the state is gone, which also ends the stream.
            let _ = closing.wait_for(|closed| *closed).await;
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
