//! Errors from finding and loading a configuration.

use std::path::PathBuf;

use crate::diagnostic::{Finding, Severity};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Discovery walked up to the root without finding `.aegis.yaml`.
    #[error(
        "no .aegis.yaml found in {} or any folder above it; pass --config PATH or set AEGIS_CONFIG",
        searched_from.display()
    )]
    NotFound {
        /// The folder the walk started from.
        searched_from: PathBuf,
    },
    /// The file has errors; each is a located finding.
    #[error("{} is invalid: {}", path.display(), summary(findings))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// Every finding, errors and warnings, in file order.
        findings: Vec<Finding>,
    },
}

fn summary(findings: &[Finding]) -> String {
    let errors = findings.iter().filter(|f| f.severity() == Severity::Error).count();
    match errors {
        1 => "1 error".to_owned(),
        n => format!("{n} errors"),
    }
}

/// Result of loading a configuration.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
