//! `aegis-cli gates list|approve|reject`: the gates waiting for a human on a server,
//! and deciding one with an optional comment and RFC 6902 JSON Patch file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{Context, UsageError, print_json, runtime};
use crate::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum GatesCommand {
    /// List the gates waiting for a decision across runs.
    List(ListArgs),
    /// Approve a waiting gate; the run continues with the patched artifact.
    Approve(DecideArgs),
    /// Reject a waiting gate; the run re-runs from `retry_from` or ends rejected.
    Reject(DecideArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print the gates as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// The run id.
    run: String,
    /// The gate step id.
    gate: String,
    /// A file holding an RFC 6902 JSON Patch (an array of operations) for the
    /// gate's artifact.
    #[arg(long, value_name = "FILE")]
    patch: Option<PathBuf>,
    /// Why you decide so; recorded with the decision.
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: GatesCommand, ctx: &Context) -> anyhow::Result<Outcome> {
    let verb = match &cmd {
        GatesCommand::List(_) => "gates list",
        GatesCommand::Approve(_) => "gates approve",
        GatesCommand::Reject(_) => "gates reject",
    };
    let Some(client) = ctx.client()? else {
        return Err(Context::needs_server(verb));
    };
    match cmd {
        GatesCommand::List(args) => {
            // `GET /api/gates` is paginated: follow `next_cursor` to the last page.
            let runtime = runtime()?;
            let mut gates = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let url = client.url(
                    &["api", "gates"],
                    &[
                        ("status", Some("pending".to_owned())),
                        ("limit", Some("1000".to_owned())),
                        ("cursor", cursor.take()),
                    ],
                );
                let body: Value = runtime.block_on(client.get_json(url))?;
                gates.extend(body["gates"].as_array().cloned().unwrap_or_default());
                match body["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            if args.json {
                print_json(&Value::Array(gates))?;
                return Ok(Outcome::Success);
            }
            if gates.is_empty() {
                println!("No gates waiting for a decision.");
                return Ok(Outcome::Success);
            }
            println!("{:<36}  {:<16}  {:<20}  {:<20}  MESSAGE", "RUN", "GATE", "SINCE", "DEADLINE");
            for gate in gates {
                let text = |key: &str| gate[key].as_str().unwrap_or("-").to_owned();
                println!(
                    "{:<36}  {:<16}  {:<20}  {:<20}  {}",
                    text("run_id"),
                    text("gate"),
                    short(&text("since")),
                    short(&text("deadline")),
                    text("message")
                );
            }
            Ok(Outcome::Success)
        }
        GatesCommand::Approve(args) => decide(&client, args, "approve"),
        GatesCommand::Reject(args) => decide(&client, args, "reject"),
    }
}

fn decide(
    client: &crate::client::Client,
    args: DecideArgs,
    action: &str,
) -> anyhow::Result<Outcome> {
    let patch = match &args.patch {
        None => Value::Null,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the patch file {}", path.display()))?;
            serde_json::from_str::<Value>(&text).map_err(|err| {
                UsageError(format!("the patch file {} is not JSON: {err}", path.display()))
            })?
        }
    };
    let body = json!({ "comment": args.comment, "patch": patch });
    let url = client.url(&["api", "runs", &args.run, "gates", &args.gate, action], &[]);
    let answer: Value = runtime()?.block_on(client.post_body_json(url, &body))?;
    if args.json {
        print_json(&answer)?;
    } else {
        let verb = if action == "approve" { "approved" } else { "rejected" };
        println!(
            "{verb} gate {} of run {}: the run is now {}",
            args.gate,
            args.run,
            answer["status"].as_str().unwrap_or("unknown")
        );
    }
    Ok(Outcome::Success)
}

/// A timestamp to the second, for the table.
fn short(time: &str) -> String {
    time.get(..19).unwrap_or(time).replace('T', " ")
}
