//! Write-behind recording of a run in history.
//!
//! The engine does not wait for each history write. A write is queued on the
//! run's [`Recorder`]; the first one queued after a flush hands the recorder
//! to the engine's [`Progress`] writer, one task per engine which, at most
//! [`WRITE_BEHIND`] later, takes the queue of every run handed to it, keeps
//! only the latest of each record (one run update, one record per step
//! execution, one per gate) and gives them to history as one batch, which
//! the SQLite backend commits as one transaction. A record therefore never
//! goes back to an older state, history lags a run's progress by at most
//! [`WRITE_BEHIND`] (plus the commit), a run shorter than that costs one
//! commit, and concurrent runs share their progress commits. Runs spawn no
//! task and set no timer of their own for it.
//!
//! [`Recorder::flush`] writes whatever is still queued and returns once
//! everything recorded is in history; the engine flushes before it reports a
//! run as finished or waiting, so a returned summary is always durable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use aegis_history::{HistoryBackend, PendingGate, RunId, RunUpdate, StepRecord};
use tokio::sync::Notify;

/// How long a queued write may wait for others before it is written.
pub(crate) const WRITE_BEHIND: Duration = Duration::from_millis(50);

/// One history write.
#[derive(Debug)]
pub(crate) enum Write {
    Run(RunUpdate),
    Step(StepRecord),
    Gate(PendingGate),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine's writer of runs' progress: recorders with queued writes wait
/// here for the next batch.
#[derive(Debug)]
pub(crate) struct Progress {
    state: Arc<ProgressState>,
}

#[derive(Debug)]
struct ProgressState {
    history: Arc<dyn HistoryBackend>,
    due: Mutex<Due>,
    wake: Notify,
}

impl Progress {
    pub(crate) fn new(history: Arc<dyn HistoryBackend>) -> Self {
        let state = ProgressState { history, due: Mutex::default(), wake: Notify::new() };
        Self { state: Arc::new(state) }
    }
}

#[derive(Debug, Default)]
struct Due {
    recorders: Vec<Arc<Shared>>,
    /// The writer task runs (it is started by the first run that needs it,
    /// on that run's runtime).
    started: bool,
}

impl ProgressState {
    fn hand_over(self: &Arc<Self>, recorder: Arc<Shared>) {
        let (first, start) = {
            let mut due = lock(&self.due);
            due.recorders.push(recorder);
            let start = !std::mem::replace(&mut due.started, true);
            (due.recorders.len() == 1, start)
        };
        if start {
            tokio::spawn(write_progress(Arc::downgrade(self)));
        }
        if first {
            self.wake.notify_one();
        }
    }
}

/// The progress writer: waits for a recorder to be handed over, lets
/// [`WRITE_BEHIND`] pass, then writes every handed-over queue in one batch.
/// Ends once the engine is gone.
async fn write_progress(state: Weak<ProgressState>) {
    loop {
        let Some(progress) = state.upgrade() else { return };
        // `notify_one` stores a permit when nobody waits: none is lost.
        progress.wake.notified().await;
        drop(progress);
        tokio::time::sleep(WRITE_BEHIND).await;
        let Some(progress) = state.upgrade() else { return };
        let recorders = std::mem::take(&mut lock(&progress.due).recorders);
        let history = Arc::clone(&progress.history);
        drop(progress);
        write_together(&*history, &recorders).await;
    }
}

/// Writes the queues of several runs as one batch. A run that is writing
/// its own queue right now (its final flush) is left to it.
async fn write_together(history: &dyn HistoryBackend, recorders: &[Arc<Shared>]) {
    let mut guards = Vec::with_capacity(recorders.len());
    let mut batch = Vec::new();
    for recorder in recorders {
        let Ok(guard) = recorder.writing.try_lock() else { continue };
        batch.extend(recorder.take());
        guards.push(guard);
    }
    if batch.is_empty() {
        return;
    }
    for err in history.write_batch(batch).await.into_iter().filter_map(Result::err) {
        log::error!("cannot record runs' progress in history: {err}");
    }
}

/// The per-run writer.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    shared: Arc<Shared>,
    progress: Arc<ProgressState>,
}

#[derive(Debug)]
struct Shared {
    run_id: RunId,
    queued: Mutex<Queued>,
    /// Held while a queue is taken and written, so that the writes of a run
    /// reach history in the order they were taken.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Queued {
    writes: Vec<Write>,
    /// Handed over to the progress writer and not yet taken.
    due: bool,
}

impl Recorder {
    pub(crate) fn new(run_id: RunId, progress: &Progress) -> Self {
        let shared = Shared {
            run_id,
            queued: Mutex::new(Queued::default()),
            writing: tokio::sync::Mutex::new(()),
        };
        Self { shared: Arc::new(shared), progress: Arc::clone(&progress.state) }
    }

    /// Queues a write; never waits.
    pub(crate) fn record(&self, write: Write) {
        let hand_over = {
            let mut queued = lock(&self.shared.queued);
            queued.writes.push(write);
            !std::mem::replace(&mut queued.due, true)
        };
        if hand_over {
            self.progress.hand_over(Arc::clone(&self.shared));
        }
    }

    /// Writes everything queued and waits until it is in history.
    pub(crate) async fn flush(self) {
        let _writing = self.shared.writing.lock().await;
        let batch = self.shared.take();
        if batch.is_empty() {
            return;
        }
        let results = self.progress.history.write_batch(batch).await;
        for err in results.into_iter().filter_map(Result::err) {
            log::error!("run_id={}: cannot record the run in history: {err}", self.shared.run_id);
        }
    }
}

impl Shared {
    /// Takes the queued writes as one coalesced batch (hold `writing`).
    fn take(&self) -> Vec<aegis_history::Write> {
        let writes = {
            let mut queued = lock(&self.queued);
            queued.due = false;
            std::mem::take(&mut queued.writes)
        };
        if writes.is_empty() { Vec::new() } else { coalesce(&self.run_id, writes) }
    }
}

/// The latest of each record, as one batch: steps and gates first, then the
/// run, so that a reader that sees the run's new status also sees the steps
/// that led to it (the batch becomes visible at once where the store can).
fn coalesce(run_id: &RunId, writes: Vec<Write>) -> Vec<aegis_history::Write> {
    let mut run: Option<RunUpdate> = None;
    let mut steps: BTreeMap<(u32, u32), StepRecord> = BTreeMap::new();
    let mut gates: BTreeMap<String, PendingGate> = BTreeMap::new();
    for write in writes {
        match write {
            Write::Run(update) => run = Some(merge(run, update)),
            Write::Step(step) => {
                steps.insert((step.execution, step.index), step);
            }
            Write::Gate(gate) => {
                gates.insert(gate.gate_id.clone(), gate);
            }
        }
    }
    let mut batch = Vec::with_capacity(steps.len() + gates.len() + 1);
    batch.extend(steps.into_values().map(|s| aegis_history::Write::RecordStep(run_id.clone(), s)));
    batch.extend(gates.into_values().map(aegis_history::Write::AddPendingGate));
    batch.extend(run.map(|update| aegis_history::Write::UpdateRun(run_id.clone(), update)));
    batch
}

/// Two updates as one: the later status, and each field from the later
/// update where it has one.
fn merge(earlier: Option<RunUpdate>, later: RunUpdate) -> RunUpdate {
    let Some(earlier) = earlier else { return later };
    RunUpdate {
        status: later.status,
        started_at: later.started_at.or(earlier.started_at),
        completed_at: later.completed_at.or(earlier.completed_at),
        duration_ms: later.duration_ms.or(earlier.duration_ms),
        error: later.error.or(earlier.error),
    }
}

#[cfg(test)]
mod tests {
    use aegis_history::RunStatus;

    use super::*;

    #[test]
    fn merged_updates_keep_earlier_fields_the_later_one_lacks() {
        let start = jiff::Timestamp::now();
        let running =
            RunUpdate { started_at: Some(start), ..RunUpdate::status(RunStatus::Running) };
        let done = RunUpdate { duration_ms: Some(5), ..RunUpdate::status(RunStatus::Succeeded) };
        let merged = merge(Some(running), done);
        assert_eq!(merged.status, RunStatus::Succeeded);
        assert_eq!((merged.started_at, merged.duration_ms), (Some(start), Some(5)));
    }
}
