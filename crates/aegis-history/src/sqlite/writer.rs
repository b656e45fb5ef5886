//! The writer thread: owns the write connection and commits queued writes in batches.
//!
//! Every write is a command sent over a channel. The thread takes all
//! commands queued at that moment (up to `max_batch`), applies each inside
//! its own savepoint so one failing write does not undo the others, commits
//! once, and only then answers each caller. Concurrent runs therefore share
//! one commit (group commit) instead of paying one each.

use std::sync::Arc;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::model::{GateDecision, NewRun, PendingGate, RunId, RunStatus, RunUpdate, StepRecord};
use crate::sqlite::codec::{json_to_sql, ms_to_sql, opt_ts_to_sql, ts_to_sql};
use crate::sqlite::{Conn, lock};

/// One write.
#[derive(Debug)]
pub(crate) enum Op {
    CreateRun(NewRun),
    UpdateRun(RunId, RunUpdate),
    RecordStep(RunId, StepRecord),
    AddPendingGate(PendingGate),
    RecordGateDecision(RunId, GateDecision),
    ApplyRetention,
}

/// A write and where to send its outcome (a count for `ApplyRetention`).
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<u64>>,
}

/// Runs until every sender is dropped, then returns (closing the connection).
pub(crate) fn run(conn: Conn, mut rx: mpsc::Receiver<Command>, max_batch: usize, keep: u32) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut guard = lock(&conn);
        commit_batch(&mut guard, &mut batch, keep);
    }
    log::debug!("history writer stopped");
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<Command>, keep: u32) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            log::error!("failed to begin history write batch: {e}");
            fail_all(batch.drain(..), e);
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for command in batch.drain(..) {
        let outcome = match tx.savepoint() {
            Ok(sp) => {
                let result = apply(&sp, &command.op, keep);
                match result {
                    Ok(n) => sp.commit().map(|()| n).map_err(write_err),
                    // Dropping the savepoint rolls this command back.
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(write_err(e)),
        };
        outcomes.push((command.reply, outcome));
    }
    match tx.commit() {
        Ok(()) => {
            for (reply, outcome) in outcomes {
                // The caller may have stopped waiting; its write is committed anyway.
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            log::error!("failed to commit history write batch of {}: {e}", outcomes.len());
            let source = Arc::new(e);
            for (reply, _) in outcomes {
                let _ = reply.send(Err(Error::Write { source: Arc::clone(&source) }));
            }
        }
    }
}

fn fail_all(commands: impl Iterator<Item = Command>, e: rusqlite::Error) {
    let source = Arc::new(e);
    for command in commands {
        let _ = command.reply.send(Err(Error::Write { source: Arc::clone(&source) }));
    }
}

fn write_err(e: rusqlite::Error) -> Error {
    Error::Write { source: Arc::new(e) }
}

fn apply(conn: &Connection, op: &Op, keep: u32) -> Result<u64> {
    match op {
        Op::CreateRun(run) => create_run(conn, run).map(|()| 0),
        Op::UpdateRun(id, update) => update_run(conn, id, update, keep),
        Op::RecordStep(id, step) => record_step(conn, id, step).map(|()| 0),
        Op::AddPendingGate(gate) => add_pending_gate(conn, gate).map(|()| 0),
        Op::RecordGateDecision(id, decision) => {
            record_gate_decision(conn, id, decision).map(|()| 0)
        }
        Op::ApplyRetention => apply_retention(conn, keep),
    }
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
    let mut stmt = conn
        .prepare_cached(
            "UPDATE runs SET status = ?2, started_at = COALESCE(?3, started_at), \
             completed_at = COALESCE(?4, completed_at), duration_ms = COALESCE(?5, duration_ms), \
             error = COALESCE(?6, error) WHERE id = ?1 RETURNING workflow",
        )
        .map_err(write_err)?;
    let workflow: Option<String> = stmt
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
        return Err(Error::RunNotFound { run_id: id.to_string() });
    };
    if update.status.is_finished() { prune_workflow(conn, &workflow, keep) } else { Ok(0) }
}

fn ensure_run(conn: &Connection, id: &RunId) -> Result<()> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM runs WHERE id = ?1").map_err(write_err)?;
    let found = stmt.exists([id.as_str()]).map_err(write_err)?;
    if found { Ok(()) } else { Err(Error::RunNotFound { run_id: id.to_string() }) }
}

fn record_step(conn: &Connection, id: &RunId, step: &StepRecord) -> Result<()> {
    ensure_run(conn, id)?;
    conn.prepare_cached(
        "INSERT INTO steps (run_id, execution, step_index, step_id, step_type, status, error, \
         started_at, completed_at, duration_ms, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (run_id, execution, step_index) DO UPDATE SET \
         step_id = excluded.step_id, step_type = excluded.step_type, status = excluded.status, \
         error = excluded.error, started_at = excluded.started_at, \
         completed_at = excluded.completed_at, duration_ms = excluded.duration_ms, \
         data = excluded.data",
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
    ])
    .map_err(write_err)?;
    conn.prepare_cached(
        "DELETE FROM attempts WHERE run_id = ?1 AND execution = ?2 AND step_index = ?3",
    )
    .map_err(write_err)?
    .execute(params![id.as_str(), step.execution, step.index])
    .map_err(write_err)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO attempts (run_id, execution, step_index, attempt, success, error, \
             duration_ms, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(write_err)?;
    for attempt in &step.attempts {
        insert
            .execute(params![
                id.as_str(),
                step.execution,
                step.index,
                attempt.attempt,
                attempt.success,
                attempt.error,
                ms_to_sql(attempt.duration_ms),
                ts_to_sql(attempt.started_at)?,
            ])
            .map_err(write_err)?;
    }
    Ok(())
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
/// finished ones; steps, attempts and gates go with them by cascade.
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
