//! What every handler shares.

use std::sync::Arc;
use std::time::Instant;

use aegis_auth::Authenticator;
use aegis_config::Config;
use aegis_core::Engine;

use aegis_history::HistoryBackend;

/// The application state behind `web::Data`.
pub struct AppState {
    engine: Engine,
    auth: Authenticator,
    started: Instant,
}

impl AppState {
    /// Builds the state around a running engine (which holds the configuration and the
    /// history store).
    pub fn new(engine: Engine) -> AppState {
        let auth = Authenticator::new(engine.config().auth());
        AppState { engine, auth, started: Instant::now() }
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
