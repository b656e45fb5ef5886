//! `aegis-cli webhooks deliveries|redeliver`: a server's webhook delivery log,
//! and queueing a delivery again (admin key).

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Context, UsageError, print_json, runtime};
use crate::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// List webhook deliveries with their attempts, newest first.
    Deliveries(DeliveriesArgs),
    /// Queue a delivery again: a fresh attempt count, the same `webhook-id`.
    Redeliver(RedeliverArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DeliveriesArgs {
    /// Only deliveries with this status: pending, delivered, failed or gone.
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// Only this webhook's deliveries (its index in `webhooks`, from 0).
    #[arg(long, value_name = "INDEX")]
    webhook: Option<u32>,
    /// Only deliveries of this run's events.
    #[arg(long, value_name = "RUN_ID")]
    run: Option<String>,
    /// At most this many deliveries (default: all).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print the deliveries as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RedeliverArgs {
    /// The delivery id (from `aegis-cli webhooks deliveries`).
    id: String,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

const STATUSES: [&str; 4] = ["pending", "delivered", "failed", "gone"];

pub(crate) fn run(cmd: WebhooksCommand, ctx: &Context) -> anyhow::Result<Outcome> {
    let verb = match &cmd {
        WebhooksCommand::Deliveries(_) => "webhooks deliveries",
        WebhooksCommand::Redeliver(_) => "webhooks redeliver",
    };
    let Some(client) = ctx.client()? else {
        return Err(Context::needs_server(verb));
    };
    match cmd {
        WebhooksCommand::Deliveries(args) => {
            if let Some(status) = &args.status
                && !STATUSES.contains(&status.as_str())
            {
                return Err(UsageError(format!(
                    "--status must be one of {}, found {status:?}",
                    STATUSES.join(", ")
                ))
                .into());
            }
            // The log is paginated: follow `next_cursor` until the limit or the end.
            let runtime = runtime()?;
            let limit = args.limit.unwrap_or(usize::MAX);
            let mut deliveries = Vec::new();
            let mut cursor: Option<String> = None;
            while deliveries.len() < limit {
                let page_size = (limit - deliveries.len()).min(1000);
                let url = client.url(
                    &["api", "webhooks", "deliveries"],
                    &[
                        ("status", args.status.clone()),
                        ("webhook", args.webhook.map(|w| w.to_string())),
                        ("run", args.run.clone()),
                        ("limit", Some(page_size.to_string())),
                        ("cursor", cursor.take()),
                    ],
                );
                let body: Value = runtime.block_on(client.get_json(url))?;
                deliveries.extend(body["deliveries"].as_array().cloned().unwrap_or_default());
                match body["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            deliveries.truncate(limit);
            if args.json {
                print_json(&Value::Array(deliveries))?;
                return Ok(Outcome::Success);
            }
            if deliveries.is_empty() {
                println!("No webhook deliveries.");
                return Ok(Outcome::Success);
            }
            println!(
                "{:<40}  {:>3}  {:<20}  {:<9}  {:>8}  {:<20}  LAST",
                "DELIVERY", "WH", "EVENT", "STATUS", "ATTEMPTS", "NEXT ATTEMPT"
            );
            for d in deliveries {
                let text = |key: &str| d[key].as_str().unwrap_or("-").to_owned();
                let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
                let last = attempts.last().map_or_else(
                    || "-".to_owned(),
                    |a| match (a["status_code"].as_u64(), a["error"].as_str()) {
                        (Some(code), None) => format!("{code} in {} ms", a["duration_ms"]),
                        (_, Some(error)) => error.to_owned(),
                        (None, None) => "-".to_owned(),
                    },
                );
                println!(
                    "{:<40}  {:>3}  {:<20}  {:<9}  {:>8}  {:<20}  {}",
                    text("id"),
                    d["webhook"],
                    text("event_type"),
                    text("status"),
                    attempts.len(),
                    short(&text("next_attempt_at")),
                    last
                );
            }
            Ok(Outcome::Success)
        }
        WebhooksCommand::Redeliver(args) => {
            let url = client.url(&["api", "webhooks", "deliveries", &args.id, "redeliver"], &[]);
            let answer: Value = runtime()?.block_on(client.post_json(url))?;
            if args.json {
                print_json(&answer)?;
            } else {
                println!("delivery {} queued again", args.id);
            }
            Ok(Outcome::Success)
        }
    }
}

/// A timestamp to the second, for the table.
fn short(time: &str) -> String {
    time.get(..19).unwrap_or(time).replace('T', " ")
}
