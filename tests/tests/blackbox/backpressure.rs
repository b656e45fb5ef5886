//! Bounded resources under many events and many queued runs (SPEC section 8, "Limits
//! on what comes in"): an SSE client that stops reading is sent `event: lagged` and
//! resumes with `Last-Event-ID` losing nothing; queued runs hold no open file, so a
//! server limited to 256 open files still answers with hundreds of runs queued.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aegis_tests::{Request, Server, Sse, free_port, write_config};
use serde_json::Value;

use crate::support::{finished, start_run, wait_for_run};

/// How long a test waits for one frame; generous, the machine may be busy.
const FRAME: Duration = Duration::from_secs(60);

/// A frame of a stream: its `event:` name (`message` when absent), `id:` and data.
#[derive(Debug)]
struct Frame {
    event: String,
    id: Option<String>,
    data: Value,
}

/// The next frame with data (heartbeats and other comments are skipped, returned in
/// `comments`); `None` when the stream ends.
fn next(sse: &mut Sse, comments: &mut Vec<String>) -> Option<Frame> {
    loop {
        let text = sse.next_frame(FRAME)?;
        if text.starts_with(':') {
            comments.push(text);
            continue;
        }
        let mut frame = Frame { event: "message".to_owned(), id: None, data: Value::Null };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                frame.event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                frame.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                frame.data = serde_json::from_str(v)
                    .unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {text}"));
            }
        }
        return Some(frame);
    }
}

/// A JUnit report with 40 failing cases of 500-character messages: each step reading it
/// emits a `failure.detected` event of about 24 KB, so the events of one run outgrow
/// what the sockets between server and client can buffer.
fn junit_report() -> String {
    let mut xml = String::from("<testsuite name=\"flood\" tests=\"40\" failures=\"40\">\n");
    for case in 0..40 {
        let message = format!("case {case} failed: {}", "x".repeat(480));
        let _ = writeln!(
            xml,
            "  <testcase classname=\"flood\" name=\"case{case}\"><failure message=\"{message}\">trace</failure></testcase>"
        );
    }
    xml.push_str("</testsuite>\n");
    xml
}

#[test]
fn a_client_that_stops_reading_is_sent_lagged_and_resumes_with_nothing_lost() {
    const STEPS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.xml"), junit_report()).unwrap();
    let mut yaml = String::from(
        "workflows:\n  flood:\n    steps:\n      - { id: hold, type: gate, message: wait }\n",
    );
    for step in 0..STEPS {
        let _ = writeln!(
            yaml,
            "      - {{ id: s{step}, type: command, argv: [sh, -c, 'exit 0'], junit: report.xml }}"
        );
    }
    write_config(dir.path(), &yaml);
    let server = Server::start(dir.path());
    let id = start_run(&server, "flood");
    wait_for_run(&server, &id, |run| run["status"] == "waiting");

    // Both streams are followed live from the gate on, then neither is read while
    // the run emits its events.
    let mut comments = Vec::new();
    let mut run_stream = Sse::open(server.port(), &format!("/api/runs/{id}/events/stream"), &[]);
    assert_eq!(run_stream.status, 200);
    let mut seqs: Vec<u64> = Vec::new();
    loop {
        let frame = next(&mut run_stream, &mut comments).expect("the replay up to the gate");
        seqs.push(frame.id.as_deref().and_then(|s| s.parse().ok()).unwrap());
        if frame.data["type"] == "gate.waiting" {
            break;
        }
    }
    let mut global = Sse::open(server.port(), "/api/events/stream", &[]);
    assert_eq!(global.status, 200);

    let approve = server.send(
        &Request::post(&format!("/api/runs/{id}/gates/hold/approve"))
            .body("application/json", "{}"),
    );
    assert_eq!(approve.status, 200, "{}", approve.text());
    // Polled through the list, which leaves out the steps' (large) data.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let page = server.get("/api/runs?workflow=flood&limit=1").json();
        let status = page["runs"][0]["status"].clone();
        if finished(&status) {
            assert_eq!(status, "succeeded");
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Reading again: what was buffered, in order, then `lagged`, then the end.
    let lagged = loop {
        let frame = next(&mut run_stream, &mut comments)
            .unwrap_or_else(|| panic!("the stream ended without `lagged` after seq {seqs:?}"));
        if frame.event == "lagged" {
            break frame;
        }
        assert_eq!(frame.event, "message", "{}", frame.data["type"]);
        let seq: u64 = frame.id.as_deref().and_then(|s| s.parse().ok()).unwrap();
        assert_eq!(seq, seqs.last().unwrap() + 1, "a gap or repeat before the lag");
        assert_eq!(frame.data["seq"], seq);
        seqs.push(seq);
    };
    let last_received = *seqs.last().unwrap();
    assert_eq!(lagged.data["last_event_id"], last_received.to_string(), "{:?}", lagged.data);
    let missed = lagged.data["missed"].as_u64().unwrap();
    assert!(missed > 1000, "lagged after only {missed} events behind: {}", lagged.data);
    assert!(lagged.id.is_none(), "the lagged frame must not move Last-Event-ID");
    assert!(next(&mut run_stream, &mut comments).is_none(), "the stream goes on after `lagged`");

    // The reconnect gets the rest, from the next seq to the run's last, nothing twice.
    let resume = last_received.to_string();
    let mut again = Sse::open(
        server.port(),
        &format!("/api/runs/{id}/events/stream"),
        &[("Last-Event-ID", resume.as_str())],
    );
    assert_eq!(again.status, 200);
    let mut last_type = Value::Null;
    while let Some(frame) = next(&mut again, &mut comments) {
        assert_eq!(frame.event, "message", "{}", frame.data["type"]);
        let seq: u64 = frame.id.as_deref().and_then(|s| s.parse().ok()).unwrap();
        assert_eq!(seq, seqs.last().unwrap() + 1, "a gap or repeat after resuming");
        seqs.push(seq);
        last_type = frame.data["type"].clone();
    }
    // Every event once, in order, up to the run's last.
    assert_eq!(last_type, "workflow.completed");
    let last_seq = *seqs.last().unwrap();
    assert!(last_seq > 3 * STEPS as u64, "the run emitted only {last_seq} events");
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>());

    // The global stream was cut the same way: `lagged`, with the id to resume after.
    let mut global_ids = Vec::new();
    let lagged = loop {
        let frame = next(&mut global, &mut comments).expect("`lagged` on the global stream");
        if frame.event == "lagged" {
            break frame;
        }
        global_ids.push(frame.id.unwrap());
    };
    assert_eq!(lagged.data["last_event_id"].as_str(), global_ids.last().map(String::as_str));
    assert!(lagged.data["missed"].as_u64().unwrap() > 1000, "{}", lagged.data);
    assert!(next(&mut global, &mut comments).is_none());
    // Resuming after an event still among the recent ones replays what followed it.
    let recent = server.get("/api/events?limit=5").json();
    let events = recent["events"].as_array().unwrap();
    let (older, newer) = (&events[1], &events[0]);
    let after = format!("{}/{}", older["run_id"].as_str().unwrap(), older["seq"]);
    let mut resumed =
        Sse::open(server.port(), "/api/events/stream", &[("Last-Event-ID", after.as_str())]);
    let frame = next(&mut resumed, &mut comments).expect("the replayed event");
    assert_eq!(frame.data["id"], newer["id"], "{}", frame.data["type"]);
    assert_eq!(
        frame.id.unwrap(),
        format!("{}/{}", newer["run_id"].as_str().unwrap(), newer["seq"])
    );
}

/// The server's open file descriptors, from `/proc/<pid>/fd`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

#[test]
fn queued_runs_hold_no_open_file_under_a_256_file_limit() {
    const QUEUED: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "\
server: {{max_queued_runs: {QUEUED}}}
workflows:
  one_at_a_time:
    concurrency: 1
    steps:
      - {{ id: block, type: command, argv: [sh, -c, 'sleep 300'], timeout: 600 }}
"
        ),
    );
    let port = free_port();
    let mut server = Server::spawn_after_shell(dir.path(), port, "ulimit -n 256", &[], &[]);
    server.wait_ready();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert!(nofile.split_whitespace().nth(3) == Some("256"), "{nofile}");
    let idle = open_files(server.pid());

    let first = start_run(&server, "one_at_a_time");
    wait_for_run(&server, &first, |run| run["status"] == "running");
    let mut queued = Vec::new();
    for _ in 0..QUEUED {
        queued.push(start_run(&server, "one_at_a_time"));
    }
    // The queue is full, and says so; the server still answers everything else.
    let full = server.post("/api/workflows/one_at_a_time/run");
    assert_eq!(full.status, 429, "{}", full.text());
    let ready = server.get("/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.text());
    let last = server.get(&format!("/api/runs/{}", queued[QUEUED - 1])).json();
    assert_eq!(last["status"], "queued", "{last}");
    let open = open_files(server.pid());
    assert!(
        open <= idle + 16,
        "{open} files open with {QUEUED} runs queued ({idle} idle): queued runs hold files"
    );

    // Cancelling every run leaves the server as it was.
    for id in queued.iter().chain([&first]) {
        let cancel = server.post(&format!("/api/runs/{id}/cancel"));
        assert_eq!(cancel.status, 202, "{}", cancel.text());
    }
    for id in &queued {
        let run = wait_for_run(&server, id, |run| finished(&run["status"]));
        assert_eq!(run["status"], "cancelled", "{run}");
    }
    assert_eq!(server.get("/health/ready").status, 200);
    let open = open_files(server.pid());
    assert!(open <= idle + 16, "{open} files open after every run ended ({idle} idle)");
}
