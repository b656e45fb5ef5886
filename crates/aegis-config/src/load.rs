//! Finding the configuration file and running the loading stages over it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::de::{Sink, from_node};
use crate::diagnostic::{self, Check, Finding, Severity};
use crate::error::{ConfigError, Result};
use crate::interpolate::expand_tree;
use crate::model::Config;
use crate::node::{self, Loc, MAX_CONFIG_BYTES, NodeKind};
use crate::raw::RawConfig;
use crate::validate::{self, Context};

/// The file name discovery looks for.
pub const FILE_NAME: &str = ".aegis.yaml";

/// Reads environment variables; tests and embedders pass their own.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// How to find and load a configuration.
pub struct LoadOptions {
    path: Option<PathBuf>,
    cwd: Option<PathBuf>,
    env: Box<EnvLookup>,
    extra_step_types: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            path: None,
            cwd: None,
            env: Box::new(|name| std::env::var(name).ok()),
            extra_step_types: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// Options that read the process environment and start discovery in the working
    /// directory.
    pub fn new() -> LoadOptions {
        LoadOptions::default()
    }

    /// Loads this file instead of discovering one (`--config PATH`).
    pub fn path(mut self, path: Option<PathBuf>) -> LoadOptions {
        self.path = path;
        self
    }

    /// Starts discovery here instead of the working directory.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> LoadOptions {
        self.cwd = Some(cwd.into());
        self
    }

    /// Reads variables through `env` instead of the process environment.
    pub fn env(
        mut self,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> LoadOptions {
        self.env = Box::new(env);
        self
    }

    /// Accepts these step types besides the built-ins (an embedder's own steps).
    pub fn step_types(mut self, types: impl IntoIterator<Item = impl Into<String>>) -> LoadOptions {
        self.extra_step_types.extend(types.into_iter().map(Into::into));
        self
    }

    /// Finds the file: the explicit path, else `AEGIS_CONFIG`, else the first
    /// `.aegis.yaml` walking up from the working directory.
    pub fn locate(&self) -> Result<PathBuf> {
        if let Some(path) = &self.path {
            return Ok(path.clone());
        }
        if let Some(path) = (self.env)("AEGIS_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let start = match &self.cwd {
            Some(cwd) => cwd.clone(),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        start
            .ancestors()
            .map(|dir| dir.join(FILE_NAME))
            .find(|candidate| candidate.is_file())
            .ok_or(ConfigError::NotFound { searched_from: start })
    }

    /// Locates and checks the file, returning every finding and, when there are no
    /// errors, the configuration.
    pub fn check(&self) -> Result<Report> {
        let path = self.locate()?;
        Ok(self.check_file(&path))
    }

    /// Checks one file.
    pub fn check_file(&self, path: &Path) -> Report {
        let (config, mut findings) = match read(path) {
            Ok(text) => self.check_text(path, &text),
            Err(finding) => (None, vec![finding]),
        };
        diagnostic::sort(&mut findings);
        Report { path: path.to_path_buf(), findings, config }
    }

    /// Locates and loads the file; errors carry every finding.
    pub fn load(&self) -> Result<Config> {
        self.check()?.into_config()
    }

    fn check_text(&self, path: &Path, text: &str) -> (Option<Config>, Vec<Finding>) {
        let mut tree = match node::parse(text) {
            Ok(Some(tree)) => tree,
            Ok(None) => {
                return (None, vec![Finding::error(Check::Syntax, Loc::START, "config is empty")]);
            }
            Err(failure) => {
                return (None, vec![Finding::error(Check::Syntax, failure.loc, failure.message)]);
            }
        };
        if !matches!(tree.kind, NodeKind::Map(_)) {
            let message = format!(
                "expected a mapping of keys (aegis, services, workflows, …) at the top level, found {}",
                tree.describe()
            );
            return (None, vec![Finding::error(Check::Schema, tree.loc, message)]);
        }
        let mut findings = Vec::new();
        expand_tree(&mut tree, text, &*self.env, &mut findings);
        let sink = Sink::default();
        let raw: RawConfig = from_node(&tree, &sink);
        findings.extend(sink.into_findings());

        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
        let ctx = Context {
            flagged: findings.iter().map(|f| f.loc()).collect(),
            base_dir: &base_dir,
            db_path_override: (self.env)("AEGIS_DB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            extra_step_types: &self.extra_step_types,
        };
        let (mut config, more) = validate::validate(raw, &ctx);
        findings.extend(more);
        config.source = Some(path.to_path_buf());
        let valid = !findings.iter().any(|f| f.severity() == Severity::Error);
        (valid.then_some(config), findings)
    }
}

/// Reads the file, refusing what cannot be a configuration before parsing it.
fn read(path: &Path) -> Result<String, Finding> {
    let unreadable = |err: std::io::Error| {
        Finding::error(Check::Syntax, Loc::START, format!("cannot read the file: {err}"))
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(Finding::error(
            Check::Syntax,
            Loc::START,
            "cannot read the file: it is a directory",
        ));
    }
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_CONFIG_BYTES).unwrap_or(u64::MAX) + 1;
    file.take(limit).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(Finding::error(
            Check::Syntax,
            Loc::START,
            format!(
                "file is larger than the {MAX_CONFIG_BYTES}-byte limit for a configuration ({} bytes)",
                meta.len()
            ),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").map(<[u8]>::to_vec).unwrap_or(bytes);
    String::from_utf8(bytes).map_err(|err| {
        let offset = err.utf8_error().valid_up_to();
        Finding::error(
            Check::Syntax,
            Loc::START,
            format!(
                "file is not valid UTF-8 (invalid byte at offset {offset}); is it a binary file?"
            ),
        )
    })
}

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Report {
    path: PathBuf,
    findings: Vec<Finding>,
    config: Option<Config>,
}

impl Report {
    /// The file checked.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every finding, in file order.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Whether there are no errors (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.config.is_some()
    }

    /// The checks with no finding at all.
    pub fn passed_checks(&self) -> Vec<Check> {
        Check::ALL.into_iter().filter(|c| !self.findings.iter().any(|f| f.check() == *c)).collect()
    }

    /// The configuration, or every finding as an error.
    pub fn into_config(self) -> Result<Config> {
        match self.config {
            Some(config) => Ok(config),
            None => Err(ConfigError::Invalid { path: self.path, findings: self.findings }),
        }
    }
}
