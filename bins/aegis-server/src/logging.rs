//! Logging: the `AEGIS_LOG` filter (`env_logger`'s syntax), as text or one JSON object
//! per line with the record's key-values (`run_id`, `request_id`, `status`, …) as
//! fields, written off the calling threads.
//!
//! A log call on an HTTP worker only copies the record into a bounded channel; a
//! dedicated thread formats the lines and writes them through a large buffer, flushing
//! whenever the channel runs empty. When the channel is full the line is dropped and
//! counted — a worker never waits for stderr — and the writer reports how many were
//! dropped. [`flush`] waits for every line sent so far, for the end of the process.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use aegis_api::{RequestLine, RequestLog};
use log::kv::{Key, Value, VisitSource};
use log::{Level, Log, Metadata, Record};

use crate::settings::LogFormat;

/// Lines waiting for the writer; beyond this they are dropped (and counted).
const CAPACITY: usize = 16 * 1024;

/// The writer's buffer: large, so a burst is written in few system calls.
const BUFFER_BYTES: usize = 64 * 1024;

/// How long the writer lets lines gather after a busy batch.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// How long [`flush`] waits for the writer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A key-value of a record, owned so it can cross to the writer thread.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Text(String),
}

impl Field {
    fn json(&self) -> serde_json::Value {
        match self {
            Field::U64(n) => (*n).into(),
            Field::I64(n) => (*n).into(),
            Field::F64(f) => (*f).into(),
            Field::Bool(b) => (*b).into(),
            Field::Text(s) => s.as_str().into(),
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::U64(n) => write!(f, "{n}"),
            Field::I64(n) => write!(f, "{n}"),
            Field::F64(x) => write!(f, "{x}"),
            Field::Bool(b) => write!(f, "{b}"),
            Field::Text(s) => f.write_str(s),
        }
    }
}

/// One record, copied out of the caller's frame.
#[derive(Debug, Clone)]
struct Line {
    time: jiff::Timestamp,
    level: Level,
    target: String,
    message: String,
    fields: Vec<(String, Field)>,
}

struct Fields<'a>(&'a mut Vec<(String, Field)>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let field = if let Some(n) = value.to_u64() {
            Field::U64(n)
        } else if let Some(n) = value.to_i64() {
            Field::I64(n)
        } else if let Some(f) = value.to_f64() {
            Field::F64(f)
        } else if let Some(b) = value.to_bool() {
            Field::Bool(b)
        } else {
            Field::Text(value.to_string())
        };
        self.0.push((key.as_str().to_owned(), field));
        Ok(())
    }
}

impl Line {
    fn of(record: &Record<'_>) -> Line {
        let mut fields = Vec::new();
        // A key-value that cannot be visited is left out rather than losing the line.
        let _ = record.key_values().visit(&mut Fields(&mut fields));
        Line {
            time: jiff::Timestamp::now(),
            level: record.level(),
            target: record.target().to_owned(),
            message: record.args().to_string(),
            fields,
        }
    }

    /// Appends the line, newline included, in `format`.
    fn write_to(&self, format: LogFormat, clock: &mut Clock, out: &mut String) {
        match format {
            LogFormat::Text => {
                let _ = write!(
                    out,
                    "[{} {:<5} {}] {}",
                    clock.text(self.time),
                    self.level,
                    self.target,
                    self.message
                );
                for (key, value) in &self.fields {
                    let _ = write!(out, " {key}={value}");
                }
            }
            LogFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("time".to_owned(), self.time.to_string().into());
                object.insert("level".to_owned(), self.level.as_str().to_lowercase().into());
                object.insert("target".to_owned(), self.target.as_str().into());
                object.insert("message".to_owned(), self.message.as_str().into());
                for (key, value) in &self.fields {
                    object.insert(key.clone(), value.json());
                }
                let _ = write!(out, "{}", serde_json::Value::Object(object));
            }
        }
        out.push('\n');
    }
}

/// A request line of `aegis-api`, as it was answered, and when.
struct Request {
    time: jiff::Timestamp,
    line: RequestLine,
}

impl Request {
    /// Appends the line, newline included, in `format`: the same line the `log`
    /// crate's path would write for it.
    fn write_to(&self, format: LogFormat, clock: &mut Clock, out: &mut String) {
        let line = &self.line;
        match format {
            LogFormat::Text => {
                let _ = write!(out, "[{} INFO  {REQUEST_TARGET}] ", clock.text(self.time));
                line.write_message(out);
                let _ = write!(
                    out,
                    " method={} path={} status={} duration_ms={} request_id={} client=",
                    line.method,
                    line.path,
                    line.status,
                    line.duration_ms(),
                    line.request_id
                );
                if let Some(client) = line.client {
                    let _ = write!(out, "{client}");
                }
            }
            LogFormat::Json => {
                let mut message = String::with_capacity(64);
                line.write_message(&mut message);
                let object = serde_json::json!({
                    "time": self.time.to_string(),
                    "level": "info",
                    "target": REQUEST_TARGET,
                    "message": message,
                    "method": line.method.as_str(),
                    "path": line.path,
                    "status": line.status,
                    "duration_ms": line.duration_ms(),
                    "request_id": line.request_id,
                    "client": line.client_text(),
                });
                let _ = write!(out, "{object}");
            }
        }
        out.push('\n');
    }
}

/// The text format's timestamp, formatted once per second rather than once per line.
struct Clock {
    second: Option<i64>,
    text: String,
}

impl Clock {
    fn new() -> Clock {
        Clock { second: None, text: String::new() }
    }

    fn text(&mut self, time: jiff::Timestamp) -> &str {
        let second = time.as_second();
        if self.second != Some(second) {
            self.text.clear();
            let _ = write!(self.text, "{}", time.strftime("%Y-%m-%dT%H:%M:%SZ"));
            self.second = Some(second);
        }
        &self.text
    }
}

/// The target request lines are logged under (and filtered by).
const REQUEST_TARGET: &str = "aegis::request";

/// What the writer thread receives.
enum Message {
    Line(Box<Line>),
    Request(Box<Request>),
    /// Write everything before this, then answer.
    Flush(mpsc::Sender<()>),
}

/// The `log` logger: filters, copies the record and hands it to the writer.
struct ChannelLogger {
    /// Used for its filter only (`AEGIS_LOG` in `env_logger`'s syntax); it writes nothing.
    filter: env_logger::Logger,
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Log for ChannelLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        Log::enabled(&self.filter, metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        match self.tx.try_send(Message::Line(Box::new(Line::of(record)))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer is gone (its sink failed): nothing more can be written.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn flush(&self) {
        let (ack, done) = mpsc::channel();
        // A blocking send: the flush must not be dropped like a line.
        if self.tx.send(Message::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(FLUSH_TIMEOUT);
        }
    }
}

/// Hands `aegis-api`'s request lines to the writer as they are: the worker that
/// answered copies nothing and formats nothing. Full channel: dropped and counted, like
/// any line.
#[derive(Clone)]
pub(crate) struct RequestSink {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl RequestLog for RequestSink {
    fn request(&self, line: RequestLine) {
        let request = Box::new(Request { time: jiff::Timestamp::now(), line });
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Message::Request(request)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl ChannelLogger {
    fn request_sink(&self) -> RequestSink {
        RequestSink { tx: self.tx.clone(), dropped: Arc::clone(&self.dropped) }
    }
}

/// The writer thread: formats and writes lines in batches, flushing when the channel
/// is empty, and reports dropped lines.
fn write_lines(
    rx: Receiver<Message>,
    sink: Box<dyn Write + Send>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
) {
    let mut out = std::io::BufWriter::with_capacity(BUFFER_BYTES, sink);
    let mut text = String::with_capacity(512);
    let mut clock = Clock::new();
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut batch = 0usize;
        while let Some(message) = next {
            batch += 1;
            match message {
                Message::Line(line) => {
                    text.clear();
                    line.write_to(format, &mut clock, &mut text);
                    if out.write_all(text.as_bytes()).is_err() {
                        return;
                    }
                }
                Message::Request(request) => {
                    text.clear();
                    request.write_to(format, &mut clock, &mut text);
                    if out.write_all(text.as_bytes()).is_err() {
                        return;
                    }
                }
                Message::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let line = Line {
                time: jiff::Timestamp::now(),
                level: Level::Warn,
                target: "aegis::log".to_owned(),
                message: format!("dropped {lost} log lines: the log writer fell behind"),
                fields: vec![("dropped".to_owned(), Field::U64(lost))],
            };
            text.clear();
            line.write_to(format, &mut clock, &mut text);
            let _ = out.write_all(text.as_bytes());
        }
        let _ = out.flush();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        // Under load, let lines gather before the next batch: a writer parked in
        // `recv` costs each sender a wake-up system call, a pausing one costs none.
        if batch > 1 {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
    let _ = out.flush();
}

/// Builds the logger over `sink` with room for `capacity` waiting lines, and starts
/// its writer thread.
fn logger(
    filter: &str,
    format: LogFormat,
    capacity: usize,
    sink: Box<dyn Write + Send>,
) -> std::io::Result<ChannelLogger> {
    let filter = env_logger::Builder::new().parse_filters(filter).build();
    let (tx, rx) = mpsc::sync_channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    std::thread::Builder::new()
        .name("aegis-log".to_owned())
        .spawn(move || write_lines(rx, sink, format, counter))?;
    Ok(ChannelLogger { filter, tx, dropped })
}

/// Starts logging to stderr. Returns where the app's request lines should go: the same
/// writer, by a shorter path (none when logging could not start, or had started).
pub(crate) fn init(filter: &str, format: LogFormat) -> Option<RequestSink> {
    let Ok(logger) = logger(filter, format, CAPACITY, Box::new(std::io::stderr())) else {
        eprintln!("aegis-server: cannot start the log writer thread; logging is off");
        return None;
    };
    let max = logger.filter.filter();
    let sink = logger.request_sink();
    // A second initialisation keeps the first logger.
    log::set_boxed_logger(Box::new(logger)).ok()?;
    log::set_max_level(max);
    Some(sink)
}

/// Waits until every line logged so far is written.
pub(crate) fn flush() {
    log::logger().flush();
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Flag = Arc<(Mutex<bool>, std::sync::Condvar)>;

    fn raise(flag: &Flag) {
        let (lock, cvar) = &**flag;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }

    fn wait(flag: &Flag) {
        let (lock, cvar) = &**flag;
        let mut up = lock.lock().unwrap();
        while !*up {
            up = cvar.wait(up).unwrap();
        }
    }

    /// A sink that blocks every write until the test opens it, then collects.
    #[derive(Clone)]
    struct Gated {
        open: Flag,
        entered: Flag,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Gated {
        fn new() -> Gated {
            Gated { open: Arc::default(), entered: Arc::default(), written: Arc::default() }
        }

        fn open(&self) {
            raise(&self.open);
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.written.lock().unwrap()).into_owned()
        }
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            raise(&self.entered);
            wait(&self.open);
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_request(logger: &ChannelLogger, n: u64) {
        let kvs: [(&str, Value<'_>); 2] =
            [("status", Value::from(200u64)), ("request_id", Value::from("abc"))];
        logger.log(
            &Record::builder()
                .level(Level::Info)
                .target("aegis::request")
                .args(format_args!("GET /health 200 {n}"))
                .key_values(&kvs)
                .build(),
        );
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_caller_and_drops_are_counted_and_reported() {
        let sink = Gated::new();
        let logger = logger("info", LogFormat::Text, 4, Box::new(sink.clone())).unwrap();
        // The first line reaches the sink, which blocks the writer; then the channel
        // holds four lines and every other one is dropped without waiting.
        log_request(&logger, 0);
        wait(&sink.entered);
        for n in 1..=200 {
            log_request(&logger, n);
        }
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 196);
        sink.open();
        logger.flush();
        let text = sink.text();
        assert!(text.contains("GET /health 200 0 status=200 request_id=abc"), "{text}");
        assert!(text.contains("GET /health 200 4 "), "{text}");
        assert!(!text.contains("GET /health 200 5 "), "{text}");
        assert!(text.contains("dropped 196 log lines"), "{text}");
    }

    #[test]
    fn json_lines_carry_the_key_values_as_fields_and_the_filter_applies() {
        let sink = Gated::new();
        sink.open();
        let logger =
            logger("warn,aegis::request=info", LogFormat::Json, 16, Box::new(sink.clone()))
                .unwrap();
        log_request(&logger, 7);
        logger.log(
            &Record::builder()
                .level(Level::Info)
                .target("other")
                .args(format_args!("hidden"))
                .build(),
        );
        logger.flush();
        let text = sink.text();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["message"], "GET /health 200 7");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["target"], "aegis::request");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["request_id"], "abc");
        assert!(lines[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{text}");
    }

    fn answered(status: u16, duration_us: u64) -> RequestLine {
        RequestLine {
            method: actix_web::http::Method::POST,
            path: "/api/workflows/smoke/run".to_owned(),
            status,
            duration_us,
            request_id: "req-1".to_owned(),
            client: Some("10.1.2.3".parse().unwrap()),
        }
    }

    /// What the `log` crate's path writes for a request line (`aegis-api` without a sink).
    fn log_as_record(logger: &ChannelLogger, line: &RequestLine) {
        let mut message = String::new();
        line.write_message(&mut message);
        let client = line.client_text();
        let kvs: [(&str, Value<'_>); 6] = [
            ("method", Value::from(line.method.as_str())),
            ("path", Value::from(line.path.as_str())),
            ("status", Value::from(line.status)),
            ("duration_ms", Value::from(line.duration_ms())),
            ("request_id", Value::from(line.request_id.as_str())),
            ("client", Value::from(client.as_str())),
        ];
        logger.log(
            &Record::builder()
                .level(Level::Info)
                .target(REQUEST_TARGET)
                .args(format_args!("{message}"))
                .key_values(&kvs)
                .build(),
        );
    }

    /// Each line without its timestamp, which differs between the two paths.
    fn untimed(text: &str) -> Vec<String> {
        text.lines().map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_owned()).collect()
    }

    #[test]
    fn request_lines_through_the_sink_read_as_they_would_through_the_log_crate() {
        for (status, us) in [(202, 1_234), (500, 49), (200, 12_345_678)] {
            let sink = Gated::new();
            sink.open();
            let logger = logger("info", LogFormat::Text, 16, Box::new(sink.clone())).unwrap();
            logger.request_sink().request(answered(status, us));
            log_as_record(&logger, &answered(status, us));
            logger.flush();
            let lines = untimed(&sink.text());
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert_eq!(lines[0], lines[1]);
        }
        let sink = Gated::new();
        sink.open();
        let logger = logger("info", LogFormat::Text, 16, Box::new(sink.clone())).unwrap();
        logger.request_sink().request(answered(202, 1_250));
        logger.flush();
        assert_eq!(
            untimed(&sink.text()),
            ["INFO  aegis::request] POST /api/workflows/smoke/run 202 1.3ms method=POST \
              path=/api/workflows/smoke/run status=202 duration_ms=1.25 request_id=req-1 \
              client=10.1.2.3"]
        );
    }

    #[test]
    fn json_request_lines_through_the_sink_carry_the_same_fields() {
        let sink = Gated::new();
        sink.open();
        let logger = logger("info", LogFormat::Json, 16, Box::new(sink.clone())).unwrap();
        logger.request_sink().request(answered(404, 75));
        log_as_record(&logger, &answered(404, 75));
        logger.flush();
        let text = sink.text();
        let mut lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &mut lines {
            assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{text}");
            line["time"] = serde_json::Value::Null;
        }
        assert_eq!(lines[0], lines[1]);
        assert_eq!(lines[0]["message"], "POST /api/workflows/smoke/run 404 0.1ms");
        assert_eq!(lines[0]["duration_ms"], 0.075);
        assert_eq!(lines[0]["client"], "10.1.2.3");
    }

    #[test]
    fn the_text_timestamp_is_formatted_again_when_the_second_changes() {
        let mut clock = Clock::new();
        let first: jiff::Timestamp = "2026-12-01T10:00:00.2Z".parse().unwrap();
        assert_eq!(clock.text(first), "2026-12-01T10:00:00Z");
        let same = first.checked_add(jiff::SignedDuration::from_millis(700)).unwrap();
        assert_eq!(clock.text(same), "2026-12-01T10:00:00Z");
        let next = first.checked_add(jiff::SignedDuration::from_millis(800)).unwrap();
        assert_eq!(clock.text(next), "2026-12-01T10:00:01Z");
    }
}
