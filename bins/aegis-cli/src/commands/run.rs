//! `aegis-cli run NAME`: runs a workflow in-process with live step progress.

use std::path::PathBuf;
use std::sync::Arc;

use aegis_config::{Config, LoadOptions};
use aegis_core::{Engine, Event, Received, RunOptions, RunSummary};
use aegis_history::{HistoryBackend, HistoryOptions, RunStatus, SqliteHistory, Trigger};
use anyhow::Context;
use clap::Args;

use super::UsageError;
use crate::Outcome;
use crate::style::Styles;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The workflow to run (a key under `workflows:`).
    #[arg(value_name = "NAME")]
    name: String,
    /// Print the finished run as JSON instead of a line per step.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(
    args: RunArgs,
    config: Option<PathBuf>,
    styles: Styles,
) -> anyhow::Result<Outcome> {
    let config = LoadOptions::new().path(config).load().context("cannot load the configuration")?;
    if !config.workflows().contains_key(&args.name) {
        let known: Vec<&str> = config.workflows().keys().map(String::as_str).collect();
        return Err(UsageError(format!(
            "unknown workflow {:?} (configured: {})",
            args.name,
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        ))
        .into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(execute(config, &args, styles))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&*summary).context("cannot render the run as JSON")?
        );
    } else {
        print_summary(&summary, styles);
    }
    Ok(match summary.status {
        RunStatus::Succeeded | RunStatus::Waiting => Outcome::Success,
        _ => Outcome::Failure,
    })
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

async fn execute(
    config: Config,
    args: &RunArgs,
    styles: Styles,
) -> anyhow::Result<Arc<RunSummary>> {
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
    Ok(handle.wait().await?)
}

fn print_event(event: &Event, styles: Styles) {
    let data = &event.data;
    let text = |key: &str| data.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let number = |key: &str| data.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    match event.event_type.as_str() {
        "step.completed" => {
            let id = text("step_id");
            let ms = number("duration_ms");
            if data.get("success").and_then(serde_json::Value::as_bool).unwrap_or(false) {
                println!("  {} {id} ({ms} ms)", styles.green("✓"));
            } else {
                println!("  {} {id} ({ms} ms): {}", styles.red("✗"), text("error"));
            }
        }
        "step.skipped" => {
            println!(
                "  {} {} skipped (condition {})",
                styles.yellow("-"),
                text("step_id"),
                text("condition")
            );
        }
        "step.retrying" => println!(
            "  {} {} attempt {} failed: {}; retrying in {} ms",
            styles.yellow("↻"),
            text("step_id"),
            number("attempt"),
            text("error"),
            number("delay_ms")
        ),
        "failure.detected" => {
            println!("    {} test failures in {}", number("count"), text("step_id"));
        }
        "gate.waiting" => {
            println!("  {} {} waits for a decision", styles.yellow("⏸"), text("gate_id"))
        }
        _ => {}
    }
}

fn print_summary(summary: &RunSummary, styles: Styles) {
    let status = summary.status.as_str();
    let status = match summary.status {
        RunStatus::Succeeded => styles.green(status),
        RunStatus::Waiting => styles.yellow(status),
        _ => styles.red(status),
    };
    match (&summary.waiting_at, &summary.error) {
        (Some(gate), _) => println!("run {} {status} at gate {gate}", summary.run_id),
        (None, Some(error)) if summary.status != RunStatus::Succeeded => {
            println!("run {} {status} in {} ms: {error}", summary.run_id, summary.duration_ms);
        }
        _ => println!("run {} {status} in {} ms", summary.run_id, summary.duration_ms),
    }
}

#[cfg(test)]
mod tests {
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
            let args = RunArgs { name: "w".into(), json: true };
            let summary = execute(config, &args, Styles::detect()).await.expect("run");
            assert_eq!(summary.status, RunStatus::Succeeded);
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
