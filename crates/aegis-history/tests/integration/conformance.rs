//! Runs the conformance suite against `InMemoryHistory` and `SqliteHistory`.

use std::path::PathBuf;
use std::sync::Arc;

use aegis_history::conformance::Store;
use aegis_history::{HistoryBackend, HistoryOptions, InMemoryHistory, Result, SqliteHistory};
use async_trait::async_trait;

/// A fresh `InMemoryHistory` (not persistent).
struct Memory;

#[async_trait]
impl Store for Memory {
    async fn open(&mut self, options: HistoryOptions) -> Result<Arc<dyn HistoryBackend>> {
        Ok(Arc::new(InMemoryHistory::new(&options)))
    }

    fn is_persistent(&self) -> bool {
        false
    }
}

/// `SqliteHistory` on `:memory:` (not persistent).
struct SqliteMemory;

#[async_trait]
impl Store for SqliteMemory {
    async fn open(&mut self, options: HistoryOptions) -> Result<Arc<dyn HistoryBackend>> {
        Ok(Arc::new(SqliteHistory::open_in_memory(options).await?))
    }

    fn is_persistent(&self) -> bool {
        false
    }
}

/// `SqliteHistory` on a file in a temp directory, in a subdirectory that
/// does not exist yet (the backend creates it).
struct SqliteFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("aegis_history.db");
        Self { _dir: dir, path }
    }
}

#[async_trait]
impl Store for SqliteFile {
    async fn open(&mut self, options: HistoryOptions) -> Result<Arc<dyn HistoryBackend>> {
        Ok(Arc::new(SqliteHistory::open(&self.path, options).await?))
    }

    fn is_persistent(&self) -> bool {
        true
    }
}

mod in_memory {
    aegis_history::conformance_tests!(super::Memory);
}

mod sqlite_memory {
    aegis_history::conformance_tests!(super::SqliteMemory);
}

mod sqlite_file {
    aegis_history::conformance_tests!(super::SqliteFile::new());
}
