//! `SqliteHistory`: the durable backend on one SQLite file.
//!
//! Writes go to one writer thread that batches them into transactions
//! (see `writer`); reads use an r2d2 pool of connections on tokio's
//! blocking pool. WAL mode lets reads proceed while the writer commits.

mod codec;
mod read;
mod schema;
mod writer;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{HistoryBackend, UnfinishedRuns};
use crate::error::{Error, Result};
use crate::model::{
    GateDecision, ListQuery, NewRun, Page, PendingGate, RunDetail, RunId, RunUpdate, StepRecord,
};
use crate::options::{Durability, HistoryOptions};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = schema::LATEST_VERSION;
use writer::{Command, Op};

/// The write connection, shared with readers only for `:memory:`.
pub(crate) type Conn = Arc<Mutex<Connection>>;

/// Locks a connection. A panic in another holder cannot leave SQLite in a
/// state it does not recover from (an open transaction is rolled back when
/// the next one begins fails), so a poisoned lock is still usable.
pub(crate) fn lock(conn: &Conn) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// How queued writes reach the writer before callers are made to wait.
const WRITE_QUEUE: usize = 8192;

#[derive(Debug, Clone)]
enum Readers {
    Pool(r2d2::Pool<SqliteConnectionManager>),
    /// `:memory:` has one connection; reads share it with the writer.
    Shared(Conn),
}

/// History in an SQLite database file (or `:memory:`).
///
/// A write's future resolves only after the transaction holding it has
/// committed. With the default [`Durability::ProcessCrash`] (WAL,
/// `synchronous=NORMAL`) a committed write survives the process being
/// killed at any moment; [`Durability::PowerLoss`] (`synchronous=FULL`)
/// also survives power loss at the cost of one fsync per batch.
///
/// Dropping it waits for the writes already queued to commit; it blocks
/// the current thread for that long.
#[derive(Debug)]
pub struct SqliteHistory {
    location: PathBuf,
    sender: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    readers: Readers,
}

impl SqliteHistory {
    /// Opens (creating it and its parent directory if missing) the database
    /// at `path` and migrates it to the current schema.
    ///
    /// A file that is not an SQLite database, is corrupt, or was written by
    /// a newer schema is refused with an error naming the path, and left
    /// untouched.
    pub async fn open(path: &Path, options: HistoryOptions) -> Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_file(path, options))
            .await
            .map_err(|source| Error::Task { source })?
    }

    /// Opens a private in-memory database (lost when dropped).
    pub async fn open_in_memory(options: HistoryOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_memory(options))
            .await
            .map_err(|source| Error::Task { source })?
    }

    /// Where the database lives (`:memory:` for in-memory ones).
    pub fn location(&self) -> &Path {
        &self.location
    }

    fn open_file(path: PathBuf, options: HistoryOptions) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            std::fs::create_dir_all(parent)
                .map_err(|source| Error::CreateDir { path: parent.to_owned(), source })?;
        }
        check_header(&path)?;
        let open_err = |source| Error::Open { path: path.clone(), source };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        conn.busy_timeout(options.busy_timeout).map_err(open_err)?;
        check_readable(&conn, &path)?;
        let journal: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(open_err)?;
        if !journal.eq_ignore_ascii_case("wal") {
            log::warn!(
                "history database at {} uses journal mode {journal}, not wal",
                path.display()
            );
        }
        configure(&conn, &options).map_err(open_err)?;
        migrate(&mut conn, &path)?;
        writer::apply_retention(&conn, options.max_records)?;

        let busy_timeout = options.busy_timeout;
        let manager = SqliteConnectionManager::file(&path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(move |c| {
                c.busy_timeout(busy_timeout)?;
                // Reads never write; a bug that tries fails instead of
                // bypassing the writer.
                c.pragma_update(None, "query_only", true)
            });
        let pool = r2d2::Pool::builder()
            .max_size(options.read_pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(|source| Error::Pool { source })?;
        log::info!("history database opened at {}", path.display());
        Self::start(path, conn, Readers::Pool(pool), &options)
    }

    fn open_memory(options: HistoryOptions) -> Result<Self> {
        let path = PathBuf::from(":memory:");
        let open_err = |source| Error::Open { path: path.clone(), source };
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        configure(&conn, &options).map_err(open_err)?;
        migrate(&mut conn, &path)?;
        let conn = Arc::new(Mutex::new(conn));
        let readers = Readers::Shared(Arc::clone(&conn));
        Self::start_shared(path, conn, readers, &options)
    }

    fn start(
        location: PathBuf,
        conn: Connection,
        readers: Readers,
        options: &HistoryOptions,
    ) -> Result<Self> {
        Self::start_shared(location, Arc::new(Mutex::new(conn)), readers, options)
    }

    fn start_shared(
        location: PathBuf,
        conn: Conn,
        readers: Readers,
        options: &HistoryOptions,
    ) -> Result<Self> {
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
        let max_batch = options.max_batch.max(1);
        let keep = options.max_records;
        let writer = std::thread::Builder::new()
            .name("aegis-history-writer".to_owned())
            .spawn(move || writer::run(conn, receiver, max_batch, keep))
            .map_err(|source| Error::SpawnWriter { source })?;
        Ok(Self { location, sender: Some(sender), writer: Some(writer), readers })
    }

    async fn write(&self, op: Op) -> Result<u64> {
        let sender = self.sender.as_ref().ok_or(Error::Closed)?;
        let (reply, outcome) = oneshot::channel();
        sender.send(Command { op, reply }).await.map_err(|_| Error::Closed)?;
        outcome.await.map_err(|_| Error::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || match readers {
            Readers::Pool(pool) => {
                let conn = pool.get().map_err(|source| Error::Pool { source })?;
                f(&conn)
            }
            Readers::Shared(conn) => f(&lock(&conn)),
        })
        .await
        .map_err(|source| Error::Task { source })?
    }
}

impl Drop for SqliteHistory {
    fn drop(&mut self) {
        // Closing the channel lets the writer commit what is queued and stop.
        drop(self.sender.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            log::error!("history writer thread panicked");
        }
    }
}

/// Refuses a non-empty file that does not start like an SQLite database,
/// before SQLite can touch it.
fn check_header(path: &Path) -> Result<()> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::ReadFile { path: path.to_owned(), source }),
    };
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        // SQLite reports a directory with a clear error of its own.
        return Ok(());
    }
    let mut header = Vec::with_capacity(SQLITE_MAGIC.len());
    file.by_ref()
        .take(SQLITE_MAGIC.len() as u64)
        .read_to_end(&mut header)
        .map_err(|source| Error::ReadFile { path: path.to_owned(), source })?;
    if header.is_empty() || header == SQLITE_MAGIC {
        Ok(())
    } else {
        Err(Error::NotADatabase { path: path.to_owned() })
    }
}

/// Reads the schema version and the schema table without writing, so a
/// corrupt or too-new database is refused while still untouched.
fn check_readable(conn: &Connection, path: &Path) -> Result<()> {
    let open_err = |source| Error::Open { path: path.to_owned(), source };
    let version: i64 =
        conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(open_err)?;
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(open_err)?;
    if version > schema::LATEST_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: schema::LATEST_VERSION,
        });
    }
    Ok(())
}

fn configure(conn: &Connection, options: &HistoryOptions) -> rusqlite::Result<()> {
    let synchronous = match options.durability {
        Durability::ProcessCrash => "NORMAL",
        Durability::PowerLoss => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Applies the migrations this file lacks, all in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let migrate_err = |version, source| Error::Migrate { path: path.to_owned(), version, source };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| migrate_err(0, e))?;
    // Read again inside the transaction: another process may have migrated.
    let current: i64 =
        tx.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|e| migrate_err(0, e))?;
    if current > schema::LATEST_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: current,
            supported: schema::LATEST_VERSION,
        });
    }
    for (index, sql) in schema::MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        tx.execute_batch(sql).map_err(|e| migrate_err(version, e))?;
        tx.pragma_update(None, "user_version", version).map_err(|e| migrate_err(version, e))?;
        log::info!("history database at {} migrated to schema {version}", path.display());
    }
    tx.commit().map_err(|e| migrate_err(schema::LATEST_VERSION, e))
}

#[async_trait]
impl HistoryBackend for SqliteHistory {
    async fn create_run(&self, run: &NewRun) -> Result<()> {
        self.write(Op::CreateRun(run.clone())).await.map(drop)
    }

    async fn update_run(&self, run_id: &RunId, update: &RunUpdate) -> Result<()> {
        self.write(Op::UpdateRun(run_id.clone(), update.clone())).await.map(drop)
    }

    async fn record_step(&self, run_id: &RunId, step: &StepRecord) -> Result<()> {
        self.write(Op::RecordStep(run_id.clone(), step.clone())).await.map(drop)
    }

    async fn add_pending_gate(&self, gate: &PendingGate) -> Result<()> {
        self.write(Op::AddPendingGate(gate.clone())).await.map(drop)
    }

    async fn record_gate_decision(&self, run_id: &RunId, decision: &GateDecision) -> Result<()> {
        self.write(Op::RecordGateDecision(run_id.clone(), decision.clone())).await.map(drop)
    }

    async fn pending_gates(&self) -> Result<Vec<PendingGate>> {
        self.read(read::pending_gates).await
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunDetail>> {
        let run_id = run_id.clone();
        self.read(move |conn| read::get_run(conn, &run_id)).await
    }

    async fn list_runs(&self, query: &ListQuery) -> Result<Page> {
        let query = query.clone();
        self.read(move |conn| read::list_runs(conn, &query)).await
    }

    async fn unfinished(&self) -> Result<UnfinishedRuns> {
        self.read(read::unfinished).await
    }

    async fn apply_retention(&self) -> Result<u64> {
        self.write(Op::ApplyRetention).await
    }

    async fn ping(&self) -> Result<()> {
        self.read(read::ping).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunStatus;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |row| row.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// The list queries must walk an index in order and stop at the limit:
    /// no full scan of `runs`, no sort of the whole table.
    #[test]
    fn list_queries_are_index_range_scans() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let cases = [
            (None, None, "runs_by_created"),
            (Some("nightly"), None, "runs_by_workflow"),
            (None, Some(RunStatus::Failed), "runs_by_status"),
            (Some("nightly"), Some(RunStatus::Failed), "runs_by_workflow_status"),
        ];
        for (workflow, status, index) in cases {
            for after in [false, true] {
                let query = ListQuery {
                    workflow: workflow.map(str::to_owned),
                    status,
                    limit: 50,
                    cursor: None,
                };
                let sql = read::list_sql(&query, after)
                    .replace(":workflow", "'nightly'")
                    .replace(":status", "'failed'")
                    .replace(":created_at", "1")
                    .replace(":id", "'x'")
                    .replace(":limit", "51");
                let plan = plan(&conn, &sql);
                assert!(
                    plan.contains(&format!("INDEX {index} ")) || plan.ends_with(index),
                    "{sql}\nshould use {index}:\n{plan}"
                );
                assert!(!plan.contains("TEMP B-TREE"), "{sql}\nsorts:\n{plan}");
            }
        }
    }

    #[test]
    fn migrations_set_user_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Migrating again is a no-op.
        migrate(&mut conn, Path::new(":memory:")).unwrap();
    }
}
