//! The SQLite schema: numbered migrations tracked in `PRAGMA user_version`.

/// Migrations in order: entry `i` moves the schema from version `i` to `i + 1`.
///
/// Never edit a released migration; add a new one. Times are integer
/// nanoseconds since the Unix epoch (UTC); JSON values are text and never
/// filtered or sorted on.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: runs, steps, attempts, gate decisions, pending gates.
    r"
CREATE TABLE runs (
    id           TEXT PRIMARY KEY NOT NULL,
    workflow     TEXT NOT NULL,
    status       TEXT NOT NULL,
    trigger      TEXT NOT NULL,
    request_id   TEXT,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    completed_at INTEGER,
    duration_ms  INTEGER,
    error        TEXT
);
-- Newest-first keyset scans: recent, all runs, one workflow, one status, both.
CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at, id);
CREATE INDEX runs_by_status ON runs (status, created_at, id);
CREATE INDEX runs_by_workflow_status ON runs (workflow, status, created_at, id);

CREATE TABLE steps (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    execution    INTEGER NOT NULL,
    step_index   INTEGER NOT NULL,
    step_id      TEXT NOT NULL,
    step_type    TEXT NOT NULL,
    status       TEXT NOT NULL,
    error        TEXT,
    started_at   INTEGER,
    completed_at INTEGER,
    duration_ms  INTEGER,
    data         TEXT,
    PRIMARY KEY (run_id, execution, step_index)
) WITHOUT ROWID;

CREATE TABLE attempts (
    run_id      TEXT NOT NULL,
    execution   INTEGER NOT NULL,
    step_index  INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    success     INTEGER NOT NULL,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, execution, step_index, attempt),
    FOREIGN KEY (run_id, execution, step_index)
        REFERENCES steps (run_id, execution, step_index) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE gate_decisions (
    seq             INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    gate_id         TEXT NOT NULL,
    decision        TEXT NOT NULL,
    decided_by      TEXT NOT NULL,
    decided_at      INTEGER NOT NULL,
    comment         TEXT,
    patch           TEXT,
    artifact_before TEXT,
    artifact_after  TEXT
);
CREATE INDEX gate_decisions_by_run ON gate_decisions (run_id, seq);

CREATE TABLE pending_gates (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    gate_id    TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    message    TEXT,
    artifact   TEXT,
    since      INTEGER NOT NULL,
    deadline   INTEGER,
    PRIMARY KEY (run_id, gate_id)
) WITHOUT ROWID;
CREATE INDEX pending_gates_by_since ON pending_gates (since, run_id, gate_id);
",
    // 2: the event ledger. Each run's events, `seq` 1, 2, 3, … without gaps,
    // appended in the transaction of the state change they describe.
    r"
CREATE TABLE events (
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    id       TEXT NOT NULL,
    type     TEXT NOT NULL,
    time     INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
",
    // 3: the runs retention deleted, until the engine has removed their
    // folders. A trigger fills it, so a deletion and its record commit
    // together whatever statement deletes the run.
    r"
CREATE TABLE pruned_runs (
    seq INTEGER PRIMARY KEY,
    id  TEXT NOT NULL UNIQUE
);
CREATE TRIGGER runs_pruned AFTER DELETE ON runs BEGIN
    INSERT OR IGNORE INTO pruned_runs (id) VALUES (OLD.id);
END;
",
    // 4: the webhook outbox. A delivery row per (event, webhook), written in
    // the transaction of its event; `seq` orders the delivery log. Rows
    // outlive their run (retention of runs leaves them), so each keeps a
    // copy of the envelope it sends.
    r"
CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    webhook         INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    envelope        TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempt_count   INTEGER NOT NULL,
    next_attempt_at INTEGER,
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
-- The dispatcher's scan: one webhook's pending rows, earliest due first.
CREATE INDEX deliveries_due ON deliveries (webhook, next_attempt_at, seq)
    WHERE status = 'pending';
-- The delivery log's filters, newest first.
CREATE INDEX deliveries_by_status ON deliveries (status, seq);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook, status, seq);
CREATE INDEX deliveries_by_run ON deliveries (run_id, seq);

CREATE TABLE delivery_attempts (
    delivery    INTEGER NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery, n)
) WITHOUT ROWID;
",
    // 5: the ledger and the steps move to rowid tables. Their rows are hundreds
    // of bytes (envelopes, step data), and a WITHOUT ROWID table keeps whole rows
    // in its key's b-tree: appending a run's event among the other runs' rows
    // split and moved those pages. A rowid table appends at its end and keeps
    // only the key in the index. Attempts reference steps, so they are copied
    // too (renaming `steps` first points their foreign key at the old table,
    // which is dropped only once nothing refers to it).
    r"
CREATE TABLE events_v5 (
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    id       TEXT NOT NULL,
    type     TEXT NOT NULL,
    time     INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
INSERT INTO events_v5 (run_id, seq, id, type, time, envelope)
    SELECT run_id, seq, id, type, time, envelope FROM events ORDER BY time, run_id, seq;
DROP TABLE events;
ALTER TABLE events_v5 RENAME TO events;

ALTER TABLE steps RENAME TO steps_v4;
CREATE TABLE steps (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    execution    INTEGER NOT NULL,
    step_index   INTEGER NOT NULL,
    step_id      TEXT NOT NULL,
    step_type    TEXT NOT NULL,
    status       TEXT NOT NULL,
    error        TEXT,
    started_at   INTEGER,
    completed_at INTEGER,
    duration_ms  INTEGER,
    data         TEXT,
    PRIMARY KEY (run_id, execution, step_index)
);
INSERT INTO steps (run_id, execution, step_index, step_id, step_type, status, error,
                   started_at, completed_at, duration_ms, data)
    SELECT run_id, execution, step_index, step_id, step_type, status, error,
           started_at, completed_at, duration_ms, data
    FROM steps_v4 ORDER BY started_at, run_id, execution, step_index;
CREATE TABLE attempts_v5 (
    run_id      TEXT NOT NULL,
    execution   INTEGER NOT NULL,
    step_index  INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    success     INTEGER NOT NULL,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, execution, step_index, attempt),
    FOREIGN KEY (run_id, execution, step_index)
        REFERENCES steps (run_id, execution, step_index) ON DELETE CASCADE
) WITHOUT ROWID;
INSERT INTO attempts_v5 SELECT run_id, execution, step_index, attempt, success, error,
                               duration_ms, started_at FROM attempts;
DROP TABLE attempts;
DROP TABLE steps_v4;
ALTER TABLE attempts_v5 RENAME TO attempts;
",
    // 6: a step's attempts move into its row, as a JSON array (NULL for none).
    // They are only ever read and written with their step, and as a table of
    // their own every step record cost two more statements (delete the old
    // attempts, insert the new) and a page of its own in each commit.
    r"
ALTER TABLE steps ADD COLUMN attempts TEXT;
UPDATE steps SET attempts = (
    SELECT json_group_array(json_object(
        'attempt', a.attempt,
        'success', json(CASE WHEN a.success THEN 'true' ELSE 'false' END),
        'error', a.error,
        'duration_ms', a.duration_ms,
        'started_at', a.started_at))
    FROM (SELECT * FROM attempts
          WHERE run_id = steps.run_id AND execution = steps.execution
            AND step_index = steps.step_index
          ORDER BY attempt) AS a)
WHERE EXISTS (SELECT 1 FROM attempts
              WHERE run_id = steps.run_id AND execution = steps.execution
                AND step_index = steps.step_index);
DROP TABLE attempts;
",
    // 7: the delivery log's status and webhook filters scan the log newest
    // first instead of keeping an index each. Every delivery inserted and every
    // attempt recorded touched both, in the committer's transactions, while a
    // page of the log is read rarely and stops at its limit.
    r"
DROP INDEX deliveries_by_status;
DROP INDEX deliveries_by_webhook;
",
    // 8: a delivery of an event committed with it names the event's `seq`
    // instead of copying its envelope (the body is the ledger's bytes, read
    // when claimed or listed), and `envelope` is left empty. Before a run is
    // deleted (retention), its deliveries copy the envelopes they still name,
    // so a delivery outlives its run as it did.
    r"
ALTER TABLE deliveries ADD COLUMN event_seq INTEGER;
CREATE TRIGGER deliveries_keep_envelopes BEFORE DELETE ON runs BEGIN
    UPDATE deliveries SET
        envelope = (SELECT e.envelope FROM events e
                    WHERE e.run_id = OLD.id AND e.seq = deliveries.event_seq),
        event_seq = NULL
    WHERE run_id = OLD.id AND event_seq IS NOT NULL;
END;
",
    // 9: the deliveries a transaction enqueues with their events are spooled:
    // one row per (transaction, webhook) holding them all, instead of a row
    // each with three index entries in the transaction of every run's commit.
    // The dispatcher's claim unpacks a webhook's oldest spool rows into
    // `deliveries` as it needs them; the log's reads unpack the spool, and a
    // redelivery the row holding its id. `created_at` is the earliest
    // entry's. Before a run is deleted, the spool rows that may hold its
    // events are unpacked, then the envelopes its deliveries name are copied
    // as in 8 (the trigger is replaced whole, so 8's UPDATE is repeated).
    r"
CREATE TABLE delivery_spool (
    seq        INTEGER PRIMARY KEY,
    webhook    INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    entries    TEXT NOT NULL
);
CREATE INDEX delivery_spool_by_webhook ON delivery_spool (webhook, seq);
CREATE INDEX delivery_spool_by_time ON delivery_spool (created_at);
DROP TRIGGER deliveries_keep_envelopes;
CREATE TRIGGER deliveries_keep_envelopes BEFORE DELETE ON runs BEGIN
    INSERT OR IGNORE INTO deliveries (id, webhook, event_id, run_id, event_type, envelope,
        event_seq, status, attempt_count, next_attempt_at, created_at, updated_at)
    SELECT e.value ->> 0, s.webhook, e.value ->> 1, e.value ->> 2, e.value ->> 3, '',
        e.value ->> 4, 'pending', 0, e.value ->> 5, e.value ->> 5, e.value ->> 5
    FROM delivery_spool s, json_each(s.entries) e
    WHERE s.created_at <= (SELECT MAX(time) FROM events WHERE run_id = OLD.id)
    ORDER BY s.seq, e.key;
    DELETE FROM delivery_spool
    WHERE created_at <= (SELECT MAX(time) FROM events WHERE run_id = OLD.id);
    UPDATE deliveries SET
        envelope = (SELECT e.envelope FROM events e
                    WHERE e.run_id = OLD.id AND e.seq = deliveries.event_seq),
        event_seq = NULL
    WHERE run_id = OLD.id AND event_seq IS NOT NULL;
END;
",
];

/// The schema version this build writes; a file with a higher
/// `user_version` came from a newer Aegis and is refused.
pub(crate) const LATEST_VERSION: i64 = MIGRATIONS.len() as i64;

/// A `:memory:` connection with every migration applied (unit tests).
#[cfg(test)]
pub(crate) fn migrated() -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_in_memory().expect("in-memory database");
    for sql in MIGRATIONS {
        conn.execute_batch(sql).expect("migration applies");
    }
    conn
}
