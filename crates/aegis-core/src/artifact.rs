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
//!
//! One name check, [`is_artifact_name`], decides what the listing shows, what
//! a download serves and what [`crate::StepContext::write_artifact`] accepts,
//! so an artifact announced by `artifact.created` is always listed and
//! downloadable. A run folder is written by programs (`command` steps), so
//! nothing in it is trusted: symbolic links, FIFOs and other non-regular
//! files are neither listed nor served, and a file is opened without
//! following a link (`O_NOFOLLOW`) so that a link swapped in after a check
//! is refused too. Files are served as open handles, streamed by the caller,
//! never read whole into memory.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use aegis_history::RunDetail;

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

/// The contents of one artifact, as [`crate::Engine::artifact`] hands them out.
#[derive(Debug)]
#[non_exhaustive]
pub enum ArtifactBody {
    /// A step's data (`<step_id>.json`), from memory or history.
    Bytes(Arc<[u8]>),
    /// A regular file of the run's folder, opened for reading; stream it
    /// instead of reading it whole.
    File {
        /// The open file, at offset 0.
        file: std::fs::File,
        /// Its size when it was opened.
        size: u64,
    },
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

/// Why a step may not write an artifact called `name`: not a plain file name
/// ([`is_artifact_name`], the check the listing and the download use), the
/// engine's own `events.jsonl`, or `<step_id>.json` of a step of the
/// workflow (served from the step's data, so the file would never be).
pub(crate) fn refuse_step_artifact<'a>(
    name: &str,
    mut step_ids: impl Iterator<Item = &'a str>,
) -> Option<&'static str> {
    if !is_artifact_name(name) {
        return Some("an artifact name is 1-255 ASCII letters, digits, '.', '_' or '-'");
    }
    if name == EVENTS_FILE {
        return Some("the engine writes the run's events there");
    }
    if let Some(stem) = name.strip_suffix(".json")
        && step_ids.any(|id| id == stem)
    {
        return Some("that name serves the step's data");
    }
    None
}

/// Opens `name` in `dir` for writing (created or truncated) without following
/// a symbolic link there, creating `dir` when missing.
pub(crate) async fn create_file(dir: &Path, name: &str) -> std::io::Result<tokio::fs::File> {
    let path = dir.join(name);
    let open = || {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true).custom_flags(no_follow());
        options
    };
    match open().open(&path).await {
        Ok(file) => Ok(file),
        // The run's folder is created lazily, behind the run.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(dir).await?;
            open().open(&path).await
        }
        Err(err) => Err(err),
    }
}

/// `O_NOFOLLOW`, as `OpenOptions::custom_flags` takes it.
fn no_follow() -> i32 {
    // The flag is a small positive constant: the cast cannot wrap.
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Opens a regular file of a run's folder for reading; `None` when `dir` is
/// not a real directory (a link to one counts as none), `name` is missing, a
/// symbolic link, or not a regular file. `O_NONBLOCK` keeps a FIFO from
/// blocking the open; it changes nothing for a regular file.
pub(crate) fn open_regular(
    dir: &Path,
    name: &str,
) -> std::io::Result<Option<(std::fs::File, u64)>> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    }
    let flags = no_follow() | rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(flags).open(dir.join(name))
    {
        Ok(file) => file,
        Err(err) => {
            // ELOOP: the last component is a symbolic link.
            let link = err.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error());
            return match err.kind() {
                _ if link => Ok(None),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory => Ok(None),
                _ => Err(err),
            };
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta.len())))
}

/// Artifact contents by name.
type Named = BTreeMap<String, Arc<[u8]>>;

/// `<step_id>.json` of each step with data, from its latest execution with data.
pub(crate) fn step_data(detail: &RunDetail) -> Named {
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

pub(crate) fn files(dir: &Path) -> std::io::Result<Vec<Artifact>> {
    let mut out = Vec::new();
    // A run folder that is itself a link is not the run's: list nothing.
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(out),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(err) => return Err(err),
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        // `DirEntry::metadata` does not follow links: a link is not a file here.
        let meta = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_file() && is_artifact_name(&name) {
            out.push(Artifact { name, size: meta.len() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{is_artifact_name, open_regular, refuse_step_artifact};

    #[test]
    fn only_plain_file_names_are_artifacts() {
        assert!(is_artifact_name("test.json"));
        assert!(is_artifact_name("command.stdout.txt"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", "é.json", "x y"] {
            assert!(!is_artifact_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_step_writes_exactly_the_names_that_are_listed_and_served() {
        let steps = ["build", "test"];
        for name in ["build.stdout.txt", "report.xml", ".hidden", "test.json.txt", "other.json"] {
            assert!(is_artifact_name(name), "{name:?}");
            assert_eq!(refuse_step_artifact(name, steps.into_iter()), None, "{name:?}");
        }
        for name in ["é.txt", "a b", "a/b", "", "..", "events.jsonl", "test.json", "build.json"] {
            assert!(refuse_step_artifact(name, steps.into_iter()).is_some(), "{name:?}");
        }
    }

    #[test]
    fn links_and_fifos_are_not_opened() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain.txt"), b"inside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link.txt"))
            .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(dir.path().join("fifo")).status();
        let (_, size) = open_regular(dir.path(), "plain.txt").unwrap().unwrap();
        assert_eq!(size, 6);
        assert!(open_regular(dir.path(), "link.txt").unwrap().is_none());
        assert!(open_regular(dir.path(), "sub").unwrap().is_none());
        assert!(open_regular(dir.path(), "missing").unwrap().is_none());
        if fifo.is_ok_and(|s| s.success()) {
            assert!(open_regular(dir.path(), "fifo").unwrap().is_none());
        }
        // A run folder that is a link to a folder is not opened either.
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path(), linked.path().join("run")).unwrap();
        assert!(open_regular(&linked.path().join("run"), "plain.txt").unwrap().is_none());
    }
}
