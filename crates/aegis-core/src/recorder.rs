//! Write-behind recording of a run in history.
//!
//! The engine does not wait for each history write: writes go to a per-run
//! task, which takes every write queued at that moment, keeps only the latest
//! of each record (one run update, one record per step execution, one per
//! gate), and applies them together. A record therefore never goes back to an
//! older state, and the run's writes reach the store in a few batches instead
//! of one round trip each. [`Recorder::flush`] waits until everything sent is
//! written; the engine flushes before it reports a run as finished or waiting,
//! so a returned summary is always durable.

use std::collections::BTreeMap;
use std::sync::Arc;

use aegis_history::{HistoryBackend, PendingGate, RunId, RunUpdate, StepRecord};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One history write.
#[derive(Debug)]
pub(crate) enum Write {
    Run(RunUpdate),
    Step(StepRecord),
    Gate(PendingGate),
}

/// The per-run writer.
#[derive(Debug)]
pub(crate) struct Recorder {
    sender: mpsc::UnboundedSender<Write>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub(crate) fn spawn(history: Arc<dyn HistoryBackend>, run_id: RunId) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(history, run_id, receiver));
        Self { sender, task }
    }

    /// Queues a write; never waits.
    pub(crate) fn record(&self, write: Write) {
        // The task only ends after the sender is dropped, in `flush`.
        let _ = self.sender.send(write);
    }

    /// Waits until every queued write has been applied.
    pub(crate) async fn flush(self) {
        drop(self.sender);
        if let Err(err) = self.task.await {
            log::error!("history writer task failed: {err}");
        }
    }
}

async fn write_loop(
    history: Arc<dyn HistoryBackend>,
    run_id: RunId,
    mut receiver: mpsc::UnboundedReceiver<Write>,
) {
    let mut queued = Vec::new();
    while receiver.recv_many(&mut queued, 1024).await > 0 {
        let mut run: Option<RunUpdate> = None;
        let mut steps: BTreeMap<(u32, u32), StepRecord> = BTreeMap::new();
        let mut gates: BTreeMap<String, PendingGate> = BTreeMap::new();
        for write in queued.drain(..) {
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
        // Steps and gates first, then the run: a reader that sees the run's
        // new status also sees the steps that led to it. The writes are
        // issued in that order without waiting for one another (`join_all`
        // polls in order, and the SQLite backend applies its queue in order,
        // mostly in one transaction), so a batch costs one round trip.
        let mut writes: Vec<futures_util::future::BoxFuture<'_, aegis_history::Result<()>>> =
            Vec::with_capacity(steps.len() + gates.len() + 1);
        writes.extend(steps.values().map(|s| history.record_step(&run_id, s)));
        writes.extend(gates.values().map(|g| history.add_pending_gate(g)));
        if let Some(update) = &run {
            writes.push(history.update_run(&run_id, update));
        }
        let results = futures_util::future::join_all(writes).await;
        for err in results.into_iter().filter_map(Result::err) {
            log::error!("run_id={run_id}: cannot record the run in history: {err}");
        }
    }
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
