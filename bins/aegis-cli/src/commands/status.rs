//! `aegis-cli status`: the health of every configured service, checked in-process or
//! asked of a server (`GET /api/services`).

use aegis_core::HealthStatus;
use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

use super::{Context, print_json, runtime};
use crate::Outcome;
use crate::style::{Styles, table};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// One line of the table, from a local check or the server's answer.
#[derive(Debug, Deserialize)]
struct Row {
    key: String,
    status: String,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    url: String,
    #[serde(default)]
    error: Option<String>,
}

/// The body of `GET /api/services`.
#[derive(Debug, Deserialize)]
struct Services {
    services: Vec<serde_json::Value>,
}

/// Exit 0 when every service is healthy, 1 otherwise.
pub(crate) fn run(args: &StatusArgs, ctx: &Context) -> anyhow::Result<Outcome> {
    let (json, rows) = match ctx.client()? {
        Some(client) => {
            let url = client.url(&["api", "services"], &[]);
            let body: Services = runtime()?.block_on(client.get_json(url.clone()))?;
            let rows = body
                .services
                .iter()
                .map(Row::deserialize)
                .collect::<Result<Vec<Row>, _>>()
                .with_context(|| format!("unexpected answer from {url}"))?;
            (serde_json::Value::Array(body.services), rows)
        }
        None => {
            let config = ctx.load_config()?;
            let client = aegis_core::build_client()?;
            let results = runtime()?.block_on(aegis_core::check_services(&client, &config));
            let rows = results
                .iter()
                .map(|r| Row {
                    key: r.key.clone(),
                    status: r.status.as_str().to_owned(),
                    latency_ms: r.latency_ms,
                    url: r.url.clone(),
                    error: r.error.clone(),
                })
                .collect();
            (serde_json::to_value(&results).context("cannot render JSON")?, rows)
        }
    };
    if args.json {
        print_json(&json)?;
    } else {
        print_table(&rows, ctx.styles);
    }
    let healthy = rows.iter().all(|r| r.status == HealthStatus::Healthy.as_str());
    Ok(if healthy { Outcome::Success } else { Outcome::Failure })
}

fn print_table(results: &[Row], styles: Styles) {
    if results.is_empty() {
        println!("no services configured");
        return;
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.key.clone(),
                r.status.clone(),
                format!("{} ms", r.latency_ms),
                r.url.clone(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["SERVICE", "STATUS", "LATENCY", "URL", "DETAIL"];
    let lines = table(styles, &header, &rows, |r, c, cell| match c {
        1 => styles.run_status(&results[r].status, cell),
        _ => cell,
    });
    for line in lines {
        println!("{line}");
    }
}
