//! `aegis-cli run NAME`: runs a workflow in-process, or on a server with `--server`,
//! with live step progress.

use std::sync::Arc;
use std::time::Duration;

use aegis_config::Config;
use aegis_core::{Engine, Event, Received, RunOptions, RunSummary};
use aegis_history::{HistoryBackend, HistoryOptions, RunId, RunStatus, SqliteHistory, Trigger};
use anyhow::Context as _;
use clap::Args;

use super::{Context, UsageError, print_json, runtime};
use crate::Outcome;
use crate::client::{Client, Flow, Resume};
use crate::style::Styles;
use crate::wire::{Accepted, RunWithSteps};

/// Event types after which a run emits nothing more.
pub(crate) const TERMINAL_EVENTS: [&str; 3] =
    ["workflow.completed", "run.cancelled", "run.interrupted"];

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The workflow to run (a key under `workflows:`).
    #[arg(value_name = "NAME")]
    name: String,
    /// With --server: follow the run's events until it ends or waits at a gate (without
    /// it, print the run id and exit). In-process runs always wait.
    #[arg(long)]
    wait: bool,
    /// Print the finished run as JSON instead of a line per step.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: RunArgs, ctx: &Context) -> anyhow::Result<Outcome> {
    if let Some(client) = ctx.client()? {
        return runtime()?.block_on(remote(&client, &args, ctx.styles));
    }
    let config = ctx.load_config()?;
    if !config.workflows().contains_key(&args.name) {
        let known: Vec<&str> = config.workflows().keys().map(String::as_str).collect();
        return Err(UsageError(format!(
            "unknown workflow {:?} (configured: {})",
            args.name,
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        ))
        .into());
    }
    let styles = ctx.styles;
    let (summary, stored) = runtime()?.block_on(execute(config, &args, styles))?;
    if let Some(stored) = stored {
        // The run as `GET /api/runs/{id}` shows it: one shape whether the
        // run ran here or on a server.
        print_json(&stored).context("cannot render the run as JSON")?;
    } else {
        let line = summary_line(
            &summary.run_id,
            summary.status,
            summary.duration_ms,
            summary.error.as_deref(),
            summary.waiting_at.as_deref(),
            styles,
        );
        println!("{line}");
    }
    Ok(outcome(summary.status))
}

/// Exit 0 when the run succeeded or waits at a gate, 1 when it failed, was rejected,
/// cancelled or interrupted.
fn outcome(status: RunStatus) -> Outcome {
    match status {
        RunStatus::Succeeded | RunStatus::Waiting => Outcome::Success,
        _ => Outcome::Failure,
    }
}

/// Opens the configured history store (SQLite, or in memory for `:memory:`).
pub(crate) async fn open_history(config: &Config) -> anyhow::Result<Arc<dyn HistoryBackend>> {
    let options = HistoryOptions::with_max_records(config.history().max_records());
    let path = config.history().db_path();
    let history = if path.as_os_str() == ":memory:" {
        SqliteHistory::open_in_memory(options).await
    } else {
        SqliteHistory::open(path, options).await
    }
    .with_context(|| format!("cannot open the history store at {}", path.display()))?;
    Ok(Arc::new(history))
}

/// Runs the workflow here; with `--json`, also reads the finished run back
/// from history in the API's shape.
async fn execute(
    config: Config,
    args: &RunArgs,
    styles: Styles,
) -> anyhow::Result<(Arc<RunSummary>, Option<RunWithSteps>)> {
    let history = open_history(&config).await?;
    let engine = Engine::builder(config, history).build().context("cannot start the engine")?;
    let mut events = engine.subscribe();
    let handle = engine
        .submit(&args.name, RunOptions::new(Trigger::Cli))
        .await
        .with_context(|| format!("cannot start workflow {}", args.name))?;
    let run_id = handle.id().to_string();
    if !args.json {
        println!("{} {} ({run_id})", styles.bold("running"), args.name);
    }
    // Print a line per step event until the run ends or pauses; the bus gets
    // every event before the run's summary is ready.
    while let Some(received) = events.recv().await {
        match received {
            Received::Event(event) if event.run_id == run_id => {
                if !args.json {
                    print_event(&event, styles);
                }
                if matches!(event.event_type.as_str(), "workflow.completed" | "gate.waiting") {
                    break;
                }
            }
            Received::Event(_) => {}
            Received::Lagged(missed) => eprintln!("warning: {missed} progress events were missed"),
            _ => {}
        }
    }
    let summary = handle.wait().await?;
    if !args.json {
        return Ok((summary, None));
    }
    let run_id = RunId::new(summary.run_id.clone());
    let detail = engine
        .history()
        .get_run(&run_id)
        .await
        .with_context(|| format!("cannot read run {run_id} back from history"))?
        .with_context(|| format!("run {run_id} is missing from history"))?;
    Ok((summary, Some(RunWithSteps::from(&detail))))
}

fn print_event(event: &Event, styles: Styles) {
    if let Some(line) = event_line(event, styles) {
        println!("{line}");
    }
}

/// The progress line of a step event (`  ✓ fetch (12 ms)`), or `None` for events that
/// have none. In-process and remote runs print the same lines.
pub(crate) fn event_line(event: &Event, styles: Styles) -> Option<String> {
    let data = &event.data;
    let text = |key: &str| data.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let number = |key: &str| data.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let line = match event.event_type.as_str() {
        "step.completed" => {
            let id = text("step_id");
            let ms = number("duration_ms");
            if data.get("success").and_then(serde_json::Value::as_bool).unwrap_or(false) {
                format!("  {} {id} ({ms} ms)", styles.green("✓"))
            } else {
                format!("  {} {id} ({ms} ms): {}", styles.red("✗"), text("error"))
            }
        }
        "step.skipped" => format!(
            "  {} {} skipped (condition {})",
            styles.yellow("-"),
            text("step_id"),
            text("condition")
        ),
        "step.retrying" => format!(
            "  {} {} attempt {} failed: {}; retrying in {} ms",
            styles.yellow("↻"),
            text("step_id"),
            number("attempt"),
            text("error"),
            number("delay_ms")
        ),
        "failure.detected" => {
            format!("    {} test failures in {}", number("count"), text("step_id"))
        }
        "gate.waiting" => {
            format!("  {} {} waits for a decision", styles.yellow("⏸"), text("gate_id"))
        }
        _ => return None,
    };
    Some(line)
}

/// The last line of a run: `run ID succeeded in 12 ms`, `run ID failed in 5 ms: why`,
/// `run ID waiting at gate review`.
pub(crate) fn summary_line(
    run_id: &str,
    status: RunStatus,
    duration_ms: u64,
    error: Option<&str>,
    waiting_at: Option<&str>,
    styles: Styles,
) -> String {
    let painted = styles.run_status(status.as_str(), status.as_str());
    match (waiting_at, error) {
        (Some(gate), _) => format!("run {run_id} {painted} at gate {gate}"),
        (None, Some(error)) if status != RunStatus::Succeeded => {
            format!("run {run_id} {painted} in {duration_ms} ms: {error}")
        }
        _ => format!("run {run_id} {painted} in {duration_ms} ms"),
    }
}

/// Starts the run on the server; with `--wait`, follows its event stream and reports
/// how it ended.
async fn remote(client: &Client, args: &RunArgs, styles: Styles) -> anyhow::Result<Outcome> {
    let accepted: Accepted =
        client.post_json(client.url(&["api", "workflows", &args.name, "run"], &[])).await?;
    let run_id = accepted.run_id.clone();
    if !args.wait {
        if args.json {
            print_json(&accepted)?;
        } else {
            println!("{run_id}");
        }
        return Ok(Outcome::Success);
    }
    if !args.json {
        println!("{} {} ({run_id})", styles.bold("running"), args.name);
    }
    let stream = client.url(&["api", "runs", &run_id, "events", "stream"], &[]);
    let mut last_seq = 0u64;
    let mut paused = false;
    client
        .follow(stream, Resume::LastEventId, |frame| {
            let event: Event = match serde_json::from_str(&frame.data) {
                Ok(event) => event,
                Err(err) => {
                    eprintln!("warning: skipping an event that does not parse: {err}");
                    return Ok(Flow::Continue);
                }
            };
            // The server never repeats an event after a resume; this guards anyway.
            if event.seq <= last_seq {
                return Ok(Flow::Continue);
            }
            last_seq = event.seq;
            if !args.json {
                print_event(&event, styles);
            }
            if event.event_type == "gate.waiting" {
                paused = true;
                return Ok(Flow::Stop);
            }
            Ok(if TERMINAL_EVENTS.contains(&event.event_type.as_str()) {
                Flow::Stop
            } else {
                Flow::Continue
            })
        })
        .await?;
    let (body, run) = final_run(client, &run_id, paused).await?;
    let status = run.run.status.parse::<RunStatus>().with_context(|| {
        format!("the server reported run {run_id} with an unknown status {:?}", run.run.status)
    })?;
    if args.json {
        print_json(&body)?;
    } else {
        let waiting_at = run.pending_gates.first().map(|g| g.gate.as_str());
        let line = summary_line(
            &run_id,
            status,
            run.run.duration_ms.unwrap_or(0),
            run.run.error.as_deref(),
            waiting_at.filter(|_| status == RunStatus::Waiting),
            styles,
        );
        println!("{line}");
    }
    Ok(outcome(status))
}

/// Fetches the run once its stream said it ended (or paused). The history store may
/// lag the event by a moment, so an active status is asked again for a few seconds.
async fn final_run(
    client: &Client,
    run_id: &str,
    paused: bool,
) -> anyhow::Result<(serde_json::Value, RunWithSteps)> {
    let url = client.url(&["api", "runs", run_id], &[]);
    let mut tries = 0;
    loop {
        let body: serde_json::Value = client.get_json(url.clone()).await?;
        let run: RunWithSteps = serde_json::from_value(body.clone())
            .with_context(|| format!("unexpected answer from {url}"))?;
        let settled = match run.run.status.as_str() {
            "queued" | "running" => false,
            "waiting" => paused,
            _ => true,
        };
        tries += 1;
        if settled || tries >= 50 {
            return Ok((body, run));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use aegis_config::LoadOptions;
    use aegis_core::testing::{MockService, Route};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_run_is_recorded_in_the_sqlite_history_with_trigger_cli() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let svc = MockService::start().await.expect("mock");
            svc.route("GET", "/api/routes", Route::ok(json!(["/a"])));
            let dir = tempfile::tempdir().expect("tempdir");
            let yaml = format!(
                "data_dir: ./data\nhistory_db_path: ./h.db\nservices:\n  s: {{ url: '{}' }}\nworkflows:\n  w:\n    steps:\n      - {{ type: discover, service: s }}\n",
                svc.url()
            );
            std::fs::write(dir.path().join(".aegis.yaml"), yaml).expect("write");
            let config = LoadOptions::new().cwd(dir.path()).load().expect("config");
            let args = RunArgs { name: "w".into(), wait: false, json: true };
            let (summary, stored) = execute(config, &args, Styles::detect()).await.expect("run");
            assert_eq!(summary.status, RunStatus::Succeeded);
            // `--json` prints the run as the API shows it, read back from history.
            let stored = stored.expect("the run in the API's shape");
            assert_eq!(stored.run.id, summary.run_id);
            assert_eq!(stored.run.status, "succeeded");
            assert_eq!(stored.steps.len(), 1);
            let history = SqliteHistory::open(&dir.path().join("h.db"), HistoryOptions::default())
                .await
                .expect("history");
            let runs = history.recent(10).await.expect("recent");
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].trigger, Trigger::Cli);
            assert_eq!(runs[0].status, RunStatus::Succeeded);
        });
    }
}
