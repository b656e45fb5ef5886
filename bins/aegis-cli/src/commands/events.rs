//! `aegis-cli events tail`: follows a server's events, of one run or of all runs, a line
//! per event.

use aegis_core::Event;
use clap::{Args, Subcommand};

use super::run::TERMINAL_EVENTS;
use super::{Context, runtime};
use crate::Outcome;
use crate::client::{Flow, Resume};
use crate::style::Styles;
use crate::wire::short_time;

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Print events as they happen until interrupted, or until the run ends with --run
    /// (needs --server).
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Only this run's events, from its first, ending with its last.
    #[arg(long, value_name = "ID")]
    run: Option<String>,
    /// Print each event envelope as one line of JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: EventsCommand, ctx: &Context) -> anyhow::Result<Outcome> {
    let EventsCommand::Tail(args) = cmd;
    let Some(client) = ctx.client()? else {
        return Err(Context::needs_server("events tail"));
    };
    let (url, resume) = match &args.run {
        Some(id) => {
            (client.url(&["api", "runs", id, "events", "stream"], &[]), Resume::LastEventId)
        }
        // The global stream's ids cannot be resumed from; a reconnection starts from now.
        None => (client.url(&["api", "events", "stream"], &[]), Resume::FromNow),
    };
    let styles = ctx.styles;
    runtime()?.block_on(client.follow(url, resume, |frame| {
        if args.json {
            println!("{}", frame.data);
        } else {
            match serde_json::from_str::<Event>(&frame.data) {
                Ok(event) => println!("{}", event_line(&event, styles)),
                Err(_) => println!("{}", frame.data),
            }
        }
        let terminal = args.run.is_some()
            && serde_json::from_str::<serde_json::Value>(&frame.data).is_ok_and(|v| {
                v.get("type")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|t| TERMINAL_EVENTS.contains(&t))
            });
        Ok(if terminal { Flow::Stop } else { Flow::Continue })
    }))?;
    Ok(Outcome::Success)
}

/// One event on one line: time, type, workflow, run id, then the scalar fields of its
/// data as `key=value` (strings with spaces quoted).
fn event_line(event: &Event, styles: Styles) -> String {
    let mut line = format!(
        "{}  {:<18}  {}  {}",
        short_time(&event.time.to_string()),
        event.event_type,
        event.workflow,
        event.run_id
    );
    if let Some(data) = event.data.as_object() {
        for (key, value) in data {
            let text = match value {
                serde_json::Value::String(s) if s.is_empty() || s.contains(char::is_whitespace) => {
                    format!("{s:?}")
                }
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            line.push_str(&format!(" {key}={text}"));
        }
    }
    let coloured = match event.event_type.as_str() {
        "step.completed" if event.data.get("success").and_then(|v| v.as_bool()) == Some(false) => {
            styles.red(&event.event_type)
        }
        "workflow.completed" => {
            let status =
                event.data.get("status").and_then(serde_json::Value::as_str).unwrap_or("failed");
            styles.run_status(status, &event.event_type)
        }
        "run.cancelled" | "run.interrupted" | "gate.rejected" | "webhook.failed" => {
            styles.red(&event.event_type)
        }
        _ => return line,
    };
    line.replacen(&event.event_type, &coloured, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_fits_on_one_line_with_its_scalar_data() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "schema_version": "1.0", "id": "e1", "seq": 3, "type": "step.completed",
            "time": "2026-01-02T03:04:05.678Z", "run_id": "r1", "workflow": "demo",
            "request_id": null,
            "data": {"step_id": "test", "success": true, "duration_ms": 12,
                     "error": "two words", "output": {"nested": 1}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            event_line(&event, Styles::plain()),
            "2026-01-02 03:04:05  step.completed      demo  r1 step_id=test success=true duration_ms=12 error=\"two words\""
        );
    }
}
