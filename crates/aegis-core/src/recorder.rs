//! Write-behind recording of a run in history.
//!
//! The engine does not wait for each history write. A write is queued on the
//! run's recorder, and the first write queued after a flush schedules a
//! flush task [`WRITE_BEHIND`] later; that task takes every write queued by
//! then, keeps only the latest of each record (one run update, one record
//! per step execution, one per gate) and hands them to history as one batch,
//! which the SQLite backend commits as one transaction. A record therefore
//! never goes back to an older state, history lags a run's progress by at
//! most [`WRITE_BEHIND`] (plus the commit), and a run that takes less than
//! that costs one commit, not one per step. [`Recorder::flush`] writes
//! whatever is still queued and returns once everything recorded is in
//! history; the engine flushes before it reports a run as finished or
//! waiting, so a returned summary is always durable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aegis_history::{HistoryBackend, PendingGate, RunId, RunUpdate, StepRecord};

/// How long a queued write may wait for others before it is written.
pub(crate) const WRITE_BEHIND: Duration = Duration::from_millis(10);

/// One history write.
#[derive(Debug)]
pub(crate) enum Write {
    Run(RunUpdate),
    Step(StepRecord),
    Gate(PendingGate),
}

/// The per-run writer.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    history: Arc<dyn HistoryBackend>,
    run_id: RunId,
    queued: Mutex<Queued>,
    /// Held while a batch is taken from the queue and written, so batches
    /// reach history in the order they were taken.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Queued {
    writes: Vec<Write>,
    /// A flush task is scheduled and has not yet taken the queue.
    scheduled: bool,
}

impl Recorder {
    pub(crate) fn new(history: Arc<dyn HistoryBackend>, run_id: RunId) -> Self {
        let shared = Shared {
            history,
            run_id,
            queued: Mutex::new(Queued::default()),
            writing: tokio::sync::Mutex::new(()),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Queues a write; never waits.
    pub(crate) fn record(&self, write: Write) {
        let schedule = {
            let mut queued = self.shared.queued();
            queued.writes.push(write);
            !std::mem::replace(&mut queued.scheduled, true)
        };
        if schedule {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                tokio::time::sleep(WRITE_BEHIND).await;
                shared.write_queued().await;
            });
        }
    }

    /// Writes everything queued and waits until it is in history.
    pub(crate) async fn flush(self) {
        self.shared.write_queued().await;
    }
}

impl Shared {
    fn queued(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn write_queued(&self) {
        let _writing = self.writing.lock().await;
        let writes = {
            let mut queued = self.queued();
            queued.scheduled = false;
            std::mem::take(&mut queued.writes)
        };
        if writes.is_empty() {
            return;
        }
        let batch = coalesce(&self.run_id, writes);
        let results = self.history.write_batch(&batch).await;
        for err in results.into_iter().filter_map(Result::err) {
            log::error!("run_id={}: cannot record the run in history: {err}", self.run_id);
        }
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
