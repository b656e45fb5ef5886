//! `SqliteHistory`: the durable backend on one SQLite file.
//!
//! Writes are committed in batches on tokio's blocking pool by one driver at
//! a time (see `writer`), which also checkpoints the WAL between batches. Reads use
//! an r2d2 pool of connections on the blocking pool. WAL mode lets reads
//! proceed while a batch commits.

mod codec;
mod outbox;
mod read;
mod schema;
mod writer;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::oneshot;

use crate::backend::{HistoryBackend, UnfinishedRuns};
use crate::error::{Error, Result};
use crate::model::{
    EventRecord, GateDecision, ListQuery, NewRun, Page, PendingGate, RunDetail, RunId, RunUpdate,
    StepRecord, Write,
};
use crate::options::{Durability, HistoryOptions};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = schema::LATEST_VERSION;
use writer::{Command, Committer, Op};

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

#[derive(Debug, Clone)]
enum Readers {
    Pool(r2d2::Pool<SqliteConnectionManager>),
    /// `:memory:` has one connection; reads share it with the writer.
    Shared(Conn),
}

/// History in an SQLite database file (or `:memory:`).
///
/// A write's future resolves only after the transaction holding it has
/// committed. Commits run on tokio's blocking pool, never on the async
/// threads; writes that arrive while one commits share the next commit. With the default [`Durability::ProcessCrash`] (WAL,
/// `synchronous=NORMAL`) a committed write survives the process being
/// killed at any moment; [`Durability::PowerLoss`] (`synchronous=FULL`)
/// also survives power loss at the cost of one fsync per batch.
///
/// Dropping it waits for the last commit's driver to let go of the write
/// connection, so the database file is closed when the drop returns.
#[derive(Debug)]
pub struct SqliteHistory {
    location: PathBuf,
    committer: Arc<Committer>,
    /// The write connection the committer uses (counted at drop; for
    /// `:memory:` the readers share it).
    write_conn: Conn,
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
        // The WAL's copier: a connection of its own copies most of the WAL into
        // the database beside the committer, which then finishes the copy. It
        // syncs as the write connection does.
        let copier = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        copier.busy_timeout(options.busy_timeout).map_err(open_err)?;
        configure(&copier, &options).map_err(open_err)?;
        log::info!("history database opened at {}", path.display());
        Self::start(path, conn, copier, Readers::Pool(pool), &options)
    }

    fn open_memory(options: HistoryOptions) -> Result<Self> {
        let path = PathBuf::from(":memory:");
        let open_err = |source| Error::Open { path: path.clone(), source };
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        configure(&conn, &options).map_err(open_err)?;
        migrate(&mut conn, &path)?;
        let conn = Arc::new(Mutex::new(conn));
        let readers = Readers::Shared(Arc::clone(&conn));
        Ok(Self::start_shared(path, conn, readers, &options, None))
    }

    fn start(
        location: PathBuf,
        conn: Connection,
        copier: Connection,
        readers: Readers,
        options: &HistoryOptions,
    ) -> Result<Self> {
        // Checkpoints are run by the committer between its batches (after the
        // copier has done most of the copying), never inside a writer's commit.
        for conn in [&conn, &copier] {
            conn.pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(|source| Error::Open { path: location.clone(), source })?;
        }
        let conn = Arc::new(Mutex::new(conn));
        Ok(Self::start_shared(location, conn, readers, options, Some(copier)))
    }

    fn start_shared(
        location: PathBuf,
        conn: Conn,
        readers: Readers,
        options: &HistoryOptions,
        copier: Option<Connection>,
    ) -> Self {
        let write_conn = Arc::clone(&conn);
        let committer = Committer::new(conn, options.max_batch, options.max_records, copier);
        Self { location, committer: Arc::new(committer), write_conn, readers }
    }

    async fn write(&self, op: Op) -> Result<u64> {
        let mut outcomes = self.write_group(vec![op]).await;
        outcomes.pop().unwrap_or(Err(Error::Closed))
    }

    /// Commits `ops` in one transaction and returns their outcomes in order.
    async fn write_group(&self, ops: Vec<Op>) -> Vec<Result<u64>> {
        let mut group = Vec::with_capacity(ops.len());
        let mut answers = Vec::with_capacity(ops.len());
        for op in ops {
            let (reply, answer) = oneshot::channel();
            group.push(Command { op, reply });
            answers.push(answer);
        }
        self.committer.submit(group);
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            // A dropped reply means the commit that held it panicked.
            outcomes.push(answer.await.unwrap_or(Err(Error::Closed)));
        }
        outcomes
    }

    /// Runs `f` on the write connection, in the committer's queue: after the
    /// commits queued before it and before those queued after.
    async fn on_write_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.committer.run(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        }));
        // A dropped reply means the task panicked.
        answer.await.unwrap_or(Err(Error::Closed))
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
        // Writes commit before their futures resolve, so nothing is queued
        // that a caller waits for (a checkpoint may be).
        // A commit's driver (or a task on the write connection) that has
        // answered its caller may still be on its way out, holding the write
        // connection. Wait for it, briefly, so that once the store is dropped
        // the database is closed, its WAL folded back into the file: whoever
        // opens the file next sees it whole.
        // At rest the connection is held here, by the committer and, for
        // `:memory:`, by the readers.
        let at_rest = 2 + usize::from(matches!(self.readers, Readers::Shared(_)));
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while (Arc::strong_count(&self.committer) > 1
            || Arc::strong_count(&self.write_conn) > at_rest)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// How long dropping the store waits for a commit in its last moments.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

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
    // Every write and read statement stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
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

    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<()>> {
        let ops = writes.into_iter().map(Op::from).collect();
        self.write_group(ops).await.into_iter().map(|outcome| outcome.map(drop)).collect()
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let ops = writes.into_iter().map(Op::from).collect();
        self.write(Op::Atomic(ops)).await.map(drop)
    }

    async fn events(&self, run_id: &RunId, after: u64, limit: u32) -> Result<Vec<EventRecord>> {
        let run_id = run_id.clone();
        self.read(move |conn| read::events(conn, &run_id, after, limit)).await
    }

    async fn last_seq(&self, run_id: &RunId) -> Result<u64> {
        let run_id = run_id.clone();
        self.read(move |conn| read::last_seq(conn, &run_id)).await
    }

    async fn finished_since(&self, since: jiff::Timestamp) -> Result<Vec<RunId>> {
        self.read(move |conn| read::finished_since(conn, since)).await
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

    async fn pruned_runs(&self, limit: u32) -> Result<Vec<RunId>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id FROM pruned_runs ORDER BY seq LIMIT ?1")
                .map_err(|source| Error::Query { source })?;
            let rows = stmt
                .query_map([limit], |row| row.get::<_, String>(0))
                .map_err(|source| Error::Query { source })?;
            rows.map(|row| row.map(RunId::new).map_err(|source| Error::Query { source })).collect()
        })
        .await
    }

    async fn forget_pruned(&self, run_ids: &[RunId]) -> Result<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let run_ids = run_ids.to_vec();
        self.on_write_conn(move |conn| {
            let write = |source| Error::Write { source: Arc::new(source) };
            let tx =
                conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(write)?;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM pruned_runs WHERE id = ?1").map_err(write)?;
                for id in &run_ids {
                    stmt.execute([id.as_str()]).map_err(write)?;
                }
            }
            tx.commit().map_err(write)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        claim: &crate::outbox::DeliveryClaim,
    ) -> Result<Vec<crate::outbox::Delivery>> {
        let claim = claim.clone();
        self.on_write_conn(move |conn| outbox::claim(conn, &claim)).await
    }

    async fn release_delivery_claims(&self) -> Result<u64> {
        self.on_write_conn(outbox::release).await
    }

    async fn next_delivery_due(&self, webhook: u32) -> Result<Option<jiff::Timestamp>> {
        self.read(move |conn| outbox::next_due(conn, webhook)).await
    }

    async fn list_deliveries(
        &self,
        query: &crate::outbox::DeliveryQuery,
    ) -> Result<crate::outbox::DeliveryPage> {
        let query = query.clone();
        // The log lists every delivery, the spooled ones too: the spool is
        // unpacked first, a short transaction at a time.
        let upto = self.read(outbox::spool_end).await?;
        while upto > 0
            && self.on_write_conn(move |conn| outbox::unpack_spool(conn, upto)).await? > 0
        {}
        self.read(move |conn| outbox::list(conn, &query)).await
    }

    async fn delivery_counts(&self) -> Result<Vec<(u32, crate::outbox::DeliveryStatus, u64)>> {
        self.read(outbox::counts).await
    }

    async fn prune_deliveries(&self, before: jiff::Timestamp) -> Result<u64> {
        self.on_write_conn(move |conn| outbox::prune(conn, before)).await
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

    /// Every delivery inserted or attempted updates each index of `deliveries`
    /// inside the committer's transactions, so the table keeps only the ones a
    /// hot path searches: its id (redeliver), the pending rows (the
    /// dispatcher) and a run's rows. The log's status filter walks the log
    /// newest first and stops at its limit, without a sort.
    #[test]
    fn deliveries_keep_only_the_indexes_a_hot_path_searches() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries' ORDER BY name")
            .unwrap();
        let names: Vec<String> =
            stmt.query_map([], |row| row.get(0)).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(names, ["deliveries_by_run", "deliveries_due", "sqlite_autoindex_deliveries_1"]);
        let sql = "SELECT seq FROM deliveries WHERE status = 'failed' AND webhook = 0 \
                   ORDER BY seq DESC LIMIT 51";
        let plan = plan(&conn, sql);
        assert!(!plan.contains("TEMP B-TREE"), "{sql}\nsorts:\n{plan}");
    }

    /// The dispatcher's claim and due-time queries search an index on one
    /// webhook's pending rows, never scan the whole outbox (which keeps
    /// delivered rows).
    #[test]
    fn outbox_scans_use_the_pending_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        for sql in [
            "SELECT seq FROM deliveries WHERE webhook = 1 AND status = 'pending' \
             AND next_attempt_at <= 5 AND (claimed_until IS NULL OR claimed_until <= 5) \
             ORDER BY next_attempt_at, seq LIMIT 16",
            "SELECT MIN(MAX(next_attempt_at, COALESCE(claimed_until, 0))) FROM deliveries \
             WHERE webhook = 1 AND status = 'pending'",
        ] {
            let plan = plan(&conn, sql);
            assert!(plan.contains("SEARCH deliveries USING"), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN deliveries"), "{sql}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\nsorts:\n{plan}");
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

    /// A version 4 file with a run, its steps, attempts and events keeps every row
    /// through migrations 5 (the ledger and the steps move to rowid tables) and 6
    /// (attempts move into their step's row): every step reads back with its
    /// attempts in order, every event as it was, and the keys still hold (a
    /// seq is never reused, deleting a run takes its steps and events).
    #[test]
    fn migrations_5_and_6_keep_every_row_and_the_foreign_keys() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        for sql in &schema::MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (id, workflow, status, trigger, created_at) \
                 VALUES ('r1', 'wf', 'succeeded', 'api', 1), ('r2', 'wf', 'running', 'api', 2);
             INSERT INTO steps (run_id, execution, step_index, step_id, step_type, status, \
                 started_at, data) VALUES \
                 ('r1', 0, 0, 'a', 'http', 'succeeded', 10, '{\"n\":1}'), \
                 ('r1', 0, 1, 'b', 'http', 'failed', 11, NULL), \
                 ('r2', 0, 0, 'a', 'http', 'running', 12, NULL);
             INSERT INTO attempts VALUES ('r1', 0, 0, 1, 1, NULL, 5, 10), \
                 ('r1', 0, 1, 2, 0, 'boom \"2\"', 7, 12), ('r1', 0, 1, 1, 0, 'boom', 6, 11);
             INSERT INTO events VALUES ('r1', 1, 'e1', 'workflow.started', 1, '{}'), \
                 ('r1', 2, 'e2', 'workflow.completed', 3, '{\"x\":2}'), \
                 ('r2', 1, 'e3', 'workflow.started', 2, '{}');",
        )
        .unwrap();
        let dump = |conn: &Connection, sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            let columns = stmt.column_count();
            stmt.query_map([], |row| {
                Ok((0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        let steps = "SELECT run_id, execution, step_index, step_id, step_type, status, error, \
                     started_at, completed_at, duration_ms, data FROM steps \
                     ORDER BY run_id, execution, step_index";
        let events = "SELECT * FROM events ORDER BY run_id, seq";
        let before = (dump(&conn, steps), dump(&conn, events));
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!((dump(&conn, steps), dump(&conn, events)), before);

        let r1 = read::get_run(&conn, &RunId::new("r1")).unwrap().unwrap();
        type Seen<'a> = (u32, bool, Option<&'a str>, u64, i128);
        let attempts: Vec<Vec<Seen<'_>>> = r1
            .steps
            .iter()
            .map(|s| {
                s.attempts
                    .iter()
                    .map(|a| {
                        (
                            a.attempt,
                            a.success,
                            a.error.as_deref(),
                            a.duration_ms,
                            a.started_at.as_nanosecond(),
                        )
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            attempts,
            [
                vec![(1, true, None, 5, 10)],
                vec![(1, false, Some("boom"), 6, 11), (2, false, Some("boom \"2\""), 7, 12)]
            ]
        );
        let r2 = read::get_run(&conn, &RunId::new("r2")).unwrap().unwrap();
        assert!(r2.steps[0].attempts.is_empty());

        let tables = dump(&conn, "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY 1");
        assert!(!tables.iter().any(|t| t.contains("_v4") || t.contains("_v5")), "{tables:?}");
        assert!(!tables.contains(&r#"Text("attempts")"#.to_owned()), "{tables:?}");
        let sql = |table: &str| {
            conn.query_row("SELECT sql FROM sqlite_schema WHERE name = ?1", [table], |r| {
                r.get::<_, String>(0)
            })
            .unwrap()
        };
        assert!(!sql("events").contains("WITHOUT ROWID"));
        assert!(!sql("steps").contains("WITHOUT ROWID"));
        let duplicate = conn.execute(
            "INSERT INTO events VALUES ('r1', 2, 'e9', 'workflow.completed', 4, '{}')",
            [],
        );
        assert!(duplicate.is_err(), "a seq was reused");
        let orphan = conn.execute(
            "INSERT INTO steps (run_id, execution, step_index, step_id, step_type, status) \
             VALUES ('nope', 0, 0, 'a', 'http', 'running')",
            [],
        );
        assert!(orphan.is_err(), "a step without its run was accepted");
        conn.execute("DELETE FROM runs WHERE id = 'r1'", []).unwrap();
        let left =
            dump(&conn, "SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM events)");
        assert_eq!(left, ["Integer(1)|Integer(1)"]);
    }

    /// Writes are committed on the blocking pool of the runtime that opened
    /// the store, whichever runtime the writer calls from: the webhook
    /// dispatcher's low-priority thread never drives the runs' commits.
    #[test]
    fn commits_run_on_the_runtime_that_opened_the_store() {
        let opener = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("opened-here")
            .build()
            .unwrap();
        let history =
            opener.block_on(SqliteHistory::open_in_memory(HistoryOptions::default())).unwrap();
        let caller = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("called-from")
            .build()
            .unwrap();
        let thread = caller
            .block_on(
                history.on_write_conn(|_| Ok(std::thread::current().name().map(str::to_owned))),
            )
            .unwrap();
        assert_eq!(thread.as_deref(), Some("opened-here"));
        drop(history);
        drop(caller);
        drop(opener);
    }

    /// The nice value of the calling thread.
    #[cfg(target_os = "linux")]
    fn nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    /// A write from a thread of lower priority (the webhook dispatcher's, at
    /// nice 19) that needs a new blocking thread does not start it itself:
    /// the new thread would inherit nice 19 and drive the commits of everyone.
    #[cfg(target_os = "linux")]
    #[test]
    fn commits_keep_the_priority_of_the_runtime_that_opened_the_store() {
        let opener = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        // The opener's threads were started from this one.
        let ours = nice();
        let history =
            opener.block_on(SqliteHistory::open_in_memory(HistoryOptions::default())).unwrap();
        // The opener's idle blocking thread (it opened the store) is kept busy,
        // so that the write needs a new one.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = opener.spawn_blocking(move || held.recv().is_err());
        let caller = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(|| {
                let tid = rustix::thread::gettid();
                rustix::process::setpriority_process(Some(tid), 19).unwrap();
            })
            .build()
            .unwrap();
        let history = Arc::new(history);
        let store = Arc::clone(&history);
        let (asking, driven) = caller
            .block_on(caller.spawn(async move {
                let asking = nice();
                (asking, store.on_write_conn(|_| Ok(nice())).await)
            }))
            .unwrap();
        assert_eq!(asking, 19);
        assert_eq!(driven.unwrap(), ours);
        drop(release);
        opener.block_on(busy).unwrap();
        drop(history);
        drop(caller);
        drop(opener);
    }
}
