//! Resolving the server's settings: defaults, then the file, then the environment,
//! then flags — in [`resolve`]. Logging settings come from the environment alone and
//! are read first, so that loading the configuration can already log.

use aegis_config::{Config, LoadOptions};
use anyhow::{Context, bail};

use crate::Flags;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Everything the server needs to start.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Reads a variable, treating empty as unset.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Logging settings alone, so logging can start before the configuration loads.
pub(crate) fn logging() -> anyhow::Result<(String, LogFormat)> {
    let filter = env_var("AEGIS_LOG").unwrap_or_else(|| "info".to_owned());
    let format = match env_var("AEGIS_LOG_FORMAT").as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => bail!("AEGIS_LOG_FORMAT must be `text` or `json`, found {other:?}"),
    };
    Ok((filter, format))
}

/// Flags override the environment, which overrides the file.
pub(crate) fn resolve(flags: &Flags) -> anyhow::Result<Settings> {
    // AEGIS_CONFIG and AEGIS_DB_PATH are applied by the loader; the flag wins over both.
    let config = LoadOptions::new().path(flags.config.clone()).load().map_err(|err| match err {
        aegis_config::ConfigError::Invalid { path, findings } => {
            let lines: Vec<String> =
                findings.iter().map(|f| f.display(&path).to_string()).collect();
            anyhow::anyhow!("the configuration is invalid:\n{}", lines.join("\n"))
        }
        other => anyhow::Error::new(other),
    })?;
    let host = flags
        .host
        .clone()
        .or_else(|| env_var("AEGIS_HOST"))
        .unwrap_or_else(|| config.server().host().to_owned());
    let port = match (flags.port, env_var("AEGIS_PORT")) {
        (Some(port), _) => port,
        (None, Some(text)) => {
            text.parse::<u16>().ok().filter(|p| *p > 0).with_context(|| {
                format!("AEGIS_PORT must be a port number 1-65535, found {text:?}")
            })?
        }
        (None, None) => config.server().port(),
    };
    Ok(Settings { config, host, port })
}
