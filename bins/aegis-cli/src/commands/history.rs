//! `aegis-cli history`: recent runs, newest first, from a server or the local history
//! store.

use std::path::Path;

use aegis_config::Config;
use aegis_history::{HistoryBackend, HistoryOptions, ListQuery, MAX_PAGE_SIZE, SqliteHistory};
use anyhow::Context as _;
use clap::Args;

use super::{Context, print_json, runtime};
use crate::Outcome;
use crate::client::Client;
use crate::style::{Styles, table};
use crate::wire::{Run, RunPage, short_duration, short_time};

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Only this workflow's runs.
    #[arg(long, value_name = "W")]
    workflow: Option<String>,
    /// At most this many runs.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    /// Print the runs as a JSON array.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &HistoryArgs, ctx: &Context) -> anyhow::Result<Outcome> {
    let runs = match ctx.client()? {
        Some(client) => runtime()?.block_on(remote(&client, args))?,
        None => {
            let config = ctx.load_config()?;
            runtime()?.block_on(local(&config, args))?
        }
    };
    if args.json {
        print_json(&runs)?;
    } else {
        print_table(&runs, ctx.styles);
    }
    Ok(Outcome::Success)
}

/// Pages through `GET /api/runs` until `limit` runs or the last page.
async fn remote(client: &Client, args: &HistoryArgs) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut cursor = None;
    loop {
        let want = (args.limit as usize - runs.len()).min(MAX_PAGE_SIZE as usize);
        let url = client.url(
            &["api", "runs"],
            &[
                ("workflow", args.workflow.clone()),
                ("limit", Some(want.to_string())),
                ("cursor", cursor.take()),
            ],
        );
        let page: RunPage = client.get_json(url).await?;
        let got = page.runs.len();
        runs.extend(page.runs);
        runs.truncate(args.limit as usize);
        match page.next_cursor {
            Some(next) if runs.len() < args.limit as usize && got > 0 => cursor = Some(next),
            _ => return Ok(runs),
        }
    }
}

/// Opens the local history store for reading: `None` when it keeps nothing between
/// commands (`:memory:`) or has not been created yet, so reading never creates it.
pub(crate) async fn open_local(config: &Config) -> anyhow::Result<Option<SqliteHistory>> {
    let path = config.history().db_path();
    if path.as_os_str() == ":memory:" || !Path::new(path).exists() {
        return Ok(None);
    }
    let options = HistoryOptions::with_max_records(config.history().max_records());
    let history = SqliteHistory::open(path, options)
        .await
        .with_context(|| format!("cannot open the history store at {}", path.display()))?;
    Ok(Some(history))
}

/// Why the local history has nothing, for a note on stderr.
pub(crate) fn why_empty(config: &Config) -> String {
    let path = config.history().db_path();
    if path.as_os_str() == ":memory:" {
        "the history store is `:memory:`, which keeps no runs between commands".to_owned()
    } else {
        format!("no history store at {} yet", path.display())
    }
}

async fn local(config: &Config, args: &HistoryArgs) -> anyhow::Result<Vec<Run>> {
    let Some(history) = open_local(config).await? else {
        eprintln!("note: {}", why_empty(config));
        return Ok(Vec::new());
    };
    let mut runs = Vec::new();
    let mut query = ListQuery { workflow: args.workflow.clone(), ..ListQuery::default() };
    loop {
        query.limit = (args.limit - runs.len() as u32).min(MAX_PAGE_SIZE);
        let page = history.list_runs(&query).await.context("cannot read the history store")?;
        let got = page.runs.len();
        runs.extend(page.runs.iter().map(Run::from));
        match page.next_cursor {
            Some(next) if runs.len() < args.limit as usize && got > 0 => query.cursor = Some(next),
            _ => return Ok(runs),
        }
    }
}

fn print_table(runs: &[Run], styles: Styles) {
    if runs.is_empty() {
        println!("no runs recorded");
        return;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.workflow.clone(),
                r.status.clone(),
                short_time(r.started_at.as_deref().unwrap_or(&r.created_at)),
                r.duration_ms.map_or_else(|| "-".to_owned(), short_duration),
            ]
        })
        .collect();
    let header = ["ID", "WORKFLOW", "STATUS", "STARTED", "DURATION"];
    let lines = table(styles, &header, &rows, |r, c, cell| match c {
        2 => styles.run_status(&runs[r].status, cell),
        _ => cell,
    });
    for line in lines {
        println!("{line}");
    }
}
