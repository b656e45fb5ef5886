//! `InMemoryHistory`: a backend that keeps everything in process memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use jiff::Timestamp;

use crate::backend::{HistoryBackend, UnfinishedRuns};
use crate::cursor;
use crate::error::{Error, Result};
use crate::model::{
    CloseSteps, EventRecord, GateDecision, ListQuery, MAX_PAGE_SIZE, NewRun, Page, PendingGate,
    RunDetail, RunId, RunRecord, RunUpdate, StepRecord, StepStatus, Transition, Write,
};
use crate::options::HistoryOptions;
use crate::outbox::{
    Delivery, DeliveryClaim, DeliveryDetail, DeliveryOutcome, DeliveryPage, DeliveryQuery,
    DeliveryStatus,
};

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
    /// The webhook outbox.
    outbox: Outbox,
}

/// Deliveries by the order they were enqueued in (the log's order).
#[derive(Debug, Default)]
struct Outbox {
    rows: BTreeMap<u64, OutboxRow>,
    ids: HashMap<String, u64>,
    last_seq: u64,
}

#[derive(Debug, Clone)]
struct OutboxRow {
    delivery: Delivery,
    claimed_until: Option<Timestamp>,
    updated_at: Timestamp,
    attempts: Vec<crate::outbox::DeliveryAttempt>,
}

impl Outbox {
    /// Checks that every outbox write of a transaction will apply, so that
    /// they can be applied after the others without a way to fail.
    fn check(&self, writes: &[Write]) -> Result<()> {
        let mut added = BTreeSet::new();
        for write in writes {
            match write {
                Write::EnqueueDelivery(new)
                    if self.ids.contains_key(&new.id) || !added.insert(new.id.as_str()) =>
                {
                    return Err(Error::DuplicateDelivery { id: new.id.clone() });
                }
                Write::RecordDeliveryAttempt(result) => self.known(&result.id, &added)?,
                Write::Redeliver(id, _) => self.known(id, &added)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn known(&self, id: &str, added: &BTreeSet<&str>) -> Result<()> {
        if self.ids.contains_key(id) || added.contains(id) {
            Ok(())
        } else {
            Err(Error::DeliveryNotFound { id: id.to_owned() })
        }
    }

    /// Applies a checked outbox write.
    fn apply(&mut self, write: Write) {
        match write {
            Write::EnqueueDelivery(new) => {
                self.last_seq += 1;
                self.ids.insert(new.id.clone(), self.last_seq);
                let created_at = new.created_at;
                let row = OutboxRow {
                    delivery: Delivery {
                        enqueued: new,
                        status: DeliveryStatus::Pending,
                        attempt_count: 0,
                        next_attempt_at: Some(created_at),
                    },
                    claimed_until: None,
                    updated_at: created_at,
                    attempts: Vec::new(),
                };
                self.rows.insert(self.last_seq, row);
            }
            Write::RecordDeliveryAttempt(result) => {
                let Some(row) = self.ids.get(&result.id).and_then(|seq| self.rows.get_mut(seq))
                else {
                    return;
                };
                let d = &mut row.delivery;
                d.attempt_count = result.attempt.attempt;
                (d.status, d.next_attempt_at) = match result.outcome {
                    DeliveryOutcome::Delivered => (DeliveryStatus::Delivered, None),
                    DeliveryOutcome::Retry { at } => (DeliveryStatus::Pending, Some(at)),
                    DeliveryOutcome::Gone => (DeliveryStatus::Gone, None),
                    DeliveryOutcome::Failed => (DeliveryStatus::Failed, None),
                };
                row.claimed_until = None;
                row.updated_at = result.attempt.at;
                row.attempts.push(result.attempt);
            }
            Write::Redeliver(id, at) => {
                let Some(row) = self.ids.get(&id).and_then(|seq| self.rows.get_mut(seq)) else {
                    return;
                };
                row.delivery.status = DeliveryStatus::Pending;
                row.delivery.attempt_count = 0;
                row.delivery.next_attempt_at = Some(at);
                row.claimed_until = None;
                row.updated_at = at;
            }
            _ => {}
        }
    }

    /// When a pending row may be claimed.
    fn claimable_at(row: &OutboxRow) -> Option<Timestamp> {
        let due = row.delivery.next_attempt_at?;
        Some(row.claimed_until.map_or(due, |until| due.max(until)))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    run: RunRecord,
    steps: BTreeMap<(u32, u32), StepRecord>,
    decisions: Vec<GateDecision>,
    /// The run's ledger, `seq` 1, 2, 3, …
    events: Vec<EventRecord>,
}

/// What a failed transaction restores: the entries and pending gates of
/// the runs it touched, as they were before it.
struct Saved {
    run_id: RunId,
    entry: Option<Entry>,
    pending: Vec<PendingGate>,
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
            Entry {
                run: RunRecord::from_new(run),
                steps: BTreeMap::new(),
                decisions: Vec::new(),
                events: Vec::new(),
            },
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

    fn decide_gate(&mut self, run_id: &RunId, decision: &GateDecision) -> Result<()> {
        let key = (run_id.clone(), decision.gate_id.clone());
        if !self.pending.contains_key(&key) {
            return Err(Error::GateNotPending {
                run_id: run_id.to_string(),
                gate_id: decision.gate_id.clone(),
            });
        }
        self.entry(run_id)?.decisions.push(decision.clone());
        self.pending.remove(&key);
        Ok(())
    }

    /// The compare-and-set of a run's status; returns the workflow when the
    /// run is now finished (for retention).
    fn transition(&mut self, run_id: &RunId, transition: &Transition) -> Result<Option<String>> {
        let entry = self.entry(run_id)?;
        if !transition.from.contains(&entry.run.status) {
            return Err(Error::StatusConflict {
                run_id: run_id.to_string(),
                status: entry.run.status.as_str().to_owned(),
            });
        }
        entry.run.apply(&transition.update);
        Ok(transition.update.status.is_finished().then(|| entry.run.workflow.clone()))
    }

    fn append_event(&mut self, event: EventRecord) -> Result<()> {
        let entry = self.entry(&event.run_id)?;
        let last = entry.events.last().map_or(0, |e| e.seq);
        if event.seq != last + 1 {
            return Err(Error::SeqConflict { run_id: event.run_id.to_string(), seq: event.seq });
        }
        entry.events.push(event);
        Ok(())
    }

    fn close_steps(&mut self, run_id: &RunId, close: &CloseSteps) -> Result<()> {
        let entry = self.entry(run_id)?;
        for step in entry.steps.values_mut().filter(|s| s.status == StepStatus::Running) {
            step.status = close.status;
            step.error = Some(close.error.clone());
            step.completed_at = Some(close.at);
            step.duration_ms = step
                .started_at
                .map(|s| close.at.duration_since(s).as_millis().try_into().unwrap_or(0));
        }
        Ok(())
    }

    /// Applies one write of a transaction; returns a workflow to prune.
    fn apply(&mut self, write: Write) -> Result<Option<String>> {
        match write {
            Write::CreateRun(run) => self.create_run(&run).map(|()| None),
            Write::UpdateRun(run_id, update) => {
                let entry = self.entry(&run_id)?;
                entry.run.apply(&update);
                Ok(update.status.is_finished().then(|| entry.run.workflow.clone()))
            }
            Write::RecordStep(run_id, step) => self.record_step(&run_id, step).map(|()| None),
            Write::AddPendingGate(gate) => self.add_pending_gate(gate).map(|()| None),
            Write::Transition(run_id, transition) => self.transition(&run_id, &transition),
            Write::AppendEvent(event) => self.append_event(event).map(|()| None),
            Write::DecideGate(run_id, decision) => {
                self.decide_gate(&run_id, &decision).map(|()| None)
            }
            Write::CloseSteps(run_id, close) => self.close_steps(&run_id, &close).map(|()| None),
            outbox => {
                self.outbox.apply(outbox);
                Ok(None)
            }
        }
    }

    /// Applies every write or, when one fails, none.
    fn commit(&mut self, writes: Vec<Write>, keep: u32) -> Result<()> {
        // Outbox writes touch no run: checked first and applied last, once
        // the others have all applied.
        self.outbox.check(&writes)?;
        let (outbox, writes): (Vec<Write>, Vec<Write>) =
            writes.into_iter().partition(Write::is_outbox);
        let mut touched: Vec<RunId> = writes.iter().filter_map(run_of).cloned().collect();
        touched.sort();
        touched.dedup();
        let saved: Vec<Saved> = touched
            .into_iter()
            .map(|run_id| Saved {
                entry: self.runs.get(&run_id).cloned(),
                pending: self.pending.values().filter(|g| g.run_id == run_id).cloned().collect(),
                run_id,
            })
            .collect();
        let mut finished = BTreeSet::new();
        for write in writes {
            match self.apply(write) {
                Ok(workflow) => finished.extend(workflow),
                Err(err) => {
                    self.restore(saved);
                    return Err(err);
                }
            }
        }
        for workflow in finished {
            self.prune(&workflow, keep);
        }
        for write in outbox {
            self.outbox.apply(write);
        }
        Ok(())
    }

    fn restore(&mut self, saved: Vec<Saved>) {
        for Saved { run_id, entry, pending } in saved {
            self.pending.retain(|(id, _), _| id != &run_id);
            for gate in pending {
                self.pending.insert((gate.run_id.clone(), gate.gate_id.clone()), gate);
            }
            match entry {
                Some(entry) => {
                    self.runs.insert(run_id, entry);
                }
                None => {
                    if let Some(entry) = self.runs.remove(&run_id) {
                        self.order.remove(&(entry.run.created_at, run_id));
                    }
                }
            }
        }
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
                other => state.commit(vec![other], self.max_records),
            })
            .collect()
    }

    async fn record_gate_decision(&self, run_id: &RunId, decision: &GateDecision) -> Result<()> {
        self.state().decide_gate(run_id, decision)
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        self.state().commit(writes, self.max_records)
    }

    async fn events(&self, run_id: &RunId, after: u64, limit: u32) -> Result<Vec<EventRecord>> {
        let state = self.state();
        let Some(entry) = state.runs.get(run_id) else { return Ok(Vec::new()) };
        Ok(entry.events.iter().filter(|e| e.seq > after).take(limit as usize).cloned().collect())
    }

    async fn last_seq(&self, run_id: &RunId) -> Result<u64> {
        let state = self.state();
        Ok(state.runs.get(run_id).and_then(|e| e.events.last()).map_or(0, |e| e.seq))
    }

    async fn finished_since(&self, since: Timestamp) -> Result<Vec<RunId>> {
        let state = self.state();
        let mut runs: Vec<(Timestamp, RunId)> = state
            .runs
            .values()
            .filter_map(|e| {
                e.run.completed_at.filter(|at| *at >= since).map(|at| (at, e.run.id.clone()))
            })
            .collect();
        runs.sort();
        Ok(runs.into_iter().map(|(_, id)| id).collect())
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

    async fn claim_deliveries(&self, claim: &DeliveryClaim) -> Result<Vec<Delivery>> {
        let mut state = self.state();
        let mut due: Vec<(Timestamp, u64)> = state
            .outbox
            .rows
            .iter()
            .filter(|(_, row)| {
                row.delivery.enqueued.webhook == claim.webhook
                    && row.delivery.status == DeliveryStatus::Pending
                    && Outbox::claimable_at(row).is_some_and(|at| at <= claim.now)
            })
            .filter_map(|(seq, row)| row.delivery.next_attempt_at.map(|at| (at, *seq)))
            .collect();
        due.sort();
        due.truncate(claim.limit as usize);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, seq) in due {
            if let Some(row) = state.outbox.rows.get_mut(&seq) {
                row.claimed_until = Some(claim.until);
                claimed.push(row.delivery.clone());
            }
        }
        Ok(claimed)
    }

    async fn release_delivery_claims(&self) -> Result<u64> {
        let mut state = self.state();
        let mut released = 0;
        for row in state.outbox.rows.values_mut() {
            if row.delivery.status == DeliveryStatus::Pending && row.claimed_until.take().is_some()
            {
                released += 1;
            }
        }
        Ok(released)
    }

    async fn next_delivery_due(&self, webhook: u32) -> Result<Option<Timestamp>> {
        let state = self.state();
        Ok(state
            .outbox
            .rows
            .values()
            .filter(|row| {
                row.delivery.enqueued.webhook == webhook
                    && row.delivery.status == DeliveryStatus::Pending
            })
            .filter_map(Outbox::claimable_at)
            .min())
    }

    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage> {
        let before = query.cursor.as_deref().map(cursor::decode_seq).transpose()?;
        let limit = query.limit.min(MAX_PAGE_SIZE) as usize;
        if limit == 0 {
            return Ok(DeliveryPage { deliveries: Vec::new(), next_cursor: None });
        }
        let state = self.state();
        let mut deliveries = Vec::with_capacity(limit);
        let mut last = None;
        let mut more = false;
        for (seq, row) in state.outbox.rows.range(..before.unwrap_or(u64::MAX)).rev() {
            let d = &row.delivery;
            if query.status.is_some_and(|s| s != d.status)
                || query.webhook.is_some_and(|w| w != d.enqueued.webhook)
                || query.run_id.as_ref().is_some_and(|r| *r != d.enqueued.run_id)
            {
                continue;
            }
            if deliveries.len() == limit {
                more = true;
                break;
            }
            last = Some(*seq);
            deliveries.push(DeliveryDetail { delivery: d.clone(), attempts: row.attempts.clone() });
        }
        let next_cursor = last.filter(|_| more).map(cursor::encode_seq);
        Ok(DeliveryPage { deliveries, next_cursor })
    }

    async fn delivery_counts(&self) -> Result<Vec<(u32, DeliveryStatus, u64)>> {
        let state = self.state();
        let mut counts: BTreeMap<(u32, &'static str), (DeliveryStatus, u64)> = BTreeMap::new();
        for row in state.outbox.rows.values() {
            let d = &row.delivery;
            counts.entry((d.enqueued.webhook, d.status.as_str())).or_insert((d.status, 0)).1 += 1;
        }
        Ok(counts.into_iter().map(|((webhook, _), (status, n))| (webhook, status, n)).collect())
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64> {
        let mut state = self.state();
        let doomed: Vec<u64> = state
            .outbox
            .rows
            .iter()
            .filter(|(_, row)| {
                row.delivery.status == DeliveryStatus::Delivered && row.updated_at < before
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &doomed {
            if let Some(row) = state.outbox.rows.remove(seq) {
                state.outbox.ids.remove(&row.delivery.enqueued.id);
            }
        }
        Ok(doomed.len() as u64)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// The run a write belongs to.
fn run_of(write: &Write) -> Option<&RunId> {
    match write {
        Write::CreateRun(run) => Some(&run.id),
        Write::UpdateRun(run_id, _)
        | Write::RecordStep(run_id, _)
        | Write::Transition(run_id, _)
        | Write::DecideGate(run_id, _)
        | Write::CloseSteps(run_id, _) => Some(run_id),
        Write::AddPendingGate(gate) => Some(&gate.run_id),
        Write::AppendEvent(event) => Some(&event.run_id),
        Write::EnqueueDelivery(_) | Write::RecordDeliveryAttempt(_) | Write::Redeliver(..) => None,
    }
}
