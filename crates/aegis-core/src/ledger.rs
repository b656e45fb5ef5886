//! The ledger: how a run's state changes and the events describing them
//! become durable together, before anyone sees them.
//!
//! Every change of a run goes through [`Ledger::commit`]: its writes (a
//! compare-and-set on the run's status, step records, gate rows) and its
//! events, numbered with the run's next `seq`, are committed in one history
//! transaction (`HistoryBackend::commit`); only then are the events
//! published on the bus and handed to the `events.jsonl` writer. A crash
//! therefore never loses an event a client saw, and `seq` continues after
//! the last committed event: no number is reused.
//!
//! In this process one lock per run orders its commits, so the bus sees a
//! run's events in `seq` order. The next `seq` is cached while the run is
//! active and read back from history otherwise; across processes the
//! ledger's own rule (an event's `seq` must be the next) is the arbiter, and
//! a commit that loses it is retried with the committed `seq`.
//!
//! # `events.jsonl` trails the ledger
//!
//! The file is written from committed events by one writer thread
//! (`aegis-events`), which waits 2 ms once woken so that bursts share a
//! write; it never holds a file open between writes, so queued and waiting
//! runs hold no file. It may trail the ledger by moments, never lead it;
//! after a crash, [`Ledger::complete_file`] appends what the file lacks
//! (dropping a line a crash cut short).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aegis_history::{EventRecord, HistoryBackend, RunId, Write};
use serde_json::Value;

use crate::bus::EventBus;
use crate::event::{Event, EventData, SCHEMA_VERSION};
use crate::webhook::Outbox;

/// The name of a run's event log in its folder.
pub(crate) const EVENTS_FILE: &str = "events.jsonl";

/// How many times a commit is retried when another process took its `seq`.
const SEQ_RETRIES: usize = 3;

/// How many ledger rows are read per query.
const READ_PAGE: u32 = 1000;

/// How long the writer thread waits, once woken, before it writes: events
/// committed meanwhile join the pending lines without waking it again.
const GATHER: Duration = Duration::from_millis(2);

/// Locks a mutex, going on with the data of a poisoned one: every critical
/// section here leaves its data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Who a change is about, and the request that caused it.
#[derive(Debug, Clone)]
pub(crate) struct RunRef {
    pub(crate) id: RunId,
    pub(crate) workflow: String,
    /// Carried by the events of this change (`request_id`).
    pub(crate) request_id: Option<String>,
}

impl RunRef {
    /// The same run, for a change caused by another request.
    pub(crate) fn with_request(&self, request_id: Option<String>) -> RunRef {
        RunRef { request_id: request_id.or_else(|| self.request_id.clone()), ..self.clone() }
    }
}

/// One run's place in the ledger in this process: the lock that orders its
/// commits and the last committed `seq` (unknown until read).
#[derive(Debug)]
struct Cell {
    seq: tokio::sync::Mutex<Option<u64>>,
    log: Arc<RunLog>,
}

/// The engine's ledger: commits, publishes, writes `events.jsonl`.
#[derive(Debug)]
pub(crate) struct Ledger {
    history: Arc<dyn HistoryBackend>,
    bus: Arc<EventBus>,
    runs_dir: PathBuf,
    cells: Mutex<HashMap<RunId, Arc<Cell>>>,
    writer: Writer,
    /// The webhooks: each commit writes the deliveries of its events.
    outbox: Arc<Outbox>,
}

impl Ledger {
    pub(crate) fn new(
        history: Arc<dyn HistoryBackend>,
        bus: Arc<EventBus>,
        runs_dir: PathBuf,
    ) -> std::io::Result<Self> {
        let outbox = Arc::new(Outbox::new(&[]));
        Ok(Self {
            history,
            bus,
            runs_dir,
            cells: Mutex::default(),
            writer: Writer::start()?,
            outbox,
        })
    }

    /// Writes webhook deliveries with every committed event.
    pub(crate) fn with_outbox(mut self, outbox: Arc<Outbox>) -> Self {
        self.outbox = outbox;
        self
    }

    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Commits a change to a run that may not be executing in this process
    /// (a webhook gave up on one of its events): through the run's cell when
    /// it has one, else through a cell that is not kept, so that nothing of
    /// the run stays in memory afterwards.
    pub(crate) async fn commit_detached(
        &self,
        run: &RunRef,
        writes: Vec<Write>,
        events: Vec<EventData>,
    ) -> aegis_history::Result<Vec<Arc<Event>>> {
        let existing = lock(&self.cells).get(&run.id).cloned();
        let cell = existing.unwrap_or_else(|| {
            Arc::new(Cell {
                seq: tokio::sync::Mutex::new(None),
                log: Arc::new(RunLog::new(run.id.as_str(), self.file(&run.id))),
            })
        });
        self.commit_in(&cell, run, writes, events).await
    }

    pub(crate) fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    fn file(&self, run_id: &RunId) -> PathBuf {
        self.runs_dir.join(run_id.as_str()).join(EVENTS_FILE)
    }

    fn cell(&self, run_id: &RunId, known: Option<u64>) -> Arc<Cell> {
        let mut cells = lock(&self.cells);
        if let Some(cell) = cells.get(run_id) {
            return Arc::clone(cell);
        }
        let cell = Arc::new(Cell {
            seq: tokio::sync::Mutex::new(known),
            log: Arc::new(RunLog::new(run_id.as_str(), self.file(run_id))),
        });
        cells.insert(run_id.clone(), Arc::clone(&cell));
        cell
    }

    /// Forgets a run that ended or paused: its next commit reads its `seq`
    /// back from history. Keeps memory bounded by the runs in progress.
    pub(crate) fn forget(&self, run_id: &RunId) {
        lock(&self.cells).remove(run_id);
    }

    /// Commits a run's first change (it has no events yet).
    pub(crate) async fn commit_new(
        &self,
        run: &RunRef,
        writes: Vec<Write>,
        events: Vec<EventData>,
    ) -> aegis_history::Result<Vec<Arc<Event>>> {
        let cell = self.cell(&run.id, Some(0));
        self.commit_in(&cell, run, writes, events).await
    }

    /// Commits `writes` and `events` in one transaction, then publishes the
    /// events. Fails, having committed and published nothing, when a write
    /// fails (a lost compare-and-set is `StatusConflict` or `GateNotPending`).
    pub(crate) async fn commit(
        &self,
        run: &RunRef,
        writes: Vec<Write>,
        events: Vec<EventData>,
    ) -> aegis_history::Result<Vec<Arc<Event>>> {
        let cell = self.cell(&run.id, None);
        self.commit_in(&cell, run, writes, events).await
    }

    async fn commit_in(
        &self,
        cell: &Cell,
        run: &RunRef,
        writes: Vec<Write>,
        events: Vec<EventData>,
    ) -> aegis_history::Result<Vec<Arc<Event>>> {
        let mut seq = cell.seq.lock().await;
        let mut attempt = 0;
        loop {
            let last = match *seq {
                Some(last) => last,
                None => self.history.last_seq(&run.id).await?,
            };
            let built = build(run, last, &events);
            let mut all = writes.clone();
            all.extend(built.iter().map(|(_, record)| Write::AppendEvent(record.clone())));
            let deliveries = self.outbox.deliveries(built.iter().map(|(_, record)| record));
            all.extend(deliveries.iter().cloned());
            match self.history.commit(all).await {
                Ok(()) => {
                    self.outbox.committed(&deliveries);
                    *seq = Some(last + built.len() as u64);
                    let mut lines = Vec::new();
                    let mut published = Vec::with_capacity(built.len());
                    for (event, record) in built {
                        lines.extend_from_slice(record.envelope.as_bytes());
                        lines.push(b'\n');
                        self.bus.publish(Arc::clone(&event));
                        published.push(event);
                    }
                    if !lines.is_empty() {
                        cell.log.append(&lines, &self.writer);
                    }
                    return Ok(published);
                }
                Err(aegis_history::Error::SeqConflict { .. }) if attempt < SEQ_RETRIES => {
                    // Another process appended to this run: read its seq again.
                    attempt += 1;
                    *seq = None;
                }
                Err(err) => {
                    *seq = None;
                    return Err(err);
                }
            }
        }
    }

    /// A run's committed events after `after`, in order.
    pub(crate) async fn events(
        &self,
        run_id: &RunId,
        after: u64,
    ) -> aegis_history::Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut after = after;
        loop {
            let page = self.history.events(run_id, after, READ_PAGE).await?;
            let full = page.len() == READ_PAGE as usize;
            for record in page {
                after = record.seq;
                match serde_json::from_str::<Event>(&record.envelope) {
                    Ok(event) => events.push(event),
                    Err(err) => log::error!(
                        "run_id={run_id}: ledger event {} does not parse: {err}",
                        record.seq
                    ),
                }
            }
            if !full {
                return Ok(events);
            }
        }
    }

    /// Whether a run's `events.jsonl` may still be written to here: it is
    /// active, or has lines waiting for the writer.
    pub(crate) fn busy(&self, run_id: &RunId) -> bool {
        lock(&self.cells).contains_key(run_id) || self.writer.has(run_id.as_str())
    }

    /// Writes out the pending `events.jsonl` lines of a run (of every run
    /// with `None`), on the calling thread: blocks on file I/O.
    pub(crate) fn sync(&self, run_id: Option<&RunId>) {
        let logs: Vec<Arc<RunLog>> = {
            let cells = lock(&self.cells);
            match run_id {
                Some(id) => cells.get(id).map(|c| Arc::clone(&c.log)).into_iter().collect(),
                None => cells.values().map(|c| Arc::clone(&c.log)).collect(),
            }
        };
        // Queued logs first: a forgotten run's lines may be there only. With
        // the writer's batch lock held, none is half-way through the thread.
        let _writing = lock(&self.writer.shared.writing);
        for log in self.writer.take(run_id.map(RunId::as_str)) {
            log.sync();
        }
        for log in logs {
            log.sync();
        }
    }

    /// Takes into the ledger the events of a run that an earlier version of
    /// Aegis wrote only to its `events.jsonl` (its ledger is empty), so that
    /// `seq` goes on after them. Lines are taken while their `seq` follows
    /// on; returns how many.
    pub(crate) async fn import_file(&self, run_id: &RunId) -> aegis_history::Result<u64> {
        if self.history.last_seq(run_id).await? > 0 {
            return Ok(0);
        }
        let path = self.file(run_id);
        let run = run_id.clone();
        let records = tokio::task::spawn_blocking(move || legacy_records(&run, &path))
            .await
            .map_err(|source| aegis_history::Error::Task { source })?;
        if records.is_empty() {
            return Ok(0);
        }
        let count = records.len() as u64;
        self.history.commit(records.into_iter().map(Write::AppendEvent).collect()).await?;
        log::info!("run_id={run_id}: {count} events of its events.jsonl taken into the ledger");
        Ok(count)
    }

    /// Makes a run's `events.jsonl` hold its whole ledger: appends the
    /// committed events the file lacks (after a crash, the writer may not
    /// have written the last ones), first dropping a line cut short.
    pub(crate) async fn complete_file(&self, run_id: &RunId) -> aegis_history::Result<usize> {
        let path = self.file(run_id);
        let probe = path.clone();
        let last = tokio::task::spawn_blocking(move || repair_tail(&probe))
            .await
            .map_err(|source| aegis_history::Error::Task { source })?;
        let last = match last {
            Ok(last) => last,
            Err(err) => {
                log::error!("run_id={run_id}: cannot read {}: {err}", path.display());
                return Ok(0);
            }
        };
        let mut missing = Vec::new();
        let mut after = last;
        loop {
            let page = self.history.events(run_id, after, READ_PAGE).await?;
            let full = page.len() == READ_PAGE as usize;
            for record in page {
                after = record.seq;
                missing.extend_from_slice(record.envelope.as_bytes());
                missing.push(b'\n');
            }
            if !full {
                break;
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let added = (after - last) as usize;
        let written = tokio::task::spawn_blocking(move || {
            let mut file = open_append(&path)?;
            file.write_all(&missing)
        })
        .await
        .map_err(|source| aegis_history::Error::Task { source })?;
        if let Err(err) = written {
            log::error!("run_id={run_id}: cannot complete its events.jsonl: {err}");
            return Ok(0);
        }
        log::warn!("run_id={run_id}: events.jsonl completed with {added} events from the ledger");
        Ok(added)
    }
}

/// The run's events, numbered after `last`, with their ledger rows.
fn build(run: &RunRef, last: u64, events: &[EventData]) -> Vec<(Arc<Event>, EventRecord)> {
    events
        .iter()
        .enumerate()
        .map(|(offset, data)| {
            let event_type = data.event_type();
            let value = data.to_value().unwrap_or_else(|err| {
                log::error!("run_id={}: cannot encode {event_type} event: {err}", run.id);
                Value::Null
            });
            let event = Event {
                schema_version: SCHEMA_VERSION.to_owned(),
                id: uuid::Uuid::now_v7().to_string(),
                seq: last + offset as u64 + 1,
                event_type: event_type.as_str().to_owned(),
                time: jiff::Timestamp::now(),
                run_id: run.id.to_string(),
                workflow: run.workflow.clone(),
                request_id: run.request_id.clone(),
                data: value,
            };
            // The envelope of an `Event` always encodes (string keys, JSON data).
            let envelope = serde_json::to_string(&event).unwrap_or_default();
            let record = EventRecord {
                run_id: run.id.clone(),
                seq: event.seq,
                id: event.id.clone(),
                event_type: event.event_type.clone(),
                time: event.time,
                envelope,
            };
            (Arc::new(event), record)
        })
        .collect()
}

/// The ledger rows of the lines of an `events.jsonl` whose `seq` follow on
/// from 1.
fn legacy_records(run_id: &RunId, path: &Path) -> Vec<EventRecord> {
    let Ok(file) = File::open(path) else { return Vec::new() };
    let mut records = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        let Ok(value) = serde_json::from_str::<Value>(&line) else { break };
        let Some(seq) = value.get("seq").and_then(Value::as_u64) else { break };
        if seq != records.len() as u64 + 1 {
            break;
        }
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        records.push(EventRecord {
            run_id: run_id.clone(),
            seq,
            id: text("id").unwrap_or_default(),
            event_type: text("type").unwrap_or_default(),
            time: text("time").and_then(|t| t.parse().ok()).unwrap_or_else(jiff::Timestamp::now),
            envelope: line,
        });
    }
    records
}

/// The `seq` of the last complete line of an `events.jsonl`, truncating a
/// last line a crash cut short; 0 when there is no file.
fn repair_tail(path: &Path) -> std::io::Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(complete as u64)?;
    }
    let mut last = 0;
    for line in bytes[..complete].lines() {
        let line = line?;
        if let Ok(event) = serde_json::from_str::<Value>(&line)
            && let Some(seq) = event.get("seq").and_then(Value::as_u64)
        {
            last = last.max(seq);
        }
    }
    Ok(last)
}

/// The writer thread of the `events.jsonl` files and its queue of logs
/// with pending lines (in the order they were handed over).
#[derive(Debug)]
struct Writer {
    shared: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Queue {
    logs: Mutex<QueueState>,
    woken: Condvar,
    /// Held by the thread while it writes a batch it took from the queue, so
    /// that a reader holding it knows every log is either still queued or
    /// written out.
    writing: Mutex<()>,
}

#[derive(Debug, Default)]
struct QueueState {
    logs: Vec<Arc<RunLog>>,
    closed: bool,
}

impl Writer {
    fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Queue::default());
        let queue = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("aegis-events".to_owned()).spawn(move || {
                loop {
                    {
                        let mut state = lock(&queue.logs);
                        while state.logs.is_empty() && !state.closed {
                            state = queue.woken.wait(state).unwrap_or_else(PoisonError::into_inner);
                        }
                        if state.logs.is_empty() {
                            return;
                        }
                    }
                    // Let bursts grow before writing: handing a log to a thread
                    // that sleeps costs a run nanoseconds, not a wake-up.
                    std::thread::sleep(GATHER);
                    let _writing = lock(&queue.writing);
                    let logs = std::mem::take(&mut lock(&queue.logs).logs);
                    for log in logs {
                        log.sync();
                    }
                }
            })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Queues a log with pending lines; `false` when the thread is gone.
    fn wake(&self, log: Arc<RunLog>) -> bool {
        let mut state = lock(&self.shared.logs);
        if state.closed {
            return false;
        }
        let first = state.logs.is_empty();
        state.logs.push(log);
        if first {
            self.shared.woken.notify_one();
        }
        true
    }

    /// Whether a log of this run waits for the thread.
    fn has(&self, run_id: &str) -> bool {
        lock(&self.shared.logs).logs.iter().any(|l| l.run_id == run_id)
    }

    /// Takes the queued logs of a run (of every run with `None`), in order.
    fn take(&self, run_id: Option<&str>) -> Vec<Arc<RunLog>> {
        let mut state = lock(&self.shared.logs);
        match run_id {
            None => std::mem::take(&mut state.logs),
            Some(id) => {
                let (mine, others) =
                    std::mem::take(&mut state.logs).into_iter().partition(|l| l.run_id == id);
                state.logs = others;
                mine
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.shared.logs).closed = true;
        self.shared.woken.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            log::error!("the events.jsonl writer thread panicked");
        }
    }
}

/// One run's `events.jsonl`: committed lines not written yet. The file is
/// opened for each write and closed after it.
#[derive(Debug)]
struct RunLog {
    run_id: String,
    path: PathBuf,
    pending: Mutex<Vec<u8>>,
    /// Held while writing, so that lines reach the file in `seq` order
    /// whoever writes them (the thread or a reader).
    file: Mutex<()>,
}

impl RunLog {
    fn new(run_id: &str, path: PathBuf) -> Self {
        Self {
            run_id: run_id.to_owned(),
            path,
            pending: Mutex::new(Vec::new()),
            file: Mutex::new(()),
        }
    }

    /// Adds committed lines; the first lines of a burst wake the writer.
    fn append(self: &Arc<Self>, lines: &[u8], writer: &Writer) {
        let first = {
            let mut pending = lock(&self.pending);
            let first = pending.is_empty();
            pending.extend_from_slice(lines);
            first
        };
        if first && !writer.wake(Arc::clone(self)) {
            self.sync();
        }
    }

    fn sync(&self) {
        let _file = lock(&self.file);
        let bytes = std::mem::take(&mut *lock(&self.pending));
        if bytes.is_empty() {
            return;
        }
        let written = open_append(&self.path).and_then(|mut file| file.write_all(&bytes));
        if let Err(err) = written {
            // The ledger keeps them: `complete_file` appends them at the next start.
            log::error!("run_id={}: cannot append to {}: {err}", self.run_id, self.path.display());
        }
    }
}

/// Opens a run's `events.jsonl` for appending, creating it and its folder.
fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_history::{InMemoryHistory, NewRun, RunStatus, RunUpdate, Transition, Trigger};

    use crate::event::{RunCancelled, RunQueued};

    fn setup() -> (tempfile::TempDir, Arc<dyn HistoryBackend>, Ledger, RunRef) {
        let dir = tempfile::tempdir().expect("tempdir");
        let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
        let bus = Arc::new(EventBus::new(64, 0));
        let ledger = Ledger::new(Arc::clone(&history), bus, dir.path().to_owned()).expect("ledger");
        let run = RunRef { id: RunId::new("r1"), workflow: "wf".to_owned(), request_id: None };
        (dir, history, ledger, run)
    }

    fn new_run(run: &RunRef) -> Write {
        Write::CreateRun(NewRun {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            trigger: Trigger::Api,
            request_id: None,
            created_at: jiff::Timestamp::now(),
        })
    }

    fn queued() -> EventData {
        EventData::RunQueued(RunQueued { trigger: "api".to_owned() })
    }

    fn cancelled() -> EventData {
        EventData::RunCancelled(RunCancelled { step_id: None })
    }

    #[tokio::test]
    async fn events_commit_with_their_change_and_continue_seq() {
        let (_dir, history, ledger, run) = setup();
        let mut sub = ledger.bus().subscribe();
        let first = ledger.commit_new(&run, vec![new_run(&run)], vec![queued()]).await.unwrap();
        assert_eq!(first[0].seq, 1);
        assert!(matches!(sub.recv().await, Some(crate::bus::Received::Event(e)) if e.seq == 1));
        // A lost compare-and-set commits and publishes nothing.
        let cas = |from: RunStatus| {
            Write::Transition(
                run.id.clone(),
                Transition { from: vec![from], update: RunUpdate::status(RunStatus::Cancelled) },
            )
        };
        assert!(
            ledger.commit(&run, vec![cas(RunStatus::Running)], vec![cancelled()]).await.is_err()
        );
        assert_eq!(history.last_seq(&run.id).await.unwrap(), 1);
        // Forgotten, the next commit reads the seq back from history.
        ledger.forget(&run.id);
        let next =
            ledger.commit(&run, vec![cas(RunStatus::Queued)], vec![cancelled()]).await.unwrap();
        assert_eq!(next[0].seq, 2);
        assert!(matches!(sub.recv().await, Some(crate::bus::Received::Event(e)) if e.seq == 2));
        let read = ledger.events(&run.id, 0).await.unwrap();
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(read[1], *next[0]);
    }

    #[tokio::test]
    async fn the_file_is_written_from_the_ledger_and_completed_after_a_crash() {
        let (dir, _history, ledger, run) = setup();
        ledger.commit_new(&run, vec![new_run(&run)], vec![queued()]).await.unwrap();
        for _ in 0..3 {
            ledger.commit(&run, vec![], vec![cancelled()]).await.unwrap();
        }
        ledger.sync(Some(&run.id));
        let path = dir.path().join("r1").join(EVENTS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let stored = ledger.events(&run.id, 0).await.unwrap();
        let expected: String =
            stored.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
        assert_eq!(text, expected);
        // A crash lost the last line and cut the one before short.
        let lines: Vec<&str> = text.lines().collect();
        let cut = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..10]);
        std::fs::write(&path, cut).unwrap();
        assert_eq!(ledger.complete_file(&run.id).await.unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        assert_eq!(ledger.complete_file(&run.id).await.unwrap(), 0);
    }
}
