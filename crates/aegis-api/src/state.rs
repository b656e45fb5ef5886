//! What every handler shares.

use std::sync::Arc;
use std::time::Instant;

use aegis_auth::Authenticator;
use aegis_config::Config;
use aegis_history::HistoryBackend;

/// The application state behind `web::Data`.
pub struct AppState {
    config: Arc<Config>,
    history: Arc<dyn HistoryBackend>,
    auth: Authenticator,
    started: Instant,
}

impl AppState {
    /// Builds the state from the loaded configuration and the opened history store.
    pub fn new(config: Arc<Config>, history: Arc<dyn HistoryBackend>) -> AppState {
        let auth = Authenticator::new(config.auth());
        AppState { config, history, auth, started: Instant::now() }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The history store.
    pub fn history(&self) -> &Arc<dyn HistoryBackend> {
        &self.history
    }

    /// The credential checker.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// Seconds since the state was built.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
