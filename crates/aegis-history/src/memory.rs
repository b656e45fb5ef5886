//! `InMemoryHistory`: a backend that keeps everything in process memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use jiff::Timestamp;

use crate::backend::{HistoryBackend, UnfinishedRuns};
use crate::cursor;
use crate::error::{Error, Result};
use crate::model::{
    GateDecision, ListQuery, MAX_PAGE_SIZE, NewRun, Page, PendingGate, RunDetail, RunId, RunRecord,
    RunUpdate, StepRecord, Write,
};
use crate::options::HistoryOptions;

/// A history that lives as long as the process: for tests, `aegis-cli`
/// dry runs and embedders that do not want a file.
#[derive(Debug, Default)]
pub struct InMemoryHistory {
    max_records: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    runs: HashMap<RunId, Entry>,
    /// Every run by `(created_at, id)`, for newest-first keyset scans.
    order: BTreeSet<(Timestamp, RunId)>,
    /// Pending gates by `(run, gate)`.
    pending: BTreeMap<(RunId, String), PendingGate>,
    /// Runs retention deleted, oldest deletion first (`pruned_runs`).
    pruned: Vec<RunId>,
}

#[derive(Debug)]
struct Entry {
    run: RunRecord,
    steps: BTreeMap<(u32, u32), StepRecord>,
    decisions: Vec<GateDecision>,
}

impl InMemoryHistory {
    /// An empty history; only `options.max_records` applies.
    pub fn new(options: &HistoryOptions) -> Self {
        Self { max_records: options.max_records, state: Mutex::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change
        // behind (every change is applied after its checks), so the data
        // stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn entry(&mut self, run_id: &RunId) -> Result<&mut Entry> {
        self.runs.get_mut(run_id).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_string() })
    }

    fn create_run(&mut self, run: &NewRun) -> Result<()> {
        if self.runs.contains_key(&run.id) {
            return Err(Error::DuplicateRun { run_id: run.id.to_string() });
        }
        self.order.insert((run.created_at, run.id.clone()));
        self.runs.insert(
            run.id.clone(),
            Entry { run: RunRecord::from_new(run), steps: BTreeMap::new(), decisions: Vec::new() },
        );
        Ok(())
    }

    fn update_run(&mut self, run_id: &RunId, update: &RunUpdate, keep: u32) -> Result<()> {
        let entry = self.entry(run_id)?;
        entry.run.apply(update);
        if update.status.is_finished() {
            let workflow = entry.run.workflow.clone();
            self.prune(&workflow, keep);
        }
        Ok(())
    }

    fn record_step(&mut self, run_id: &RunId, step: StepRecord) -> Result<()> {
        let entry = self.entry(run_id)?;
        entry.steps.insert((step.execution, step.index), step);
        Ok(())
    }

    fn add_pending_gate(&mut self, gate: PendingGate) -> Result<()> {
        self.entry(&gate.run_id)?;
        self.pending.insert((gate.run_id.clone(), gate.gate_id.clone()), gate);
        Ok(())
    }

    fn prune(&mut self, workflow: &str, keep: u32) -> u64 {
        if keep == 0 {
            return 0;
        }
        let doomed: Vec<(Timestamp, RunId)> = self
            .order
            .iter()
            .rev()
            .filter(|(_, id)| {
                self.runs
                    .get(id)
                    .is_some_and(|e| e.run.workflow == workflow && e.run.status.is_finished())
            })
            .skip(keep as usize)
            .cloned()
            .collect();
        for key in &doomed {
            self.order.remove(key);
            self.runs.remove(&key.1);
            self.pending.retain(|(run_id, _), _| run_id != &key.1);
            self.pruned.push(key.1.clone());
        }
        doomed.len() as u64
    }
}

#[async_trait]
impl HistoryBackend for InMemoryHistory {
    async fn create_run(&self, run: &NewRun) -> Result<()> {
        self.state().create_run(run)
    }

    async fn update_run(&self, run_id: &RunId, update: &RunUpdate) -> Result<()> {
        self.state().update_run(run_id, update, self.max_records)
    }

    async fn record_step(&self, run_id: &RunId, step: &StepRecord) -> Result<()> {
        self.state().record_step(run_id, step.clone())
    }

    async fn add_pending_gate(&self, gate: &PendingGate) -> Result<()> {
        self.state().add_pending_gate(gate.clone())
    }

    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<()>> {
        // Under one lock: readers see the whole batch or none of it.
        let mut state = self.state();
        writes
            .into_iter()
            .map(|write| match write {
                Write::CreateRun(run) => state.create_run(&run),
                Write::UpdateRun(run_id, update) => {
                    state.update_run(&run_id, &update, self.max_records)
                }
                Write::RecordStep(run_id, step) => state.record_step(&run_id, step),
                Write::AddPendingGate(gate) => state.add_pending_gate(gate),
            })
            .collect()
    }

    async fn record_gate_decision(&self, run_id: &RunId, decision: &GateDecision) -> Result<()> {
        let mut state = self.state();
        let key = (run_id.clone(), decision.gate_id.clone());
        if !state.pending.contains_key(&key) {
            return Err(Error::GateNotPending {
                run_id: run_id.to_string(),
                gate_id: decision.gate_id.clone(),
            });
        }
        state.entry(run_id)?.decisions.push(decision.clone());
        state.pending.remove(&key);
        Ok(())
    }

    async fn pending_gates(&self) -> Result<Vec<PendingGate>> {
        let state = self.state();
        let mut gates: Vec<PendingGate> = state.pending.values().cloned().collect();
        gates.sort_by(|a, b| {
            (a.since, &a.run_id, &a.gate_id).cmp(&(b.since, &b.run_id, &b.gate_id))
        });
        Ok(gates)
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunDetail>> {
        let state = self.state();
        let Some(entry) = state.runs.get(run_id) else {
            return Ok(None);
        };
        let mut pending_gates: Vec<PendingGate> =
            state.pending.values().filter(|g| &g.run_id == run_id).cloned().collect();
        pending_gates.sort_by(|a, b| (a.since, &a.gate_id).cmp(&(b.since, &b.gate_id)));
        Ok(Some(RunDetail {
            run: entry.run.clone(),
            steps: entry.steps.values().cloned().collect(),
            gate_decisions: entry.decisions.clone(),
            pending_gates,
        }))
    }

    async fn list_runs(&self, query: &ListQuery) -> Result<Page> {
        let after = query.cursor.as_deref().map(cursor::decode).transpose()?;
        let limit = query.limit.min(MAX_PAGE_SIZE) as usize;
        if limit == 0 {
            return Ok(Page { runs: Vec::new(), next_cursor: None });
        }
        let state = self.state();
        let upper = match &after {
            Some(pos) => std::ops::Bound::Excluded((pos.created_at, pos.id.clone())),
            None => std::ops::Bound::Unbounded,
        };
        let mut runs = Vec::with_capacity(limit);
        let mut more = false;
        for (_, id) in state.order.range((std::ops::Bound::Unbounded, upper)).rev() {
            let Some(entry) = state.runs.get(id) else { continue };
            let run = &entry.run;
            if query.workflow.as_ref().is_some_and(|w| *w != run.workflow)
                || query.status.is_some_and(|s| s != run.status)
            {
                continue;
            }
            if runs.len() == limit {
                more = true;
                break;
            }
            runs.push(run.clone());
        }
        let next_cursor = match runs.last() {
            Some(last) if more => Some(cursor::encode(last.created_at, &last.id)),
            _ => None,
        };
        Ok(Page { runs, next_cursor })
    }

    async fn unfinished(&self) -> Result<UnfinishedRuns> {
        let state = self.state();
        Ok(UnfinishedRuns::from_runs(
            state
                .order
                .iter()
                .filter_map(|(_, id)| state.runs.get(id))
                .filter(|e| e.run.status.is_active())
                .map(|e| e.run.clone()),
        ))
    }

    async fn apply_retention(&self) -> Result<u64> {
        let mut state = self.state();
        let workflows: BTreeSet<String> =
            state.runs.values().map(|e| e.run.workflow.clone()).collect();
        Ok(workflows.iter().map(|w| state.prune(w, self.max_records)).sum())
    }

    async fn pruned_runs(&self, limit: u32) -> Result<Vec<RunId>> {
        Ok(self.state().pruned.iter().take(limit as usize).cloned().collect())
    }

    async fn forget_pruned(&self, run_ids: &[RunId]) -> Result<()> {
        let forget: BTreeSet<&RunId> = run_ids.iter().collect();
        self.state().pruned.retain(|id| !forget.contains(id));
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
