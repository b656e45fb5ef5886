//! Events: polling a run's log, recent events, and server-sent event streams.
//!
//! A run's stream replays the run's log (`Engine::run_events`, which always holds every
//! event emitted so far) from the client's position, then follows the in-process bus.
//! The subscription is taken before the log is read and events are sent in `seq` order
//! only, so resuming with `Last-Event-ID` has no gap and no repeat; when the bus drops
//! events for the stream, the missed ones are read back from the log.
//!
//! Back-pressure (SPEC section 8): a stream drains the bus at once into its own queue,
//! so a client that stops reading never holds the bus's shared buffer. A client more
//! than 1,000 live events behind (or 32 MiB of them) gets `event: lagged` — data
//! `{missed, last_event_id, message}` — after what it has not read yet, and the stream
//! ends; it resumes with `Last-Event-ID` (the global stream from the recent events).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use aegis_auth::Access;
use aegis_core::{Engine, Event, EventType, Received};
use aegis_history::RunId;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::auth::require;
use crate::error::{ApiError, Result};
use crate::state::AppState;

/// How often an idle stream sends a comment so proxies keep it open.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The event after which a run emits nothing more: always its last, also
/// for cancelled, rejected and interrupted runs.
const TERMINAL: [&str; 1] = ["workflow.completed"];

/// Query of `GET /api/runs/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct AfterQuery {
    /// Only events with a larger `seq`.
    after: Option<String>,
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct RecentQuery {
    /// At most this many (1-1000, default 50).
    limit: Option<String>,
    /// Only this event type.
    event_type: Option<String>,
}

fn parse_seq(name: &str, value: Option<&str>) -> Result<u64> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("`{name}` must be a non-negative integer, found {text:?}"))
        }),
    }
}

/// A run's events with `seq > after`; a failure to read them is logged and ends the
/// replay (the stream then goes on from the bus).
async fn read_log(engine: &Engine, run_id: &RunId, after: u64) -> Vec<Event> {
    match engine.run_events(run_id, after).await {
        Ok(events) => events,
        Err(err) => {
            log::error!("run_id={run_id}: cannot read the run's events: {err}");
            Vec::new()
        }
    }
}

async fn known_run(state: &AppState, id: &str) -> Result<RunId> {
    let run_id = RunId::new(id);
    match state.history().get_run(&run_id).await? {
        Some(_) => Ok(run_id),
        None => Err(ApiError::NotFound { what: "run", id: id.to_owned() }),
    }
}

/// A run's events after `after`, in order.
#[utoipa::path(get, path = "/api/runs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Run id"), AfterQuery),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn poll(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<AfterQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let after = parse_seq("after", query.after.as_deref())?;
    let run_id = known_run(&state, &id).await?;
    let events = state.engine().run_events(&run_id, after).await?;
    let last = events.last().map_or(after, |e| e.seq);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "events": events, "last_seq": last })))
}

/// Recent events across runs, newest first.
#[utoipa::path(get, path = "/api/events", tag = "events", params(RecentQuery),
    responses((status = 200, body = Object), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn recent(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<RecentQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "`limit` must be an integer 1-1000, found {text:?}"
                )));
            }
        },
    };
    let wanted = match query.event_type.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(name) => Some(EventType::parse(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`event_type` must be one of {}, found {name:?}",
                aegis_config::EVENT_TYPES.join(", ")
            ))
        })?),
    };
    let recent: Vec<Arc<Event>> = state
        .engine()
        .recent_events()
        .into_iter()
        .rev()
        .filter(|e| wanted.is_none_or(|t| e.event_type == t.as_str()))
        .take(limit)
        .collect();
    let events: Vec<&Event> = recent.iter().map(Arc::as_ref).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "events": events })))
}

fn frame(event: &Event, id: &str) -> Option<Bytes> {
    let data = serde_json::to_string(event).ok()?;
    Some(Bytes::from(format!("id: {id}\ndata: {data}\n\n")))
}

/// How many live events a stream's client may fall behind before it is sent
/// `event: lagged` and disconnected (SPEC section 8); it resumes with `Last-Event-ID`.
const MAX_BEHIND: usize = 1000;

/// How many bytes of live events a stream holds for a client that does not read,
/// whatever their number: events carry failures and patches of any size.
const MAX_BEHIND_BYTES: usize = 32 * 1024 * 1024;

/// The live events a stream took from the bus but has not yet handed to its response,
/// oldest first. The stream drains the bus at once into this queue, so a client that
/// stops reading never holds the bus's shared buffer; instead this queue is cut off
/// past [`MAX_BEHIND`] events (or [`MAX_BEHIND_BYTES`]).
#[derive(Default)]
struct Pending {
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, event: Arc<Event>) {
        let size = aegis_core::event_size(&event);
        self.bytes += size;
        self.events.push_back((event, size));
    }

    fn pop(&mut self) -> Option<Arc<Event>> {
        let (event, size) = self.events.pop_front()?;
        self.bytes -= size;
        Some(event)
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the client is too far behind to be kept; one event larger than the
    /// byte bound alone is not "behind".
    fn too_far_behind(&self) -> bool {
        self.events.len() > MAX_BEHIND || (self.bytes > MAX_BEHIND_BYTES && self.events.len() > 1)
    }
}

/// The frame that tells a client it fell too far behind: how many events it missed
/// when the stream was cut (at least; more follow while it is away) and the id to
/// resume after, which is the last event it was sent (`null`: none yet).
fn lagged_frame(missed: usize, last_event_id: Option<&str>) -> Bytes {
    let data = serde_json::json!({
        "missed": missed,
        "last_event_id": last_event_id,
        "message": format!(
            "this stream fell more than {MAX_BEHIND} events (or {} MiB of them) behind \
             and is closed; reconnect with Last-Event-ID to resume after the last event \
             received",
            MAX_BEHIND_BYTES / (1024 * 1024)
        ),
    });
    Bytes::from(format!("event: lagged\ndata: {data}\n\n"))
}

/// Sends the lagged frame once the response has room for it (after what the client
/// has not read yet), then ends the stream. The pending events were dropped before,
/// so a client that never reads again holds nothing but this frame.
async fn send_lagged(
    tx: &mpsc::Sender<Bytes>,
    missed: usize,
    last_event_id: Option<&str>,
    closed: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let frame = lagged_frame(missed, last_event_id);
    tokio::select! {
        () = closed => {}
        permit = tx.reserve() => {
            if let Ok(permit) = permit {
                permit.send(frame);
            }
        }
    }
}

/// A heartbeat, unless the response already has frames the client has not read
/// (then it is not idle, and waiting here would hold the stream up).
fn heartbeat(tx: &mpsc::Sender<Bytes>) -> bool {
    !matches!(
        tx.try_send(Bytes::from_static(b": heartbeat\n\n")),
        Err(mpsc::error::TrySendError::Closed(_))
    )
}

/// The stream's response. Its connection closes when the stream ends, so a stream
/// ended by shutdown leaves no idle keep-alive connection for the server to wait on
/// (an `EventSource` reconnects on a new connection anyway).
fn sse_response(rx: mpsc::Receiver<Bytes>) -> HttpResponse {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, actix_web::Error>(bytes), rx))
    });
    HttpResponse::Ok()
        .force_close()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// Follows one run: replays from `Last-Event-ID` (or `?after=`), then streams live,
/// until the run ends, the client goes away, it falls more than [`MAX_BEHIND`] live
/// events behind (`event: lagged`), or the server shuts down (`closed`).
async fn follow_run(
    engine: Engine,
    run_id: RunId,
    last: u64,
    tx: mpsc::Sender<Bytes>,
    closed: impl std::future::Future<Output = ()>,
) {
    let mut closed = std::pin::pin!(closed);
    // Subscribe before reading the log: anything published meanwhile is in one of them.
    let mut sub = engine.subscribe();
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.tick().await;
    // The replay comes from the log on disk at the client's pace and does not count as
    // being behind; the live events taken from the bus meanwhile do.
    let mut replay: VecDeque<Event> =
        read_log(&engine, &run_id, last).await.into_iter().filter(|e| e.seq > last).collect();
    // `queued`: the last seq taken into `replay` or `live`; `sent`: the last handed to
    // the response; `ended`: the run's last event is queued.
    let mut queued = replay.back().map_or(last, |e| e.seq);
    let mut sent = last;
    let mut ended = replay.iter().any(|e| TERMINAL.contains(&e.event_type.as_str()));
    let mut live = Pending::default();
    loop {
        if ended && replay.is_empty() && live.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            () = &mut closed => return,
            permit = tx.reserve(), if !replay.is_empty() || !live.is_empty() => {
                let Ok(permit) = permit else { return };
                if let Some(event) = replay.pop_front().map(Arc::new).or_else(|| live.pop()) {
                    sent = event.seq;
                    if let Some(bytes) = frame(&event, &event.seq.to_string()) {
                        permit.send(bytes);
                    }
                }
            }
            received = sub.recv(), if !ended => match received {
                Some(Received::Event(event)) if event.run_id == run_id.as_str() && event.seq > queued => {
                    // Events arrive in seq order; a jump means the log has what came between.
                    if event.seq == queued + 1 {
                        queued = event.seq;
                        ended |= TERMINAL.contains(&event.event_type.as_str());
                        live.push(event);
                    } else {
                        for event in read_log(&engine, &run_id, queued).await {
                            if event.seq > queued {
                                queued = event.seq;
                                ended |= TERMINAL.contains(&event.event_type.as_str());
                                live.push(Arc::new(event));
                            }
                        }
                    }
                }
                Some(Received::Lagged(_)) => {
                    for event in read_log(&engine, &run_id, queued).await {
                        if event.seq > queued {
                            queued = event.seq;
                            ended |= TERMINAL.contains(&event.event_type.as_str());
                            live.push(Arc::new(event));
                        }
                    }
                }
                Some(_) => {}
                None => ended = true,
            },
            _ = ticker.tick() => {
                if !heartbeat(&tx) {
                    return;
                }
            }
        }
        if live.too_far_behind() {
            let missed = replay.len() + live.len();
            // Free what the client is behind on before waiting for it to read again.
            drop((replay, live, sub));
            let last_id = (sent > 0).then(|| sent.to_string());
            send_lagged(&tx, missed, last_id.as_deref(), closed.as_mut()).await;
            return;
        }
    }
}

/// A run's events as server-sent events (`id:` is the event's `seq`). Honours
/// `Last-Event-ID`; sends a heartbeat comment every 5 s; ends after the run's last event.
#[utoipa::path(get, path = "/api/runs/{id}/events/stream", tag = "events",
    params(("id" = String, Path, description = "Run id"), AfterQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq")),
    responses((status = 200, content_type = "text/event-stream"), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn run_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<AfterQuery>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let header = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
    let last = match header {
        Some(value) => parse_seq("Last-Event-ID", Some(value))?,
        None => parse_seq("after", query.after.as_deref())?,
    };
    let run_id = known_run(&state, &id).await?;
    let (tx, rx) = mpsc::channel(64);
    actix_web::rt::spawn(follow_run(
        state.engine().clone(),
        run_id,
        last,
        tx,
        state.streams_closed(),
    ));
    Ok(sse_response(rx))
}

/// The global stream's replay for a resuming client: the recent events after its
/// position, and the last seq of each run among the recent events.
type Replay = (VecDeque<Arc<Event>>, HashMap<String, u64>);

/// Where a client of the global stream resumes: after the event `run_id/seq`.
fn parse_global_id(value: &str) -> Result<(String, u64)> {
    value
        .rsplit_once('/')
        .and_then(|(run, seq)| Some((run.to_owned(), seq.trim().parse::<u64>().ok()?)))
        .filter(|(run, _)| !run.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`Last-Event-ID` of the events stream is `run_id/seq`, found {value:?}"
            ))
        })
}

/// The global stream's replay for a client resuming after `after` (`run_id/seq`):
/// the recent events published after it, and the last seq replayed per run (to skip
/// what the bus delivers again). Empty when `after` is no longer among the recent
/// events; the client is then told so in a comment and goes on live.
fn global_replay(recent: Vec<Arc<Event>>, after: &(String, u64)) -> Option<Replay> {
    let at = recent.iter().position(|e| e.run_id == after.0 && e.seq == after.1)?;
    let mut seen: HashMap<String, u64> = HashMap::new();
    for event in &recent {
        let top = seen.entry(event.run_id.clone()).or_insert(0);
        *top = (*top).max(event.seq);
    }
    Some((recent.into_iter().skip(at + 1).collect(), seen))
}

/// Follows every event across runs until the client goes away, falls more than
/// [`MAX_BEHIND`] events behind (`event: lagged`), or the server shuts down.
async fn follow_all(
    mut sub: aegis_core::Subscription,
    resume: Option<Replay>,
    resume_missing: Option<String>,
    tx: mpsc::Sender<Bytes>,
    closed: impl std::future::Future<Output = ()>,
) {
    let mut closed = std::pin::pin!(closed);
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.tick().await;
    if let Some(id) = resume_missing {
        let note = format!(": cannot resume after {id}: no longer among the recent events\n\n");
        if tx.send(Bytes::from(note)).await.is_err() {
            return;
        }
    }
    let (mut replay, seen) = resume.unwrap_or_default();
    let mut live = Pending::default();
    let mut sent: Option<String> = None;
    loop {
        tokio::select! {
            biased;
            () = &mut closed => return,
            permit = tx.reserve(), if !replay.is_empty() || !live.is_empty() => {
                let Ok(permit) = permit else { return };
                if let Some(event) = replay.pop_front().or_else(|| live.pop()) {
                    let id = format!("{}/{}", event.run_id, event.seq);
                    if let Some(bytes) = frame(&event, &id) {
                        permit.send(bytes);
                    }
                    sent = Some(id);
                }
            }
            received = sub.recv() => match received {
                Some(Received::Event(event)) => {
                    // Published while the replay was taken: already in it.
                    let replayed = seen.get(&event.run_id).is_some_and(|&top| event.seq <= top);
                    if !replayed {
                        live.push(event);
                    }
                }
                Some(Received::Lagged(missed)) => {
                    // The bus itself dropped events for this stream (not a slow
                    // client: the stream drains the bus at once). The client resumes
                    // with Last-Event-ID from the recent events, like any lagged one.
                    let missed = usize::try_from(missed).unwrap_or(usize::MAX);
                    drop((replay, live, sub));
                    send_lagged(&tx, missed, sent.as_deref(), closed.as_mut()).await;
                    return;
                }
                Some(_) => {}
                None => return,
            },
            _ = ticker.tick() => {
                if !heartbeat(&tx) {
                    return;
                }
            }
        }
        if live.too_far_behind() {
            let missed = replay.len() + live.len();
            drop((replay, live, sub));
            send_lagged(&tx, missed, sent.as_deref(), closed.as_mut()).await;
            return;
        }
    }
}

/// Every event as it happens, across runs (`id:` is `run_id/seq`). With
/// `Last-Event-ID` it first replays the recent events after that one.
#[utoipa::path(get, path = "/api/events/stream", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this `run_id/seq`")),
    responses((status = 200, content_type = "text/event-stream"), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn global_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let after = match req.headers().get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(value) if !value.trim().is_empty() => Some(parse_global_id(value.trim())?),
        _ => None,
    };
    // Subscribe before taking the recent events: anything published meanwhile is in
    // one of them, and `seen` drops the repeats.
    let sub = state.engine().subscribe();
    let (resume, missing) = match after {
        None => (None, None),
        Some(after) => match global_replay(state.engine().recent_events(), &after) {
            Some(replay) => (Some(replay), None),
            None => (None, Some(format!("{}/{}", after.0, after.1))),
        },
    };
    let (tx, rx) = mpsc::channel(64);
    actix_web::rt::spawn(follow_all(sub, resume, missing, tx, state.streams_closed()));
    Ok(sse_response(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    fn event(run_id: &str, seq: u64, data: Value) -> Arc<Event> {
        Arc::new(Event {
            schema_version: "1.0".to_owned(),
            id: format!("{run_id}-{seq}"),
            seq,
            event_type: "step.completed".to_owned(),
            time: jiff::Timestamp::UNIX_EPOCH,
            run_id: run_id.to_owned(),
            workflow: "ci".to_owned(),
            request_id: None,
            data,
        })
    }

    #[test]
    fn a_client_is_too_far_behind_past_1000_events_or_32_mib() {
        let mut pending = Pending::default();
        for seq in 1..=MAX_BEHIND as u64 {
            pending.push(event("r", seq, Value::Null));
        }
        assert!(!pending.too_far_behind());
        pending.push(event("r", 1001, Value::Null));
        assert!(pending.too_far_behind());
        assert_eq!(pending.pop().map(|e| e.seq), Some(1));
        assert!(!pending.too_far_behind());

        // One event larger than the byte bound alone is not behind; two are.
        let big = Value::String("x".repeat(MAX_BEHIND_BYTES));
        let mut pending = Pending::default();
        pending.push(event("r", 1, big.clone()));
        assert!(!pending.too_far_behind());
        pending.push(event("r", 2, Value::Null));
        assert!(pending.too_far_behind());
        while pending.pop().is_some() {}
        assert_eq!((pending.len(), pending.bytes), (0, 0));
    }

    #[test]
    fn the_lagged_frame_names_what_was_missed_and_where_to_resume() {
        let frame = lagged_frame(1234, Some("56"));
        let text = String::from_utf8_lossy(&frame);
        let data = text
            .strip_prefix("event: lagged\ndata: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("not a lagged frame: {text:?}"));
        let data: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        assert_eq!(data["missed"], 1234);
        assert_eq!(data["last_event_id"], "56");
        assert!(!text.contains("\nid:"), "a lagged frame must not move Last-Event-ID");
        let none = lagged_frame(3, None);
        assert!(String::from_utf8_lossy(&none).contains("\"last_event_id\":null"));
    }

    #[test]
    fn the_global_stream_resumes_after_a_recent_event_or_says_it_cannot() {
        assert_eq!(parse_global_id("run-1/7").ok(), Some(("run-1".to_owned(), 7)));
        for bad in ["7", "/7", "run-1/", "run-1/x"] {
            assert!(parse_global_id(bad).is_err(), "{bad:?}");
        }
        let recent = vec![
            event("a", 1, Value::Null),
            event("b", 1, Value::Null),
            event("a", 2, Value::Null),
        ];
        let (replay, seen) =
            global_replay(recent.clone(), &("b".to_owned(), 1)).unwrap_or_default();
        assert_eq!(
            replay.iter().map(|e| (e.run_id.as_str(), e.seq)).collect::<Vec<_>>(),
            [("a", 2)]
        );
        assert_eq!((seen.get("a"), seen.get("b")), (Some(&2), Some(&1)));
        assert!(global_replay(recent, &("c".to_owned(), 1)).is_none());
    }
}
