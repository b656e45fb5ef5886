//! `aegis-cli status`: the health of every configured service.

use std::path::PathBuf;

use aegis_config::LoadOptions;
use aegis_core::{HealthStatus, ServiceHealth};
use anyhow::Context;
use clap::Args;

use crate::Outcome;
use crate::style::Styles;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Exit 0 when every service is healthy, 1 otherwise.
pub(crate) fn run(
    args: &StatusArgs,
    config: Option<PathBuf>,
    styles: Styles,
) -> anyhow::Result<Outcome> {
    let config = LoadOptions::new().path(config).load().context("cannot load the configuration")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = aegis_core::build_client()?;
    let results = runtime.block_on(aegis_core::check_services(&client, &config));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results).context("cannot render JSON")?);
    } else {
        print_table(&results, styles);
    }
    let healthy = results.iter().all(|r| r.status == HealthStatus::Healthy);
    Ok(if healthy { Outcome::Success } else { Outcome::Failure })
}

fn print_table(results: &[ServiceHealth], styles: Styles) {
    if results.is_empty() {
        println!("no services configured");
        return;
    }
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|r| {
            [
                r.key.clone(),
                r.status.as_str().to_owned(),
                format!("{} ms", r.latency_ms),
                r.url.clone(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["SERVICE", "STATUS", "LATENCY", "URL", "DETAIL"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 5], status: Option<HealthStatus>| {
        let mut out = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            let padded = format!("{cell:<width$}");
            let cell = match (i, status) {
                (1, Some(HealthStatus::Healthy)) => styles.green(padded),
                (1, Some(HealthStatus::Unhealthy)) => styles.yellow(padded),
                (1, Some(_)) => styles.red(padded),
                _ => padded,
            };
            out.push_str(&cell);
            if i < 4 {
                out.push_str("  ");
            }
        }
        out.trim_end().to_owned()
    };
    println!("{}", styles.bold(line(&header, None)));
    for (row, result) in rows.iter().zip(results) {
        println!("{}", line(row, Some(result.status)));
    }
}
