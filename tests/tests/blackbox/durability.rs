//! The durable state machine against the real `aegis-server`: races between
//! people (cancel, approve, reject, a gate's timeout, a run's own progress),
//! each repeated a hundred times, live SSE followers of runs that end any
//! way, and `kill -9` at random moments over two hundred runs, after which
//! every rule of SPEC section 5 "Crashes" must hold.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_tests::{Request, Response, Server, Sse, try_send};
use serde_json::{Value, json};

use crate::support::Mock;

const FINISHED: [&str; 5] = ["succeeded", "failed", "rejected", "cancelled", "interrupted"];

/// The workflows of these tests. `act` and `after` append the run id to a file
/// for every execution: the side effects a re-executed run would repeat.
fn config(mock: &Mock, dir: &Path) -> String {
    let effects = dir.join("effects.log");
    let after = dir.join("after.log");
    format!(
        "\
server: {{max_concurrent_runs: 4, max_queued_runs: 1000, shutdown_grace: 1}}
services:
  qa: {{url: \"{url}\"}}
workflows:
  quick:
    steps:
      - {{id: ping, type: http, service: qa, method: GET, path: /ok}}
  gated:
    steps:
      - {{id: first, type: http, service: qa, method: GET, path: /ok}}
      - {{id: review, type: gate, message: look}}
      - {{id: last, type: http, service: qa, method: GET, path: /ok}}
  timed:
    steps:
      - {{id: review, type: gate, message: look, timeout: 0.05, on_timeout: reject}}
      - {{id: last, type: http, service: qa, method: GET, path: /ok}}
  hold:
    steps:
      - {{id: wait, type: http, service: qa, method: GET, path: /slow, timeout: 60}}
  crash:
    steps:
      - {{id: act, type: command, argv: [sh, -c, 'echo \"$AEGIS_RUN_ID\" >> {effects}']}}
      - {{id: pause, type: http, service: qa, method: GET, path: /slow, timeout: 60}}
      - {{id: review, type: gate, message: look}}
      - {{id: after, type: command, argv: [sh, -c, 'echo \"$AEGIS_RUN_ID\" >> {after}']}}
",
        url = mock.url(),
        effects = effects.display(),
        after = after.display(),
    )
}

fn setup(slow: Duration) -> (tempfile::TempDir, Mock) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(slow);
    aegis_tests::write_config(dir.path(), &config(&mock, dir.path()));
    (dir, mock)
}

fn submit(server: &Server, workflow: &str) -> String {
    let response = server.post(&format!("/api/workflows/{workflow}/run"));
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["run_id"].as_str().unwrap().to_owned()
}

fn status(server: &Server, run_id: &str) -> String {
    let response = server.get(&format!("/api/runs/{run_id}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["status"].as_str().unwrap().to_owned()
}

/// Waits until the run's status is one of `statuses`.
fn wait_for(server: &Server, run_id: &str, statuses: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = status(server, run_id);
        if statuses.contains(&now.as_str()) {
            return now;
        }
        assert!(Instant::now() < deadline, "run {run_id} stayed {now}, not one of {statuses:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn events(server: &Server, run_id: &str) -> Vec<Value> {
    let response = server.get(&format!("/api/runs/{run_id}/events"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["events"].as_array().cloned().unwrap_or_default()
}

/// One terminal status, one `workflow.completed`, and it is the last event;
/// `seq` runs 1, 2, 3, … Returns the final status.
#[track_caller]
fn ended_once(server: &Server, run_id: &str) -> String {
    let status = wait_for(server, run_id, &FINISHED);
    let events = events(server, run_id);
    let completed: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "workflow.completed").collect();
    assert_eq!(completed.len(), 1, "run {run_id}: {events:#?}");
    assert_eq!(events.last().map(|e| &e["type"]), Some(&json!("workflow.completed")));
    assert_eq!(completed[0]["data"]["status"], json!(status), "run {run_id}");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], json!(i as u64 + 1), "run {run_id}: {events:#?}");
    }
    status
}

fn post(port: u16, path: &str, body: Value) -> Response {
    let request = Request::post(path).body("application/json", body.to_string());
    try_send(port, &request).unwrap()
}

/// Sends two requests at once (from two threads released together).
fn race(port: u16, a: (String, Value), b: (String, Value)) -> (Response, Response) {
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let send = |(path, body): (String, Value)| {
        let barrier = Arc::clone(&barrier);
        std::thread::spawn(move || {
            barrier.wait();
            post(port, &path, body)
        })
    };
    let (first, second) = (send(a), send(b));
    (first.join().unwrap(), second.join().unwrap())
}

fn cancel(run_id: &str) -> (String, Value) {
    (format!("/api/runs/{run_id}/cancel"), json!({}))
}

fn decide(run_id: &str, verb: &str) -> (String, Value) {
    (format!("/api/runs/{run_id}/gates/review/{verb}"), json!({"comment": verb}))
}

const ROUNDS: usize = 100;

#[test]
fn cancel_racing_approve_has_one_winner_and_a_202_cancel_always_wins_the_end() {
    let (dir, _mock) = setup(Duration::from_millis(1));
    let server = Server::start(dir.path());
    let mut cancelled = 0;
    for _ in 0..ROUNDS {
        let run = submit(&server, "gated");
        wait_for(&server, &run, &["waiting"]);
        let (c, a) = race(server.port(), cancel(&run), decide(&run, "approve"));
        let end = ended_once(&server, &run);
        match (c.status, a.status) {
            // The cancel came first: the approve finds nothing to decide.
            (202, 409) => assert_eq!(end, "cancelled"),
            // The approve came first, then the cancel ended the resumed run,
            // or found it finished already.
            (202, 200) => assert_eq!(end, "cancelled", "a 202 cancel must end the run cancelled"),
            (409, 200) => assert_eq!(end, "succeeded"),
            other => panic!("run {run}: unexpected answers {other:?}: {} / {}", c.text(), a.text()),
        }
        cancelled += usize::from(end == "cancelled");
    }
    assert!(cancelled > 0, "the cancel never won in {ROUNDS} races");
}

#[test]
fn approve_racing_reject_and_cancel_racing_gate_entry_and_completion() {
    let (dir, _mock) = setup(Duration::from_millis(1));
    let server = Server::start(dir.path());
    for _ in 0..ROUNDS {
        // Approve against reject: exactly one decision wins.
        let run = submit(&server, "gated");
        wait_for(&server, &run, &["waiting"]);
        let (a, r) = race(server.port(), decide(&run, "approve"), decide(&run, "reject"));
        let end = ended_once(&server, &run);
        match (a.status, r.status) {
            (200, 409) => assert_eq!(end, "succeeded"),
            (409, 200) => assert_eq!(end, "rejected"),
            other => panic!("run {run}: both or neither decided: {other:?}"),
        }
        let detail = server.get(&format!("/api/runs/{run}")).json();
        assert_eq!(detail["gate_decisions"].as_array().map(Vec::len), Some(1), "{detail:#}");

        // Cancel while the run is entering its gate: never lost.
        let run = submit(&server, "gated");
        let answer = post(server.port(), &cancel(&run).0, json!({}));
        let end = ended_once(&server, &run);
        assert_eq!((answer.status, end.as_str()), (202, "cancelled"), "{}", answer.text());

        // Cancel racing the run's completion: a 202 always ends it cancelled.
        let run = submit(&server, "quick");
        let answer = post(server.port(), &cancel(&run).0, json!({}));
        let end = ended_once(&server, &run);
        match answer.status {
            202 => assert_eq!(end, "cancelled"),
            409 => assert_eq!(end, "succeeded"),
            other => panic!("cancel answered {other}: {}", answer.text()),
        }
    }
}

#[test]
fn approve_racing_the_gate_timeout_and_cancel_racing_a_queued_start() {
    let (dir, mock) = setup(Duration::from_millis(30));
    let server = Server::start(dir.path());
    for _ in 0..ROUNDS {
        // The gate's deadline is 50 ms away: approve at about that moment.
        let run = submit(&server, "timed");
        wait_for(&server, &run, &["waiting", "rejected"]);
        std::thread::sleep(Duration::from_millis(45));
        let approve = post(server.port(), &decide(&run, "approve").0, json!({}));
        let end = ended_once(&server, &run);
        let detail = server.get(&format!("/api/runs/{run}")).json();
        let decisions = detail["gate_decisions"].as_array().cloned().unwrap_or_default();
        assert_eq!(decisions.len(), 1, "{detail:#}");
        match approve.status {
            200 => {
                assert_eq!(end, "succeeded");
                assert_eq!(decisions[0]["decision"], "approve");
            }
            409 => {
                assert_eq!(end, "rejected");
                assert_eq!(decisions[0]["by"], "timeout");
            }
            other => panic!("approve answered {other}: {}", approve.text()),
        }
    }
    // Four slow runs hold every slot: the next ones queue. Cancel them while
    // slots free up, so some cancels race their start.
    mock.set_slow(Duration::from_millis(20));
    for _ in 0..ROUNDS / 4 {
        let holders: Vec<String> = (0..4).map(|_| submit(&server, "hold")).collect();
        let queued: Vec<String> = (0..4).map(|_| submit(&server, "quick")).collect();
        std::thread::sleep(Duration::from_millis(18));
        for run in &queued {
            let answer = post(server.port(), &cancel(run).0, json!({}));
            let end = ended_once(&server, run);
            match answer.status {
                202 => assert_eq!(end, "cancelled"),
                409 => assert_eq!(end, "succeeded"),
                other => panic!("cancel answered {other}: {}", answer.text()),
            }
        }
        for run in &holders {
            assert_eq!(ended_once(&server, run), "succeeded");
        }
    }
}

/// Follows a run's stream until it ends; the event types received.
fn follow(port: u16, run_id: &str) -> Vec<String> {
    follow_from(port, run_id, None).0
}

/// Follows a run's stream, after `Last-Event-ID` when given, until it ends;
/// the event types received and the last seq.
fn follow_from(port: u16, run_id: &str, after: Option<u64>) -> (Vec<String>, u64) {
    let last_id = after.map(|seq| seq.to_string());
    let headers: Vec<(&str, &str)> =
        last_id.as_deref().map(|id| ("Last-Event-ID", id)).into_iter().collect();
    let mut sse = Sse::open(port, &format!("/api/runs/{run_id}/events/stream"), &headers);
    assert_eq!(sse.status, 200);
    let mut types = Vec::new();
    let mut last = after.unwrap_or(0);
    while let Some(frame) = sse.next_frame(Duration::from_secs(30)) {
        if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
            let event: Value = serde_json::from_str(data).unwrap();
            types.push(event["type"].as_str().unwrap_or_default().to_owned());
            last = event["seq"].as_u64().unwrap_or(last);
        }
    }
    (types, last)
}

#[test]
fn live_followers_of_cancelled_rejected_and_interrupted_runs_get_workflow_completed_last() {
    let (dir, mock) = setup(Duration::from_secs(30));
    let port = aegis_tests::free_port();
    let mut server = Server::spawn(dir.path(), port, &[], &[]);
    server.wait_ready();
    let check = |types: &[String], why: &str| {
        assert_eq!(
            types.last().map(String::as_str),
            Some("workflow.completed"),
            "{why}: {types:?}"
        );
        assert_eq!(types.iter().filter(|t| *t == "workflow.completed").count(), 1, "{why}");
    };

    let cancelled = submit(&server, "hold");
    let follower = {
        let run = cancelled.clone();
        std::thread::spawn(move || follow(port, &run))
    };
    wait_for(&server, &cancelled, &["running"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(post(port, &cancel(&cancelled).0, json!({})).status, 202);
    let types = follower.join().unwrap();
    check(&types, "cancelled");
    assert!(types.contains(&"run.cancelled".to_owned()));

    let rejected = submit(&server, "gated");
    wait_for(&server, &rejected, &["waiting"]);
    let follower = {
        let run = rejected.clone();
        std::thread::spawn(move || follow(port, &run))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(post(port, &decide(&rejected, "reject").0, json!({})).status, 200);
    check(&follower.join().unwrap(), "rejected");

    // SIGTERM interrupts a run still running after the grace period. Open
    // streams close at once on SIGTERM; the follower resumes with
    // `Last-Event-ID` from the next process and gets the run's end last.
    let interrupted = submit(&server, "hold");
    wait_for(&server, &interrupted, &["running"]);
    let follower = {
        let run = interrupted.clone();
        std::thread::spawn(move || follow_from(port, &run, None))
    };
    std::thread::sleep(Duration::from_millis(100));
    aegis_tests::signal(server.pid(), "TERM");
    assert_eq!(server.wait_exit(), Some(0));
    let (mut types, last) = follower.join().unwrap();
    let server = Server::spawn(dir.path(), port, &[], &[]);
    let mut server = server;
    server.wait_ready();
    let (rest, _) = follow_from(port, &interrupted, Some(last));
    types.extend(rest);
    check(&types, "interrupted");
    assert!(types.contains(&"run.interrupted".to_owned()), "{types:?}");
    let seqs: Vec<u64> =
        events(&server, &interrupted).iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), types.len(), "an event was lost or repeated across the restart");
    drop(mock);
}

/// What a live SSE follower saw of a run: event id by seq.
type Seen = Arc<Mutex<HashMap<String, BTreeMap<u64, String>>>>;

/// Follows every event of the server live, recording (run, seq) → id, until
/// the stream ends (the server dies).
fn watch_all(port: u16, seen: Seen) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut sse) = std::panic::catch_unwind(|| Sse::open(port, "/api/events/stream", &[]))
        else {
            return;
        };
        while let Some(frame) = sse.next_frame(Duration::from_secs(10)) {
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            let Ok(event) = serde_json::from_str::<Value>(data) else { continue };
            let (Some(run), Some(seq), Some(id)) =
                (event["run_id"].as_str(), event["seq"].as_u64(), event["id"].as_str())
            else {
                continue;
            };
            seen.lock().unwrap().entry(run.to_owned()).or_default().insert(seq, id.to_owned());
        }
    })
}

fn lines_per_run(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.trim().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// How many times history says a step of the run started: its attempts, or
/// one for a step recorded without attempts (interrupted while running).
fn started(detail: &Value, step_id: &str) -> usize {
    detail["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["id"] == step_id)
        .map(|s| s["attempts"].as_array().map_or(0, Vec::len).max(1))
        .sum()
}

/// A small deterministic generator (xorshift): the kill moments vary, and a
/// failure can be replayed from the printed seed.
struct Moments(u64);

impl Moments {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn kill_9_at_random_moments_loses_no_run_and_runs_nothing_twice() {
    let (dir, _mock) = setup(Duration::from_millis(15));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64 | 1);
    eprintln!("crash injection seed {seed}");
    let mut moments = Moments(seed);
    let seen: Seen = Arc::default();
    let mut acknowledged: Vec<String> = Vec::new();
    let port = aegis_tests::free_port();
    while acknowledged.len() < 200 {
        let mut server = Server::spawn(dir.path(), port, &[], &[]);
        server.wait_ready();
        let watcher = watch_all(port, Arc::clone(&seen));
        // Decide some of the runs waiting from earlier rounds, while new
        // ones are accepted: kills land during decisions too.
        let waiting = server.get("/api/gates?status=pending").json();
        let gates = waiting["gates"].as_array().cloned().unwrap_or_default();
        let deciders: Vec<_> = gates
            .iter()
            .filter_map(|g| g["run_id"].as_str().map(str::to_owned))
            .take(4)
            .enumerate()
            .map(|(i, run)| {
                let verb = if i % 3 == 2 { "reject" } else { "approve" };
                std::thread::spawn(move || {
                    let _ = try_send(
                        port,
                        &Request::post(&format!("/api/runs/{run}/gates/review/{verb}"))
                            .body("application/json", "{}"),
                    );
                })
            })
            .collect();
        for _ in 0..(3 + moments.next(8)) {
            match try_send(port, &Request::post("/api/workflows/crash/run")) {
                Ok(response) if response.status == 202 => {
                    acknowledged.push(response.json()["run_id"].as_str().unwrap().to_owned());
                }
                Ok(response) => panic!("submit answered {}: {}", response.status, response.text()),
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(moments.next(12)));
        }
        // Right after a 202, mid-step, at a gate or during a decision.
        std::thread::sleep(Duration::from_millis(moments.next(40)));
        server.kill9();
        for decider in deciders {
            let _ = decider.join();
        }
        let _ = watcher.join();
    }

    // A last start recovers everything; queued runs run to their gate.
    let mut server = Server::spawn(dir.path(), port, &[], &[]);
    server.wait_ready();
    let effects = lines_per_run(&dir.path().join("effects.log"));
    let after = lines_per_run(&dir.path().join("after.log"));
    let mut ledgers: HashMap<String, Vec<Value>> = HashMap::new();
    for run in &acknowledged {
        // Every acknowledged run is there, and none is left running.
        let status =
            wait_for(&server, run, &["waiting", "succeeded", "failed", "rejected", "interrupted"]);
        let detail = server.get(&format!("/api/runs/{run}")).json();
        assert_ne!(status, "running");
        // Side effects happen at most once per attempt history recorded, and
        // at most once per attempt start the ledger committed before it
        // (`step.started`, then `step.retrying` before each further attempt).
        let ledger = events(&server, run);
        for (step, counts) in [("act", &effects), ("after", &after)] {
            let done = counts.get(run.as_str()).copied().unwrap_or(0);
            assert!(
                done <= started(&detail, step),
                "run {run} ({status}): step {step} acted {done} times, history records {}: {detail:#}",
                started(&detail, step)
            );
            let announced = ledger
                .iter()
                .filter(|e| e["type"] == "step.started" || e["type"] == "step.retrying")
                .filter(|e| e["data"]["step_id"] == step)
                .count();
            assert!(
                done <= announced,
                "run {run} ({status}): step {step} acted {done} times, the ledger started it {announced} times: {ledger:#?}"
            );
        }
        // The ledger: seq 1, 2, 3, … with unique ids, and every event a
        // client saw live is still there with the same id.
        for (i, event) in ledger.iter().enumerate() {
            assert_eq!(event["seq"], json!(i as u64 + 1), "run {run}: {ledger:#?}");
        }
        let by_seq: BTreeMap<u64, String> = ledger
            .iter()
            .filter_map(|e| Some((e["seq"].as_u64()?, e["id"].as_str()?.to_owned())))
            .collect();
        if let Some(live) = seen.lock().unwrap().get(run.as_str()) {
            for (seq, id) in live {
                assert_eq!(
                    by_seq.get(seq),
                    Some(id),
                    "run {run}: event {seq} seen live changed or vanished"
                );
            }
        }
        if FINISHED.contains(&status.as_str()) {
            let completed = ledger.iter().filter(|e| e["type"] == "workflow.completed").count();
            assert_eq!(completed, 1, "run {run}: {ledger:#?}");
        }
        ledgers.insert(run.clone(), ledger);
    }
    let interrupted = acknowledged
        .iter()
        .filter(|run| ledgers[run.as_str()].iter().any(|e| e["type"] == "run.interrupted"))
        .count();
    eprintln!("{} runs, {interrupted} interrupted by kills", acknowledged.len());
    assert_eq!(server.terminate(), Some(0));
    // events.jsonl equals the ledger for every run.
    for run in &acknowledged {
        let path: PathBuf = dir.path().join("data/runs").join(run).join("events.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let file: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            &file,
            &ledgers[run.as_str()],
            "run {run}: events.jsonl differs from the ledger"
        );
    }
}
