//! Read queries; each runs on a pooled connection on the blocking pool.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use crate::backend::UnfinishedRuns;
use crate::cursor;
use crate::error::Result;
use crate::model::{
    EventRecord, GateDecision, ListQuery, MAX_PAGE_SIZE, Page, PendingGate, RunDetail, RunId,
    RunRecord, StepRecord,
};
use crate::sqlite::codec::{
    RUN_COLUMNS, attempts_from_sql, json_from_sql, ms_from_sql, opt_ts_from_sql, query_err,
    run_from_row, ts_from_sql, ts_to_sql, u32_from_sql,
};

/// Builds the list query. Keyset pagination on `(created_at, id)` keeps
/// every page an index range scan however deep the caller pages.
pub(crate) fn list_sql(query: &ListQuery, after: bool) -> String {
    let mut clauses = Vec::new();
    if query.workflow.is_some() {
        clauses.push("workflow = :workflow");
    }
    if query.status.is_some() {
        clauses.push("status = :status");
    }
    if after {
        clauses.push("(created_at, id) < (:created_at, :id)");
    }
    let filter =
        if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    format!(
        "SELECT {RUN_COLUMNS} FROM runs {filter} ORDER BY created_at DESC, id DESC LIMIT :limit"
    )
}

pub(crate) fn list_runs(conn: &Connection, query: &ListQuery) -> Result<Page> {
    let after = query.cursor.as_deref().map(cursor::decode).transpose()?;
    let limit = query.limit.min(MAX_PAGE_SIZE);
    if limit == 0 {
        return Ok(Page { runs: Vec::new(), next_cursor: None });
    }
    let sql = list_sql(query, after.is_some());
    let mut stmt = conn.prepare_cached(&sql).map_err(query_err)?;
    let mut named: Vec<(&str, SqlValue)> = Vec::new();
    if let Some(workflow) = &query.workflow {
        named.push((":workflow", SqlValue::Text(workflow.clone())));
    }
    if let Some(status) = query.status {
        named.push((":status", SqlValue::Text(status.as_str().to_owned())));
    }
    if let Some(pos) = &after {
        named.push((":created_at", SqlValue::Integer(ts_to_sql(pos.created_at)?)));
        named.push((":id", SqlValue::Text(pos.id.as_str().to_owned())));
    }
    // One extra row tells whether another page exists.
    named.push((":limit", SqlValue::Integer(i64::from(limit) + 1)));
    let refs: Vec<(&str, &dyn rusqlite::ToSql)> =
        named.iter().map(|(k, v)| (*k, v as &dyn rusqlite::ToSql)).collect();
    let mut rows = stmt.query(refs.as_slice()).map_err(query_err)?;
    let mut runs = Vec::with_capacity(limit as usize);
    let mut more = false;
    while let Some(row) = rows.next().map_err(query_err)? {
        if runs.len() == limit as usize {
            more = true;
            break;
        }
        runs.push(run_from_row(row)?);
    }
    let next_cursor = match runs.last() {
        Some(last) if more => Some(cursor::encode(last.created_at, &last.id)),
        _ => None,
    };
    Ok(Page { runs, next_cursor })
}

pub(crate) fn unfinished(conn: &Connection) -> Result<UnfinishedRuns> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running', 'waiting') \
         ORDER BY created_at, id"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(query_err)?;
    let mut rows = stmt.query([]).map_err(query_err)?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next().map_err(query_err)? {
        runs.push(run_from_row(row)?);
    }
    Ok(UnfinishedRuns::from_runs(runs))
}

fn pending_from_row(row: &rusqlite::Row<'_>) -> Result<PendingGate> {
    Ok(PendingGate {
        run_id: RunId::new(row.get::<_, String>(0).map_err(query_err)?),
        gate_id: row.get(1).map_err(query_err)?,
        step_index: u32_from_sql(row.get(2).map_err(query_err)?, "step index")?,
        message: row.get(3).map_err(query_err)?,
        artifact: row.get(4).map_err(query_err)?,
        since: ts_from_sql(row.get(5).map_err(query_err)?)?,
        deadline: opt_ts_from_sql(row.get(6).map_err(query_err)?)?,
    })
}

const PENDING_COLUMNS: &str = "run_id, gate_id, step_index, message, artifact, since, deadline";

pub(crate) fn pending_gates(conn: &Connection) -> Result<Vec<PendingGate>> {
    let sql =
        format!("SELECT {PENDING_COLUMNS} FROM pending_gates ORDER BY since, run_id, gate_id");
    let mut stmt = conn.prepare_cached(&sql).map_err(query_err)?;
    let mut rows = stmt.query([]).map_err(query_err)?;
    let mut gates = Vec::new();
    while let Some(row) = rows.next().map_err(query_err)? {
        gates.push(pending_from_row(row)?);
    }
    Ok(gates)
}

pub(crate) fn get_run(conn: &Connection, id: &RunId) -> Result<Option<RunDetail>> {
    // One snapshot for the run and its steps, decisions and gates: read apart, a
    // commit between two of the queries would show a run that never was.
    let tx = conn.unchecked_transaction().map_err(query_err)?;
    let conn: &Connection = &tx;
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql).map_err(query_err)?;
    let run: Option<RunRecord> = {
        let mut rows = stmt.query([id.as_str()]).map_err(query_err)?;
        match rows.next().map_err(query_err)? {
            Some(row) => Some(run_from_row(row)?),
            None => None,
        }
    };
    let Some(run) = run else { return Ok(None) };

    let mut steps = Vec::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT execution, step_index, step_id, step_type, status, error, started_at, \
                 completed_at, duration_ms, data, attempts FROM steps WHERE run_id = ?1 \
                 ORDER BY execution, step_index",
            )
            .map_err(query_err)?;
        let mut rows = stmt.query([id.as_str()]).map_err(query_err)?;
        while let Some(row) = rows.next().map_err(query_err)? {
            let execution = u32_from_sql(row.get(0).map_err(query_err)?, "execution")?;
            let index = u32_from_sql(row.get(1).map_err(query_err)?, "step index")?;
            let status: String = row.get(4).map_err(query_err)?;
            steps.push(StepRecord {
                execution,
                index,
                step_id: row.get(2).map_err(query_err)?,
                step_type: row.get(3).map_err(query_err)?,
                status: status.parse()?,
                error: row.get(5).map_err(query_err)?,
                started_at: opt_ts_from_sql(row.get(6).map_err(query_err)?)?,
                completed_at: opt_ts_from_sql(row.get(7).map_err(query_err)?)?,
                duration_ms: row
                    .get::<_, Option<i64>>(8)
                    .map_err(query_err)?
                    .map(ms_from_sql)
                    .transpose()?,
                data: json_from_sql(row.get(9).map_err(query_err)?, "step data")?,
                attempts: attempts_from_sql(row.get(10).map_err(query_err)?)?,
            });
        }
    }

    let mut gate_decisions = Vec::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT gate_id, decision, decided_by, decided_at, comment, patch, \
                 artifact_before, artifact_after FROM gate_decisions WHERE run_id = ?1 \
                 ORDER BY seq",
            )
            .map_err(query_err)?;
        let mut rows = stmt.query([id.as_str()]).map_err(query_err)?;
        while let Some(row) = rows.next().map_err(query_err)? {
            let decision: String = row.get(1).map_err(query_err)?;
            gate_decisions.push(GateDecision {
                gate_id: row.get(0).map_err(query_err)?,
                decision: decision.parse()?,
                by: row.get(2).map_err(query_err)?,
                at: ts_from_sql(row.get(3).map_err(query_err)?)?,
                comment: row.get(4).map_err(query_err)?,
                patch: json_from_sql(row.get(5).map_err(query_err)?, "gate patch")?,
                artifact_before: json_from_sql(row.get(6).map_err(query_err)?, "artifact before")?,
                artifact_after: json_from_sql(row.get(7).map_err(query_err)?, "artifact after")?,
            });
        }
    }

    let mut pending_gates = Vec::new();
    {
        let sql = format!(
            "SELECT {PENDING_COLUMNS} FROM pending_gates WHERE run_id = ?1 ORDER BY since, gate_id"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(query_err)?;
        let mut rows = stmt.query([id.as_str()]).map_err(query_err)?;
        while let Some(row) = rows.next().map_err(query_err)? {
            pending_gates.push(pending_from_row(row)?);
        }
    }

    Ok(Some(RunDetail { run, steps, gate_decisions, pending_gates }))
}

pub(crate) fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", params![], |_| Ok(())).optional().map_err(query_err)?;
    Ok(())
}

pub(crate) fn events(
    conn: &Connection,
    id: &RunId,
    after: u64,
    limit: u32,
) -> Result<Vec<EventRecord>> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, id, type, time, envelope FROM events \
             WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(query_err)?;
    let rows = stmt
        .query_map(params![id.as_str(), after, limit], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
            ))
        })
        .map_err(query_err)?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, event_id, event_type, time, envelope) = row.map_err(query_err)?;
        events.push(EventRecord {
            run_id: id.clone(),
            seq: u64::try_from(seq).map_err(|_| crate::Error::InvalidStoredValue {
                what: "event seq",
                value: seq.to_string(),
            })?,
            id: event_id,
            event_type,
            time: ts_from_sql(time)?,
            envelope,
        });
    }
    Ok(events)
}

pub(crate) fn last_seq(conn: &Connection, id: &RunId) -> Result<u64> {
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?1")
        .map_err(query_err)?
        .query_row([id.as_str()], |row| row.get(0))
        .map_err(query_err)?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

pub(crate) fn finished_since(conn: &Connection, since: jiff::Timestamp) -> Result<Vec<RunId>> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM runs WHERE completed_at >= ?1 ORDER BY completed_at")
        .map_err(query_err)?;
    let rows =
        stmt.query_map([ts_to_sql(since)?], |row| row.get::<_, String>(0)).map_err(query_err)?;
    rows.map(|r| r.map(RunId::new).map_err(query_err)).collect()
}
