//! `GET /metrics`: the server's counters and gauges in the Prometheus text exposition
//! format 0.0.4 (SPEC section 12).
//!
//! Run and step figures are fed from the engine's event bus by one task that follows
//! it ([`Metrics::start`]), so the engine knows nothing of metrics; HTTP requests are
//! counted by a middleware ([`count_requests`]) under the route pattern they matched,
//! never the raw path, so ids in paths do not become label values. A scrape reads
//! only what is in memory: the live runs this process follows, the engine's queue
//! counter and the counters; nothing touches the history store per scrape. The store
//! is read once when the follower starts (runs a previous process left waiting or
//! queued) and again only if the follower ever falls behind the bus.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::{Engine, Event, Received, Subscription};
use aegis_history::{DeliveryStatus, HistoryBackend};

use crate::auth::require;
use crate::error::Result;
use crate::state::AppState;

/// The content type of the text format, version 0.0.4.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram bucket bounds in seconds: from a fast HTTP step to an hour-long gate-free
/// run, so both step and run durations land in a useful bucket.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The finished statuses a run can end in; every configured workflow reports each of
/// them from the start (at zero), so `rate()` works before the first run.
const FINISHED: [&str; 5] = ["succeeded", "failed", "rejected", "cancelled", "interrupted"];

/// The statuses `aegis_runs` reports for runs that have not finished.
const UNFINISHED: [&str; 3] = ["queued", "running", "waiting"];

/// The label value of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// Locks a mutex, going on with the data of a poisoned one: every critical section
/// here leaves its data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A histogram with the fixed [`BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(BUCKETS.len());
        self.buckets[slot] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// What this process knows of a run that has not finished.
#[derive(Debug, Clone, PartialEq)]
struct Live {
    workflow: String,
    status: &'static str,
    /// The gates of the run waiting for a decision.
    gates: Vec<String>,
}

/// Everything the event follower maintains, behind one lock.
#[derive(Debug, Default)]
struct RunFigures {
    /// Finished runs by `(workflow, status)` since this process started.
    finished: BTreeMap<(String, String), u64>,
    /// Runs not finished, by run id.
    live: HashMap<String, Live>,
    /// Run wall time by workflow.
    run_duration: BTreeMap<String, Histogram>,
    /// Step wall time by `(workflow, step type)`.
    step_duration: BTreeMap<(String, String), Histogram>,
}

impl RunFigures {
    /// Applies one event. Events are read loosely by their SPEC names and fields, so
    /// an event type this does not know changes nothing.
    fn apply(&mut self, event: &Event) {
        let data = &event.data;
        let seconds = || data.get("duration_ms").and_then(serde_json::Value::as_u64).map(ms);
        match event.event_type.as_str() {
            "run.queued" => self.set(event, "queued"),
            "workflow.started" => self.set(event, "running"),
            "gate.waiting" => {
                let gate = data.get("gate_id").and_then(serde_json::Value::as_str);
                let live = self.entry(event);
                live.status = "waiting";
                if let Some(gate) = gate
                    && !live.gates.iter().any(|g| g == gate)
                {
                    live.gates.push(gate.to_owned());
                }
            }
            "gate.approved" | "gate.rejected" | "gate.expired" => {
                let gate = data.get("gate_id").and_then(serde_json::Value::as_str);
                let live = self.entry(event);
                live.gates.retain(|g| Some(g.as_str()) != gate);
                if live.gates.is_empty() {
                    live.status = "running";
                }
            }
            "step.completed" => {
                let step_type = data.get("step_type").and_then(serde_json::Value::as_str);
                if let (Some(step_type), Some(seconds)) = (step_type, seconds()) {
                    self.step_duration
                        .entry((event.workflow.clone(), step_type.to_owned()))
                        .or_default()
                        .observe(seconds);
                }
            }
            "workflow.completed" => {
                self.live.remove(&event.run_id);
                let status = data.get("status").and_then(serde_json::Value::as_str);
                let status = status.unwrap_or("unknown").to_owned();
                *self.finished.entry((event.workflow.clone(), status)).or_default() += 1;
                if let Some(seconds) = seconds() {
                    self.run_duration.entry(event.workflow.clone()).or_default().observe(seconds);
                }
            }
            _ => {}
        }
    }

    fn entry(&mut self, event: &Event) -> &mut Live {
        self.live.entry(event.run_id.clone()).or_insert_with(|| Live {
            workflow: event.workflow.clone(),
            status: "running",
            gates: Vec::new(),
        })
    }

    fn set(&mut self, event: &Event, status: &'static str) {
        self.entry(event).status = status;
    }
}

fn ms(millis: u64) -> f64 {
    millis as f64 / 1000.0
}

/// The server's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    engine: Engine,
    runs: Mutex<RunFigures>,
    /// Requests by `(route pattern, status)`; a lock of its own so counting a request
    /// never waits for the event follower.
    http: Mutex<BTreeMap<(String, u16), u64>>,
    /// Events the follower missed because it fell behind the bus.
    missed: AtomicU64,
    /// The bus subscription until the follower task takes it.
    pending: Mutex<Option<Subscription>>,
}

impl Metrics {
    /// Subscribes to the engine's events at once, so that nothing published from now
    /// on is missed, and starts following them on the current runtime when there is
    /// one (otherwise on the runtime given to [`Metrics::start`]).
    pub(crate) fn new(engine: &Engine) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics {
            engine: engine.clone(),
            runs: Mutex::new(RunFigures::default()),
            http: Mutex::new(BTreeMap::new()),
            missed: AtomicU64::new(0),
            pending: Mutex::new(Some(engine.subscribe())),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            metrics.start(&runtime);
        }
        metrics
    }

    /// Starts the task that follows the bus on `runtime`, unless it runs already.
    pub(crate) fn start(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let Some(events) = lock(&self.pending).take() else { return };
        // The task holds the store weakly: the server drops its last handle of the
        // store at shutdown to commit every queued write, which a strong handle here
        // would delay until the runtime goes.
        let history = Arc::downgrade(self.engine.history());
        runtime.spawn(follow(Arc::downgrade(self), history, events));
    }

    /// Counts one answered request.
    fn count_request(&self, route: String, status: u16) {
        *lock(&self.http).entry((route, status)).or_default() += 1;
    }

    /// Replaces what is known of unfinished runs with what the store holds.
    async fn reseed(&self, history: &dyn HistoryBackend) {
        let unfinished = match history.unfinished().await {
            Ok(unfinished) => unfinished,
            Err(err) => {
                log::warn!("metrics: cannot read unfinished runs from history: {err}");
                return;
            }
        };
        let gates = match history.pending_gates().await {
            Ok(gates) => gates,
            Err(err) => {
                log::warn!("metrics: cannot read pending gates from history: {err}");
                Vec::new()
            }
        };
        let mut live = HashMap::new();
        let sorted = [
            (unfinished.queued, "queued"),
            (unfinished.running, "running"),
            (unfinished.waiting, "waiting"),
        ];
        for (runs, status) in sorted {
            for run in runs {
                let entry = Live { workflow: run.workflow, status, gates: Vec::new() };
                live.insert(run.id.as_str().to_owned(), entry);
            }
        }
        for gate in gates {
            if let Some(run) = live.get_mut(gate.run_id.as_str()) {
                run.gates.push(gate.gate_id);
            }
        }
        lock(&self.runs).live = live;
    }

    /// The exposition text.
    pub(crate) fn render(&self, deliveries: &[(u32, DeliveryStatus, u64)]) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let workflows: Vec<&str> =
            self.engine.config().workflows().keys().map(String::as_str).collect();
        {
            let runs = lock(&self.runs);
            render_runs(&mut out, &runs, &workflows);
        }
        family(
            &mut out,
            "aegis_queue_depth",
            "gauge",
            "Runs accepted and waiting for a free slot.",
        );
        sample(&mut out, "aegis_queue_depth", &[], self.engine.queued_runs());
        family(
            &mut out,
            "aegis_webhook_deliveries_total",
            "counter",
            "Webhook deliveries that ended, by webhook index and status (delivered, failed, gone), as kept in the delivery log (delivered rows leave it after 7 days).",
        );
        let mut pending = 0;
        for (webhook, status, count) in deliveries {
            if *status == DeliveryStatus::Pending {
                pending += count;
                continue;
            }
            sample(
                &mut out,
                "aegis_webhook_deliveries_total",
                &[("webhook", &webhook.to_string()), ("status", status.as_str())],
                *count,
            );
        }
        family(
            &mut out,
            "aegis_webhook_outbox_pending",
            "gauge",
            "Webhook deliveries waiting for their next attempt.",
        );
        sample(&mut out, "aegis_webhook_outbox_pending", &[], pending);
        family(
            &mut out,
            "aegis_http_requests_total",
            "counter",
            "HTTP requests answered, by matched route pattern and status code.",
        );
        for ((route, status), count) in lock(&self.http).iter() {
            sample(
                &mut out,
                "aegis_http_requests_total",
                &[("route", route), ("status", &status.to_string())],
                *count,
            );
        }
        family(
            &mut out,
            "aegis_metrics_events_missed_total",
            "counter",
            "Engine events the metrics follower missed because it fell behind the bus.",
        );
        sample(
            &mut out,
            "aegis_metrics_events_missed_total",
            &[],
            self.missed.load(Ordering::Relaxed),
        );
        family(&mut out, "aegis_build_info", "gauge", "The running build; always 1.");
        sample(&mut out, "aegis_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        out
    }
}

/// Follows the bus until it closes (the engine is gone) or the metrics are dropped.
async fn follow(
    metrics: Weak<Metrics>,
    history: Weak<dyn HistoryBackend>,
    mut events: Subscription,
) {
    if let (Some(metrics), Some(history)) = (metrics.upgrade(), history.upgrade()) {
        metrics.reseed(&*history).await;
    }
    while let Some(received) = events.recv().await {
        let Some(metrics) = metrics.upgrade() else { return };
        match received {
            Received::Event(event) => lock(&metrics.runs).apply(&event),
            Received::Lagged(missed) => {
                metrics.missed.fetch_add(missed, Ordering::Relaxed);
                log::warn!(
                    "metrics: fell {missed} events behind the engine; run counters miss them, gauges are read again from history"
                );
                if let Some(history) = history.upgrade() {
                    metrics.reseed(&*history).await;
                }
            }
            _ => {}
        }
    }
}

fn render_runs(out: &mut String, runs: &RunFigures, workflows: &[&str]) {
    family(
        out,
        "aegis_runs_total",
        "counter",
        "Runs finished since the server started, by workflow and final status.",
    );
    let mut finished: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for workflow in workflows {
        for status in FINISHED {
            finished.insert((workflow, status), 0);
        }
    }
    for ((workflow, status), count) in &runs.finished {
        finished.insert((workflow, status), *count);
    }
    for ((workflow, status), count) in finished {
        sample(out, "aegis_runs_total", &[("workflow", workflow), ("status", status)], count);
    }

    family(
        out,
        "aegis_runs",
        "gauge",
        "Runs not finished, by workflow and status (queued, running, waiting).",
    );
    let mut unfinished: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for workflow in workflows {
        for status in UNFINISHED {
            unfinished.insert((workflow, status), 0);
        }
    }
    for live in runs.live.values() {
        *unfinished.entry((&live.workflow, live.status)).or_default() += 1;
    }
    for ((workflow, status), count) in unfinished {
        sample(out, "aegis_runs", &[("workflow", workflow), ("status", status)], count);
    }

    family(out, "aegis_gates_pending", "gauge", "Gates waiting for a decision.");
    let pending: usize = runs.live.values().map(|live| live.gates.len()).sum();
    sample(out, "aegis_gates_pending", &[], pending);

    family(
        out,
        "aegis_run_duration_seconds",
        "histogram",
        "Wall time of finished runs, from start to finish, by workflow.",
    );
    for (workflow, histogram) in &runs.run_duration {
        render_histogram(out, "aegis_run_duration_seconds", &[("workflow", workflow)], histogram);
    }
    family(
        out,
        "aegis_step_duration_seconds",
        "histogram",
        "Wall time of finished steps over all attempts, by workflow and step type.",
    );
    for ((workflow, step_type), histogram) in &runs.step_duration {
        render_histogram(
            out,
            "aegis_step_duration_seconds",
            &[("workflow", workflow), ("type", step_type)],
            histogram,
        );
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    write_labels(out, labels);
    let _ = writeln!(out, " {value}");
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, count) in histogram.buckets.iter().enumerate() {
        cumulative += count;
        let bound = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
        let mut with_le = labels.to_vec();
        with_le.push(("le", &bound));
        sample(out, &bucket, &with_le, cumulative);
    }
    sample(out, &format!("{name}_sum"), labels, histogram.sum);
    sample(out, &format!("{name}_count"), labels, histogram.count);
}

/// Counts every answered request under the route pattern it matched (`/api/runs/{id}`,
/// with `server.base_path` in front), or `unmatched`.
///
/// The pattern is read from the answered request: routing has recorded which resource
/// matched, so this is a lookup. Asked before routing, actix would match the path
/// against every pattern again (a regular expression each), on every request.
pub(crate) async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<AppState>>().map(|state| Arc::clone(state.metrics()));
    let result = next.call(req).await;
    if let Some(metrics) = metrics {
        let (route, status) = match &result {
            Ok(response) => (response.request().match_pattern(), response.status()),
            // A failure that never became a response carries no request to ask.
            Err(err) => (None, err.as_response_error().status_code()),
        };
        metrics.count_request(route.unwrap_or_else(|| UNMATCHED.to_owned()), status.as_u16());
    }
    result
}

/// Prometheus metrics: runs by workflow and status, run and step durations, queue
/// depth, pending gates, webhook deliveries, HTTP requests by route, the build.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, body = crate::error::ErrorBody)),
    security((), ("api_key" = []), ("bearer" = [])))]
pub(crate) async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let metrics = state.metrics();
    // A state built without any runtime starts its follower at the first scrape.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics.start(&runtime);
    }
    // The delivery counts come from the outbox; a store that cannot answer
    // leaves them out rather than failing the scrape.
    let deliveries = match state.history().delivery_counts().await {
        Ok(counts) => counts,
        Err(err) => {
            log::warn!("metrics: cannot count webhook deliveries: {err}");
            Vec::new()
        }
    };
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(metrics.render(&deliveries)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, run_id: &str, data: serde_json::Value) -> Event {
        Event {
            schema_version: "1".to_owned(),
            id: format!("{run_id}-{event_type}"),
            seq: 1,
            event_type: event_type.to_owned(),
            time: jiff::Timestamp::UNIX_EPOCH,
            run_id: run_id.to_owned(),
            workflow: "ci".to_owned(),
            request_id: None,
            data,
        }
    }

    #[test]
    fn events_move_runs_through_their_states_and_count_finished_ones() {
        let mut figures = RunFigures::default();
        let status = |f: &RunFigures, id: &str| f.live.get(id).map(|l| l.status);
        figures.apply(&event("run.queued", "r1", serde_json::json!({"trigger": "api"})));
        assert_eq!(status(&figures, "r1"), Some("queued"));
        figures.apply(&event("workflow.started", "r1", serde_json::json!({})));
        assert_eq!(status(&figures, "r1"), Some("running"));
        figures.apply(&event("gate.waiting", "r1", serde_json::json!({"gate_id": "review"})));
        assert_eq!(status(&figures, "r1"), Some("waiting"));
        assert_eq!(figures.live["r1"].gates, ["review"]);
        figures.apply(&event("gate.approved", "r1", serde_json::json!({"gate_id": "review"})));
        assert_eq!(status(&figures, "r1"), Some("running"));
        assert!(figures.live["r1"].gates.is_empty());
        figures.apply(&event(
            "step.completed",
            "r1",
            serde_json::json!({"step_type": "http", "duration_ms": 20}),
        ));
        figures.apply(&event(
            "workflow.completed",
            "r1",
            serde_json::json!({"status": "failed", "duration_ms": 1500}),
        ));
        assert_eq!(status(&figures, "r1"), None);
        assert_eq!(figures.finished[&("ci".to_owned(), "failed".to_owned())], 1);
        let steps = &figures.step_duration[&("ci".to_owned(), "http".to_owned())];
        assert_eq!((steps.count, steps.buckets[2]), (1, 1), "20 ms lands in le=0.025");
        let runs = &figures.run_duration["ci"];
        assert_eq!((runs.count, runs.sum, runs.buckets[8]), (1, 1.5, 1), "1.5 s lands in le=2.5");
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let mut histogram = Histogram::default();
        histogram.observe(0.001);
        histogram.observe(0.3);
        histogram.observe(7200.0);
        let mut out = String::new();
        render_histogram(&mut out, "h", &[("workflow", "w")], &histogram);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "h_bucket{workflow=\"w\",le=\"0.005\"} 1");
        assert_eq!(lines[5], "h_bucket{workflow=\"w\",le=\"0.25\"} 1");
        assert_eq!(lines[6], "h_bucket{workflow=\"w\",le=\"0.5\"} 2");
        assert_eq!(lines[15], "h_bucket{workflow=\"w\",le=\"3600\"} 2");
        assert_eq!(lines[16], "h_bucket{workflow=\"w\",le=\"+Inf\"} 3");
        assert_eq!(lines[17], "h_sum{workflow=\"w\"} 7200.301");
        assert_eq!(lines[18], "h_count{workflow=\"w\"} 3");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("route", "a\\b\"c\nd")], 1);
        assert_eq!(out, "m{route=\"a\\\\b\\\"c\\nd\"} 1\n");
    }
}
