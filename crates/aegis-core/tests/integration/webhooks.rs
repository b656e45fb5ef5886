//! Webhook deliveries give way to runs while the machine is saturated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aegis_core::testing::{MockService, Route};
use aegis_core::{Engine, RunOptions};
use aegis_history::{HistoryBackend, InMemoryHistory, RunId, Trigger};
use serde_json::json;

use crate::common::load;

/// A file of CPU time counters in `/proc/stat`'s format that a thread
/// advances every few milliseconds, all of the time busy: a saturated machine.
struct Counters {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counters {
    fn start(dir: &Path) -> Counters {
        let path = dir.join("stat");
        let stop = Arc::new(AtomicBool::new(false));
        let (file, next) = (path.clone(), dir.join("stat.next"));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut user = 1_000_u64;
            while !stopping.load(Ordering::Acquire) {
                user += 10;
                // Replaced whole, so a reader never sees half a file.
                let text = format!("cpu  {user} 0 0 1000 0 0 0 0 0 0\nintr 0\n");
                std::fs::write(&next, text).expect("write the counters");
                std::fs::rename(&next, &file).expect("replace the counters");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Counters { path, stop, thread: Some(thread) }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn event_count(history: &Arc<dyn HistoryBackend>, run_id: &RunId) -> usize {
    history.events(run_id, 0, 10_000).await.expect("events").len()
}

/// The `webhook-id`s received so far (one per event delivered).
fn received(receiver: &MockService) -> BTreeSet<String> {
    receiver
        .requests_to("/hook")
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

/// While a run is in flight and the counters show the machine saturated, a
/// webhook's deliveries are claimed a batch (64) a second; once no run is in
/// flight, everything pending is delivered at once, saturated or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_give_way_to_runs_while_the_machine_is_saturated() {
    let qa = MockService::start().await.unwrap();
    qa.route(
        "POST",
        "/api/runs",
        Route::ok(json!({ "total": 1, "passed": 1, "failed": 0 })).delay(Duration::from_secs(60)),
    );
    let receiver = MockService::start().await.unwrap();
    receiver.route("POST", "/hook", Route::ok(json!({})));
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &format!(
            "data_dir: ./data
services:
  s: {{ url: '{}' }}
workflows:
  slow:
    steps: [{{ id: test, type: test, service: s }}]
  quick:
    steps: [{{ type: report }}]
webhooks:
  - {{ url: '{}/hook', events: ['*'] }}
",
            qa.url(),
            receiver.url()
        ),
    );
    let counters = Counters::start(dir.path());
    let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
    let engine =
        Engine::builder(config, Arc::clone(&history)).cpu_counters(&counters.path).build().unwrap();

    // A run in flight: its service answers after a minute.
    let slow = engine.submit("slow", RunOptions::new(Trigger::Cli)).await.unwrap();
    let slow = slow.id().clone();
    // Its first events arrive (a worker's first claim never waits), and the
    // counters have been read saturated since.
    for _ in 0..1000 {
        if !received(&receiver).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!received(&receiver).is_empty(), "the first claim was not delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = received(&receiver).len();

    let started = Instant::now();
    let mut quick = Vec::new();
    let mut produced = 0;
    for _ in 0..60 {
        let run = engine.run("quick", RunOptions::new(Trigger::Cli)).await.unwrap();
        produced += event_count(&history, &RunId::new(&run.run_id)).await;
        quick.push(RunId::new(&run.run_id));
    }
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed())).await;
    let got = received(&receiver).len() - before;
    // Read after the count: a slow machine only loosens the bound.
    let seconds = started.elapsed().as_secs() as usize;
    assert!(produced > 3 * 64, "too few events to tell: {produced}");
    assert!(
        got <= 64 * (seconds + 2) && got < produced,
        "{got} of {produced} deliveries in {seconds} s while runs were in flight on a saturated machine"
    );

    // No run in flight any more: what is pending goes out, saturated or not.
    engine.cancel(&slow, "test", None).await.unwrap();
    for _ in 0..1000 {
        if history.get_run(&slow).await.unwrap().unwrap().run.status.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut expected = event_count(&history, &slow).await;
    for run in &quick {
        expected += event_count(&history, run).await;
    }
    for _ in 0..3000 {
        if received(&receiver).len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received(&receiver).len(), expected, "every event delivered once");
    drop(engine);
    drop(counters);
}
