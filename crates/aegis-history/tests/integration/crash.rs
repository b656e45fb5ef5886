//! A writer killed with SIGKILL mid-write leaves a database holding every acknowledged run.
//!
//! The test re-executes its own test binary, running only `child_writer`
//! with an environment variable set; that child writes runs in a loop and
//! prints `ack <id>` once each run is fully acknowledged. The parent kills
//! it after a number of acknowledgements (not after a time), then reopens
//! the database.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;

use aegis_history::conformance::{finished_step, new_run};
use aegis_history::{HistoryBackend, HistoryOptions, RunStatus, RunUpdate, SqliteHistory};

const CHILD_ENV: &str = "AEGIS_HISTORY_CRASH_CHILD_DB";
const WRITERS: usize = 8;
const STEPS: u32 = 5;
const KILL_AFTER: usize = 300;

/// Helper for `sigkill_mid_write_keeps_acknowledged_runs`: does nothing
/// unless started by it.
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let history =
            Arc::new(SqliteHistory::open(path.as_ref(), HistoryOptions::default()).await.unwrap());
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let history = Arc::clone(&history);
                tokio::spawn(async move {
                    // Bounded so an orphaned child stops by itself.
                    for i in 0..100_000_i64 {
                        let run = new_run(&format!("w{w}-{i:06}"), "crash", i);
                        history.create_run(&run).await.unwrap();
                        let running = RunUpdate::status(RunStatus::Running);
                        history.update_run(&run.id, &running).await.unwrap();
                        for s in 0..STEPS {
                            history.record_step(&run.id, &finished_step(s, i)).await.unwrap();
                        }
                        let done = RunUpdate::status(RunStatus::Succeeded);
                        history.update_run(&run.id, &done).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        if writeln!(out, "ack {}", run.id).and_then(|()| out.flush()).is_err() {
                            // The parent is gone.
                            std::process::exit(0);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn sigkill_mid_write_keeps_acknowledged_runs() {
    use std::os::unix::process::ExitStatusExt as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix(b"ack ") {
            acked.push(String::from_utf8(id.to_vec()).unwrap());
        }
        if !killed && acked.len() >= KILL_AFTER {
            // SIGKILL: no destructor, no flush, no checkpoint.
            child.kill().unwrap();
            killed = true;
        }
    }
    // Each `ack` line reaches the pipe in one write shorter than PIPE_BUF,
    // so a kill cannot leave half a line: every id read is complete.
    let status = child.wait().unwrap();
    assert!(killed, "child stopped before {KILL_AFTER} acknowledgements: {status:?}");
    assert_eq!(status.signal(), Some(9), "child should die of SIGKILL: {status:?}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
        for id in &acked {
            let detail = history.get_run(&id.as_str().into()).await.unwrap();
            let detail = detail.unwrap_or_else(|| panic!("acknowledged run {id} was lost"));
            assert_eq!(detail.run.status, RunStatus::Succeeded, "{id}");
            assert_eq!(detail.steps.len(), STEPS as usize, "{id}");
        }
        // The reopened database takes writes again.
        history.create_run(&new_run("after-crash", "crash", 0)).await.unwrap();
    });
}
