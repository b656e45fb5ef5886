//! Engine benchmark: the `full_pipeline` shape (discover, test, submit_bugs,
//! verify, report) against a local mock service that answers at once (and
//! does not record requests, so the mock's bookkeeping is not measured), with
//! SQLite history in a file.
//!
//! * throughput: runs finished per second with 32 runs executing at once
//!   (5 rounds of 2,000 runs); only runs that finished `succeeded` count, and
//!   at the end every run must be in the history store as `succeeded` and the
//!   last run's step data must be served as its `<step_id>.json` artifacts;
//! * overhead: at 1 run at a time, the engine's own cost per run (its wall
//!   time minus the time the same 4 HTTP calls take when made directly),
//!   relative to the cost of those calls (5 rounds of 200 runs). Both are
//!   timed from a task on the runtime (as runs execute), not from the
//!   benchmark's main thread, whose extra thread hop per I/O event made the
//!   direct calls look 3x slower than they are. Measured with SQLite on a
//!   file (the target), then with in-memory history (the engine's own logic
//!   without durable recording: the difference is the cost of the commits).
//!
//! Run with `CARGO_TARGET_DIR=/tmp/target-perf cargo bench -p aegis-core --bench engine`;
//! it prints each round, the medians and the load average before and after.
//! `AEGIS_BENCH_SKIP_THROUGHPUT=1` runs only the overhead part,
//! `AEGIS_BENCH_STORE=sqlitefile` or `=memory` only that overhead variant,
//! `AEGIS_BENCH_TRACE=1` prints the gaps between the events of a run.
//!
//! The data lives in a temporary folder (`TMPDIR`, default `/tmp`). On an ext4
//! without a journal, creating a file right after many deletions is slow (the
//! allocator skips recently deleted inodes one by one), and this benchmark
//! deletes ~20,000 files when it ends: results on a disk depend on what ran
//! in the minutes before. Quote medians of several runs, side by side.

use std::sync::Arc;
use std::time::Instant;

use aegis_core::testing::{MockService, Route};
use aegis_core::{Engine, RunOptions};
use aegis_history::{
    HistoryBackend, HistoryOptions, InMemoryHistory, ListQuery, RunStatus, SqliteHistory, Trigger,
};
use serde_json::json;

// The allocator `aegis-server` and `aegis-cli` use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 5;
const RUNS_PER_ROUND: usize = 2000;
const SEQUENTIAL_RUNS: usize = 200;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Where the benchmark's engine records runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    /// `SqliteHistory` on a file: what the targets are about.
    SqliteFile,
    /// `InMemoryHistory`: the engine's own logic without durable recording,
    /// to tell the two costs apart.
    Memory,
}

async fn setup(
    concurrency: usize,
    store: Store,
) -> (MockService, Engine, Arc<dyn HistoryBackend>, tempfile::TempDir) {
    let mock = MockService::start().await.expect("mock");
    // Measure the engine, not the mock's bookkeeping of every request.
    mock.forget_requests();
    mock.route("GET", "/api/routes", Route::ok(json!({ "routes": ["/a", "/b"] })));
    mock.route(
        "POST",
        "/api/runs",
        Route::ok(json!({ "total": 2, "failures": [{ "name": "t" }] })),
    );
    mock.route("POST", "/api/v1/reports", Route::ok(json!({ "filed": 1 })));
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "data_dir: ./data
server: {{ max_concurrent_runs: {concurrency}, max_queued_runs: 100000 }}
services:
  qa: {{ url: '{url}' }}
  bugs: {{ url: '{url}' }}
workflows:
  full_pipeline:
    steps:
      - {{ type: discover, service: qa }}
      - {{ type: test, service: qa }}
      - {{ type: submit_bugs, service: bugs, condition: has_failures }}
      - {{ type: verify, service: qa, condition: has_failures }}
      - {{ type: report, condition: always }}
",
        url = mock.url()
    );
    std::fs::write(dir.path().join(".aegis.yaml"), yaml).expect("config");
    let config = aegis_config::LoadOptions::new().cwd(dir.path()).load().expect("config");
    let history: Arc<dyn HistoryBackend> = match store {
        Store::SqliteFile => Arc::new(
            SqliteHistory::open(&dir.path().join("history.db"), HistoryOptions::default())
                .await
                .expect("sqlite"),
        ),
        Store::Memory => Arc::new(InMemoryHistory::default()),
    };
    let engine = Engine::builder(config, Arc::clone(&history)).build().expect("engine");
    (mock, engine, history, dir)
}

async fn stored_succeeded(history: &Arc<dyn HistoryBackend>) -> usize {
    let mut count = 0;
    let mut cursor = None;
    loop {
        let page = history
            .list_runs(&ListQuery {
                workflow: None,
                status: Some(RunStatus::Succeeded),
                limit: 1000,
                cursor,
            })
            .await
            .expect("list");
        count += page.runs.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return count,
        }
    }
}

async fn throughput() -> tempfile::TempDir {
    let (_mock, engine, history, dir) = setup(32, Store::SqliteFile).await;
    let mut rates = Vec::new();
    let mut total = 0;
    for round in 0..ROUNDS {
        let clock = Instant::now();
        let mut handles = Vec::with_capacity(RUNS_PER_ROUND);
        for _ in 0..RUNS_PER_ROUND {
            handles.push(
                engine
                    .submit("full_pipeline", RunOptions::new(Trigger::Api))
                    .await
                    .expect("submit"),
            );
        }
        for handle in handles {
            let summary = handle.wait().await.expect("wait");
            assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");
        }
        let rate = RUNS_PER_ROUND as f64 / clock.elapsed().as_secs_f64();
        total += RUNS_PER_ROUND;
        println!("throughput round {round}: {rate:.0} runs/s");
        rates.push(rate);
    }
    let stored = stored_succeeded(&history).await;
    assert_eq!(stored, total, "every run is stored");
    // Each step's data is still served as its artifact `<step_id>.json`.
    let last = history.recent(1).await.expect("recent").pop().expect("a run");
    let artifacts = engine.artifacts(&last.id).await.expect("artifacts").expect("run");
    let names: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
    for name in ["discover.json", "test.json", "submit_bugs.json", "verify.json", "report.json"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    println!(
        "full_pipeline, 32 concurrent, SQLite file: median {:.0} finished runs/s ({stored} runs stored)",
        median(rates)
    );
    dir
}

async fn overhead(store: Store) -> tempfile::TempDir {
    let (mock, engine, _history, dir) = setup(1, store).await;
    let client = engine.client().clone();
    let url = mock.url();
    // The calls the run makes, in its order: discover, test, submit_bugs, verify.
    let calls = [
        (reqwest::Method::GET, "/api/routes", None),
        (reqwest::Method::POST, "/api/runs", Some(json!({}))),
        (reqwest::Method::POST, "/api/v1/reports", Some(json!({ "failures": [{ "name": "t" }] }))),
        (reqwest::Method::POST, "/api/runs", Some(json!({ "verify_only": true }))),
    ];
    let direct = || async {
        let clock = Instant::now();
        for (method, path, body) in &calls {
            let mut request = client.request(method.clone(), format!("{url}{path}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            request.send().await.expect("call").bytes().await.expect("body");
        }
        clock.elapsed()
    };
    let mut ratios = Vec::new();
    let mut engine_medians = Vec::new();
    let mut call_medians = Vec::new();
    for round in 0..ROUNDS {
        let mut calls = Vec::with_capacity(SEQUENTIAL_RUNS);
        let mut runs = Vec::with_capacity(SEQUENTIAL_RUNS);
        for _ in 0..SEQUENTIAL_RUNS {
            calls.push(direct().await.as_secs_f64());
            let clock = Instant::now();
            let summary =
                engine.run("full_pipeline", RunOptions::new(Trigger::Api)).await.expect("run");
            runs.push(clock.elapsed().as_secs_f64());
            assert!(summary.succeeded());
        }
        if std::env::var_os("AEGIS_BENCH_TRACE").is_some() {
            trace_last_run(&engine).await;
        }
        let (run, call) = (median(runs), median(calls));
        let ratio = (run - call) / call;
        println!(
            "overhead ({store:?}) round {round}: run {:.3} ms, 4 calls {:.3} ms, engine cost {:.0}% of the calls",
            run * 1e3,
            call * 1e3,
            ratio * 100.0
        );
        ratios.push(ratio);
        engine_medians.push(run);
        call_medians.push(call);
    }
    println!(
        "full_pipeline, 1 run at a time, {store:?} history: median run {:.3} ms, median 4 direct calls {:.3} ms, engine cost median {:.0}% of the calls",
        median(engine_medians) * 1e3,
        median(call_medians) * 1e3,
        median(ratios) * 100.0
    );
    dir
}

/// Prints the time between consecutive events of the most recent run
/// (`AEGIS_BENCH_TRACE=1`), to see where a run's time goes.
async fn trace_last_run(engine: &Engine) {
    let Some(run) = engine.history().recent(1).await.expect("recent").pop() else { return };
    let events = engine.run_events(&run.id, 0).await.expect("events");
    let mut last: Option<jiff::Timestamp> = None;
    for event in events {
        let gap = last.map_or(0, |l| event.time.duration_since(l).as_micros());
        let step = event.data.get("step_id").map(ToString::to_string).unwrap_or_default();
        println!("  +{gap:>6} us {} {step}", event.event_type);
        last = Some(event.time);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run a smoke round only then.
    let quick = std::env::args().any(|a| a == "--test");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if quick {
        runtime.block_on(async {
            let (_mock, engine, _history, _dir) = setup(4, Store::SqliteFile).await;
            let summary =
                engine.run("full_pipeline", RunOptions::new(Trigger::Api)).await.expect("run");
            assert!(summary.succeeded());
        });
        return;
    }
    println!("load average before: {}", load_average());
    // Every phase's files are deleted at the very end, not between phases:
    // creating files right after mass deletions is slow on this ext4.
    let mut dirs = Vec::new();
    if std::env::var_os("AEGIS_BENCH_SKIP_THROUGHPUT").is_none() {
        dirs.push(runtime.block_on(throughput()));
    }
    // Measured from a task on the runtime, like the engine's runs, so that
    // the direct calls and the runs pay the same scheduling costs.
    let only = std::env::var("AEGIS_BENCH_STORE").unwrap_or_default();
    for store in [Store::SqliteFile, Store::Memory] {
        if !only.is_empty() && !format!("{store:?}").eq_ignore_ascii_case(&only) {
            continue;
        }
        dirs.push(
            runtime.block_on(async { tokio::spawn(overhead(store)).await.expect("overhead") }),
        );
    }
    println!("load average after: {}", load_average());
    drop(dirs);
}
