//! Serving: open the history store, build the engine, recover unfinished runs, bind
//! (guarded), serve until SIGTERM/SIGINT, then shut down in order.
//!
//! Runs execute on their own multi-threaded runtime rather than on the HTTP workers, so
//! stopping the HTTP server (which lets in-flight requests finish) does not abandon
//! them: shutdown then gives them `server.shutdown_grace` to finish and records the rest
//! `interrupted`, and dropping the history store commits every queued write.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpServer, web};
use aegis_api::AppState;
use aegis_core::Engine;
use aegis_history::{HistoryBackend, HistoryOptions, SqliteHistory};
use anyhow::Context;

use crate::Flags;
use crate::{logging, settings};

pub(crate) fn run(flags: &Flags) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (filter, format) = settings::logging()?;
    let request_log = logging::init(&filter, format);
    let settings = settings::resolve(flags)?;
    let config = Arc::new(settings.config);
    aegis_auth::check_bind(&settings.host, config.server(), config.auth())?;

    let engine_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("aegis-engine")
        .enable_all()
        .build()
        .context("cannot start the engine runtime")?;
    let webhook_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("aegis-webhooks")
        .on_thread_start(background_priority)
        .enable_all()
        .build()
        .context("cannot start the webhook runtime")?;
    let (engine, history) = engine_runtime
        .block_on(start_engine(Arc::clone(&config), webhook_runtime.handle().clone()))?;
    let mut state = AppState::new(engine.clone());
    if let Some(sink) = request_log {
        state = state.with_request_log(Arc::new(sink));
    }
    let state = web::Data::new(state);

    let grace = config.server().shutdown_grace();
    let (host, port) = (settings.host.clone(), settings.port);
    let base_path = config.server().base_path().to_owned();
    let config_path = config.source().map(std::path::Path::to_path_buf).unwrap_or_default();
    let engine_handle = engine_runtime.handle().clone();
    let stopping_engine = engine.clone();
    let served = actix_web::rt::System::new().block_on(async move {
        let app_state = state.clone();
        // Signals are handled here rather than by actix, so that shutdown can close
        // the event streams first and stop the engine alongside the HTTP server.
        let server = HttpServer::new(move || aegis_api::app(app_state.clone()))
            .bind((host.as_str(), port))
            .with_context(|| format!("cannot listen on {host}:{port}"))?
            .shutdown_timeout(grace.as_secs().max(1))
            .disable_signals()
            .run();
        let handle = server.handle();
        log::info!(
            host = host.as_str(), port = port, startup_ms = started.elapsed().as_millis() as u64;
            "aegis-server {} listening on http://{host}:{port}{base_path}/ (config {})",
            env!("CARGO_PKG_VERSION"), config_path.display()
        );
        let mut serving = actix_web::rt::spawn(server);
        tokio::select! {
            result = &mut serving => {
                // The server stopped on its own: nothing to wait for but the engine.
                let served = result.context("the HTTP server task failed")?.context("the HTTP server failed");
                let stop = engine_handle.spawn(async move { stopping_engine.shutdown(grace).await });
                return served.map(|()| stop);
            }
            signal = shutdown_signal() => {
                log::info!("{signal}: closing event streams, stopping; waiting up to {}s for running runs", grace.as_secs_f64());
            }
        }
        // SSE streams end now; the HTTP server lets in-flight requests finish while the
        // engine gives running runs the grace period, both at once, so the whole
        // shutdown stays within `shutdown_grace` (plus the time to record the rest).
        state.close_streams();
        let stop = engine_handle.spawn(async move { stopping_engine.shutdown(grace).await });
        handle.stop(true).await;
        serving.await.context("the HTTP server task failed")?.context("the HTTP server failed")?;
        Ok::<_, anyhow::Error>(stop)
    });

    let report = match served {
        Ok(stop) => engine_runtime
            .block_on(stop)
            .unwrap_or_else(|err| Err(aegis_core::Error::RunAborted(format!("shutdown: {err}")))),
        Err(err) => {
            // Bind failures and the like: still record running runs before exiting.
            let _ = engine_runtime.block_on(engine.shutdown(grace));
            return Err(err);
        }
    };
    match &report {
        Ok(report) => log::info!(
            finished = report.finished, stopped = report.stopped.len();
            "runs: {} finished during shutdown, {} stopped (running ones recorded interrupted, queued ones kept for the next start)", report.finished, report.stopped.len()
        ),
        Err(err) => log::error!("could not record running runs as interrupted: {err}"),
    }
    drop(engine);
    // Deliveries still in flight end here (their attempts are made again after
    // the next start), letting go of the store.
    webhook_runtime.shutdown_timeout(WEBHOOK_STOP);
    // Dropping the last handle of the store commits every queued write before exit.
    drop(history);
    engine_runtime.shutdown_timeout(grace);
    report.context("shutdown failed")?;
    log::info!("aegis-server stopped");
    Ok(ExitCode::SUCCESS)
}

/// How long deliveries in flight at shutdown may take to end.
const WEBHOOK_STOP: std::time::Duration = std::time::Duration::from_millis(500);

/// The nice value of the webhook runtime's threads: when runs and
/// deliveries both want the CPU, the scheduler gives nearly all of it to
/// runs (SPEC section 6: delivery never slows a run), and an idle machine
/// delivers at full speed all the same. Nice rather than `SCHED_IDLE`: an
/// idle-class thread preempted while it holds a lock the engine shares (a
/// runtime's queue) may wait for an idle CPU, which a busy server never has;
/// a nice thread still gets its slice (and measured no slower).
const WEBHOOK_NICE: i32 = 19;

/// Lowers the calling thread's scheduling priority to [`WEBHOOK_NICE`] (on
/// Linux the nice value is a thread's own; elsewhere this does nothing).
fn background_priority() {
    #[cfg(target_os = "linux")]
    if let Err(err) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), WEBHOOK_NICE)
    {
        log::warn!("webhook deliveries run at normal priority: cannot lower it: {err}");
    }
}

async fn start_engine(
    config: Arc<aegis_config::Config>,
    webhook_runtime: tokio::runtime::Handle,
) -> anyhow::Result<(Engine, Arc<dyn HistoryBackend>)> {
    let history_config = config.history();
    let options = HistoryOptions::with_max_records(history_config.max_records());
    let path = history_config.db_path();
    let history: Arc<dyn HistoryBackend> = if path.as_os_str() == ":memory:" {
        Arc::new(SqliteHistory::open_in_memory(options).await?)
    } else {
        Arc::new(
            SqliteHistory::open(path, options)
                .await
                .with_context(|| "cannot open the history store")?,
        )
    };
    let engine =
        Engine::builder(config, Arc::clone(&history)).webhook_runtime(webhook_runtime).build()?;
    let recovery = engine.recover().await.context("cannot recover unfinished runs")?;
    if !(recovery.interrupted.is_empty()
        && recovery.requeued.is_empty()
        && recovery.waiting.is_empty())
    {
        log::info!(
            interrupted = recovery.interrupted.len(), requeued = recovery.requeued.len(), waiting = recovery.waiting.len();
            "recovered unfinished runs: {} interrupted, {} queued again, {} waiting at a gate",
            recovery.interrupted.len(), recovery.requeued.len(), recovery.waiting.len()
        );
    }
    Ok((engine, history))
}

/// Waits for SIGTERM or SIGINT and names the one that came.
#[cfg(unix)]
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            log::error!("cannot listen for SIGTERM/SIGINT; stop the server with SIGKILL");
            std::future::pending().await
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn shutdown_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
