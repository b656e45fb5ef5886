//! One module per subcommand.

pub(crate) mod completions;
pub(crate) mod config;
pub(crate) mod run;
pub(crate) mod status;

/// A mistake in how the command was called, rather than in what it works on (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);
