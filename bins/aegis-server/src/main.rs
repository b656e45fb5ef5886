//! `aegis-server`: parse flags, start logging, load configuration, compose the crates,
//! serve until SIGTERM/SIGINT, shut down gracefully.

mod healthcheck;
mod logging;
mod serve;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Aegis QA control plane server.
#[derive(Debug, Parser)]
#[command(name = "aegis-server", version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Settings that override the environment and the configuration file.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Flags {
    /// Address to bind (overrides AEGIS_HOST and server.host).
    #[arg(long, global = true)]
    pub(crate) host: Option<String>,
    /// Port to bind (overrides AEGIS_PORT and server.port).
    #[arg(long, global = true)]
    pub(crate) port: Option<u16>,
    /// Configuration file (overrides AEGIS_CONFIG; default: walk up to .aegis.yaml).
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and dashboard (the default).
    Serve,
    /// Probe a running server's /health/live: exit 0 when it answers 200, else 1.
    Healthcheck(healthcheck::HealthcheckArgs),
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
    let result = match cli.command {
        None | Some(Command::Serve) => serve::run(&cli.flags),
        Some(Command::Healthcheck(args)) => healthcheck::run(&cli.flags, &args),
    };
    // Log lines are written by a thread of their own; let it finish before exiting.
    logging::flush();
    match result {
        Ok(code) => code,
        Err(err) => {
            // Logging may not be up yet (a bad config), so errors go straight to stderr.
            eprintln!("aegis-server: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
