//! One module per subcommand, and what they share: where to work (a server or the
//! local configuration) and the async runtime.

pub(crate) mod completions;
pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod gates;
pub(crate) mod history;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod status;
pub(crate) mod webhooks;

use std::path::PathBuf;

use aegis_config::{Config, LoadOptions};
use anyhow::Context as _;

use crate::client::{Client, Server};
use crate::style::Styles;

/// A mistake in how the command was called, rather than in what it works on (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// What every command may need: the global flags, resolved.
#[derive(Debug)]
pub(crate) struct Context {
    /// `--config`, when given.
    pub(crate) config: Option<PathBuf>,
    /// `--server` / `AEGIS_SERVER` with `--api-key` / `AEGIS_API_KEY`.
    pub(crate) server: Option<Server>,
    /// Whether to colour stdout and stderr.
    pub(crate) styles: Styles,
}

impl Context {
    /// Loads the local configuration (`--config`, else discovery).
    pub(crate) fn load_config(&self) -> anyhow::Result<Config> {
        LoadOptions::new().path(self.config.clone()).load().context("cannot load the configuration")
    }

    /// A client of the server, when one was given.
    pub(crate) fn client(&self) -> anyhow::Result<Option<Client>> {
        self.server.as_ref().map(Client::new).transpose().map_err(Into::into)
    }

    /// The error of a command that only works against a server.
    pub(crate) fn needs_server(what: &str) -> anyhow::Error {
        UsageError(format!(
            "`{what}` needs a running server: pass --server URL or set AEGIS_SERVER"
        ))
        .into()
    }
}

/// A small runtime for one command's requests or in-process work.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("cannot render JSON")?);
    Ok(())
}
