//! Shared helpers: a configuration in a temporary folder and an engine over it.

use std::path::Path;
use std::sync::Arc;

use aegis_config::Config;
use aegis_core::{ArtifactBody, Engine, Event, RunOptions, RunSummary};
use aegis_history::{HistoryBackend, InMemoryHistory, Trigger};

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) engine: Engine,
    pub(crate) history: Arc<dyn HistoryBackend>,
}

impl Env {
    pub(crate) async fn run(&self, workflow: &str) -> Arc<RunSummary> {
        self.engine.run(workflow, RunOptions::new(Trigger::Cli)).await.expect("run")
    }

    /// The events of a run as written to its `events.jsonl`; every line must
    /// be a whole event.
    pub(crate) fn events(&self, run_id: &str) -> Vec<Event> {
        // The file is written behind the run: write out what is pending first.
        self.engine.sync_events();
        let path = self.dir.path().join("data/runs").join(run_id).join("events.jsonl");
        let text = std::fs::read_to_string(&path).expect("events.jsonl");
        text.lines().map(|l| serde_json::from_str(l).expect("event json")).collect()
    }
}

pub(crate) fn load(dir: &Path, yaml: &str) -> Config {
    std::fs::write(dir.join(".aegis.yaml"), yaml).expect("write config");
    aegis_config::LoadOptions::new().cwd(dir).load().expect("valid config")
}

/// An engine over `yaml` (which should set no `data_dir`: it is `./data`).
pub(crate) fn env(yaml: &str) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load(dir.path(), &format!("data_dir: ./data\n{yaml}"));
    let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
    let engine = Engine::builder(config, Arc::clone(&history)).build().expect("engine");
    Env { dir, engine, history }
}

/// An artifact's whole contents (tests only: the server streams files).
pub(crate) fn body_bytes(body: ArtifactBody) -> Vec<u8> {
    match body {
        ArtifactBody::Bytes(bytes) => bytes.to_vec(),
        ArtifactBody::File { mut file, .. } => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut out).expect("read artifact file");
            out
        }
        other => panic!("unexpected artifact body {other:?}"),
    }
}
