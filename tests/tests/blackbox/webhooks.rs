//! Webhooks against the real `aegis-server` and real local receivers on
//! 127.0.0.1: matching and `"*"`, the body as stored, Standard Webhooks
//! signatures checked with the official `standardwebhooks` library
//! (tests/webhooks/verify.py), `X-Aegis-Signature` checked by hand, retries
//! with doubling, `Retry-After`, 410, redirects not followed, giving up with
//! `webhook.failed`, redelivery through `aegis-cli`, delivery across
//! `kill -9`, and one slow receiver not holding up another.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_tests::{Received, Server, read_request};
use serde_json::{Value, json};

/// A `whsec_` secret: `whsec_` and 24 random bytes in base64, as Standard Webhooks writes them.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A plain secret: its UTF-8 bytes are the key.
const PLAIN: &str = "a-plain-secret-of-thirty-two-byt";

/// How a receiver path answers: a status per call (the last one repeats),
/// extra headers, and a delay before answering.
#[derive(Clone)]
struct Answer {
    statuses: Vec<u16>,
    headers: Vec<(&'static str, &'static str)>,
    delay: Duration,
}

fn answer(statuses: &[u16]) -> Answer {
    Answer { statuses: statuses.to_vec(), headers: Vec::new(), delay: Duration::ZERO }
}

/// A request as the receiver got it, with when it arrived and was answered.
#[derive(Clone)]
struct Hit {
    request: Received,
    arrived: Instant,
    answered: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    answers: HashMap<String, Answer>,
    hits: Vec<Hit>,
    calls: HashMap<String, usize>,
}

/// A webhook receiver: a thread per connection, `Connection: close` on every answer.
struct Receiver {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(answers: &[(&str, Answer)]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Receiver::serve(listener, answers)
    }

    /// Listens on `port` (a receiver that was down comes up).
    fn start_on(port: u16, answers: &[(&str, Answer)]) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        Receiver::serve(listener, answers)
    }

    fn serve(listener: TcpListener, answers: &[(&str, Answer)]) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared {
            answers: answers.iter().map(|(p, a)| ((*p).to_owned(), a.clone())).collect(),
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || handle(&s, stream));
            }
        });
        Receiver { port, shared, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        let shared = self.shared.lock().unwrap();
        shared.hits.iter().filter(|h| h.request.path == path).cloned().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(shared: &Mutex<Shared>, mut stream: TcpStream) {
    let Some(request) = read_request(&stream) else { return };
    let arrived = Instant::now();
    let (answer, call, index) = {
        let mut s = shared.lock().unwrap();
        let call = {
            let n = s.calls.entry(request.path.clone()).or_default();
            *n += 1;
            *n
        };
        let answer = s.answers.get(&request.path).cloned().unwrap_or_else(|| answer(&[404]));
        s.hits.push(Hit { request, arrived, answered: None });
        let index = s.hits.len() - 1;
        (answer, call, index)
    };
    std::thread::sleep(answer.delay);
    let status = answer.statuses.get(call - 1).or(answer.statuses.last()).copied().unwrap_or(200);
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n");
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n{}");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.flush();
    shared.lock().unwrap().hits[index].answered = Some(Instant::now());
}

fn submit(server: &Server, workflow: &str) -> String {
    let response = server.post(&format!("/api/workflows/{workflow}/run"));
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["run_id"].as_str().unwrap().to_owned()
}

fn wait_finished(server: &Server, run_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = server.get(&format!("/api/runs/{run_id}")).json();
        if ["succeeded", "failed"].contains(&run["status"].as_str().unwrap_or_default()) {
            return;
        }
        assert!(Instant::now() < deadline, "run {run_id} never finished: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(server: &Server, run_id: &str) -> Vec<Value> {
    let body = server.get(&format!("/api/runs/{run_id}/events")).json();
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Every delivery of the log (all pages).
fn deliveries(server: &Server, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let response =
            server.get(&format!("/api/webhooks/deliveries?limit=1000&cursor={cursor}{query}"));
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        out.extend(body["deliveries"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return out,
        }
    }
}

/// Waits until `done` holds for the delivery log.
fn wait_log(server: &Server, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = deliveries(server, "");
        if done(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {log:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn of_webhook(log: &[Value], webhook: u64) -> Vec<Value> {
    log.iter().filter(|d| d["webhook"] == webhook).cloned().collect()
}

fn times(delivery: &Value) -> Vec<jiff::Timestamp> {
    delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["at"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Checks deliveries with tests/webhooks/verify.py: the Standard Webhooks
/// signature with the official library, `X-Aegis-Signature` by hand.
/// Returns one verdict per delivery, or `None` without the library (only
/// allowed when `scripts/test.sh` did not ask for it).
fn verify(checks: &[Value]) -> Option<Vec<Value>> {
    let python = std::env::var("AEGIS_WEBHOOKS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = aegis_tests::workspace_root().join("tests/webhooks/verify.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(checks.to_vec()).to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'standardwebhooks'") {
        assert!(
            std::env::var_os("AEGIS_REQUIRE_STANDARDWEBHOOKS").is_none(),
            "standardwebhooks is required but missing: {stderr}"
        );
        eprintln!("FIXME: standardwebhooks is not installed; run `bash scripts/test.sh`");
        return None;
    }
    assert!(output.status.success(), "verify.py failed: {stderr}");
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn check(hit: &Hit, secret: &str) -> Value {
    let headers: serde_json::Map<String, Value> = hit
        .request
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
        .collect();
    json!({
        "secret": secret,
        "body": String::from_utf8(hit.request.body.clone()).unwrap(),
        "headers": headers,
    })
}

/// The envelopes of a run's events as the ledger wrote them, one per line.
fn stored_lines(dir: &Path, run_id: &str) -> Vec<String> {
    let path = dir.join("data/runs").join(run_id).join("events.jsonl");
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn deliveries_match_are_signed_retried_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[
        ("/all", answer(&[200])),
        ("/completed", answer(&[200])),
        ("/flaky", answer(&[500, 500, 500, 200])),
        ("/retry-after", Answer { headers: vec![("Retry-After", "2")], ..answer(&[503, 200]) }),
        ("/gone", answer(&[410])),
        ("/redirect", Answer { headers: vec![("Location", "/redirect-target")], ..answer(&[302]) }),
        ("/redirect-target", answer(&[200])),
        ("/fail", answer(&[500])),
        ("/failed-hook", answer(&[500])),
    ]);
    let failing = receiver.url("/fail").replace("http://", "http://user:hunter2@");
    let yaml = format!(
        "\
workflows:
  nightly:
    steps: [{{type: report}}]
webhooks:
  - {{url: \"{all}\", events: [\"*\"], secret: \"{WHSEC}\"}}
  - {{url: \"{completed}\", events: [workflow.completed], secret: \"{PLAIN}\"}}
  - {{url: \"{flaky}\", events: [workflow.completed], secret: \"{PLAIN}\", retry_delay: 0.2, max_attempts: 10}}
  - {{url: \"{retry_after}\", events: [workflow.completed], secret: \"{WHSEC}\", retry_delay: 0.2}}
  - {{url: \"{gone}\", events: [workflow.completed]}}
  - {{url: \"{redirect}\", events: [workflow.completed], retry_delay: 0.2, max_attempts: 2}}
  - {{url: \"{failing}\", events: [workflow.completed], retry_delay: 0.2, max_attempts: 3}}
  - {{url: \"{failed_hook}\", events: [webhook.failed], retry_delay: 0.2, max_attempts: 2}}
",
        all = receiver.url("/all"),
        completed = receiver.url("/completed"),
        flaky = receiver.url("/flaky"),
        retry_after = receiver.url("/retry-after"),
        gone = receiver.url("/gone"),
        redirect = receiver.url("/redirect"),
        failed_hook = receiver.url("/failed-hook"),
    );
    aegis_tests::write_config(dir.path(), &yaml);
    let server = Server::start(dir.path());
    let run_id = submit(&server, "nightly");
    wait_finished(&server, &run_id);
    // Everything settles: two deliveries give up (the redirect and /fail),
    // each raising webhook.failed, which /all and /failed-hook get; the
    // latter fail too, without raising more.
    let log = wait_log(&server, "every delivery settling", |log| {
        log.iter().filter(|d| d["event_type"] == "webhook.failed").count() == 4
            && log.iter().all(|d| d["status"] != "pending")
    });
    let events = events(&server, &run_id);
    let failed: Vec<&Value> = events.iter().filter(|e| e["type"] == "webhook.failed").collect();
    assert_eq!(failed.len(), 2, "{events:#?}");

    // Matching: "*" gets every event, once each; a list gets its types only.
    let all = receiver.hits("/all");
    let ids: Vec<&str> = all.iter().map(|h| h.request.header("webhook-id").unwrap()).collect();
    let event_ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>(), event_ids.iter().collect::<BTreeSet<_>>());
    assert_eq!(ids.len(), event_ids.len());
    let completed = receiver.hits("/completed");
    let last = events.iter().find(|e| e["type"] == "workflow.completed").unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].request.header("webhook-id"), last["id"].as_str());

    // The body is the envelope byte for byte as stored (events.jsonl is
    // written from the ledger), and the event the API serves.
    let lines = stored_lines(dir.path(), &run_id);
    for hit in &all {
        let body = String::from_utf8(hit.request.body.clone()).unwrap();
        assert!(lines.contains(&body), "{body} is not a stored envelope: {lines:#?}");
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert!(events.contains(&parsed), "{parsed}");
        assert_eq!(hit.request.header("content-type"), Some("application/json"));
        assert_eq!(hit.request.method, "POST");
    }

    // Signatures: every attempt verifies, for a whsec_ and a plain secret;
    // a body changed on the way does not.
    let mut checks: Vec<Value> = all.iter().map(|h| check(h, WHSEC)).collect();
    checks.extend(completed.iter().map(|h| check(h, PLAIN)));
    checks.extend(receiver.hits("/flaky").iter().map(|h| check(h, PLAIN)));
    checks.extend(receiver.hits("/retry-after").iter().map(|h| check(h, WHSEC)));
    let mut tampered = check(&completed[0], PLAIN);
    tampered["body"] =
        Value::String(tampered["body"].as_str().unwrap().replace("nightly", "nightlY"));
    checks.push(tampered);
    let mut wrong_key = check(&all[0], PLAIN);
    wrong_key["secret"] = Value::String(format!("{PLAIN}x"));
    checks.push(wrong_key);
    if let Some(verdicts) = verify(&checks) {
        let n = checks.len();
        for (i, verdict) in verdicts.iter().enumerate().take(n - 2) {
            assert_eq!(verdict, &json!({"standard": "ok", "aegis": "ok"}), "{}", checks[i]);
        }
        assert_ne!(verdicts[n - 2]["standard"], "ok");
        assert_ne!(verdicts[n - 2]["aegis"], "ok");
        assert_ne!(verdicts[n - 1]["standard"], "ok");
        assert_ne!(verdicts[n - 1]["aegis"], "ok");
    }
    // Unsigned webhooks send no signature headers.
    let gone = receiver.hits("/gone");
    assert!(gone[0].request.header("webhook-signature").is_none());
    assert!(gone[0].request.header("x-aegis-signature").is_none());
    assert_eq!(gone[0].request.header("webhook-id"), last["id"].as_str());

    // Retries after 500 with the delay doubling: 0.2 s, 0.4 s, 0.8 s, each
    // shortened by at most half; the webhook-id stays the same.
    let flaky = of_webhook(&log, 2);
    assert_eq!(flaky.len(), 1);
    assert_eq!(flaky[0]["status"], "delivered");
    let codes: Vec<&Value> =
        flaky[0]["attempts"].as_array().unwrap().iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, vec![&json!(500), &json!(500), &json!(500), &json!(200)]);
    let at = times(&flaky[0]);
    for (k, pair) in at.windows(2).enumerate() {
        let gap = pair[1].duration_since(pair[0]).as_secs_f64();
        let least = 0.1 * f64::from(1u32 << k);
        assert!(gap >= least, "gap {k} is {gap} s, below {least} s: {at:?}");
    }
    let flaky_hits = receiver.hits("/flaky");
    assert_eq!(flaky_hits.len(), 4);
    assert!(flaky_hits.iter().all(|h| h.request.header("webhook-id") == last["id"].as_str()));

    // Retry-After: 2 replaces the 0.2 s delay; each attempt is signed afresh.
    let retried = of_webhook(&log, 3);
    assert_eq!(retried[0]["status"], "delivered");
    let at = times(&retried[0]);
    assert_eq!(at.len(), 2);
    assert!(at[1].duration_since(at[0]).as_secs_f64() >= 2.0, "{at:?}");
    let retried_hits = receiver.hits("/retry-after");
    assert_ne!(
        retried_hits[0].request.header("webhook-timestamp"),
        retried_hits[1].request.header("webhook-timestamp")
    );
    assert_ne!(
        retried_hits[0].request.header("webhook-signature"),
        retried_hits[1].request.header("webhook-signature")
    );

    // 410: gone after one attempt.
    let gone_log = of_webhook(&log, 4);
    assert_eq!(gone_log[0]["status"], "gone");
    assert_eq!(gone_log[0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(gone.len(), 1);

    // A redirect is not followed: a failed attempt with its 302, and the
    // target never hears of it.
    let redirected = of_webhook(&log, 5);
    assert_eq!(redirected[0]["status"], "failed");
    assert_eq!(redirected[0]["attempts"][0]["status_code"], 302);
    assert!(receiver.hits("/redirect-target").is_empty());
    assert_eq!(receiver.hits("/redirect").len(), 2);

    // Give-up: failed after max_attempts, and webhook.failed says so without
    // the URL's credentials.
    let gave_up = of_webhook(&log, 6);
    assert_eq!(gave_up[0]["status"], "failed");
    assert_eq!(gave_up[0]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(gave_up[0]["url"], receiver.url("/fail"));
    let data = &failed.iter().find(|e| e["data"]["webhook"] == 6).unwrap()["data"];
    assert_eq!(data["url"], receiver.url("/fail"));
    assert_eq!(data["event_id"], last["id"]);
    assert_eq!(data["event_type"], "workflow.completed");
    assert_eq!(data["attempts"], 3);
    assert_eq!(data["status_code"], 500);
    assert_eq!(data["delivery_id"], gave_up[0]["id"]);
    assert!(!server.get("/api/webhooks/deliveries").text().contains("hunter2"));
    assert!(!events.iter().any(|e| e.to_string().contains("hunter2")));
    // The webhook.failed deliveries that failed raised nothing more.
    let hook = of_webhook(&log, 7);
    assert_eq!(hook.len(), 2);
    assert!(hook.iter().all(|d| d["status"] == "failed"));

    // Redelivery through the CLI: the gone delivery is sent again with the
    // same webhook-id and a fresh attempt count.
    let cli = |args: &[&str]| {
        let mut cmd = aegis_tests::aegis_cli(dir.path());
        cmd.args(["--server", &server.url()]).args(args);
        aegis_tests::run(&mut cmd)
    };
    let listed = cli(&["webhooks", "deliveries", "--status", "gone", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], gone_log[0]["id"]);
    let table = cli(&["webhooks", "deliveries", "--status", "failed"]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.contains("status 302"), "{}", table.stdout);
    let bad = cli(&["webhooks", "deliveries", "--status", "sent"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    let id = gone_log[0]["id"].as_str().unwrap();
    let redelivered = cli(&["webhooks", "redeliver", id]);
    assert_eq!(redelivered.code, Some(0), "{}", redelivered.stderr);
    let missing = cli(&["webhooks", "redeliver", "no-such-delivery"]);
    assert_ne!(missing.code, Some(0), "{}", missing.stdout);
    let log = wait_log(&server, "the redelivery", |log| {
        of_webhook(log, 4)[0]["attempts"].as_array().unwrap().len() == 2
    });
    let again = &of_webhook(&log, 4)[0];
    assert_eq!(again["status"], "gone");
    let numbers: Vec<&Value> =
        again["attempts"].as_array().unwrap().iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, vec![&json!(1), &json!(1)]);
    let gone = receiver.hits("/gone");
    assert_eq!(gone.len(), 2);
    assert_eq!(gone[1].request.header("webhook-id"), last["id"].as_str());
}

#[test]
fn pending_deliveries_survive_kill_9_and_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver's port, with nothing listening yet.
    let port = aegis_tests::free_port();
    let yaml = format!(
        "\
server: {{max_concurrent_runs: 8, max_queued_runs: 1000}}
workflows:
  nightly:
    steps: [{{type: report}}]
webhooks:
  - {{url: \"http://127.0.0.1:{port}/hook\", events: [\"*\"], retry_delay: 0.05, max_attempts: 1000}}
"
    );
    aegis_tests::write_config(dir.path(), &yaml);
    let server = Server::start(dir.path());
    let runs: Vec<String> = (0..50).map(|_| submit(&server, "nightly")).collect();
    for run in &runs {
        wait_finished(&server, run);
    }
    let mut expected = BTreeSet::new();
    for run in &runs {
        expected.extend(events(&server, run).iter().map(|e| e["id"].as_str().unwrap().to_owned()));
    }
    assert!(expected.len() >= 50 * 3, "{}", expected.len());
    server.kill9();
    let server = Server::start(dir.path());
    let receiver = Receiver::start_on(port, &[("/hook", answer(&[200]))]);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got: BTreeSet<String> = receiver
            .hits("/hook")
            .iter()
            .filter_map(|h| h.request.header("webhook-id").map(str::to_owned))
            .collect();
        if got == expected {
            break;
        }
        assert!(got.is_subset(&expected), "unknown webhook-ids: {:?}", got.difference(&expected));
        assert!(Instant::now() < deadline, "{} of {} events delivered", got.len(), expected.len());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each webhook-id at least once (at-least-once delivery), and the log agrees.
    let log = wait_log(&server, "every delivery delivered", |log| {
        log.len() == expected.len() && log.iter().all(|d| d["status"] == "delivered")
    });
    assert_eq!(log.len(), expected.len());
}

#[test]
fn a_slow_receiver_does_not_hold_up_a_fast_one() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[
        ("/slow", Answer { delay: Duration::from_secs(10), ..answer(&[200]) }),
        ("/fast", answer(&[200])),
    ]);
    let yaml = format!(
        "\
workflows:
  nightly:
    steps: [{{type: report}}, {{id: again, type: report}}]
webhooks:
  - {{url: \"{slow}\", events: [\"*\"]}}
  - {{url: \"{fast}\", events: [\"*\"]}}
",
        slow = receiver.url("/slow"),
        fast = receiver.url("/fast"),
    );
    aegis_tests::write_config(dir.path(), &yaml);
    let server = Server::start(dir.path());
    let runs: Vec<String> = (0..3).map(|_| submit(&server, "nightly")).collect();
    for run in &runs {
        wait_finished(&server, run);
    }
    let total: usize = runs.iter().map(|r| events(&server, r).len()).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.hits("/fast").len() < total {
        assert!(
            Instant::now() < deadline,
            "the fast receiver got {} of {total}",
            receiver.hits("/fast").len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every event reached the fast receiver before the slow one had answered
    // a single request: its deliveries never waited for the slow ones.
    let last_fast = receiver.hits("/fast").iter().map(|h| h.arrived).max().unwrap();
    let slow = receiver.hits("/slow");
    assert!(!slow.is_empty(), "the slow receiver was not called at all");
    let first_slow_answer = slow.iter().filter_map(|h| h.answered).min();
    assert!(
        first_slow_answer.is_none_or(|answered| last_fast < answered),
        "the fast receiver waited for the slow one"
    );
    // The slow one gets them all in time, at most 16 at once.
    let log = wait_log(&server, "the slow deliveries", |log| {
        of_webhook(log, 0).iter().all(|d| d["status"] == "delivered")
    });
    assert_eq!(of_webhook(&log, 0).len(), total);
}

/// The nice value (`/proc` stat field 19) and scheduling policy (field 41)
/// of each thread of `pid` named `name`.
#[cfg(target_os = "linux")]
fn priorities(pid: u32, name: &str) -> Vec<(i32, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] != name {
            continue;
        }
        // Fields after the name start at field 3 (state).
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        found.push((fields[19 - 3].parse().unwrap(), fields[41 - 3].parse().unwrap()));
    }
    found
}

/// Deliveries run on threads of the lowest priority (nice 19): when runs
/// want the CPU they get nearly all of it (SPEC section 6: delivery never
/// slows a run); the engine's threads keep the normal priority, also those
/// started while the dispatcher records its attempts (a thread inherits the
/// priority of the one that starts it).
#[cfg(target_os = "linux")]
#[test]
fn deliveries_run_on_threads_that_yield_the_cpu_to_runs() {
    const SCHED_OTHER: u32 = 0;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[("/hook", answer(&[200]))]);
    let yaml = format!(
        "workflows:\n  nightly:\n    steps: [{{type: report}}]\nwebhooks:\n  - {{url: \"{}\", events: [\"*\"]}}\n",
        receiver.url("/hook")
    );
    aegis_tests::write_config(dir.path(), &yaml);
    let server = Server::start(dir.path());
    let runs: Vec<String> = (0..10).map(|_| submit(&server, "nightly")).collect();
    let mut total = 0;
    for run in &runs {
        wait_finished(&server, run);
        total += events(&server, run).len();
    }
    wait_log(&server, "the deliveries", |log| {
        log.len() == total && log.iter().all(|d| d["status"] == "delivered")
    });
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let ours: i32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap();
    // A thread just started carries its starter's priority until it sets its
    // own, so the threads are read until they all hold theirs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let webhooks = priorities(server.pid(), "aegis-webhooks");
        // The engine's threads keep the priority the server was started with.
        let engine = priorities(server.pid(), "aegis-engine");
        let held = !webhooks.is_empty()
            && webhooks.iter().all(|&p| p == (19, SCHED_OTHER))
            && !engine.is_empty()
            && engine.iter().all(|&p| p == (ours, SCHED_OTHER));
        if held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "aegis-webhooks: {webhooks:?}, aegis-engine: {engine:?} (ours {ours})\nserver stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!server.stderr().contains("cannot lower it"), "{}", server.stderr());
}
