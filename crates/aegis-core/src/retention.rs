//! Retention's other half: removing the folders `data_dir/runs/<id>/` of the
//! runs history deleted.
//!
//! History deletes a workflow's oldest finished runs when a run finishes
//! (`history_max_records`) and lists each deleted id durably with the
//! deletion ([`HistoryBackend::pruned_runs`]); the engine removes those
//! folders behind it, every [`SWEEP_INTERVAL`], and only then drops the ids
//! from the list. A crash in between leaves the ids listed, so the next
//! process removes the folders: disk use follows `history_max_records`.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aegis_history::RunId;

use crate::artifact::is_artifact_name;
use crate::engine::{Engine, Inner};
use crate::error::Result;

/// How often the engine looks for folders to remove.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How many deleted runs one pass of the sweep handles at most.
const BATCH: u32 = 256;

/// Sweeps every [`SWEEP_INTERVAL`] while the engine lives, on the engine's
/// runtime.
pub(crate) fn spawn(engine: &Arc<Inner>) {
    let inner: Weak<Inner> = Arc::downgrade(engine);
    engine.spawn(async move {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Only a living engine is swept; the task ends with the engine
            // or its shutdown (the next start picks up what is left).
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing() {
                return;
            }
            if let Err(err) = Engine::from_inner(inner).remove_pruned_runs().await {
                log::warn!("cannot remove the folders of runs deleted by retention: {err}");
            }
        }
    });
}

impl Engine {
    /// Removes the folders (`data_dir/runs/<id>/`) of the runs retention
    /// deleted from history, and returns how many deleted runs it handled.
    /// The engine does this on its own every second; a run whose events are
    /// still being written out waits for the next time.
    pub async fn remove_pruned_runs(&self) -> Result<usize> {
        let history = self.history();
        let mut handled = 0;
        loop {
            let pruned = history.pruned_runs(BATCH).await?;
            let full = pruned.len() == BATCH as usize;
            let ready: Vec<RunId> =
                pruned.into_iter().filter(|id| !self.inner().ledger.busy(id)).collect();
            if ready.is_empty() {
                return Ok(handled);
            }
            let folders: Vec<(RunId, Option<PathBuf>)> = ready
                .iter()
                .map(|id| {
                    // An id from the store that is not one plain name names
                    // no folder of ours: never join it onto a path.
                    let dir = is_artifact_name(id.as_str()).then(|| self.run_dir(id));
                    (id.clone(), dir)
                })
                .collect();
            tokio::task::spawn_blocking(move || remove_folders(&folders))
                .await
                .map_err(|e| crate::error::Error::io("runs", std::io::Error::other(e)))?;
            history.forget_pruned(&ready).await?;
            handled += ready.len();
            if !full {
                return Ok(handled);
            }
        }
    }
}

/// Removes each folder; a folder already gone is fine, any other failure is
/// logged (the id is forgotten anyway, so one bad folder is not retried
/// every second forever).
fn remove_folders(folders: &[(RunId, Option<PathBuf>)]) {
    for (id, dir) in folders {
        let Some(dir) = dir else {
            log::warn!("retention deleted a run with an unexpected id {id:?}; no folder removed");
            continue;
        };
        // `remove_dir_all` does not follow links inside the folder.
        match std::fs::remove_dir_all(dir) {
            Ok(()) => log::debug!("run_id={id}: removed {} (retention)", dir.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => log::warn!("run_id={id}: cannot remove {}: {err}", dir.display()),
        }
    }
}
