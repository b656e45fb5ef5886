//! How writes reach the store: batches become visible at once, commits work
//! on a current-thread runtime, and the WAL is checkpointed in the
//! background so it stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aegis_history::conformance::{finished_step, new_run, ts};
use aegis_history::{
    Durability, HistoryBackend, HistoryOptions, InMemoryHistory, PendingGate, RunStatus, RunUpdate,
    SqliteHistory, StepRecord, StepStatus, Write,
};
use serde_json::json;

/// A reader polling runs while a writer pauses them at gates never sees a
/// run `waiting` without its pending gate and its running gate step.
async fn waiting_runs_always_show_their_gate(history: Arc<dyn HistoryBackend>) {
    const RUNS: usize = 200;
    let runs: Vec<_> = (0..RUNS).map(|i| new_run(&format!("g{i:03}"), "gated", i as i64)).collect();
    for run in &runs {
        history.create_run(run).await.unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (history, done) = (Arc::clone(&history), Arc::clone(&done));
        let ids: Vec<_> = runs.iter().map(|r| r.id.clone()).collect();
        tokio::spawn(async move {
            let mut seen_waiting = 0;
            while !done.load(Ordering::Acquire) {
                for id in &ids {
                    let detail = history.get_run(id).await.unwrap().unwrap();
                    if detail.run.status == RunStatus::Waiting {
                        assert_eq!(detail.pending_gates.len(), 1, "{id}: waiting without its gate");
                        assert_eq!(detail.steps.len(), 1, "{id}: waiting without its gate step");
                        seen_waiting += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            seen_waiting
        })
    };
    for (i, run) in runs.iter().enumerate() {
        let gate_step = StepRecord {
            status: StepStatus::Running,
            completed_at: None,
            duration_ms: None,
            data: None,
            ..finished_step(0, i as i64)
        };
        let gate = PendingGate {
            run_id: run.id.clone(),
            gate_id: "review".to_owned(),
            step_index: 0,
            message: None,
            artifact: None,
            since: ts(i as i64),
            deadline: None,
        };
        let results = history
            .write_batch(vec![
                Write::RecordStep(run.id.clone(), gate_step),
                Write::AddPendingGate(gate),
                Write::UpdateRun(run.id.clone(), RunUpdate::status(RunStatus::Waiting)),
            ])
            .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        if i % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
    done.store(true, Ordering::Release);
    reader.await.unwrap();
    for run in &runs {
        assert_eq!(history.get_run(&run.id).await.unwrap().unwrap().run.status, RunStatus::Waiting);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_batches_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let history =
        SqliteHistory::open(&dir.path().join("h.db"), HistoryOptions::default()).await.unwrap();
    waiting_runs_always_show_their_gate(Arc::new(history)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_batches_are_atomic() {
    let history = SqliteHistory::open_in_memory(HistoryOptions::default()).await.unwrap();
    waiting_runs_always_show_their_gate(Arc::new(history)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_batches_are_atomic() {
    waiting_runs_always_show_their_gate(Arc::new(InMemoryHistory::default())).await;
}

/// Commits work where the runtime has one thread, and both durabilities keep
/// what they acknowledged.
#[tokio::test(flavor = "current_thread")]
async fn writes_commit_on_a_current_thread_runtime() {
    for durability in [Durability::ProcessCrash, Durability::PowerLoss] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let options = HistoryOptions { durability, ..HistoryOptions::default() };
        let history = SqliteHistory::open(&path, options.clone()).await.unwrap();
        for i in 0..20 {
            let run = new_run(&format!("r{i:02}"), "wf", i);
            history.create_run(&run).await.unwrap();
            history.record_step(&run.id, &finished_step(0, i)).await.unwrap();
        }
        assert_eq!(history.apply_retention().await.unwrap(), 0);
        drop(history);
        let reopened = SqliteHistory::open(&path, options).await.unwrap();
        assert_eq!(reopened.recent(100).await.unwrap().len(), 20, "{durability:?}");
    }
}

/// Automatic checkpoints are off on the write connection; the committer
/// queues one every 256 commits, behind the commits already waiting, so even
/// writers that never pause (several at once, always a commit queued) cannot
/// keep the WAL from being started over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded() {
    const COMMITS: usize = 6000;
    const WRITERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let history = Arc::new(SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap());
    let run = new_run("big", "wf", 0);
    history.create_run(&run).await.unwrap();
    let blob = Arc::new("x".repeat(8 * 1024));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (history, run_id, blob) = (Arc::clone(&history), run.id.clone(), Arc::clone(&blob));
            tokio::spawn(async move {
                for i in (w..COMMITS).step_by(WRITERS) {
                    let mut step = finished_step(0, 1);
                    step.index = w as u32;
                    step.data = Some(json!({ "i": i, "blob": *blob }));
                    history.record_step(&run_id, &step).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let history = Arc::into_inner(history).unwrap();
    // Without checkpoints the WAL would hold every commit: over 48 MB here.
    // With them it holds at most 256 batches of up to WRITERS commits.
    let written = (COMMITS * blob.len()) as u64;
    let wal = std::fs::metadata(dir.path().join("h.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(wal < written / 2, "WAL is {wal} bytes after {COMMITS} commits of {written} bytes");
    drop(history);
    let reopened = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    let detail = reopened.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.steps.len(), WRITERS);
    let last = detail.steps.iter().map(|s| s.data.as_ref().unwrap()["i"].as_u64().unwrap()).max();
    assert_eq!(last, Some(COMMITS as u64 - 1));
}
