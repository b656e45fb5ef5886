//! `aegis-cli runs show ID`: one run with its steps, attempts and gates, from a server or
//! the local history store.

use aegis_history::{HistoryBackend, RunId};
use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::history::{open_local, why_empty};
use super::{Context, print_json, runtime};
use crate::Outcome;
use crate::style::Styles;
use crate::wire::{RunWithSteps, short_duration, short_time};

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// Show one run with its steps, attempts and gates (exit 1 when there is no such run).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The run id.
    #[arg(value_name = "ID")]
    id: String,
    /// Print the run as JSON (the shape of `GET /api/runs/{id}`).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: RunsCommand, ctx: &Context) -> anyhow::Result<Outcome> {
    let RunsCommand::Show(args) = cmd;
    let (json, run) = match ctx.client()? {
        Some(client) => {
            let url = client.url(&["api", "runs", &args.id], &[]);
            let body: serde_json::Value = runtime()?.block_on(client.get_json(url.clone()))?;
            let run: RunWithSteps = serde_json::from_value(body.clone())
                .with_context(|| format!("unexpected answer from {url}"))?;
            (body, run)
        }
        None => {
            let config = ctx.load_config()?;
            let detail = runtime()?.block_on(async {
                match open_local(&config).await? {
                    Some(history) => history
                        .get_run(&RunId::new(args.id.as_str()))
                        .await
                        .context("cannot read the history store"),
                    None => Ok(None),
                }
            })?;
            let Some(detail) = detail else {
                let path = config.history().db_path().display().to_string();
                let why = match std::path::Path::new(&path).exists() {
                    true => format!("the history store at {path} has no such run"),
                    false => why_empty(&config),
                };
                anyhow::bail!("run `{}` not found: {why}", args.id);
            };
            let run = RunWithSteps::from(&detail);
            (serde_json::to_value(&run).context("cannot render the run as JSON")?, run)
        }
    };
    if args.json {
        print_json(&json)?;
    } else {
        for line in describe(&run, ctx.styles) {
            println!("{line}");
        }
    }
    Ok(Outcome::Success)
}

/// The run as lines of text: its fields, then a line per step with its attempts when
/// there were several, then gate decisions and gates waiting.
fn describe(detail: &RunWithSteps, styles: Styles) -> Vec<String> {
    let run = &detail.run;
    let mut lines = vec![format!("run {}", styles.bold(&run.id))];
    let mut field = |name: &str, value: String| lines.push(format!("  {name:<10} {value}"));
    field("workflow", run.workflow.clone());
    field("status", styles.run_status(&run.status, &run.status));
    field("trigger", run.trigger.clone());
    field("created", short_time(&run.created_at));
    if let Some(t) = &run.started_at {
        field("started", short_time(t));
    }
    if let Some(t) = &run.completed_at {
        field("completed", short_time(t));
    }
    if let Some(ms) = run.duration_ms {
        field("duration", short_duration(ms));
    }
    if let Some(error) = &run.error {
        field("error", error.clone());
    }
    if let Some(id) = &run.request_id {
        field("request", id.clone());
    }
    if detail.steps.is_empty() {
        lines.push("no steps recorded".to_owned());
    } else {
        lines.push("steps".to_owned());
    }
    for step in &detail.steps {
        let (mark, status) = match step.status.as_str() {
            "succeeded" => (styles.green("✓"), None),
            "skipped" => (styles.yellow("-"), Some("skipped".to_owned())),
            "running" => (styles.yellow("…"), Some("running".to_owned())),
            other => (styles.red("✗"), Some(other.to_owned())),
        };
        let mut line = format!("  {mark} {} ({})", step.id, step.step_type);
        if step.execution > 0 {
            line.push_str(&format!(" pass {}", step.execution + 1));
        }
        if let Some(status) = status {
            line.push_str(&format!(" {status}"));
        }
        if let Some(ms) = step.duration_ms {
            line.push_str(&format!(" in {}", short_duration(ms)));
        }
        if step.attempts.len() > 1 {
            line.push_str(&format!(" after {} attempts", step.attempts.len()));
        }
        if let Some(error) = &step.error {
            line.push_str(&format!(": {error}"));
        }
        lines.push(line);
        if step.attempts.len() > 1 {
            for attempt in &step.attempts {
                let mark = if attempt.success { styles.green("✓") } else { styles.red("✗") };
                let mut line = format!(
                    "      attempt {} {mark} {}",
                    attempt.attempt,
                    short_duration(attempt.duration_ms)
                );
                if let Some(error) = &attempt.error {
                    line.push_str(&format!(": {error}"));
                }
                lines.push(line);
            }
        }
    }
    for decision in &detail.gate_decisions {
        let mut line = format!(
            "gate {} {} by {} at {}",
            decision.gate,
            decision.decision,
            decision.by,
            short_time(&decision.at)
        );
        if let Some(comment) = &decision.comment {
            line.push_str(&format!(": {comment}"));
        }
        lines.push(line);
    }
    for gate in &detail.pending_gates {
        let mut line = format!(
            "{} at gate {} since {}",
            styles.yellow("waiting"),
            gate.gate,
            short_time(&gate.since)
        );
        if let Some(deadline) = &gate.deadline {
            line.push_str(&format!(" (decided automatically at {})", short_time(deadline)));
        }
        if let Some(message) = &gate.message {
            line.push_str(&format!(": {message}"));
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_wire::{Attempt, Run, RunStep};

    #[test]
    fn a_retried_failed_step_lists_its_attempts() {
        let attempt = |n, success, error: Option<&str>| Attempt {
            attempt: n,
            success,
            error: error.map(str::to_owned),
            duration_ms: 5,
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        let detail = RunWithSteps {
            run: Run {
                id: "r1".into(),
                workflow: "w".into(),
                status: "failed".into(),
                trigger: "cli".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                started_at: None,
                completed_at: None,
                duration_ms: Some(10),
                error: Some("boom".into()),
                request_id: None,
            },
            steps: vec![RunStep {
                id: "t".into(),
                step_type: "command".into(),
                index: 0,
                execution: 0,
                status: "failed".into(),
                success: false,
                skipped: false,
                error: Some("boom".into()),
                started_at: None,
                completed_at: None,
                duration_ms: Some(10),
                data: None,
                attempts: vec![attempt(1, false, Some("boom")), attempt(2, false, Some("boom"))],
            }],
            gate_decisions: vec![],
            pending_gates: vec![],
        };
        let plain = Styles::plain();
        let lines = describe(&detail, plain);
        assert_eq!(
            lines,
            [
                "run r1",
                "  workflow   w",
                "  status     failed",
                "  trigger    cli",
                "  created    2026-01-01 00:00:00",
                "  duration   10 ms",
                "  error      boom",
                "steps",
                "  ✗ t (command) failed in 10 ms after 2 attempts: boom",
                "      attempt 1 ✗ 5 ms: boom",
                "      attempt 2 ✗ 5 ms: boom",
            ]
        );
    }
}
