//! A run's folder, `data_dir/runs/<run_id>/`: what is served from it (the
//! run's artifacts, `crate::artifact` says which) and when it goes (the
//! folders of runs retention deleted).
//!
//! History deletes a workflow's oldest finished runs when a run finishes
//! (`history_max_records`) and lists each deleted id durably with the
//! deletion (`HistoryBackend::pruned_runs`); the engine removes those
//! folders behind it, every [`SWEEP_INTERVAL`], and only then drops the ids
//! from the list. A crash in between leaves the ids listed, so the next
//! process removes the folders: disk use follows `history_max_records`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aegis_history::RunId;

use crate::artifact::{Artifact, ArtifactBody, files, is_artifact_name, open_regular, step_data};
use crate::error::{Error, Result};
use crate::ledger::EVENTS_FILE;
use crate::state::Inner;

impl Inner {
    /// The artifacts of a run, by name: the files in its folder and each
    /// step's data as `<step_id>.json`. `None` when history has no such run.
    pub(crate) async fn artifacts(
        self: &Arc<Self>,
        run_id: &RunId,
    ) -> Result<Option<Vec<Artifact>>> {
        let Some(detail) = self.history.get_run(run_id).await? else { return Ok(None) };
        let data = step_data(&detail);
        let dir = self.run_dir(run_id);
        // `events.jsonl` trails the ledger: write out its pending lines
        // first, so that it is listed, at its full size.
        let listed = {
            let owned = dir.clone();
            let inner = Arc::clone(self);
            let run = run_id.clone();
            self.runtime()
                .spawn_blocking(move || {
                    inner.ledger.sync(Some(&run));
                    files(&owned)
                })
                .await
                .map_err(|e| Error::io(&dir, std::io::Error::other(e)))?
        };
        let on_disk = listed.map_err(|e| Error::io(&dir, e))?;
        let mut out: BTreeMap<String, u64> =
            on_disk.into_iter().map(|a| (a.name, a.size)).collect();
        out.extend(data.into_iter().map(|(name, bytes)| (name, bytes.len() as u64)));
        Ok(Some(out.into_iter().map(|(name, size)| Artifact { name, size }).collect()))
    }

    /// The contents of one artifact of a run; `None` when there is no such
    /// run or artifact (or `name` is not a plain file name, or names a link
    /// or anything but a regular file). A file comes back open, to be
    /// streamed.
    pub(crate) async fn artifact(
        self: &Arc<Self>,
        run_id: &RunId,
        name: &str,
    ) -> Result<Option<ArtifactBody>> {
        if !is_artifact_name(name) {
            return Ok(None);
        }
        let Some(detail) = self.history.get_run(run_id).await? else { return Ok(None) };
        if let Some(bytes) = step_data(&detail).get(name) {
            return Ok(Some(ArtifactBody::Bytes(Arc::clone(bytes))));
        }
        let dir: PathBuf = self.run_dir(run_id);
        // `events.jsonl` trails the ledger: complete it first.
        let sync = (name == EVENTS_FILE).then(|| (Arc::clone(self), run_id.clone()));
        let opened = {
            let owned = dir.clone();
            let name = name.to_owned();
            self.runtime()
                .spawn_blocking(move || {
                    if let Some((inner, run)) = sync {
                        inner.ledger.sync(Some(&run));
                    }
                    open_regular(&owned, &name)
                })
                .await
                .map_err(|e| Error::io(&dir, std::io::Error::other(e)))?
        };
        match opened {
            Ok(Some((file, size))) => Ok(Some(ArtifactBody::File { file, size })),
            Ok(None) => Ok(None),
            Err(err) => Err(Error::io(dir.join(name), err)),
        }
    }
}

/// How often the engine looks for folders to remove.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How many deleted runs one pass of the sweep handles at most.
const BATCH: u32 = 256;

/// Sweeps every [`SWEEP_INTERVAL`] while the engine lives, on the engine's
/// runtime.
pub(crate) fn sweep(engine: &Arc<Inner>) {
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
            if let Err(err) = inner.remove_pruned_runs().await {
                log::warn!("cannot remove the folders of runs deleted by retention: {err}");
            }
        }
    });
}

impl Inner {
    /// Removes the folders (`data_dir/runs/<id>/`) of the runs retention
    /// deleted from history, and returns how many deleted runs it handled.
    /// The engine does this on its own every second; a run whose events are
    /// still being written out waits for the next time.
    pub(crate) async fn remove_pruned_runs(&self) -> Result<usize> {
        let history = &self.history;
        let mut handled = 0;
        loop {
            let pruned = history.pruned_runs(BATCH).await?;
            let full = pruned.len() == BATCH as usize;
            let ready: Vec<RunId> = pruned.into_iter().filter(|id| !self.ledger.busy(id)).collect();
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
            self.runtime()
                .spawn_blocking(move || remove_folders(&folders))
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
