//! Events: polling a run's log, recent events, and server-sent event streams.
//!
//! A run's stream replays the run's log (`Engine::run_events`, which always holds every
//! event emitted so far) from the client's position, then follows the in-process bus.
//! The subscription is taken before the log is read and events are sent in `seq` order
//! only, so resuming with `Last-Event-ID` has no gap and no repeat; when the subscriber
//! lags, the missed events are read back from the log.

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

/// The frames of `events` past `last`, moving `last` on; `true` once the run's last
/// event is among them.
fn frames_after(events: Vec<Event>, last: &mut u64) -> (Vec<Bytes>, bool) {
    let mut frames = Vec::new();
    let mut done = false;
    for event in events {
        if event.seq <= *last {
            continue;
        }
        *last = event.seq;
        done |= TERMINAL.contains(&event.event_type.as_str());
        frames.extend(frame(&event, &event.seq.to_string()));
    }
    (frames, done)
}

/// Follows one run: replays from `Last-Event-ID` (or `?after=`), then streams live,
/// until the run ends, the client goes away or the server shuts down (`closed`).
async fn follow_run(
    engine: Engine,
    run_id: RunId,
    mut last: u64,
    tx: mpsc::Sender<Bytes>,
    closed: impl std::future::Future<Output = ()>,
) {
    let mut closed = std::pin::pin!(closed);
    // Subscribe before reading the log: anything published meanwhile is in one of them.
    let mut sub = engine.subscribe();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let backlog = read_log(&engine, &run_id, last).await;
    let (frames, mut done) = frames_after(backlog, &mut last);
    for bytes in frames {
        if tx.send(bytes).await.is_err() {
            return;
        }
    }
    while !done {
        tokio::select! {
            () = &mut closed => return,
            received = sub.recv() => match received {
                Some(Received::Event(event)) if event.run_id == run_id.as_str() && event.seq > last => {
                    // Events arrive in seq order; a jump means the log has what came between.
                    let events = if event.seq == last + 1 { vec![(*event).clone()] } else { read_log(&engine, &run_id, last).await };
                    let (frames, finished) = frames_after(events, &mut last);
                    done = finished;
                    for bytes in frames {
                        if tx.send(bytes).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Received::Lagged(_)) => {
                    let (frames, finished) = frames_after(read_log(&engine, &run_id, last).await, &mut last);
                    done = finished;
                    for bytes in frames {
                        if tx.send(bytes).await.is_err() {
                            return;
                        }
                    }
                }
                Some(_) => {}
                None => return,
            },
            _ = heartbeat.tick() => {
                if tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
            }
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

/// Every event as it happens, across runs (`id:` is `run_id/seq`).
#[utoipa::path(get, path = "/api/events/stream", tag = "events",
    responses((status = 200, content_type = "text/event-stream")))]
pub(crate) async fn global_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    require(&req, &state, Access::Read)?;
    let mut sub = state.engine().subscribe();
    let (tx, rx) = mpsc::channel(64);
    let closed = state.streams_closed();
    actix_web::rt::spawn(async move {
        let mut closed = std::pin::pin!(closed);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            let bytes = tokio::select! {
                () = &mut closed => return,
                received = sub.recv() => match received {
                    Some(Received::Event(event)) => frame(&event, &format!("{}/{}", event.run_id, event.seq)),
                    Some(Received::Lagged(missed)) => Some(Bytes::from(format!(": missed {missed} events\n\n"))),
                    Some(_) => None,
                    None => return,
                },
                _ = heartbeat.tick() => Some(Bytes::from_static(b": heartbeat\n\n")),
            };
            if let Some(bytes) = bytes
                && tx.send(bytes).await.is_err()
            {
                return;
            }
        }
    });
    Ok(sse_response(rx))
}
