//! A run's artifacts: the files in its folder `data_dir/runs/<run_id>/` and
//! each step's data as `<step_id>.json`.
//!
//! A step's data is stored once, in history (the step record's `data`), and
//! served as `<step_id>.json` (pretty JSON) from there instead of as a file
//! of its own: on ext4 every new file costs an inode allocation, and five of
//! them per run were most of a run's cost. The data commits with the step's
//! `artifact.created` event, so an announced artifact is always there. Files
//! that steps write themselves (`command`'s `.stdout.txt`, `write_artifact`)
//! stay files in the run's folder, as does `events.jsonl`, which the engine
//! writes from the ledger: listing or reading the artifacts writes out its
//! pending lines first, so it is always listed and complete.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aegis_history::{RunDetail, RunId};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ledger::EVENTS_FILE;

/// One artifact of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Artifact {
    /// The file name (`<step_id>.json`, `<step_id>.stdout.txt`, ...).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Whether `name` is one plain file name: no separators, no `..`, no control
/// characters. Anything else names no artifact.
pub fn is_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Artifact contents by name.
type Named = BTreeMap<String, Arc<[u8]>>;

/// `<step_id>.json` of each step with data, from its latest execution with data.
fn step_data(detail: &RunDetail) -> Named {
    let mut out = BTreeMap::new();
    // Ordered by (execution, index): later executions replace earlier ones.
    for step in &detail.steps {
        if let Some(data) = &step.data
            && let Ok(bytes) = serde_json::to_vec_pretty(data)
        {
            out.insert(format!("{}.json", step.step_id), Arc::from(bytes));
        }
    }
    out
}

fn files(dir: &Path) -> std::io::Result<Vec<Artifact>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_file() && is_artifact_name(&name) {
            out.push(Artifact { name, size: meta.len() });
        }
    }
    Ok(out)
}

impl Engine {
    /// The artifacts of a run, by name: the files in its folder and each
    /// step's data as `<step_id>.json`. `None` when history has no such run.
    pub async fn artifacts(&self, run_id: &RunId) -> Result<Option<Vec<Artifact>>> {
        let Some(detail) = self.history().get_run(run_id).await? else { return Ok(None) };
        let data = step_data(&detail);
        let dir = self.run_dir(run_id);
        // `events.jsonl` trails the ledger: write out its pending lines
        // first, so that it is listed, at its full size.
        let listed = {
            let owned = dir.clone();
            let engine = self.clone();
            let run = run_id.clone();
            tokio::task::spawn_blocking(move || {
                engine.inner().ledger.sync(Some(&run));
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
    /// run or artifact (or `name` is not a plain file name).
    pub async fn artifact(&self, run_id: &RunId, name: &str) -> Result<Option<Vec<u8>>> {
        if !is_artifact_name(name) {
            return Ok(None);
        }
        let Some(detail) = self.history().get_run(run_id).await? else { return Ok(None) };
        if let Some(bytes) = step_data(&detail).get(name) {
            return Ok(Some(bytes.to_vec()));
        }
        let path = self.run_dir(run_id).join(name);
        // `events.jsonl` trails the ledger: complete it first.
        let sync = (name == EVENTS_FILE).then(|| (self.clone(), run_id.clone()));
        let read = {
            let owned = path.clone();
            tokio::task::spawn_blocking(move || {
                if let Some((engine, run)) = sync {
                    engine.inner().ledger.sync(Some(&run));
                }
                std::fs::read(owned)
            })
            .await
            .map_err(|e| Error::io(&path, std::io::Error::other(e)))?
        };
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::IsADirectory => Ok(None),
            Err(err) => Err(Error::io(&path, err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_artifact_name;

    #[test]
    fn only_plain_file_names_are_artifacts() {
        assert!(is_artifact_name("test.json"));
        assert!(is_artifact_name("command.stdout.txt"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", "é.json", "x y"] {
            assert!(!is_artifact_name(bad), "{bad:?}");
        }
    }
}
