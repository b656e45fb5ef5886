//! Bulk-loading finished runs, for benchmarks and load tests that need a large store
//! quickly (feature `test-support`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::options::HistoryOptions;
use crate::sqlite::SqliteHistory;

/// Creates `path` with `runs` finished runs spread over `workflows` workflows
/// (`wf-00`, `wf-01`, …; every tenth run `failed`, the rest `succeeded`, one second
/// apart). The backend creates the schema; the rows are then inserted in one
/// transaction, which loads a million runs in seconds rather than minutes.
pub async fn bulk_seed(path: &Path, runs: u64, workflows: u64) -> Result<()> {
    drop(SqliteHistory::open(path, HistoryOptions::default()).await?);
    let path = path.to_path_buf();
    let workflows = workflows.max(1);
    let task = tokio::task::spawn_blocking(move || -> Result<()> {
        let query = |source: rusqlite::Error| Error::Query { source };
        let mut conn = rusqlite::Connection::open(&path).map_err(query)?;
        conn.pragma_update(None, "synchronous", "OFF").map_err(query)?;
        let tx = conn.transaction().map_err(query)?;
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO runs (id, workflow, status, trigger, request_id, created_at, \
                     started_at, completed_at, duration_ms, error) \
                     VALUES (?1, ?2, ?3, 'api', NULL, ?4, ?4, ?5, 1000, NULL)",
                )
                .map_err(query)?;
            let origin: i64 = 1_700_000_000_000_000_000;
            for i in 0..runs {
                let created =
                    origin + i64::try_from(i).unwrap_or(i64::MAX / 2_000_000_000) * 1_000_000_000;
                let status = if i % 10 == 0 { "failed" } else { "succeeded" };
                insert
                    .execute(rusqlite::params![
                        format!("run-{i:09}"),
                        format!("wf-{:02}", i % workflows),
                        status,
                        created,
                        created + 1_000_000_000,
                    ])
                    .map_err(query)?;
            }
        }
        tx.commit().map_err(query)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;").map_err(query)?;
        Ok(())
    });
    task.await.map_err(|source| Error::Task { source })?
}
