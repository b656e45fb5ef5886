//! The `aegis-cli` command: parse flags, run the subcommand, map the outcome to an exit
//! code.

mod commands;
mod style;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Aegis QA control plane: validate configuration, run workflows, talk to a server.
#[derive(Debug, Parser)]
#[command(name = "aegis-cli", version, about, propagate_version = true)]
struct Cli {
    /// Configuration file (default: $AEGIS_CONFIG, else the first .aegis.yaml found
    /// walking up from the working directory).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

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
    /// Run a workflow in-process, printing a line per step (exit 0 succeeded, 1 failed).
    Run(commands::run::RunArgs),
    /// Print the health of every configured service (exit 1 unless all are healthy).
    Status(commands::status::StatusArgs),
}

/// How a command ended, as the exit code scripts read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the configuration is invalid, the run failed or was rejected.
    Failure,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let styles = style::Styles::detect();
    let result = match cli.command {
        Command::Config(cmd) => commands::config::run(cmd, cli.config, styles),
        Command::Completions(args) => commands::completions::run(&args),
        Command::Run(args) => commands::run::run(args, cli.config, styles),
        Command::Status(args) => commands::status::run(&args, cli.config, styles),
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
