//! The committer: applies queued writes in batches on the one write
//! connection, on tokio's blocking pool.
//!
//! A writer queues its group of commands and, if no driver is scheduled,
//! schedules one with `spawn_blocking` on the runtime that opened the store;
//! then it waits for its answers. The
//! driver commits everything queued (its own writer's group and any other's)
//! in transactions of up to `max_batch` commands, answers each caller, and
//! keeps going until the queue is empty; a group queued after its last look
//! schedules the next driver. Concurrent writers therefore share one commit
//! (group commit), no thread waits idle for work, and no rusqlite call runs
//! on the async executor.
//!
//! Each command runs inside its own savepoint only when its batch has a
//! failing write, so one failing write does not undo the others; a group is
//! never split across transactions, so it becomes visible at once.
//!
//! Everything else that needs the write connection (the webhook dispatcher's
//! claims, pruning, WAL checkpoints) is queued the same way, as a task run
//! between two batches in queue order: under a steady stream of commits it waits
//! for the commits queued before it, not for a pause that may never come.
//!
//! Every [`COMMITS_PER_CHECKPOINT`] commits, a file's WAL is copied into the
//! database in two parts: a copier on a connection of its own (on the blocking
//! pool) copies what the WAL holds then, while commits go on; then it queues a
//! checkpoint for the write connection, which copies only the frames committed
//! meanwhile and so completes the copy (the next commit starts the WAL over).
//! The committer, which every writer waits for, does a small part of the copying.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::model::{
    CloseSteps, EventRecord, GateDecision, NewRun, PendingGate, RunId, RunStatus, RunUpdate,
    StepRecord, Transition, Write,
};
use crate::sqlite::codec::{attempts_to_sql, json_to_sql, ms_to_sql, opt_ts_to_sql, ts_to_sql};
use crate::sqlite::outbox::Spool;
use crate::sqlite::{Conn, lock};

/// One write.
#[derive(Debug)]
pub(crate) enum Op {
    CreateRun(NewRun),
    UpdateRun(RunId, RunUpdate),
    RecordStep(RunId, StepRecord),
    AddPendingGate(PendingGate),
    RecordGateDecision(RunId, GateDecision),
    Transition(RunId, Transition),
    AppendEvent(EventRecord),
    CloseSteps(RunId, CloseSteps),
    /// Writes that commit together or not at all (`HistoryBackend::commit`).
    Atomic(Vec<Op>),
    /// A write to the webhook outbox (see `sqlite::outbox`).
    Outbox(Write),
    ApplyRetention,
}

impl From<Write> for Op {
    fn from(write: Write) -> Self {
        match write {
            Write::CreateRun(run) => Op::CreateRun(run),
            Write::UpdateRun(run_id, update) => Op::UpdateRun(run_id, update),
            Write::RecordStep(run_id, step) => Op::RecordStep(run_id, step),
            Write::AddPendingGate(gate) => Op::AddPendingGate(gate),
            Write::Transition(run_id, transition) => Op::Transition(run_id, transition),
            Write::AppendEvent(event) => Op::AppendEvent(event),
            Write::DecideGate(run_id, decision) => Op::RecordGateDecision(run_id, decision),
            Write::CloseSteps(run_id, close) => Op::CloseSteps(run_id, close),
            outbox => Op::Outbox(outbox),
        }
    }
}

/// A write and where to send its outcome (a count for `ApplyRetention`).
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<u64>>,
}

/// How many commits pass between two checkpoints of the WAL.
const COMMITS_PER_CHECKPOINT: u32 = 256;

/// Work for the write connection outside any batch; it answers its own caller.
pub(crate) type Task = Box<dyn FnOnce(&mut Connection) + Send>;

/// What waits for the driver, in order.
enum Queued {
    /// Commands committed together in one transaction.
    Group(Vec<Command>),
    /// Run alone between two batches.
    Task(Task),
    /// Copy the WAL into the database, between two batches.
    Checkpoint,
}

/// What the driver does next.
enum Next {
    Batch(Vec<Command>),
    Task(Task),
    Checkpoint,
    Idle,
}

/// The shared write path of one database.
pub(crate) struct Committer {
    conn: Conn,
    /// Work waiting for a driver, oldest first.
    queue: Mutex<VecDeque<Queued>>,
    /// A driver is scheduled or running.
    scheduled: AtomicBool,
    max_batch: usize,
    keep: u32,
    commits: AtomicU32,
    /// The WAL's copier (files only; the write connection has automatic
    /// checkpoints off). `None`: no checkpoints.
    copier: Option<Copier>,
    /// The runtime whose blocking pool drives the committer: the one that
    /// opened the store, whichever runtime a writer calls from (a driver
    /// started by a low-priority thread, such as the webhook dispatcher's,
    /// would commit everyone's writes at its priority). `None` outside a
    /// runtime: the caller's.
    runtime: Option<tokio::runtime::Handle>,
}

/// The connection that copies the WAL beside the committer, and whether it
/// is copying.
struct Copier {
    conn: Mutex<Connection>,
    busy: AtomicBool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("max_batch", &self.max_batch)
            .field("keep", &self.keep)
            .field("checkpoints", &self.copier.is_some())
            .finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn new(conn: Conn, max_batch: usize, keep: u32, copier: Option<Connection>) -> Self {
        Self {
            conn,
            queue: Mutex::new(VecDeque::new()),
            scheduled: AtomicBool::new(false),
            max_batch: max_batch.max(1),
            keep,
            commits: AtomicU32::new(0),
            copier: copier
                .map(|conn| Copier { conn: Mutex::new(conn), busy: AtomicBool::new(false) }),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Runs `work` on the blocking pool of the store's runtime.
    ///
    /// A blocking thread is started by the thread that asks for it and
    /// inherits its scheduling priority, which a thread that is not of
    /// higher priority cannot give back. A thread of another runtime (the
    /// webhook dispatcher's, at nice 19) therefore asks through a task on the
    /// store's runtime, so that no commit is ever driven at another
    /// runtime's priority.
    fn spawn_blocking(&self, work: impl FnOnce() + Send + 'static) {
        let Some(runtime) = &self.runtime else {
            drop(tokio::task::spawn_blocking(work));
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(current) if current.id() != runtime.id() => {
                let store = runtime.clone();
                drop(runtime.spawn(async move { drop(store.spawn_blocking(work)) }));
            }
            _ => drop(runtime.spawn_blocking(work)),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a group of commands, committed together in one transaction,
    /// and makes sure a driver will commit it (on tokio's blocking pool).
    pub(crate) fn submit(self: &Arc<Self>, group: Vec<Command>) {
        if group.is_empty() {
            return;
        }
        self.enqueue(Queued::Group(group));
    }

    /// Queues `task` to run on the write connection after everything queued
    /// before it, outside any batch.
    pub(crate) fn run(self: &Arc<Self>, task: Task) {
        self.enqueue(Queued::Task(task));
    }

    fn enqueue(self: &Arc<Self>, work: Queued) {
        self.queue().push_back(work);
        if self.claim() {
            let committer = Arc::clone(self);
            self.spawn_blocking(move || committer.drive());
        }
    }

    /// Whether the caller becomes the one driver.
    fn claim(&self) -> bool {
        !self.scheduled.swap(true, Ordering::SeqCst)
    }

    /// Works until the queue is empty; run by the one claimant. A panic
    /// lets go of the claim (its commands' callers get `Error::Closed`), so
    /// the next writer schedules a new driver.
    fn drive(self: &Arc<Self>) {
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        loop {
            {
                let _release = Release(&self.scheduled);
                let mut conn = lock(&self.conn);
                loop {
                    match self.next() {
                        Next::Idle => break,
                        Next::Batch(mut batch) => {
                            commit_batch(&conn, &mut batch, self.keep);
                            self.committed();
                        }
                        Next::Task(task) => task(&mut conn),
                        Next::Checkpoint => checkpoint(&conn),
                    }
                }
            }
            // Work queued after the last look, by a caller that saw this
            // driver scheduled, is this driver's to do.
            if self.queue().is_empty() || !self.claim() {
                return;
            }
        }
    }

    /// The oldest work: whole groups up to `max_batch` commands (at least one
    /// group), stopping before a task or checkpoint; or that task or checkpoint.
    fn next(&self) -> Next {
        let mut queue = self.queue();
        let mut batch = Vec::new();
        loop {
            match queue.front() {
                None => break,
                Some(Queued::Group(group)) => {
                    if !batch.is_empty() && batch.len() + group.len() > self.max_batch {
                        break;
                    }
                    if let Some(Queued::Group(group)) = queue.pop_front() {
                        batch.extend(group);
                    }
                }
                Some(Queued::Task(_) | Queued::Checkpoint) => {
                    if !batch.is_empty() {
                        break;
                    }
                    return match queue.pop_front() {
                        Some(Queued::Task(task)) => Next::Task(task),
                        Some(Queued::Checkpoint) => Next::Checkpoint,
                        _ => Next::Idle,
                    };
                }
            }
        }
        if batch.is_empty() { Next::Idle } else { Next::Batch(batch) }
    }

    /// Counts a commit; every [`COMMITS_PER_CHECKPOINT`] of them starts the
    /// copier, unless it is still copying (its checkpoint comes then).
    fn committed(self: &Arc<Self>) {
        let commits = self.commits.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let Some(copier) = &self.copier else { return };
        if !commits.is_multiple_of(COMMITS_PER_CHECKPOINT)
            || copier.busy.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let committer = Arc::clone(self);
        self.spawn_blocking(move || {
            if let Some(copier) = &committer.copier {
                checkpoint(&copier.conn.lock().unwrap_or_else(PoisonError::into_inner));
                copier.busy.store(false, Ordering::SeqCst);
            }
            committer.enqueue(Queued::Checkpoint);
        });
    }
}

/// Copies the WAL into the database on the write connection, so that no
/// commit runs meanwhile and the next one starts the WAL over (a checkpoint
/// from another connection while writers keep appending never catches up, and
/// the WAL grows without end).
fn checkpoint(conn: &Connection) {
    let done: rusqlite::Result<(i64, i64, i64)> =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        });
    match done {
        Ok((_, log, copied)) => log::trace!("history WAL checkpoint: {copied} of {log} pages"),
        Err(e) => log::warn!("history WAL checkpoint failed: {e}"),
    }
}

/// Runs a transaction-control statement from the statement cache (parsing
/// `SAVEPOINT`/`RELEASE` for every write was a good part of a commit's cost).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn commit_batch(conn: &Connection, batch: &mut Vec<Command>, keep: u32) {
    if !conn.is_autocommit() {
        // A transaction left open by an earlier failure: end it first.
        let _ = control(conn, "ROLLBACK");
    }
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        log::error!("failed to begin history write batch: {e}");
        fail_all(batch.drain(..), e);
        return;
    }
    // Writes seldom fail: apply them all at once first, and only when one
    // fails start over with a savepoint per write, so that the failing one
    // is undone alone (each savepoint costs two more statements per write).
    // The deliveries enqueued with their events are spooled meanwhile and
    // written just before the commit.
    let mut spool = Spool::default();
    let outcomes: Vec<Result<u64>> =
        batch.iter().map(|c| apply(conn, &c.op, keep, &mut spool)).collect();
    let outcomes = if outcomes.iter().all(Result::is_ok) || batch.len() == 1 {
        if outcomes.iter().any(Result::is_err) {
            // The one write failed, maybe halfway: undo it.
            let _ = control(conn, "ROLLBACK");
            answer(batch.drain(..).zip(outcomes));
            return;
        }
        outcomes
    } else {
        if let Err(e) = control(conn, "ROLLBACK").and_then(|()| control(conn, "BEGIN IMMEDIATE")) {
            log::error!("failed to restart history write batch: {e}");
            fail_all(batch.drain(..), e);
            return;
        }
        spool.clear();
        batch.iter().map(|c| apply_alone(conn, &c.op, keep, &mut spool)).collect()
    };
    match spool.flush(conn).and_then(|()| control(conn, "COMMIT")) {
        Ok(()) => answer(batch.drain(..).zip(outcomes)),
        Err(e) => {
            log::error!("failed to commit history write batch of {}: {e}", batch.len());
            if !conn.is_autocommit() {
                let _ = control(conn, "ROLLBACK");
            }
            fail_all(batch.drain(..), e);
        }
    }
}

/// Applies one write inside a savepoint of its own: if it fails, it is
/// undone alone and the rest of the transaction stays.
fn apply_alone(conn: &Connection, op: &Op, keep: u32, spool: &mut Spool) -> Result<u64> {
    control(conn, "SAVEPOINT write").map_err(write_err)?;
    let mark = spool.mark();
    match apply(conn, op, keep, spool) {
        Ok(n) => control(conn, "RELEASE write").map(|()| n).map_err(write_err),
        Err(e) => {
            spool.undo(&mark);
            if let Err(undo) =
                control(conn, "ROLLBACK TO write").and_then(|()| control(conn, "RELEASE write"))
            {
                log::error!("failed to undo a failed history write: {undo}");
            }
            Err(e)
        }
    }
}

/// Sends each caller its outcome. A caller may have stopped waiting; its
/// write stands anyway.
fn answer(outcomes: impl Iterator<Item = (Command, Result<u64>)>) {
    for (command, outcome) in outcomes {
        let _ = command.reply.send(outcome);
    }
}

fn fail_all(commands: impl Iterator<Item = Command>, e: rusqlite::Error) {
    let source = Arc::new(e);
    for command in commands {
        let _ = command.reply.send(Err(Error::Write { source: Arc::clone(&source) }));
    }
}

pub(crate) fn write_err(e: rusqlite::Error) -> Error {
    Error::Write { source: Arc::new(e) }
}

fn apply(conn: &Connection, op: &Op, keep: u32, spool: &mut Spool) -> Result<u64> {
    match op {
        Op::CreateRun(run) => create_run(conn, run).map(|()| 0),
        Op::UpdateRun(id, update) => update_run(conn, id, update, keep),
        Op::RecordStep(id, step) => record_step(conn, id, step).map(|()| 0),
        Op::AddPendingGate(gate) => add_pending_gate(conn, gate).map(|()| 0),
        Op::RecordGateDecision(id, decision) => {
            record_gate_decision(conn, id, decision).map(|()| 0)
        }
        Op::Transition(id, transition) => transition_run(conn, id, transition, keep),
        Op::AppendEvent(event) => append_events(conn, &[event]).map(|()| 0),
        Op::CloseSteps(id, close) => close_steps(conn, id, close),
        Op::Atomic(ops) => {
            // A failing write fails the whole group; the caller (the batch)
            // undoes it, alone or with its savepoint.
            let mut total = 0;
            let mut rest = ops.as_slice();
            while let Some((op, tail)) = rest.split_first() {
                if let Op::Outbox(Write::EnqueueDelivery(new)) = op {
                    // Its event committed here, byte for byte: spool it,
                    // naming the event.
                    let in_ledger = ops.iter().find_map(|op| match op {
                        Op::AppendEvent(event)
                            if event.id == new.event_id
                                && event.run_id == new.run_id
                                && event.envelope == new.envelope =>
                        {
                            Some(event)
                        }
                        _ => None,
                    });
                    match in_ledger {
                        Some(event) => spool.push(new, event.seq, event.time)?,
                        None => total += crate::sqlite::outbox::enqueue(conn, new)?,
                    }
                    rest = tail;
                    continue;
                }
                let Op::AppendEvent(first) = op else {
                    total += apply(conn, op, keep, spool)?;
                    rest = tail;
                    continue;
                };
                // A run's consecutive events (a commit's usual shape) are
                // appended together: one look at the ledger's end, then rows.
                let events: Vec<&EventRecord> = rest
                    .iter()
                    .map_while(|op| match op {
                        Op::AppendEvent(event) if event.run_id == first.run_id => Some(event),
                        _ => None,
                    })
                    .collect();
                rest = &rest[events.len()..];
                append_events(conn, &events)?;
            }
            Ok(total)
        }
        Op::ApplyRetention => apply_retention(conn, keep),
        Op::Outbox(write) => crate::sqlite::outbox::apply(conn, write),
    }
}

/// The compare-and-set of a run's status: `update` applies only while the
/// run's status is one of `from` ([`Error::StatusConflict`] otherwise).
fn transition_run(
    conn: &Connection,
    id: &RunId,
    transition: &Transition,
    keep: u32,
) -> Result<u64> {
    set_run(conn, id, &transition.update, Some(&transition.from), keep)
}

/// Rows per `INSERT` when appending several events of a run.
const EVENT_ROWS: usize = 8;

/// Appends events of one run, in order: the first must be the run's
/// next `seq` and each the one after the last. The ledger's end is read once;
/// the primary key still refuses a `seq` taken meanwhile.
fn append_events(conn: &Connection, events: &[&EventRecord]) -> Result<()> {
    let Some(first) = events.first() else { return Ok(()) };
    let conflict = |event: &EventRecord| Error::SeqConflict {
        run_id: event.run_id.to_string(),
        seq: event.seq,
    };
    for pair in events.windows(2) {
        if pair[1].seq != pair[0].seq.wrapping_add(1) {
            return Err(conflict(pair[1]));
        }
    }
    let last: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?1")
        .map_err(write_err)?
        .query_row([first.run_id.as_str()], |row| row.get(0))
        .map_err(write_err)?;
    if i64::try_from(first.seq).ok() != last.checked_add(1) {
        return Err(conflict(first));
    }
    for chunk in events.chunks(EVENT_ROWS) {
        let sql = format!(
            "INSERT INTO events (run_id, seq, id, type, time, envelope) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(write_err)?;
        for (row, event) in chunk.iter().enumerate() {
            let seq = i64::try_from(event.seq).map_err(|_| conflict(event))?;
            let at = row * 6;
            let bind = |stmt: &mut rusqlite::CachedStatement<'_>| -> rusqlite::Result<()> {
                stmt.raw_bind_parameter(at + 1, event.run_id.as_str())?;
                stmt.raw_bind_parameter(at + 2, seq)?;
                stmt.raw_bind_parameter(at + 3, event.id.as_str())?;
                stmt.raw_bind_parameter(at + 4, event.event_type.as_str())?;
                stmt.raw_bind_parameter(at + 6, event.envelope.as_str())
            };
            bind(&mut stmt).map_err(write_err)?;
            stmt.raw_bind_parameter(at + 5, ts_to_sql(event.time)?).map_err(write_err)?;
        }
        match stmt.raw_execute() {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                // The run does not exist (foreign key) or a seq is taken.
                ensure_run(conn, &first.run_id)?;
                return Err(conflict(chunk[0]));
            }
            Err(e) => return Err(write_err(e)),
        }
    }
    Ok(())
}

fn close_steps(conn: &Connection, id: &RunId, close: &CloseSteps) -> Result<u64> {
    let at = ts_to_sql(close.at)?;
    let closed = conn
        .prepare_cached(
            "UPDATE steps SET status = ?2, error = ?3, completed_at = ?4, \
             duration_ms = MAX(0, (?4 - COALESCE(started_at, ?4)) / 1000000) \
             WHERE run_id = ?1 AND status = 'running'",
        )
        .map_err(write_err)?
        .execute(params![id.as_str(), close.status.as_str(), close.error, at])
        .map_err(write_err)?;
    Ok(closed as u64)
}

fn create_run(conn: &Connection, run: &NewRun) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO runs (id, workflow, status, trigger, request_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(write_err)?;
    let inserted = stmt.execute(params![
        run.id.as_str(),
        run.workflow,
        RunStatus::Queued.as_str(),
        run.trigger.as_str(),
        run.request_id,
        ts_to_sql(run.created_at)?,
    ]);
    match inserted {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
            Err(Error::DuplicateRun { run_id: run.id.to_string() })
        }
        Err(e) => Err(write_err(e)),
    }
}

fn update_run(conn: &Connection, id: &RunId, update: &RunUpdate, keep: u32) -> Result<u64> {
    set_run(conn, id, update, None, keep)
}

/// Writes a run's status (and the other fields `update` sets), only while
/// its status is one of `from` when given; moving a run to a finished
/// status applies retention to its workflow. The one statement both plain
/// updates and transitions use.
fn set_run(
    conn: &Connection,
    id: &RunId,
    update: &RunUpdate,
    from: Option<&[RunStatus]>,
    keep: u32,
) -> Result<u64> {
    if let Some(from) = from
        && from == [update.status]
        && changes_only_status(update)
    {
        return confirm_status(conn, id, update.status);
    }
    // The statuses are the enum's own names, never outside text; each
    // distinct `from` is one cached statement.
    let guard = match from {
        None => String::new(),
        Some([]) => " AND status IN (NULL)".to_owned(),
        Some(from) => format!(
            " AND status IN ({})",
            from.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
        ),
    };
    let sql = format!(
        "UPDATE runs SET status = ?2, started_at = COALESCE(?3, started_at), \
         completed_at = COALESCE(?4, completed_at), duration_ms = COALESCE(?5, duration_ms), \
         error = COALESCE(?6, error) WHERE id = ?1{guard} RETURNING workflow"
    );
    let workflow: Option<String> = conn
        .prepare_cached(&sql)
        .map_err(write_err)?
        .query_row(
            params![
                id.as_str(),
                update.status.as_str(),
                opt_ts_to_sql(update.started_at)?,
                opt_ts_to_sql(update.completed_at)?,
                update.duration_ms.map(ms_to_sql),
                update.error,
            ],
            |row| row.get(0),
        )
        .optional()
        .map_err(write_err)?;
    let Some(workflow) = workflow else {
        let status = match from {
            None => None,
            Some(_) => stored_status(conn, id)?,
        };
        return Err(refused(id, status));
    };
    if update.status.is_finished() { prune_workflow(conn, &workflow, keep) } else { Ok(0) }
}

/// Whether `update` sets the status and nothing else.
fn changes_only_status(update: &RunUpdate) -> bool {
    let RunUpdate { status: _, started_at, completed_at, duration_ms, error } = update;
    started_at.is_none() && completed_at.is_none() && duration_ms.is_none() && error.is_none()
}

/// The compare-and-set that changes nothing ("still `running`", which every
/// step's start commits): a read inside the write transaction, which holds
/// the database's write lock, so no other writer can change the status
/// before the commit. Writing the same row again would move its entries in
/// both status indexes and dirty their pages in every commit.
fn confirm_status(conn: &Connection, id: &RunId, expected: RunStatus) -> Result<u64> {
    match stored_status(conn, id)? {
        Some(status) if status == expected.as_str() => Ok(0),
        status => Err(refused(id, status)),
    }
}

/// A run's status as stored; `None` when there is no such run.
fn stored_status(conn: &Connection, id: &RunId) -> Result<Option<String>> {
    conn.prepare_cached("SELECT status FROM runs WHERE id = ?1")
        .map_err(write_err)?
        .query_row([id.as_str()], |row| row.get(0))
        .optional()
        .map_err(write_err)
}

/// Why a compare-and-set on a run with this stored status (none: no run)
/// did not apply.
fn refused(id: &RunId, status: Option<String>) -> Error {
    match status {
        Some(status) => Error::StatusConflict { run_id: id.to_string(), status },
        None => Error::RunNotFound { run_id: id.to_string() },
    }
}

fn ensure_run(conn: &Connection, id: &RunId) -> Result<()> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM runs WHERE id = ?1").map_err(write_err)?;
    let found = stmt.exists([id.as_str()]).map_err(write_err)?;
    if found { Ok(()) } else { Err(Error::RunNotFound { run_id: id.to_string() }) }
}

fn record_step(conn: &Connection, id: &RunId, step: &StepRecord) -> Result<()> {
    // The foreign key refuses a step of a run that does not exist; only then
    // is the run looked up, to say so (one query less per step written).
    let upserted = conn
        .prepare_cached(
            "INSERT INTO steps (run_id, execution, step_index, step_id, step_type, status, error, \
         started_at, completed_at, duration_ms, data, attempts) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (run_id, execution, step_index) DO UPDATE SET \
         step_id = excluded.step_id, step_type = excluded.step_type, status = excluded.status, \
         error = excluded.error, started_at = excluded.started_at, \
         completed_at = excluded.completed_at, duration_ms = excluded.duration_ms, \
         data = excluded.data, attempts = excluded.attempts",
        )
        .map_err(write_err)?
        .execute(params![
            id.as_str(),
            step.execution,
            step.index,
            step.step_id,
            step.step_type,
            step.status.as_str(),
            step.error,
            opt_ts_to_sql(step.started_at)?,
            opt_ts_to_sql(step.completed_at)?,
            step.duration_ms.map(ms_to_sql),
            json_to_sql(step.data.as_ref(), "step data")?,
            attempts_to_sql(&step.attempts)?,
        ]);
    match upserted {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
            ensure_run(conn, id)?;
            Err(write_err(rusqlite::Error::SqliteFailure(e, None)))
        }
        Err(e) => Err(write_err(e)),
    }
}

fn add_pending_gate(conn: &Connection, gate: &PendingGate) -> Result<()> {
    ensure_run(conn, &gate.run_id)?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO pending_gates \
         (run_id, gate_id, step_index, message, artifact, since, deadline) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(write_err)?
    .execute(params![
        gate.run_id.as_str(),
        gate.gate_id,
        gate.step_index,
        gate.message,
        gate.artifact,
        ts_to_sql(gate.since)?,
        opt_ts_to_sql(gate.deadline)?,
    ])
    .map_err(write_err)?;
    Ok(())
}

fn record_gate_decision(conn: &Connection, id: &RunId, decision: &GateDecision) -> Result<()> {
    let removed = conn
        .prepare_cached("DELETE FROM pending_gates WHERE run_id = ?1 AND gate_id = ?2")
        .map_err(write_err)?
        .execute(params![id.as_str(), decision.gate_id])
        .map_err(write_err)?;
    if removed == 0 {
        return Err(Error::GateNotPending {
            run_id: id.to_string(),
            gate_id: decision.gate_id.clone(),
        });
    }
    conn.prepare_cached(
        "INSERT INTO gate_decisions (run_id, gate_id, decision, decided_by, decided_at, comment, \
         patch, artifact_before, artifact_after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(write_err)?
    .execute(params![
        id.as_str(),
        decision.gate_id,
        decision.decision.as_str(),
        decision.by,
        ts_to_sql(decision.at)?,
        decision.comment,
        json_to_sql(decision.patch.as_ref(), "gate patch")?,
        json_to_sql(decision.artifact_before.as_ref(), "artifact before")?,
        json_to_sql(decision.artifact_after.as_ref(), "artifact after")?,
    ])
    .map_err(write_err)?;
    Ok(())
}

/// `status IN (...)` of the finished statuses, the only ones retention deletes.
fn finished_statuses() -> String {
    RunStatus::ALL
        .iter()
        .filter(|s| s.is_finished())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes the finished runs of `workflow` older than the newest `keep`
/// finished ones; steps and gates go with them by cascade.
pub(crate) fn prune_workflow(conn: &Connection, workflow: &str, keep: u32) -> Result<u64> {
    if keep == 0 {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE workflow = ?1 \
         AND status IN ({}) ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?2)",
        finished_statuses()
    );
    let deleted = conn
        .prepare_cached(&sql)
        .map_err(write_err)?
        .execute(params![workflow, keep])
        .map_err(write_err)?;
    if deleted > 0 {
        log::debug!("retention deleted {deleted} runs of workflow {workflow}");
    }
    Ok(deleted as u64)
}

pub(crate) fn apply_retention(conn: &Connection, keep: u32) -> Result<u64> {
    if keep == 0 {
        return Ok(0);
    }
    let workflows: Vec<String> = conn
        .prepare_cached("SELECT DISTINCT workflow FROM runs")
        .map_err(write_err)?
        .query_map([], |row| row.get(0))
        .map_err(write_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(write_err)?;
    let mut deleted = 0;
    for workflow in workflows {
        deleted += prune_workflow(conn, &workflow, keep)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sqlite::schema::migrated;

    /// "Still `running`", the check each step's start commits, changes no
    /// row (so it dirties no page of the runs table or its indexes), and
    /// still refuses a run that moved on.
    #[test]
    fn a_transition_to_the_same_status_only_reads() {
        let conn = migrated();
        let id = RunId::new("r1");
        let run = NewRun {
            id: id.clone(),
            workflow: "wf".to_owned(),
            trigger: crate::model::Trigger::Api,
            request_id: None,
            created_at: jiff::Timestamp::now(),
        };
        create_run(&conn, &run).unwrap();
        let to = |status, from: &[RunStatus]| {
            Op::Transition(
                id.clone(),
                Transition { from: from.to_vec(), update: RunUpdate::status(status) },
            )
        };
        apply(&conn, &to(RunStatus::Running, &[RunStatus::Queued]), 0, &mut Spool::default())
            .unwrap();
        let before = conn.total_changes();
        apply(&conn, &to(RunStatus::Running, &[RunStatus::Running]), 0, &mut Spool::default())
            .unwrap();
        assert_eq!(conn.total_changes(), before, "the check wrote a row");
        match apply(&conn, &to(RunStatus::Waiting, &[RunStatus::Waiting]), 0, &mut Spool::default())
        {
            Err(Error::StatusConflict { status, .. }) => assert_eq!(status, "running"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let missing = Op::Transition(
            RunId::new("missing"),
            Transition {
                from: vec![RunStatus::Running],
                update: RunUpdate::status(RunStatus::Running),
            },
        );
        assert!(matches!(
            apply(&conn, &missing, 0, &mut Spool::default()),
            Err(Error::RunNotFound { .. })
        ));
        // With another field to set, the same status is written.
        let started = RunUpdate {
            started_at: Some(jiff::Timestamp::now()),
            ..RunUpdate::status(RunStatus::Running)
        };
        let stamp = Op::Transition(
            id.clone(),
            Transition { from: vec![RunStatus::Running], update: started },
        );
        apply(&conn, &stamp, 0, &mut Spool::default()).unwrap();
        assert_eq!(conn.total_changes(), before + 1);
    }

    /// Work queued for the write connection runs in queue order: a task sees
    /// the groups queued before it committed and none queued after it, even
    /// when all of it waits while the connection is busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_run_between_batches_in_queue_order() {
        let conn: Conn = Arc::new(Mutex::new(migrated()));
        let committer = Arc::new(Committer::new(Arc::clone(&conn), 64, 0, None));
        let busy = lock(&conn);
        let group = |id: &str| {
            let (reply, answer) = oneshot::channel();
            let run = NewRun {
                id: RunId::new(id),
                workflow: "wf".to_owned(),
                trigger: crate::model::Trigger::Api,
                request_id: None,
                created_at: jiff::Timestamp::now(),
            };
            (Command { op: Op::CreateRun(run), reply }, answer)
        };
        let (first, first_done) = group("r1");
        committer.submit(vec![first]);
        let (seen, saw) = oneshot::channel();
        committer.run(Box::new(move |conn| {
            let rows: Vec<String> = conn
                .prepare("SELECT id FROM runs ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let _ = seen.send(rows);
        }));
        let (second, second_done) = group("r2");
        committer.submit(vec![second]);
        drop(busy);
        assert_eq!(saw.await.unwrap(), ["r1"]);
        assert!(first_done.await.unwrap().is_ok());
        assert!(second_done.await.unwrap().is_ok());
        let all: i64 =
            lock(&conn).query_row("SELECT count(*) FROM runs", [], |r| r.get(0)).unwrap();
        assert_eq!(all, 2);
    }

    /// A batch where one group fails is applied again group by group: the
    /// failing group's spooled deliveries go with it, the others' commit.
    #[test]
    fn a_failed_group_takes_its_spooled_deliveries_with_it() {
        use crate::conformance::{delivery, event, new_run};
        let conn = migrated();
        let (a, b) = (new_run("a", "wf", 0), new_run("b", "wf", 0));
        let group = |ops: Vec<Write>| {
            let (reply, answer) = oneshot::channel();
            let op = Op::Atomic(ops.into_iter().map(Op::from).collect());
            (Command { op, reply }, answer)
        };
        let (ok, mut ok_answer) = group(vec![
            Write::CreateRun(a.clone()),
            Write::AppendEvent(event(&a.id, 1)),
            Write::EnqueueDelivery(delivery("a-1", &a.id, 1, 0, 1)),
        ]);
        // Its second event skips a seq: the group fails after spooling.
        let (bad, mut bad_answer) = group(vec![
            Write::CreateRun(b.clone()),
            Write::AppendEvent(event(&b.id, 1)),
            Write::EnqueueDelivery(delivery("b-1", &b.id, 1, 0, 1)),
            Write::AppendEvent(event(&b.id, 3)),
        ]);
        let mut batch = vec![ok, bad];
        commit_batch(&conn, &mut batch, 0);
        assert!(matches!(ok_answer.try_recv(), Ok(Ok(_))));
        assert!(matches!(bad_answer.try_recv(), Ok(Err(Error::SeqConflict { .. }))));
        let entries: Vec<String> = conn
            .prepare("SELECT entries FROM delivery_spool")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].contains("\"a-1\"") && !entries[0].contains("b-1"), "{entries:?}");
    }
}
