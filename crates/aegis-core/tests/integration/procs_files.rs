//! Programs, their output and the run folder: process groups, the output cap,
//! artifact names, links in a run folder and retention's folder removal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_core::{Engine, RunOptions, Step, StepContext, StepError};
use aegis_history::{HistoryBackend, HistoryOptions, InMemoryHistory, RunId, RunStatus, Trigger};
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::common::{body_bytes, env, load};

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
    }
}

/// Waits (up to a minute: the machine may be busy) for `pid` to be gone.
fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits for a program to write its background child's pid into `path`.
async fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

#[tokio::test]
async fn a_program_that_leaves_a_background_child_ends_when_it_exits() {
    // Before process groups, the step waited for the child to close stdout
    // and timed out after 20 s.
    let env = env(
        "workflows:\n  w:\n    steps:\n      - { id: bg, type: command, cwd: ., timeout: 20, argv: [sh, -c, 'sleep 25 & echo $! > bg.pid; echo started'] }\n",
    );
    let run = env.run("w").await;
    let pid = read_pid(&env.dir.path().join("bg.pid")).await;
    let step = run.step("bg").cloned().expect("step");
    kill(pid);
    assert!(step.success, "{step:#?}");
    assert_eq!(step.data["exit_code"], json!(0));
    let stdout = env.dir.path().join("data/runs").join(&run.run_id).join("bg.stdout.txt");
    assert_eq!(std::fs::read_to_string(stdout).expect("stdout"), "started\n");
}

#[tokio::test]
async fn a_timeout_kills_the_programs_whole_group() {
    let env = env(
        "workflows:\n  w:\n    steps:\n      - { id: bg, type: command, cwd: ., timeout: 1, argv: [sh, -c, 'sleep 600 & echo $! > bg.pid; wait'] }\n",
    );
    let run = env.run("w").await;
    assert_eq!(run.steps[0].error.as_deref(), Some("timed out after 1s"));
    let pid = read_pid(&env.dir.path().join("bg.pid")).await;
    let killed = wait_gone(pid);
    kill(pid);
    assert!(killed, "the background child {pid} outlived the timeout");
}

#[tokio::test]
async fn a_cancel_kills_the_programs_whole_group() {
    let env = env(
        "workflows:\n  w:\n    steps:\n      - { id: bg, type: command, cwd: ., argv: [sh, -c, 'sleep 600 & echo $! > bg.pid; wait'] }\n",
    );
    let handle = env.engine.submit("w", RunOptions::new(Trigger::Api)).await.expect("submit");
    let pid = read_pid(&env.dir.path().join("bg.pid")).await;
    handle.cancel();
    let summary = handle.wait().await.expect("wait");
    assert_eq!(summary.status, RunStatus::Cancelled);
    let killed = wait_gone(pid);
    kill(pid);
    assert!(killed, "the background child {pid} outlived the cancel");
}

#[tokio::test]
async fn output_past_ten_mib_is_cut_with_a_note_and_said_in_the_data() {
    let env = env(
        "workflows:\n  w:\n    steps:\n      - { id: big, type: command, argv: [sh, -c, 'head -c 12582912 /dev/zero; echo small >&2'] }\n",
    );
    let run = env.run("w").await;
    let step = run.step("big").cloned().expect("step");
    assert!(step.success, "{step:#?}");
    assert_eq!(step.data["stdout_truncated"], json!(true));
    assert_eq!(step.data["stdout_bytes"], json!(12_582_912));
    assert_eq!(step.data.get("stderr_truncated"), None);
    let dir = env.dir.path().join("data/runs").join(&run.run_id);
    let stdout = std::fs::read(dir.join("big.stdout.txt")).expect("stdout");
    let note = b"\n[aegis: output truncated: kept the first 10485760 of 12582912 bytes]\n";
    assert_eq!(stdout.len(), 10 * 1024 * 1024 + note.len());
    assert!(stdout.ends_with(note));
    assert_eq!(std::fs::read_to_string(dir.join("big.stderr.txt")).expect("stderr"), "small\n");
    // The announced size is the file's.
    let listed = env.engine.artifacts(&RunId::new(&run.run_id)).await.expect("list").expect("run");
    let file = listed.iter().find(|a| a.name == "big.stdout.txt").expect("listed");
    assert_eq!(file.size, stdout.len() as u64);
}

/// Writes one artifact with a fixed name.
#[derive(Debug)]
struct Writer(&'static str);

#[async_trait]
impl Step for Writer {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        ctx.write_artifact(self.0, b"written").await?;
        Ok(json!({}))
    }
}

#[tokio::test]
async fn a_step_writes_exactly_the_artifact_names_that_are_listed_and_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".aegis.yaml"),
        "data_dir: ./data
workflows:
  w:
    steps:
      - { id: good, type: good }
      - { id: accent, type: accent, condition: always }
      - { id: log, type: log, condition: always }
      - { id: shadow, type: shadow, condition: always }
",
    )
    .expect("write config");
    let config = aegis_config::LoadOptions::new()
        .cwd(dir.path())
        .step_types(["good", "accent", "log", "shadow"])
        .load()
        .expect("valid config");
    let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
    let engine = Engine::builder(config, history)
        .step_type("good", Arc::new(Writer("notes-1.txt")))
        .step_type("accent", Arc::new(Writer("r\u{e9}sum\u{e9}.txt")))
        .step_type("log", Arc::new(Writer("events.jsonl")))
        .step_type("shadow", Arc::new(Writer("good.json")))
        .build()
        .expect("engine");
    let run = engine.run("w", RunOptions::new(Trigger::Cli)).await.expect("run");
    let run_id = RunId::new(&run.run_id);
    assert!(run.step("good").is_some_and(|s| s.success));
    for refused in ["accent", "log", "shadow"] {
        let error = run.step(refused).and_then(|s| s.error.clone()).unwrap_or_default();
        assert!(error.starts_with("invalid artifact name"), "{refused}: {error}");
    }
    let listed = engine.artifacts(&run_id).await.expect("list").expect("run");
    assert!(listed.iter().any(|a| a.name == "notes-1.txt" && a.size == 7), "{listed:?}");
    let body = engine.artifact(&run_id, "notes-1.txt").await.expect("read").expect("served");
    assert_eq!(body_bytes(body), b"written");
    // events.jsonl is still the engine's.
    let log = engine.artifact(&run_id, "events.jsonl").await.expect("read").expect("log");
    assert!(String::from_utf8(body_bytes(log)).expect("utf-8").contains("workflow.completed"));
}

#[tokio::test]
async fn links_in_a_run_folder_are_neither_listed_nor_served() {
    let env =
        env("workflows:\n  w:\n    steps:\n      - { id: hi, type: command, argv: [echo, hi] }\n");
    let run = env.run("w").await;
    let run_id = RunId::new(&run.run_id);
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.txt"), "outside data_dir").expect("write");
    let dir = env.dir.path().join("data/runs").join(&run.run_id);
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), dir.join("link.txt"))
        .expect("symlink");
    let listed = env.engine.artifacts(&run_id).await.expect("list").expect("run");
    assert!(listed.iter().all(|a| a.name != "link.txt"), "{listed:?}");
    assert!(listed.iter().any(|a| a.name == "hi.stdout.txt"), "{listed:?}");
    assert!(env.engine.artifact(&run_id, "link.txt").await.expect("read").is_none());
}

fn run_dirs(data: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("runs"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[tokio::test]
async fn retention_removes_the_folders_of_the_runs_it_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load(
        dir.path(),
        "data_dir: ./data
history_max_records: 2
workflows:
  w:
    steps:
      - { id: hi, type: command, argv: [echo, hi] }
",
    );
    let history: Arc<dyn HistoryBackend> =
        Arc::new(InMemoryHistory::new(&HistoryOptions::with_max_records(2)));
    let engine = Engine::builder(config, Arc::clone(&history)).build().expect("engine");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let run = engine.run("w", RunOptions::new(Trigger::Cli)).await.expect("run");
        ids.push(run.run_id.clone());
    }
    engine.sync_events();
    // The sweep also runs on its own every second; whichever comes first,
    // exactly the three deleted runs' folders go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_dirs(&dir.path().join("data")).len() > 2 && Instant::now() < deadline {
        engine.remove_pruned_runs().await.expect("sweep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept: Vec<PathBuf> =
        ids[3..].iter().map(|id| dir.path().join("data/runs").join(id)).collect();
    let mut expected = kept.clone();
    expected.sort();
    assert_eq!(run_dirs(&dir.path().join("data")), expected);
    assert!(history.pruned_runs(100).await.expect("pruned").is_empty());
}
