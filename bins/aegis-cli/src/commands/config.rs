//! `aegis-cli config validate` and `aegis-cli config show`.

use std::io::Write;
use std::path::PathBuf;

use aegis_config::{ConfigError, LoadOptions, Report, Severity};
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::Outcome;
use crate::style::Styles;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check the configuration and report every problem with its location.
    Validate,
    /// Print the effective configuration (defaults applied, secrets redacted).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(
    cmd: ConfigCommand,
    config: Option<PathBuf>,
    styles: Styles,
) -> anyhow::Result<Outcome> {
    let options = LoadOptions::new().path(config);
    let report = match options.check() {
        Ok(report) => report,
        Err(err @ ConfigError::NotFound { .. }) => return Err(err.into()),
        Err(err) => return Err(err).context("cannot load the configuration"),
    };
    match cmd {
        ConfigCommand::Validate => Ok(validate(&report, styles)),
        ConfigCommand::Show(args) => show(report, &args, styles),
    }
}

fn print_findings(report: &Report, styles: Styles) {
    for finding in report.findings() {
        let line = finding.display(report.path()).to_string();
        let label = format!("{}:", finding.severity().as_str());
        let coloured = match finding.severity() {
            Severity::Error => styles.red(&label),
            _ => styles.yellow(&label),
        };
        println!("{}", line.replacen(&label, &coloured, 1));
    }
}

fn validate(report: &Report, styles: Styles) -> Outcome {
    print_findings(report, styles);
    if !report.is_valid() {
        let errors = report.findings().iter().filter(|f| f.severity() == Severity::Error).count();
        let noun = if errors == 1 { "error" } else { "errors" };
        println!("{} {}: {errors} {noun}", styles.red("✗"), report.path().display());
        return Outcome::Failure;
    }
    for check in report.passed_checks() {
        println!("{} {}", styles.green("✓"), check.description());
    }
    println!("{} is valid", styles.bold(report.path().display()));
    Outcome::Success
}

fn show(report: Report, args: &ShowArgs, styles: Styles) -> anyhow::Result<Outcome> {
    if !report.is_valid() {
        print_findings(&report, styles);
        return Ok(Outcome::Failure);
    }
    let config = report.into_config()?;
    let value = config.to_redacted_json();
    let text = if args.json {
        serde_json::to_string_pretty(&value).context("cannot render the configuration as JSON")?
    } else {
        serde_saphyr::to_string(&value).context("cannot render the configuration as YAML")?
    };
    writeln!(std::io::stdout().lock(), "{}", text.trim_end())?;
    Ok(Outcome::Success)
}
