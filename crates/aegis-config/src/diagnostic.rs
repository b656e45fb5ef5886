//! Located findings: what `config validate` prints, one per problem.

use std::fmt;
use std::path::Path;

use crate::node::Loc;

/// How serious a finding is. Errors make a configuration invalid; warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// The configuration works but probably not as intended.
    Warning,
}

impl Severity {
    /// The word printed before the message.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// The checks `config validate` runs, in the order it reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Check {
    /// The file can be read and is well-formed YAML.
    Syntax,
    /// Every `${VAR}` reference resolves.
    Variables,
    /// Keys are known, values have the expected types and ranges, required keys are present.
    Schema,
    /// Every step's `service` names a configured service.
    Services,
    /// Every step `type` is registered.
    StepTypes,
    /// Every step `condition` is known.
    Conditions,
    /// Service and webhook URLs are valid.
    Urls,
    /// Webhook event names are known.
    WebhookEvents,
    /// Step ids are unique within their workflow.
    StepIds,
    /// Every gate `artifact` (and `retry_from`) names an earlier step.
    GateArtifacts,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 10] = [
        Check::Syntax,
        Check::Variables,
        Check::Schema,
        Check::Services,
        Check::StepTypes,
        Check::Conditions,
        Check::Urls,
        Check::WebhookEvents,
        Check::StepIds,
        Check::GateArtifacts,
    ];

    /// What the ✓ line says when the check passes.
    pub fn description(self) -> &'static str {
        match self {
            Check::Syntax => "YAML syntax is valid",
            Check::Variables => "all ${VAR} references resolve",
            Check::Schema => "keys, types and values match the schema",
            Check::Services => "every step's service exists",
            Check::StepTypes => "every step type is registered",
            Check::Conditions => "every step condition is known",
            Check::Urls => "service and webhook URLs are valid",
            Check::WebhookEvents => "webhook event names are known",
            Check::StepIds => "step ids are unique within each workflow",
            Check::GateArtifacts => "gate artifacts name earlier steps",
        }
    }
}

/// One problem found in a configuration file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    severity: Severity,
    check: Check,
    loc: Loc,
    message: String,
}

impl Finding {
    pub(crate) fn error(check: Check, loc: Loc, message: impl Into<String>) -> Finding {
        Finding { severity: Severity::Error, check, loc, message: message.into() }
    }

    pub(crate) fn warning(check: Check, loc: Loc, message: impl Into<String>) -> Finding {
        Finding { severity: Severity::Warning, check, loc, message: message.into() }
    }

    /// Error or warning.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The check that produced the finding.
    pub fn check(&self) -> Check {
        self.check
    }

    /// Where in the file the finding points.
    pub fn loc(&self) -> Loc {
        self.loc
    }

    /// What is wrong, naming the key by its path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Formats the finding as `path:line:col: error: message`.
    pub fn display<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        DisplayFinding { finding: self, file }
    }
}

struct DisplayFinding<'a> {
    finding: &'a Finding,
    file: &'a Path,
}

impl fmt::Display for DisplayFinding<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Finding { severity, loc, message, .. } = self.finding;
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            loc.line,
            loc.col,
            severity.as_str(),
            message
        )
    }
}

/// Orders findings by position so output reads top to bottom.
pub(crate) fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| a.loc.cmp(&b.loc).then(a.severity.cmp(&b.severity)));
}
