//! `aegis-cli completions SHELL`: print a completion script.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::{Cli, Outcome};

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

pub(crate) fn run(args: &CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "aegis-cli", &mut std::io::stdout());
    Ok(Outcome::Success)
}
