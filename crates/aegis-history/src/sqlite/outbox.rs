//! The webhook outbox on SQLite: writes applied in the committer's
//! transactions, claims and pruning on the write connection, and the
//! delivery log's reads.

use std::collections::HashMap;

use jiff::Timestamp;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::cursor;
use crate::error::{Error, Result};
use crate::model::{MAX_PAGE_SIZE, RunId, Write};
use crate::outbox::{
    Delivery, DeliveryAttempt, DeliveryClaim, DeliveryDetail, DeliveryOutcome, DeliveryPage,
    DeliveryQuery, DeliveryStatus, NewDelivery,
};
use crate::sqlite::codec::{
    ms_from_sql, ms_to_sql, opt_ts_from_sql, query_err, ts_from_sql, ts_to_sql, u32_from_sql,
};
use crate::sqlite::writer::write_err;

/// Columns of `deliveries` in the order [`delivery_from_row`] reads them.
/// A delivery that names its event's `seq` reads the envelope from the ledger.
const COLUMNS: &str = "seq, id, webhook, event_id, run_id, event_type, \
                       CASE WHEN event_seq IS NULL THEN envelope ELSE (SELECT e.envelope \
                       FROM events e WHERE e.run_id = deliveries.run_id \
                       AND e.seq = deliveries.event_seq) END, status, \
                       attempt_count, next_attempt_at, created_at";

/// The deliveries one transaction enqueues with their events, spooled: one
/// `delivery_spool` row per webhook, written just before the transaction
/// commits (migration 9). Each entry names its event's `seq`; the body is
/// the ledger's.
#[derive(Debug, Default)]
pub(crate) struct Spool {
    /// Per webhook: the earliest entry's time and the entries, each a JSON
    /// array `[id, event_id, run_id, event_type, event_seq, created_at]`.
    webhooks: std::collections::BTreeMap<u32, (i64, Vec<String>)>,
}

/// Whether `text` is a JSON string's content as it is (nothing to escape).
fn plain_json(text: &str) -> bool {
    text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Where the spool stands, to undo what a failed write added.
#[derive(Debug)]
pub(crate) struct SpoolMark(Vec<(u32, usize)>);

impl Spool {
    /// Spools a delivery whose event, `seq` `event_seq` at `event_time`,
    /// this transaction appends with the very bytes of its envelope. The
    /// row's time is at most the event's, so that migration 9's trigger
    /// finds it before the event's run is deleted.
    pub(crate) fn push(
        &mut self,
        new: &NewDelivery,
        event_seq: u64,
        event_time: Timestamp,
    ) -> Result<()> {
        let at = ts_to_sql(new.created_at)?;
        let row_time = at.min(ts_to_sql(event_time)?);
        let texts = [new.id.as_str(), &new.event_id, new.run_id.as_str(), &new.event_type];
        let entry = if texts.iter().all(|t| plain_json(t)) {
            // Ids and types are plain ASCII: written as they are, quoted.
            let mut entry =
                String::with_capacity(texts.iter().map(|t| t.len() + 3).sum::<usize>() + 48);
            entry.push('[');
            for text in texts {
                entry.push('"');
                entry.push_str(text);
                entry.push_str("\",");
            }
            entry.push_str(&format!("{event_seq},{at}]"));
            entry
        } else {
            serde_json::to_string(&(texts[0], texts[1], texts[2], texts[3], event_seq, at))
                .map_err(|source| Error::Json { what: "a spooled delivery", source })?
        };
        let (earliest, entries) =
            self.webhooks.entry(new.webhook).or_insert((row_time, Vec::new()));
        *earliest = (*earliest).min(row_time);
        entries.push(entry);
        Ok(())
    }

    pub(crate) fn mark(&self) -> SpoolMark {
        SpoolMark(self.webhooks.iter().map(|(w, (_, e))| (*w, e.len())).collect())
    }

    /// Drops what was spooled after `mark` (the earliest times may stay
    /// earlier than they need be, which only unpacks a row sooner).
    pub(crate) fn undo(&mut self, mark: &SpoolMark) {
        self.webhooks.retain(|webhook, (_, entries)| {
            match mark.0.iter().find(|(w, _)| w == webhook) {
                Some((_, len)) => {
                    entries.truncate(*len);
                    true
                }
                None => false,
            }
        });
    }

    pub(crate) fn clear(&mut self) {
        self.webhooks.clear();
    }

    /// Writes the spool rows, inside the transaction.
    pub(crate) fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO delivery_spool (webhook, count, created_at, entries) \
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (webhook, (earliest, entries)) in std::mem::take(&mut self.webhooks) {
            if entries.is_empty() {
                continue;
            }
            let count = entries.len();
            let json = format!("[{}]", entries.join(","));
            stmt.execute(params![webhook, count as i64, earliest, json])?;
        }
        Ok(())
    }
}

/// Unpacks spool rows into `deliveries`, in order (the SQL of migration 9's
/// trigger, for rows chosen by `seq`).
const UNPACK: &str = "INSERT OR IGNORE INTO deliveries (id, webhook, event_id, run_id, \
    event_type, envelope, event_seq, status, attempt_count, next_attempt_at, created_at, \
    updated_at) SELECT e.value ->> 0, s.webhook, e.value ->> 1, e.value ->> 2, \
    e.value ->> 3, '', e.value ->> 4, 'pending', 0, e.value ->> 5, e.value ->> 5, \
    e.value ->> 5 FROM delivery_spool s, json_each(s.entries) e WHERE s.seq = ?1 \
    ORDER BY e.key";

fn unpack_row(conn: &Connection, seq: i64) -> Result<()> {
    conn.prepare_cached(UNPACK).map_err(write_err)?.execute([seq]).map_err(write_err)?;
    conn.prepare_cached("DELETE FROM delivery_spool WHERE seq = ?1")
        .map_err(write_err)?
        .execute([seq])
        .map_err(write_err)?;
    Ok(())
}

/// How many spooled deliveries one transaction of [`unpack_spool`] unpacks
/// at most (a row more when a row holds more), so that the runs' commits
/// queued meanwhile wait for a short one at a time.
pub(crate) const UNPACK_CHUNK: u64 = 2_000;

/// The newest spool row's `seq` (0 when the spool is empty).
pub(crate) fn spool_end(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM delivery_spool")
        .map_err(query_err)?
        .query_row([], |row| row.get(0))
        .map_err(query_err)
}

/// Unpacks the oldest spool rows up to `seq` `upto`, about
/// [`UNPACK_CHUNK`] deliveries, in a transaction of its own; 0 once none is
/// left. The log's reads call it until then (up to the spool's end when they
/// start), so that they list every delivery committed before them.
pub(crate) fn unpack_spool(conn: &mut Connection, upto: i64) -> Result<u64> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(write_err)?;
    let unpacked = unpack_oldest(
        &tx,
        "SELECT seq, count FROM delivery_spool WHERE seq <= ?1 ORDER BY seq",
        params![upto],
        UNPACK_CHUNK,
    )?;
    tx.commit().map_err(write_err)?;
    Ok(unpacked)
}

/// Unpacks the spool rows `sql` selects (`seq, count`, oldest first) while
/// fewer than `enough` deliveries are unpacked; how many rows it unpacked.
fn unpack_oldest(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    enough: u64,
) -> Result<u64> {
    let mut rows = Vec::new();
    let mut deliveries = 0u64;
    {
        let mut stmt = conn.prepare_cached(sql).map_err(write_err)?;
        let mut found = stmt.query(params).map_err(write_err)?;
        while deliveries < enough {
            let Some(row) = found.next().map_err(write_err)? else { break };
            rows.push(row.get::<_, i64>(0).map_err(write_err)?);
            deliveries += u64::try_from(row.get::<_, i64>(1).map_err(write_err)?).unwrap_or(0);
        }
    }
    for &seq in &rows {
        unpack_row(conn, seq)?;
    }
    Ok(rows.len() as u64)
}

/// Unpacks the spool row holding delivery `id`, if one does; whether it did.
fn unpack_holding(conn: &Connection, id: &str) -> Result<bool> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "SELECT s.seq FROM delivery_spool s, json_each(s.entries) e \
             WHERE e.value ->> 0 = ?1 LIMIT 1",
        )
        .map_err(write_err)?
        .query_row([id], |row| row.get(0))
        .optional()
        .map_err(write_err)?;
    match seq {
        Some(seq) => unpack_row(conn, seq).map(|()| true),
        None => Ok(false),
    }
}

/// Enqueues a delivery as a row of its own, with a copy of its body.
pub(crate) fn enqueue(conn: &Connection, new: &NewDelivery) -> Result<u64> {
    let at = ts_to_sql(new.created_at)?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO deliveries (id, webhook, event_id, run_id, event_type, envelope, \
             status, attempt_count, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7)",
        )
        .map_err(write_err)?
        .execute(params![
            new.id,
            new.webhook,
            new.event_id,
            new.run_id.as_str(),
            new.event_type,
            new.envelope,
            at,
        ]);
    match inserted {
        Ok(_) => Ok(0),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(Error::DuplicateDelivery { id: new.id.clone() })
        }
        Err(e) => Err(write_err(e)),
    }
}

/// Applies one outbox write inside the committer's transaction.
pub(crate) fn apply(conn: &Connection, write: &Write) -> Result<u64> {
    match write {
        Write::EnqueueDelivery(new) => enqueue(conn, new),
        Write::RecordDeliveryAttempt(result) => {
            let (status, next) = match result.outcome {
                DeliveryOutcome::Delivered => (DeliveryStatus::Delivered, None),
                DeliveryOutcome::Retry { at } => (DeliveryStatus::Pending, Some(ts_to_sql(at)?)),
                DeliveryOutcome::Gone => (DeliveryStatus::Gone, None),
                DeliveryOutcome::Failed => (DeliveryStatus::Failed, None),
            };
            let attempt = &result.attempt;
            let at = ts_to_sql(attempt.at)?;
            let seq: Option<i64> = conn
                .prepare_cached(
                    "UPDATE deliveries SET status = ?2, attempt_count = ?3, next_attempt_at = ?4, \
                     claimed_until = NULL, updated_at = ?5 WHERE id = ?1 RETURNING seq",
                )
                .map_err(write_err)?
                .query_row(params![result.id, status.as_str(), attempt.attempt, next, at], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(write_err)?;
            let Some(seq) = seq else {
                return Err(Error::DeliveryNotFound { id: result.id.clone() });
            };
            conn.prepare_cached(
                "INSERT INTO delivery_attempts (delivery, n, attempt, at, status_code, error, \
                 duration_ms) SELECT ?1, COALESCE(MAX(n), 0) + 1, ?2, ?3, ?4, ?5, ?6 \
                 FROM delivery_attempts WHERE delivery = ?1",
            )
            .map_err(write_err)?
            .execute(params![
                seq,
                attempt.attempt,
                at,
                attempt.status_code,
                attempt.error,
                ms_to_sql(attempt.duration_ms),
            ])
            .map_err(write_err)?;
            Ok(0)
        }
        Write::Redeliver(id, at) => {
            let at = ts_to_sql(*at)?;
            let again = |conn: &Connection| -> Result<usize> {
                conn.prepare_cached(
                    "UPDATE deliveries SET status = 'pending', attempt_count = 0, \
                     next_attempt_at = ?2, claimed_until = NULL, updated_at = ?2 WHERE id = ?1",
                )
                .map_err(write_err)?
                .execute(params![id, at])
                .map_err(write_err)
            };
            let mut changed = again(conn)?;
            if changed == 0 && unpack_holding(conn, id)? {
                // Still spooled, maybe (never attempted yet).
                changed = again(conn)?;
            }
            if changed == 0 {
                return Err(Error::DeliveryNotFound { id: id.clone() });
            }
            Ok(0)
        }
        _ => Ok(0),
    }
}

fn delivery_from_row(row: &Row<'_>) -> Result<(i64, Delivery)> {
    let get = |e: rusqlite::Error| Error::Query { source: e };
    let status: String = row.get(7).map_err(get)?;
    let delivery = Delivery {
        enqueued: NewDelivery {
            id: row.get(1).map_err(get)?,
            webhook: u32_from_sql(row.get(2).map_err(get)?, "webhook index")?,
            event_id: row.get(3).map_err(get)?,
            run_id: RunId::new(row.get::<_, String>(4).map_err(get)?),
            event_type: row.get(5).map_err(get)?,
            envelope: row.get(6).map_err(get)?,
            created_at: ts_from_sql(row.get(10).map_err(get)?)?,
        },
        status: status.parse()?,
        attempt_count: u32_from_sql(row.get(8).map_err(get)?, "attempt count")?,
        next_attempt_at: opt_ts_from_sql(row.get(9).map_err(get)?)?,
    };
    Ok((row.get(0).map_err(get)?, delivery))
}

/// Claims due deliveries in one transaction on the write connection.
pub(crate) fn claim(conn: &mut Connection, claim: &DeliveryClaim) -> Result<Vec<Delivery>> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(write_err)?;
    let now = ts_to_sql(claim.now)?;
    let until = ts_to_sql(claim.until)?;
    // Due rows of the log first (older than anything spooled); when they
    // do not fill the claim, this webhook's oldest spool rows are unpacked,
    // enough of them to fill it, and claimed from.
    let mut claimed = claim_rows(&tx, claim.webhook, now, until, claim.limit)?;
    let short = u64::from(claim.limit).saturating_sub(claimed.len() as u64);
    if short > 0 {
        let unpacked = unpack_oldest(
            &tx,
            "SELECT seq, count FROM delivery_spool WHERE webhook = ?1 AND created_at <= ?2 \
             ORDER BY seq",
            params![claim.webhook, now],
            short,
        )?;
        if unpacked > 0 {
            let short = u32::try_from(short).unwrap_or(claim.limit);
            claimed.extend(claim_rows(&tx, claim.webhook, now, until, short)?);
        }
    }
    tx.commit().map_err(write_err)?;
    // RETURNING has no order: earliest due first, then the log's order.
    claimed.sort_by_key(|(seq, d)| (d.next_attempt_at, *seq));
    Ok(claimed.into_iter().map(|(_, d)| d).collect())
}

/// Claims up to `limit` due rows of the log for `webhook`.
fn claim_rows(
    conn: &Connection,
    webhook: u32,
    now: i64,
    until: i64,
    limit: u32,
) -> Result<Vec<(i64, Delivery)>> {
    let sql = format!(
        "UPDATE deliveries SET claimed_until = ?3 WHERE seq IN (SELECT seq FROM deliveries \
         WHERE webhook = ?1 AND status = 'pending' AND next_attempt_at <= ?2 \
         AND (claimed_until IS NULL OR claimed_until <= ?2) \
         ORDER BY next_attempt_at, seq LIMIT ?4) RETURNING {COLUMNS}"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(write_err)?;
    let mut rows = stmt.query(params![webhook, now, until, limit]).map_err(write_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(write_err)? {
        out.push(delivery_from_row(row)?);
    }
    Ok(out)
}

/// Releases every claim on pending rows.
pub(crate) fn release(conn: &mut Connection) -> Result<u64> {
    let released = conn
        .prepare_cached(
            "UPDATE deliveries SET claimed_until = NULL \
             WHERE status = 'pending' AND claimed_until IS NOT NULL",
        )
        .map_err(write_err)?
        .execute([])
        .map_err(write_err)?;
    Ok(released as u64)
}

/// Deletes delivered rows last changed before `before`.
pub(crate) fn prune(conn: &mut Connection, before: Timestamp) -> Result<u64> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(write_err)?;
    let deleted = tx
        .prepare_cached("DELETE FROM deliveries WHERE status = 'delivered' AND updated_at < ?1")
        .map_err(write_err)?
        .execute([ts_to_sql(before)?])
        .map_err(write_err)?;
    tx.commit().map_err(write_err)?;
    Ok(deleted as u64)
}

pub(crate) fn next_due(conn: &Connection, webhook: u32) -> Result<Option<Timestamp>> {
    let at: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(at) FROM (SELECT MIN(MAX(next_attempt_at, COALESCE(claimed_until, 0))) \
             AS at FROM deliveries WHERE webhook = ?1 AND status = 'pending' \
             UNION ALL SELECT MIN(created_at) FROM delivery_spool WHERE webhook = ?1)",
        )
        .map_err(query_err)?
        .query_row([webhook], |row| row.get(0))
        .map_err(query_err)?;
    opt_ts_from_sql(at)
}

pub(crate) fn counts(conn: &Connection) -> Result<Vec<(u32, DeliveryStatus, u64)>> {
    // Spooled deliveries are pending.
    let mut stmt = conn
        .prepare_cached(
            "SELECT webhook, status, SUM(n) FROM (SELECT webhook, status, count(*) AS n \
             FROM deliveries GROUP BY webhook, status UNION ALL SELECT webhook, 'pending', \
             SUM(count) FROM delivery_spool GROUP BY webhook) GROUP BY webhook, status \
             ORDER BY webhook, status",
        )
        .map_err(query_err)?;
    let mut rows = stmt.query([]).map_err(query_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(query_err)? {
        let webhook = u32_from_sql(row.get(0).map_err(query_err)?, "webhook index")?;
        let status: String = row.get(1).map_err(query_err)?;
        let n: i64 = row.get(2).map_err(query_err)?;
        out.push((webhook, status.parse()?, u64::try_from(n).unwrap_or(0)));
    }
    Ok(out)
}

pub(crate) fn list(conn: &Connection, query: &DeliveryQuery) -> Result<DeliveryPage> {
    let before = query.cursor.as_deref().map(cursor::decode_seq).transpose()?;
    let limit = query.limit.min(MAX_PAGE_SIZE);
    if limit == 0 {
        return Ok(DeliveryPage { deliveries: Vec::new(), next_cursor: None });
    }
    let mut clauses = Vec::new();
    let mut named: Vec<(&str, SqlValue)> = Vec::new();
    if let Some(status) = query.status {
        clauses.push("status = :status");
        named.push((":status", SqlValue::Text(status.as_str().to_owned())));
    }
    if let Some(webhook) = query.webhook {
        clauses.push("webhook = :webhook");
        named.push((":webhook", SqlValue::Integer(i64::from(webhook))));
    }
    if let Some(run_id) = &query.run_id {
        clauses.push("run_id = :run_id");
        named.push((":run_id", SqlValue::Text(run_id.as_str().to_owned())));
    }
    if let Some(seq) = before {
        clauses.push("seq < :before");
        named.push((":before", SqlValue::Integer(i64::try_from(seq).unwrap_or(i64::MAX))));
    }
    named.push((":limit", SqlValue::Integer(i64::from(limit) + 1)));
    let filter =
        if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    let sql = format!("SELECT {COLUMNS} FROM deliveries {filter} ORDER BY seq DESC LIMIT :limit");
    let mut stmt = conn.prepare_cached(&sql).map_err(query_err)?;
    let params: Vec<(&str, &dyn rusqlite::ToSql)> =
        named.iter().map(|(k, v)| (*k, v as &dyn rusqlite::ToSql)).collect();
    let mut rows = stmt.query(params.as_slice()).map_err(query_err)?;
    let mut found = Vec::new();
    while let Some(row) = rows.next().map_err(query_err)? {
        found.push(delivery_from_row(row)?);
    }
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let next_cursor = match found.last() {
        Some((seq, _)) if more => Some(cursor::encode_seq(u64::try_from(*seq).unwrap_or(0))),
        _ => None,
    };
    let mut attempts = attempts_of(conn, found.iter().map(|(seq, _)| *seq))?;
    let deliveries = found
        .into_iter()
        .map(|(seq, delivery)| DeliveryDetail {
            delivery,
            attempts: attempts.remove(&seq).unwrap_or_default(),
        })
        .collect();
    Ok(DeliveryPage { deliveries, next_cursor })
}

fn attempts_of(
    conn: &Connection,
    seqs: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Vec<DeliveryAttempt>>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT attempt, at, status_code, error, duration_ms FROM delivery_attempts \
             WHERE delivery = ?1 ORDER BY n",
        )
        .map_err(query_err)?;
    let mut out = HashMap::new();
    for seq in seqs {
        let mut rows = stmt.query([seq]).map_err(query_err)?;
        let mut list = Vec::new();
        while let Some(row) = rows.next().map_err(query_err)? {
            let code: Option<i64> = row.get(2).map_err(query_err)?;
            list.push(DeliveryAttempt {
                attempt: u32_from_sql(row.get(0).map_err(query_err)?, "attempt")?,
                at: ts_from_sql(row.get(1).map_err(query_err)?)?,
                status_code: code.and_then(|c| u16::try_from(c).ok()),
                error: row.get(3).map_err(query_err)?,
                duration_ms: ms_from_sql(row.get(4).map_err(query_err)?)?,
            });
        }
        out.insert(seq, list);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sqlite::schema::migrated;

    /// A spool row of `n` deliveries of webhook 0.
    fn spool_row(conn: &Connection, row: usize, n: usize) {
        let entries: Vec<String> =
            (0..n).map(|i| format!("[\"d{row}-{i}\",\"e{row}-{i}\",\"r\",\"t\",{i},1]")).collect();
        conn.execute(
            "INSERT INTO delivery_spool (webhook, count, created_at, entries) VALUES (0, ?1, 1, ?2)",
            params![n as i64, format!("[{}]", entries.join(","))],
        )
        .unwrap();
    }

    #[test]
    fn the_spool_is_unpacked_a_short_transaction_at_a_time() {
        let mut conn = migrated();
        let n = usize::try_from(UNPACK_CHUNK).unwrap() * 3 / 4;
        for row in 0..4 {
            spool_row(&conn, row, n);
        }
        let end = spool_end(&conn).unwrap();
        // Two rows reach the chunk; then the other two; then none is left.
        assert_eq!(unpack_spool(&mut conn, end).unwrap(), 2);
        let count = |conn: &Connection, table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
        };
        assert_eq!(count(&conn, "deliveries"), 2 * n as i64);
        assert_eq!(count(&conn, "delivery_spool"), 2);
        // A row spooled after the log's read began is left for the dispatcher.
        spool_row(&conn, 4, 1);
        assert_eq!(unpack_spool(&mut conn, end).unwrap(), 2);
        assert_eq!(unpack_spool(&mut conn, end).unwrap(), 0);
        assert_eq!(count(&conn, "deliveries"), 4 * n as i64);
        assert_eq!(count(&conn, "delivery_spool"), 1);
    }
}
