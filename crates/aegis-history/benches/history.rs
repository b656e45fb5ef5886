//! Benchmarks of `SqliteHistory`: recording whole runs into a file, and the
//! list queries on a database of 1,000,000 runs.
//!
//! Run with `cargo bench -p aegis-history --bench history`. Besides
//! criterion's estimates it prints per-call latency percentiles (criterion
//! reports means and medians of batches, not p99) and the peak RSS.

#![expect(clippy::unwrap_used, reason = "a benchmark panics on failure")]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aegis_history::{
    Attempt, Durability, HistoryBackend, HistoryOptions, ListQuery, NewRun, RunId, RunStatus,
    RunUpdate, SCHEMA_VERSION, SqliteHistory, StepRecord, StepStatus, Trigger,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use tokio::runtime::Runtime;

/// Runs recorded per measured iteration.
const RUNS_PER_ITER: u64 = 2000;
/// Runs in flight at once: what lets group commit batch writes.
const CONCURRENCY: u64 = 200;
/// Steps per run.
const STEPS: u32 = 5;
/// Size of the query database.
const BIG: u64 = 1_000_000;
const WORKFLOWS: u64 = 20;

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>;
type Query = Box<dyn Fn(Arc<dyn HistoryBackend>) -> BoxFuture>;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("aegis-history-bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn step(index: u32, finished: bool) -> StepRecord {
    let now = Timestamp::now();
    StepRecord {
        execution: 0,
        index,
        step_id: format!("step{index}"),
        step_type: "http".to_owned(),
        status: if finished { StepStatus::Succeeded } else { StepStatus::Running },
        error: None,
        started_at: Some(now),
        completed_at: finished.then_some(now),
        duration_ms: finished.then_some(12),
        data: finished.then(|| serde_json::json!({ "status": 200, "items": [1, 2, 3] })),
        attempts: if finished {
            vec![Attempt {
                attempt: 1,
                success: true,
                error: None,
                duration_ms: 12,
                started_at: now,
            }]
        } else {
            Vec::new()
        },
    }
}

/// Records one complete run the way the engine does: created, started,
/// each step recorded when it starts and when it ends, finished. Every
/// write is awaited, so each is acknowledged durable.
async fn record_run(history: &dyn HistoryBackend) {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let run = NewRun {
        id: RunId::new(format!("bench-{n:012}")),
        workflow: format!("wf-{:02}", n % 8),
        trigger: Trigger::Api,
        request_id: None,
        created_at: Timestamp::now(),
    };
    history.create_run(&run).await.unwrap();
    let started =
        RunUpdate { started_at: Some(Timestamp::now()), ..RunUpdate::status(RunStatus::Running) };
    history.update_run(&run.id, &started).await.unwrap();
    for index in 0..STEPS {
        history.record_step(&run.id, &step(index, false)).await.unwrap();
        history.record_step(&run.id, &step(index, true)).await.unwrap();
    }
    let done = RunUpdate {
        completed_at: Some(Timestamp::now()),
        duration_ms: Some(60),
        ..RunUpdate::status(RunStatus::Succeeded)
    };
    history.update_run(&run.id, &done).await.unwrap();
}

async fn record_runs(history: &Arc<dyn HistoryBackend>, runs: u64) {
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let history = Arc::clone(history);
            let mine = runs / CONCURRENCY + u64::from(t < runs % CONCURRENCY);
            tokio::spawn(async move {
                for _ in 0..mine {
                    record_run(&*history).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn bench_record(c: &mut Criterion) {
    let rt = runtime();
    for (name, durability) in
        [("process_crash", Durability::ProcessCrash), ("power_loss", Durability::PowerLoss)]
    {
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        let path = dir.path().join("record.db");
        let options = HistoryOptions { durability, ..HistoryOptions::default() };
        let history: Arc<dyn HistoryBackend> =
            Arc::new(rt.block_on(SqliteHistory::open(&path, options)).unwrap());
        let mut group = c.benchmark_group(format!("record_5_step_runs/{name}"));
        group.throughput(Throughput::Elements(RUNS_PER_ITER));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(15));
        group.bench_function("runs", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        record_runs(&history, RUNS_PER_ITER).await;
                    }
                    start.elapsed()
                })
            });
        });
        group.finish();
        drop(history);
        eprintln!("peak RSS after recording ({name}): {} KiB", peak_rss_kib());
    }
}

/// Builds (once, then reuses) a database with [`BIG`] finished runs.
fn big_db(rt: &Runtime) -> PathBuf {
    let path = bench_dir().join(format!("runs-1m-v{SCHEMA_VERSION}.db"));
    if path.exists() {
        return path;
    }
    let building = path.with_extension("building");
    let _ = std::fs::remove_file(&building);
    let start = Instant::now();
    rt.block_on(aegis_history::seed::bulk_seed(&building, BIG, WORKFLOWS)).unwrap();
    std::fs::rename(&building, &path).unwrap();
    eprintln!("built {BIG}-run database in {:.1?}", start.elapsed());
    path
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    eprintln!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}

fn bench_queries(c: &mut Criterion) {
    let rt = runtime();
    let path = big_db(&rt);
    let history: Arc<dyn HistoryBackend> =
        Arc::new(rt.block_on(SqliteHistory::open(&path, HistoryOptions::default())).unwrap());
    let rss_before = peak_rss_kib();

    // A cursor from the middle of the table, for a deep page.
    let mid_cursor = rt.block_on(async {
        let mut query = ListQuery { limit: 1000, ..ListQuery::default() };
        for _ in 0..500 {
            let page = history.list_runs(&query).await.unwrap();
            query.cursor = page.next_cursor;
        }
        query.cursor.unwrap()
    });

    let queries: Vec<(&str, Query)> = vec![
        ("recent(10)", Box::new(|h| Box::pin(async move { h.recent(10).await.unwrap().len() }))),
        (
            "list(limit=50)",
            Box::new(|h| {
                Box::pin(async move {
                    let q = ListQuery { limit: 50, ..ListQuery::default() };
                    h.list_runs(&q).await.unwrap().runs.len()
                })
            }),
        ),
        (
            "list(status=failed, limit=50)",
            Box::new(|h| {
                Box::pin(async move {
                    let q = ListQuery {
                        status: Some(RunStatus::Failed),
                        limit: 50,
                        ..ListQuery::default()
                    };
                    h.list_runs(&q).await.unwrap().runs.len()
                })
            }),
        ),
        (
            "workflow_runs(wf-07, 50) first page",
            Box::new(|h| {
                Box::pin(
                    async move { h.workflow_runs("wf-07", 50, None).await.unwrap().runs.len() },
                )
            }),
        ),
        (
            "list(limit=50) page at row 500,000",
            Box::new(move |h| {
                let cursor = mid_cursor.clone();
                Box::pin(async move {
                    let q = ListQuery { limit: 50, cursor: Some(cursor), ..ListQuery::default() };
                    h.list_runs(&q).await.unwrap().runs.len()
                })
            }),
        ),
    ];

    // Per-call latency, as a caller sees it (through the pool and the
    // blocking pool).
    for (name, query) in &queries {
        let samples = rt.block_on(async {
            let mut samples = Vec::with_capacity(5000);
            for _ in 0..5000 {
                let start = Instant::now();
                assert!(query(Arc::clone(&history)).await > 0);
                samples.push(start.elapsed());
            }
            samples
        });
        percentiles(name, samples);
    }

    let mut group = c.benchmark_group("query_1m_runs");
    for (name, query) in &queries {
        group.bench_function(*name, |b| {
            b.iter(|| rt.block_on(query(Arc::clone(&history))));
        });
    }
    group.finish();
    eprintln!(
        "peak RSS: {} KiB before the query benchmarks, {} KiB after",
        rss_before,
        peak_rss_kib()
    );
}

criterion_group!(benches, bench_record, bench_queries);
criterion_main!(benches);
