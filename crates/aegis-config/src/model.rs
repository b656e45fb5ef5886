//! The validated configuration: what the rest of Aegis reads.
//!
//! Values here are checked and defaulted; fields are private and read through getters
//! so that invariants established by validation cannot be broken afterwards. The types
//! serialize to the effective configuration `config show` prints, with secrets redacted.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};
use url::Url;

/// Text that must not be shown: API keys, webhook secrets, and values that came from
/// `${VAR}` in a field that may hold credentials. `Debug` and `Serialize` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// What is shown instead of a secret.
    pub const REDACTED: &'static str = "***";

    pub(crate) fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (a comparison, a header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Secret::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Secret::REDACTED)
    }
}

/// A string value that is redacted when shown (`Debug`, `Serialize`) if it is a
/// secret: every HTTP header value, and command arguments, environment values and
/// request paths that `${VAR}` produced.
#[derive(Clone, PartialEq, Eq)]
pub struct MaybeSecret {
    value: String,
    secret: bool,
}

impl MaybeSecret {
    pub(crate) fn new(value: String, secret: bool) -> MaybeSecret {
        MaybeSecret { value, secret }
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The same value, redacted when shown whatever produced it.
    pub(crate) fn into_secret(self) -> MaybeSecret {
        MaybeSecret { secret: true, ..self }
    }
}

impl fmt::Debug for MaybeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret { f.write_str(Secret::REDACTED) } else { fmt::Debug::fmt(&self.value, f) }
    }
}

impl Serialize for MaybeSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.secret { Secret::REDACTED } else { &self.value })
    }
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A URL as it may be shown: any password it carries as `***`
/// (`https://u:***@host/`).
pub fn shown_url(url: &Url) -> String {
    if url.password().is_some() {
        let mut shown = url.clone();
        // Setting a password only fails for URLs that cannot have one, which this does.
        let _ = shown.set_password(Some(Secret::REDACTED));
        shown.into()
    } else {
        url.as_str().to_owned()
    }
}

/// URLs are shown without any password they carry.
fn redacted_url<S: Serializer>(url: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shown_url(url))
}

fn opt_redacted_url<S: Serializer>(url: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => redacted_url(url, s),
        None => s.serialize_none(),
    }
}

/// The validated `.aegis.yaml`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub(crate) source: Option<PathBuf>,
    pub(crate) aegis: AegisInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) llm: Option<LlmConfig>,
    pub(crate) server: ServerConfig,
    pub(crate) data_dir: PathBuf,
    #[serde(flatten)]
    pub(crate) history: HistoryConfig,
    pub(crate) event_log_size: usize,
    pub(crate) auth: AuthConfig,
    pub(crate) services: IndexMap<String, Service>,
    pub(crate) workflows: IndexMap<String, Workflow>,
    pub(crate) webhooks: Vec<Webhook>,
}

impl Config {
    /// The file this configuration was loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Product name and version, shown by `/api/portfolio`.
    pub fn aegis(&self) -> &AegisInfo {
        &self.aegis
    }

    /// The `llm` section of Python-era configurations: kept and shown, not used.
    pub fn llm(&self) -> Option<&LlmConfig> {
        self.llm.as_ref()
    }

    /// HTTP server settings.
    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// Where run artifacts and event logs live (`runs/<run_id>/`), resolved against the
    /// configuration file's folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// History store settings, with `AEGIS_DB_PATH` applied.
    pub fn history(&self) -> &HistoryConfig {
        &self.history
    }

    /// How many recent events are kept in memory for `/api/events`.
    pub fn event_log_size(&self) -> usize {
        self.event_log_size
    }

    /// Credentials and read protection.
    pub fn auth(&self) -> &AuthConfig {
        &self.auth
    }

    /// Downstream QA services by key, in file order.
    pub fn services(&self) -> &IndexMap<String, Service> {
        &self.services
    }

    /// Workflows by key, in file order.
    pub fn workflows(&self) -> &IndexMap<String, Workflow> {
        &self.workflows
    }

    /// Webhook subscriptions.
    pub fn webhooks(&self) -> &[Webhook] {
        &self.webhooks
    }

    /// The effective configuration as JSON, secrets redacted.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        // Serializing plain data into a JSON value cannot fail: every map key is a string.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// `aegis:` — the product's name and version.
#[derive(Clone, Debug, Serialize)]
pub struct AegisInfo {
    pub(crate) name: String,
    pub(crate) version: String,
}

impl AegisInfo {
    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Version string.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// `llm:` from Python-era configurations.
#[derive(Clone, Debug, Serialize)]
pub struct LlmConfig {
    #[serde(serialize_with = "opt_redacted_url")]
    pub(crate) ollama_base_url: Option<Url>,
    pub(crate) default_model: Option<String>,
    #[serde(serialize_with = "opt_seconds")]
    pub(crate) timeout: Option<Duration>,
}

impl LlmConfig {
    /// Base URL of the Ollama server.
    pub fn ollama_base_url(&self) -> Option<&Url> {
        self.ollama_base_url.as_ref()
    }

    /// Model name.
    pub fn default_model(&self) -> Option<&str> {
        self.default_model.as_deref()
    }

    /// Request timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// `server:` — how `aegis-server` listens.
#[derive(Clone, Debug, Serialize)]
pub struct ServerConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) allow_external_bind: bool,
    pub(crate) base_path: String,
    pub(crate) cors_origins: Vec<String>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) max_concurrent_runs: usize,
    pub(crate) max_queued_runs: usize,
    pub(crate) max_body_bytes: usize,
    #[serde(serialize_with = "seconds")]
    pub(crate) shutdown_grace: Duration,
}

impl ServerConfig {
    /// Address to bind; loopback by default.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port to bind.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether a non-loopback `host` is allowed (auth must be configured too).
    pub fn allow_external_bind(&self) -> bool {
        self.allow_external_bind
    }

    /// Prefix the API and dashboard are served under: empty, or `/segment…` without a
    /// trailing slash.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Origins allowed by CORS; empty means CORS is off. `*` allows any origin.
    pub fn cors_origins(&self) -> &[String] {
        &self.cors_origins
    }

    /// Proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    /// Runs executing at once across all workflows.
    pub fn max_concurrent_runs(&self) -> usize {
        self.max_concurrent_runs
    }

    /// Runs that may wait for a slot before new ones are refused (HTTP 429).
    pub fn max_queued_runs(&self) -> usize {
        self.max_queued_runs
    }

    /// Largest accepted request body.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// How long shutdown waits for running runs before recording them `interrupted`.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// Whether `host` is a loopback address (`localhost`, `127.0.0.0/8`, `::1`).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

/// Whether `host` names the loopback interface: `localhost`, `127.0.0.0/8` or `::1`
/// (brackets allowed).
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An address range: one IP address (`10.0.0.5`) or a CIDR block (`10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => {
                (addr.parse::<IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?))
            }
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where run history is kept.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryConfig {
    #[serde(rename = "history_db_path")]
    pub(crate) db_path: PathBuf,
    #[serde(rename = "history_max_records")]
    pub(crate) max_records: u32,
}

impl HistoryConfig {
    /// The SQLite file: `AEGIS_DB_PATH` if set, else `history_db_path` resolved against
    /// the configuration file's folder. `:memory:` keeps history in memory.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Finished runs kept per workflow; 0 keeps all.
    pub fn max_records(&self) -> u32 {
        self.max_records
    }
}

/// A role: what a key may do. Ordered: `Viewer < Operator < Admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Reads runs, services, events.
    Viewer,
    /// Also starts and cancels runs and decides gates.
    Operator,
    /// Also manages webhook deliveries.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `auth:` — API keys.
#[derive(Clone, Debug, Serialize)]
pub struct AuthConfig {
    pub(crate) keys: Vec<ApiKey>,
    pub(crate) protect_reads: bool,
}

impl AuthConfig {
    /// Every key, including the `api_key` shorthand (id `api_key`, role admin).
    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// Auth is on when at least one key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether reads need a viewer key too.
    pub fn protect_reads(&self) -> bool {
        self.protect_reads
    }
}

/// A named API key with a role.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKey {
    pub(crate) id: String,
    pub(crate) key: Secret,
    pub(crate) role: Role,
}

impl ApiKey {
    /// The key's name, recorded as who decided a gate; never the key itself.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret the client presents.
    pub fn key(&self) -> &Secret {
        &self.key
    }

    /// What the key may do.
    pub fn role(&self) -> Role {
        self.role
    }
}

/// A downstream QA service.
#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub(crate) key: String,
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    #[serde(serialize_with = "redacted_url")]
    pub(crate) url: Url,
    pub(crate) health_endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) api_key_env: Option<String>,
    pub(crate) features: Vec<String>,
    #[serde(serialize_with = "opt_redacted_url", skip_serializing_if = "Option::is_none")]
    pub(crate) repo_url: Option<Url>,
    #[serde(serialize_with = "opt_redacted_url", skip_serializing_if = "Option::is_none")]
    pub(crate) docs_url: Option<Url>,
}

impl Service {
    /// The key under `services:`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Display name (the key when not given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free text.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Base URL; step paths are joined onto it.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Path probed for health, starting with `/`.
    pub fn health_endpoint(&self) -> &str {
        &self.health_endpoint
    }

    /// Name of the environment variable whose value is sent as `X-API-Key`.
    pub fn api_key_env(&self) -> Option<&str> {
        self.api_key_env.as_deref()
    }

    /// Feature names shown on the dashboard.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Source repository.
    pub fn repo_url(&self) -> Option<&Url> {
        self.repo_url.as_ref()
    }

    /// Documentation.
    pub fn docs_url(&self) -> Option<&Url> {
        self.docs_url.as_ref()
    }
}

/// A named workflow.
#[derive(Clone, Debug, Serialize)]
pub struct Workflow {
    pub(crate) key: String,
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) concurrency: Option<usize>,
    pub(crate) steps: Vec<StepDef>,
}

impl Workflow {
    /// The key under `workflows:`, used in URLs and `aegis-cli run`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Display name (the key when not given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free text.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// At most this many runs of the workflow at once; others queue.
    pub fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }

    /// The steps, in order; never empty.
    pub fn steps(&self) -> &[StepDef] {
        &self.steps
    }

    /// The step with id `id`.
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// When a step runs, judged on the steps before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Condition {
    /// Every earlier step succeeded or was skipped (the default).
    #[default]
    OnSuccess,
    /// Some earlier step failed.
    OnFailure,
    /// Some earlier step reported test failures.
    HasFailures,
    /// Regardless of earlier steps.
    Always,
}

impl Condition {
    /// Every condition.
    pub const ALL: [Condition; 4] =
        [Condition::OnSuccess, Condition::OnFailure, Condition::HasFailures, Condition::Always];

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::OnSuccess => "on_success",
            Condition::OnFailure => "on_failure",
            Condition::HasFailures => "has_failures",
            Condition::Always => "always",
        }
    }

    /// Parses a condition name.
    pub fn parse(name: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// One step of a workflow.
#[derive(Clone, Debug, Serialize)]
pub struct StepDef {
    pub(crate) id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(flatten)]
    pub(crate) kind: StepKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) service: Option<String>,
    pub(crate) condition: Condition,
    pub(crate) parallel: bool,
    pub(crate) retries: u32,
    #[serde(serialize_with = "seconds")]
    pub(crate) retry_delay: Duration,
    #[serde(serialize_with = "opt_seconds")]
    pub(crate) timeout: Option<Duration>,
}

impl StepDef {
    /// Unique within the workflow; names the step's artifact.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Display name, if given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The step type's name as written (`test`, `http`, or a registered custom type).
    pub fn type_name(&self) -> &str {
        self.kind.type_name()
    }

    /// What the step does, with its type's own fields.
    pub fn kind(&self) -> &StepKind {
        &self.kind
    }

    /// The service the step calls.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// When the step runs.
    pub fn condition(&self) -> Condition {
        self.condition
    }

    /// Whether the step runs together with adjacent parallel steps.
    pub fn parallel(&self) -> bool {
        self.parallel
    }

    /// Attempts after the first.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Delay before the first retry; doubled for each later one.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }

    /// Limit on one attempt (30 s by default). For a gate, how long it waits for a
    /// decision; `None` (only ever for gates) waits forever.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// The step types and their own fields.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepKind {
    /// `GET {service}/api/routes`.
    Discover,
    /// `POST {service}/api/runs`.
    Test,
    /// Files earlier failures with `POST {service}/api/v1/reports`.
    SubmitBugs,
    /// `POST {service}/api/runs` with `verify_only`.
    Verify,
    /// Summarizes earlier steps.
    Report,
    /// Any HTTP request.
    Http(HttpStep),
    /// A local program.
    Command(CommandStep),
    /// Waits for a human.
    Gate(GateStep),
    /// A type registered by an embedder.
    #[serde(untagged)]
    Custom(CustomStep),
}

impl StepKind {
    /// The built-in step type names.
    pub const BUILT_IN: [&'static str; 8] =
        ["discover", "test", "submit_bugs", "verify", "report", "http", "command", "gate"];

    /// The type name as written in configuration.
    pub fn type_name(&self) -> &str {
        match self {
            StepKind::Discover => "discover",
            StepKind::Test => "test",
            StepKind::SubmitBugs => "submit_bugs",
            StepKind::Verify => "verify",
            StepKind::Report => "report",
            StepKind::Http(_) => "http",
            StepKind::Command(_) => "command",
            StepKind::Gate(_) => "gate",
            StepKind::Custom(c) => &c.type_name,
        }
    }

    /// Whether a step of this type must name a service.
    pub fn needs_service(type_name: &str) -> bool {
        matches!(type_name, "discover" | "test" | "submit_bugs" | "verify" | "http")
    }
}

/// `http` step fields.
#[derive(Clone, Serialize)]
pub struct HttpStep {
    pub(crate) method: String,
    pub(crate) path: MaybeSecret,
    #[serde(skip)]
    pub(crate) body: Option<serde_json::Value>,
    /// The body as shown: strings that came from `${VAR}` as `***`.
    #[serde(rename = "body", skip_serializing_if = "Option::is_none")]
    pub(crate) shown_body: Option<serde_json::Value>,
    /// Every value is a secret: headers carry credentials (`Authorization`)
    /// whether written literally or through `${VAR}`.
    pub(crate) headers: IndexMap<String, MaybeSecret>,
    pub(crate) expect_status: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failures_from: Option<String>,
}

impl HttpStep {
    /// Upper-case HTTP method; `GET` by default.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Path joined onto the service URL, starting with `/`.
    pub fn path(&self) -> &str {
        self.path.expose()
    }

    /// JSON body. Strings of the form `{{ steps.ID.a.b }}` refer to earlier step data.
    pub fn body(&self) -> Option<&serde_json::Value> {
        self.body.as_ref()
    }

    /// Extra request headers.
    pub fn headers(&self) -> &IndexMap<String, MaybeSecret> {
        &self.headers
    }

    /// Accepted statuses; empty means any 2xx.
    pub fn expect_status(&self) -> &[u16] {
        &self.expect_status
    }

    /// JSON pointer to the response's list of failures.
    pub fn failures_from(&self) -> Option<&str> {
        self.failures_from.as_deref()
    }
}

// Debug output shows what `config show` shows: it ends up in logs.
impl fmt::Debug for HttpStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStep")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body", &self.shown_body)
            .field("headers", &self.headers)
            .field("expect_status", &self.expect_status)
            .field("failures_from", &self.failures_from)
            .finish()
    }
}

/// `command` step fields.
#[derive(Clone, Serialize)]
pub struct CommandStep {
    #[serde(skip)]
    pub(crate) argv: Vec<String>,
    /// `argv` as shown: arguments that came from `${VAR}` as `***`.
    #[serde(rename = "argv")]
    pub(crate) shown_argv: Vec<MaybeSecret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) env: IndexMap<String, MaybeSecret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) junit: Option<PathBuf>,
}

impl CommandStep {
    /// Program and arguments, run without a shell; never empty.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Working directory, resolved against the configuration file's folder.
    pub fn cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// Extra environment variables.
    pub fn env(&self) -> &IndexMap<String, MaybeSecret> {
        &self.env
    }

    /// JUnit XML report to parse after the command, relative to `cwd`.
    pub fn junit(&self) -> Option<&Path> {
        self.junit.as_deref()
    }
}

impl fmt::Debug for CommandStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandStep")
            .field("argv", &self.shown_argv)
            .field("cwd", &self.cwd)
            .field("env", &self.env)
            .field("junit", &self.junit)
            .finish()
    }
}

/// What happens when a gate's deadline passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnTimeout {
    /// Approve as if a reviewer had.
    Approve,
    /// Reject (the default).
    #[default]
    Reject,
}

/// `gate` step fields.
#[derive(Clone, Debug, Serialize)]
pub struct GateStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) artifact: Option<String>,
    pub(crate) on_timeout: OnTimeout,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_from: Option<String>,
}

impl GateStep {
    /// Shown to the reviewer.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The earlier step whose data the reviewer may edit.
    pub fn artifact(&self) -> Option<&str> {
        self.artifact.as_deref()
    }

    /// The decision taken at the deadline.
    pub fn on_timeout(&self) -> OnTimeout {
        self.on_timeout
    }

    /// The earlier step a rejection re-executes from.
    pub fn retry_from(&self) -> Option<&str> {
        self.retry_from.as_deref()
    }
}

/// A step of a type registered by an embedder.
#[derive(Clone, Serialize)]
pub struct CustomStep {
    #[serde(rename = "type")]
    pub(crate) type_name: String,
    #[serde(skip)]
    pub(crate) with: serde_json::Value,
    /// `with` as shown: strings that came from `${VAR}` as `***`.
    #[serde(rename = "with")]
    pub(crate) shown_with: serde_json::Value,
}

impl CustomStep {
    /// The registered type name.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The step's `with:` options, `null` when absent.
    pub fn with(&self) -> &serde_json::Value {
        &self.with
    }
}

impl fmt::Debug for CustomStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomStep")
            .field("type_name", &self.type_name)
            .field("with", &self.shown_with)
            .finish()
    }
}

/// The event types Aegis emits, which webhooks may subscribe to.
pub const EVENT_TYPES: [&str; 16] = [
    "run.queued",
    "workflow.started",
    "step.started",
    "step.retrying",
    "step.completed",
    "step.skipped",
    "failure.detected",
    "artifact.created",
    "gate.waiting",
    "gate.approved",
    "gate.rejected",
    "gate.expired",
    "run.cancelled",
    "run.interrupted",
    "workflow.completed",
    "webhook.failed",
];

/// The HMAC key of a webhook secret, as the Standard Webhooks libraries
/// read it: `whsec_<base64>` is the decoded bytes; any other secret (or a
/// `whsec_` one that is not valid base64) is its UTF-8 bytes.
pub fn signing_key(secret: &str) -> Vec<u8> {
    use base64::Engine as _;
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// Secrets shorter than this many key bytes draw a `config validate` warning.
pub const MIN_SECRET_BYTES: usize = 24;

/// A webhook subscription.
#[derive(Clone, Debug, Serialize)]
pub struct Webhook {
    #[serde(serialize_with = "redacted_url")]
    pub(crate) url: Url,
    pub(crate) events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secret: Option<Secret>,
    pub(crate) max_attempts: u32,
    #[serde(serialize_with = "seconds")]
    pub(crate) retry_delay: Duration,
}

impl Webhook {
    /// Where deliveries are POSTed.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Event types delivered; `*` matches all.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Whether an event of type `event_type` is delivered here.
    pub fn matches(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event_type)
    }

    /// HMAC signing key; deliveries are unsigned without one.
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// The bytes deliveries are signed with, when a secret is set (see
    /// [`signing_key`]).
    pub fn signing_key(&self) -> Option<Vec<u8>> {
        self.secret.as_ref().map(|s| signing_key(s.expose()))
    }

    /// The URL as shown in the delivery log and `webhook.failed`: without
    /// any user name or password it carries.
    pub fn shown_url(&self) -> String {
        let mut shown = self.url.clone();
        // Both only fail for URLs that cannot carry credentials, which then have none.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.into()
    }

    /// Attempts before giving up.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Delay before the second attempt; doubled for each later one, capped at an hour.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }
}
