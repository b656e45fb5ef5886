//! Bad files and unwritable locations: a clear error naming the path, no panic, the file untouched.

use std::error::Error as _;
use std::path::{Path, PathBuf};

use aegis_history::conformance::new_run;
use aegis_history::{Error, HistoryBackend, HistoryOptions, SqliteHistory};

/// The error and its causes, one per line.
fn chain(err: &Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    out
}

/// Opens `path`, expects an error, and checks the file bytes did not change.
async fn refused(path: &Path) -> Error {
    let before = std::fs::read(path).ok();
    let err = SqliteHistory::open(path, HistoryOptions::default()).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "error should name the path: {message}");
    assert_eq!(std::fs::read(path).ok(), before, "the file must be left untouched");
    err
}

/// Creates a valid database with one run and closes it.
async fn valid_db(dir: &Path) -> PathBuf {
    let path = dir.join("aegis_history.db");
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    history.create_run(&new_run("r1", "nightly", 0)).await.unwrap();
    drop(history);
    path
}

#[tokio::test]
async fn not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis_history.db");
    std::fs::write(&path, "history_db_path: oops, this is YAML\n").unwrap();
    let err = refused(&path).await;
    assert!(matches!(err, Error::NotADatabase { .. }), "{}", chain(&err));
    assert!(err.to_string().contains("not an SQLite database"), "{err}");
}

#[tokio::test]
async fn corrupt_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_db(dir.path()).await;
    // Keep the 100-byte header, scramble everything after it.
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, byte) in bytes.iter_mut().enumerate().skip(100) {
        *byte = (i % 251) as u8 ^ 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = refused(&path).await;
    assert!(matches!(err, Error::Open { .. }), "{}", chain(&err));
    assert!(err.source().is_some(), "the SQLite cause is kept: {}", chain(&err));
}

#[tokio::test]
async fn newer_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_db(dir.path()).await;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = refused(&path).await;
    assert!(
        matches!(err, Error::SchemaTooNew { found: 99, supported, .. } if supported == aegis_history::SCHEMA_VERSION),
        "{}",
        chain(&err)
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn directory_at_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteHistory::open(dir.path(), HistoryOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{}", chain(&err));
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[tokio::test]
async fn parent_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let path = file.join("aegis_history.db");
    let err = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::ReadFile { .. }), "{}", chain(&err));
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(chain(&err).contains("Not a directory"), "{}", chain(&err));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[tokio::test]
async fn read_only_directory() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root (as in CI containers) ignores directory permissions; then use a
    // directory nobody can create files in.
    let probe = locked.join("probe");
    let target = if std::fs::write(&probe, "").is_ok() {
        PathBuf::from("/proc/self/aegis_history.db")
    } else {
        locked.join("aegis_history.db")
    };
    let err = SqliteHistory::open(&target, HistoryOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{}", chain(&err));
    assert!(err.to_string().contains(&target.display().to_string()), "{err}");
    assert!(err.source().is_some());
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn missing_parent_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("aegis_history.db");
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    history.create_run(&new_run("r1", "nightly", 0)).await.unwrap();
    assert_eq!(history.location(), path);
    drop(history);
    assert!(path.is_file());
}

#[tokio::test]
async fn empty_file_becomes_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis_history.db");
    std::fs::write(&path, "").unwrap();
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    history.create_run(&new_run("r1", "nightly", 0)).await.unwrap();
    assert_eq!(history.recent(5).await.unwrap().len(), 1);
}

#[tokio::test]
async fn reopen_applies_a_lower_retention_limit() {
    use aegis_history::{RunStatus, RunUpdate};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis_history.db");
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    for i in 0..10 {
        let run = new_run(&format!("r{i}"), "nightly", i);
        history.create_run(&run).await.unwrap();
        history.update_run(&run.id, &RunUpdate::status(RunStatus::Succeeded)).await.unwrap();
    }
    drop(history);
    let history = SqliteHistory::open(&path, HistoryOptions::with_max_records(4)).await.unwrap();
    let runs = history.recent(100).await.unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r9", "r8", "r7", "r6"]);
}
