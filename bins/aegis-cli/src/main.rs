//! The `aegis-cli` command: parse flags, run the subcommand, map the outcome to an exit
//! code.

mod client;
mod commands;
mod style;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{ClientError, Server, ServerUrl};

/// Aegis QA control plane: validate configuration, run workflows, talk to a server.
#[derive(Debug, Parser)]
#[command(name = "aegis-cli", version, about, propagate_version = true)]
struct Cli {
    /// Configuration file (default: $AEGIS_CONFIG, else the first .aegis.yaml found
    /// walking up from the working directory).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Talk to this Aegis server over HTTP instead of working in-process
    /// (e.g. http://127.0.0.1:8000).
    #[arg(long, global = true, env = "AEGIS_SERVER", value_name = "URL",
          value_parser = client::parse_server_arg)]
    server: Option<ServerUrl>,

    /// API key sent to the server as X-API-Key.
    #[arg(long, global = true, env = "AEGIS_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check or show the configuration.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Print a shell completion script.
    Completions(commands::completions::CompletionsArgs),
    /// Run a workflow, printing a line per step (exit 0 succeeded, 1 failed).
    Run(commands::run::RunArgs),
    /// Print the health of every configured service (exit 1 unless all are healthy).
    Status(commands::status::StatusArgs),
    /// List recent runs, newest first.
    History(commands::history::HistoryArgs),
    /// Inspect runs.
    #[command(subcommand)]
    Runs(commands::runs::RunsCommand),
    /// List, approve and reject gates waiting for a human (needs --server).
    #[command(subcommand)]
    Gates(commands::gates::GatesCommand),
    /// The webhook delivery log and redelivery (needs --server and an admin key).
    #[command(subcommand)]
    Webhooks(commands::webhooks::WebhooksCommand),
    /// Follow a server's events (needs --server).
    #[command(subcommand)]
    Events(commands::events::EventsCommand),
}

/// How a command ended, as the exit code scripts read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the configuration is invalid, the run failed or was rejected.
    Failure,
}

// With glibc's allocator, allocation was a large part of the engine's CPU
// time under load; mimalloc doubled its throughput (`cargo bench -p
// aegis-core --bench engine`: 2,558 -> 5,201 runs/s). Built without
// transparent huge pages (`no_thp`): with them the idle server's RSS doubled
// (14 -> 29 MB) on a kernel with THP `always`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let styles = style::Styles::detect();
    let ctx = commands::Context {
        config: cli.config,
        server: cli
            .server
            .and_then(|server| server.0)
            .map(|url| Server { url, api_key: cli.api_key.filter(|key| !key.is_empty()) }),
        styles,
    };
    let result = match cli.command {
        Command::Config(cmd) => commands::config::run(cmd, ctx.config, styles),
        Command::Completions(args) => commands::completions::run(&args),
        Command::Run(args) => commands::run::run(args, &ctx),
        Command::Status(args) => commands::status::run(&args, &ctx),
        Command::History(args) => commands::history::run(&args, &ctx),
        Command::Runs(cmd) => commands::runs::run(cmd, &ctx),
        Command::Events(cmd) => commands::events::run(cmd, &ctx),
        Command::Gates(cmd) => commands::gates::run(cmd, &ctx),
        Command::Webhooks(cmd) => commands::webhooks::run(cmd, &ctx),
    };
    exit_code(result, styles)
}

/// The one place errors become exit codes: 0 success, 1 failure, 2 usage.
fn exit_code(result: anyhow::Result<Outcome>, styles: style::Styles) -> ExitCode {
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::from(1),
        // A reader that went away (`aegis-cli config show | head`) is not an error.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}: {err:#}", styles.error("error"));
            if let Some(hint) = err.downcast_ref::<ClientError>().and_then(ClientError::auth_hint) {
                eprintln!("hint: {hint}");
            }
            match err.downcast_ref::<commands::UsageError>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::from(1),
            }
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
