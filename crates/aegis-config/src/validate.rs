//! The second stage: raw structs become a validated [`Config`], with every problem
//! reported at its location.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use url::Url;

use crate::de::{Spanned, join_key};
use crate::diagnostic::{Check, Finding};
use crate::model::{
    AegisInfo, ApiKey, AuthConfig, CommandStep, Condition, Config, CustomStep, EVENT_TYPES,
    GateStep, HistoryConfig, HttpStep, IpNet, LlmConfig, MIN_SECRET_BYTES, MaybeSecret, OnTimeout,
    Role, Secret, ServerConfig, Service, StepDef, StepKind, Webhook, Workflow, is_loopback_host,
    signing_key,
};
use crate::node::Loc;
use crate::raw::{
    Number, RawAuth, RawConfig, RawServer, RawService, RawStep, RawWebhook, RawWorkflow,
    TYPE_FIELDS,
};
use crate::suggest::did_you_mean;

/// Defaults of SPEC section 3.
pub(crate) mod defaults {
    pub(crate) const HOST: &str = "127.0.0.1";
    pub(crate) const PORT: u16 = 8000;
    pub(crate) const MAX_CONCURRENT_RUNS: usize = 16;
    pub(crate) const MAX_QUEUED_RUNS: usize = 1000;
    pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
    pub(crate) const SHUTDOWN_GRACE_SECS: f64 = 10.0;
    pub(crate) const DATA_DIR: &str = "./aegis-data";
    pub(crate) const HISTORY_DB_PATH: &str = "aegis_history.db";
    pub(crate) const EVENT_LOG_SIZE: usize = 100;
    pub(crate) const HEALTH_ENDPOINT: &str = "/health";
    pub(crate) const RETRY_DELAY_SECS: f64 = 1.0;
    pub(crate) const STEP_TIMEOUT_SECS: f64 = 30.0;
    pub(crate) const WEBHOOK_EVENTS: &[&str] = &["workflow.completed"];
    pub(crate) const WEBHOOK_MAX_ATTEMPTS: u32 = 10;
    pub(crate) const WEBHOOK_RETRY_DELAY_SECS: f64 = 5.0;
}

/// What validation needs beyond the file itself.
pub(crate) struct Context<'a> {
    /// Folder relative paths are resolved against.
    pub(crate) base_dir: &'a Path,
    /// Nodes the schema stage already reported: a node gets one finding, so a value of
    /// the wrong type is not reported again as out of range.
    pub(crate) flagged: HashSet<Loc>,
    /// `AEGIS_DB_PATH`, when set.
    pub(crate) db_path_override: Option<PathBuf>,
    /// Step types registered besides the built-ins.
    pub(crate) extra_step_types: &'a [String],
}

struct Validator<'a> {
    ctx: &'a Context<'a>,
    findings: Vec<Finding>,
}

pub(crate) fn validate(raw: RawConfig, ctx: &Context<'_>) -> (Config, Vec<Finding>) {
    let mut v = Validator { ctx, findings: Vec::new() };
    let config = v.config(raw);
    (config, v.findings)
}

impl Validator<'_> {
    fn error(&mut self, check: Check, loc: Loc, message: impl Into<String>) {
        if self.ctx.flagged.contains(&loc) {
            return;
        }
        self.findings.push(Finding::error(check, loc, message));
    }

    fn warning(&mut self, check: Check, loc: Loc, message: impl Into<String>) {
        self.findings.push(Finding::warning(check, loc, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let aegis = raw.aegis.map(|a| a.value).unwrap_or_default();
        let aegis = AegisInfo {
            name: aegis.name.map_or_else(|| "Aegis".to_owned(), |s| s.value),
            version: aegis
                .version
                .map_or_else(|| env!("CARGO_PKG_VERSION").to_owned(), |s| s.value),
        };
        let llm = raw.llm.map(|llm| {
            let llm = llm.value;
            LlmConfig {
                ollama_base_url: llm
                    .ollama_base_url
                    .and_then(|u| self.url(&u, "llm.ollama_base_url")),
                default_model: llm.default_model.map(|s| s.value),
                timeout: self.opt_seconds(llm.timeout.as_ref(), "llm.timeout", false),
            }
        });
        let server = self.server(raw.server.map(|s| s.value).unwrap_or_default());
        let data_dir = self.resolve(raw.data_dir.as_ref().map_or(defaults::DATA_DIR, |s| &s.value));
        let history = HistoryConfig {
            db_path: match &self.ctx.db_path_override {
                Some(path) => path.clone(),
                None => {
                    let path = raw
                        .history_db_path
                        .as_ref()
                        .map_or(defaults::HISTORY_DB_PATH, |s| &s.value);
                    if path == ":memory:" { PathBuf::from(path) } else { self.resolve(path) }
                }
            },
            max_records: self.int(
                raw.history_max_records.as_ref(),
                "history_max_records",
                0,
                u32::MAX.into(),
                0,
            ),
        };
        let event_log_size = self.int(
            raw.event_log_size.as_ref(),
            "event_log_size",
            1,
            1_000_000,
            defaults::EVENT_LOG_SIZE as i64,
        );
        let auth = self.auth(raw.auth.map(|a| a.value).unwrap_or_default());
        if !server.allow_external_bind && !is_loopback_host(&server.host) {
            self.warning(
                Check::Schema,
                Loc::START,
                format!(
                    "`server.host` is {:?}, not a loopback address: aegis-server will refuse to bind it unless `server.allow_external_bind` is true and auth is configured",
                    server.host
                ),
            );
        } else if !is_loopback_host(&server.host) && !auth.enabled() {
            self.warning(
                Check::Schema,
                Loc::START,
                "`server.allow_external_bind` is true but no API key is configured: aegis-server will refuse to bind a non-loopback address without auth",
            );
        }

        let mut services = IndexMap::new();
        if let Some(raw_services) = raw.services {
            for (key, service) in raw_services.value {
                let service = self.service(&key.value, service);
                services.insert(key.value, service);
            }
        }
        let mut workflows = IndexMap::new();
        if let Some(raw_workflows) = raw.workflows {
            for (key, workflow) in raw_workflows.value {
                let workflow = self.workflow(&key.value, workflow, &services);
                workflows.insert(key.value, workflow);
            }
        }
        let webhooks = raw
            .webhooks
            .map(|w| {
                w.value.into_iter().enumerate().filter_map(|(i, w)| self.webhook(i, w)).collect()
            })
            .unwrap_or_default();
        Config {
            source: None,
            aegis,
            llm,
            server,
            data_dir,
            history,
            event_log_size,
            auth,
            services,
            workflows,
            webhooks,
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        resolve_path(self.ctx.base_dir, path)
    }

    /// An integer in `min..=max`, or `default` when absent.
    fn int<T: TryFrom<i64> + Default>(
        &mut self,
        value: Option<&Spanned<Number>>,
        path: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> T {
        let chosen = match value {
            None => default,
            Some(Spanned { value: Number::Int(i), .. }) if (min..=max).contains(i) => *i,
            Some(v) => {
                let range = if max >= i64::from(u32::MAX) {
                    format!("an integer ≥ {min}")
                } else {
                    format!("an integer {min}-{max}")
                };
                self.error(
                    Check::Schema,
                    v.loc,
                    format!("`{path}`: expected {range}, found {}", v.value.describe()),
                );
                default
            }
        };
        // Every caller's range fits its target type, so the conversion always succeeds.
        T::try_from(chosen).unwrap_or_default()
    }

    /// A number of seconds; zero allowed only when `allow_zero`.
    fn opt_seconds(
        &mut self,
        value: Option<&Spanned<Number>>,
        path: &str,
        allow_zero: bool,
    ) -> Option<Duration> {
        let v = value?;
        let secs = match v.value {
            Number::Int(i) => Some(i as f64),
            Number::Float(f) if f.is_finite() => Some(f),
            _ => None,
        };
        // A week is far beyond any step or delivery; the cap keeps `Duration` in range.
        match secs {
            Some(secs)
                if (if allow_zero { secs >= 0.0 } else { secs > 0.0 }) && secs <= 604_800.0 =>
            {
                Some(Duration::from_secs_f64(secs))
            }
            _ => {
                let expected = if allow_zero {
                    "a number of seconds 0-604800"
                } else {
                    "a number of seconds > 0 and ≤ 604800"
                };
                self.error(
                    Check::Schema,
                    v.loc,
                    format!("`{path}`: expected {expected}, found {}", v.value.describe()),
                );
                None
            }
        }
    }

    fn seconds(
        &mut self,
        value: Option<&Spanned<Number>>,
        path: &str,
        allow_zero: bool,
        default: f64,
    ) -> Duration {
        self.opt_seconds(value, path, allow_zero)
            .unwrap_or_else(|| Duration::from_secs_f64(default))
    }

    fn url(&mut self, value: &Spanned<String>, path: &str) -> Option<Url> {
        match Url::parse(&value.value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            Ok(url) => {
                self.error(
                    Check::Urls,
                    value.loc,
                    format!(
                        "`{path}`: expected an http:// or https:// URL, found {:?} (scheme `{}`)",
                        value.value,
                        url.scheme()
                    ),
                );
                None
            }
            Err(err) => {
                self.error(
                    Check::Urls,
                    value.loc,
                    format!("`{path}`: invalid URL {:?}: {err}", value.value),
                );
                None
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let host = match raw.host {
            Some(h) if h.value.trim().is_empty() => {
                self.error(
                    Check::Schema,
                    h.loc,
                    "`server.host`: expected a host name or IP address, found \"\"",
                );
                defaults::HOST.to_owned()
            }
            Some(h) => h.value,
            None => defaults::HOST.to_owned(),
        };
        let base_path = match raw.base_path {
            None => String::new(),
            Some(p) => {
                let trimmed = p.value.trim_end_matches('/');
                if !trimmed.is_empty()
                    && (!trimmed.starts_with('/')
                        || trimmed.contains("//")
                        || trimmed.contains(char::is_whitespace))
                {
                    self.error(
                        Check::Schema,
                        p.loc,
                        format!("`server.base_path`: expected \"\" or a path like \"/aegis\", found {:?}", p.value),
                    );
                }
                trimmed.to_owned()
            }
        };
        let mut cors_origins = Vec::new();
        for (i, origin) in
            raw.cors_origins.map(|o| o.value).unwrap_or_default().into_iter().enumerate()
        {
            let path = format!("server.cors_origins[{i}]");
            if origin.value == "*" {
                cors_origins.push(origin.value);
                continue;
            }
            match Url::parse(&origin.value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.path() == "/" && url.query().is_none() && !origin.value.ends_with('/') => {
                    cors_origins.push(origin.value);
                }
                _ => self.error(
                    Check::Urls,
                    origin.loc,
                    format!("`{path}`: expected an origin like \"https://qa.example.com\" (scheme, host, optional port; no path) or \"*\", found {:?}", origin.value),
                ),
            }
        }
        let mut trusted_proxies = Vec::new();
        for (i, proxy) in
            raw.trusted_proxies.map(|o| o.value).unwrap_or_default().into_iter().enumerate()
        {
            match IpNet::parse(proxy.value.trim()) {
                Some(net) => trusted_proxies.push(net),
                None => self.error(
                    Check::Schema,
                    proxy.loc,
                    format!("`server.trusted_proxies[{i}]`: expected an IP address or CIDR block like \"10.0.0.0/8\", found {:?}", proxy.value),
                ),
            }
        }
        ServerConfig {
            host,
            port: self.int(raw.port.as_ref(), "server.port", 1, 65535, defaults::PORT.into()),
            allow_external_bind: raw.allow_external_bind.is_some_and(|b| b.value),
            base_path,
            cors_origins,
            trusted_proxies,
            max_concurrent_runs: self.int(
                raw.max_concurrent_runs.as_ref(),
                "server.max_concurrent_runs",
                1,
                10_000,
                defaults::MAX_CONCURRENT_RUNS as i64,
            ),
            max_queued_runs: self.int(
                raw.max_queued_runs.as_ref(),
                "server.max_queued_runs",
                0,
                1_000_000,
                defaults::MAX_QUEUED_RUNS as i64,
            ),
            max_body_bytes: self.int(
                raw.max_body_bytes.as_ref(),
                "server.max_body_bytes",
                1024,
                1024 * 1024 * 1024,
                defaults::MAX_BODY_BYTES as i64,
            ),
            shutdown_grace: self.seconds(
                raw.shutdown_grace.as_ref(),
                "server.shutdown_grace",
                true,
                defaults::SHUTDOWN_GRACE_SECS,
            ),
        }
    }

    fn auth(&mut self, raw: RawAuth) -> AuthConfig {
        let mut keys = Vec::new();
        if let Some(api_key) = raw.api_key
            && !api_key.value.is_empty()
        {
            self.check_key_strength(&api_key, "auth.api_key");
            keys.push(ApiKey {
                id: "api_key".to_owned(),
                key: Secret::new(api_key.value),
                role: Role::Admin,
            });
        }
        let mut seen_ids = HashSet::new();
        let mut seen_keys = HashSet::new();
        for (i, key) in raw.keys.map(|k| k.value).unwrap_or_default().into_iter().enumerate() {
            let path = format!("auth.keys[{i}]");
            let loc = key.loc;
            let key = key.value;
            let Some(id) = key.id else {
                self.error(Check::Schema, loc, format!("`{path}`: missing required key `id`"));
                continue;
            };
            if !seen_ids.insert(id.value.clone()) {
                self.error(
                    Check::Schema,
                    id.loc,
                    format!("`{path}.id`: duplicate key id {:?}", id.value),
                );
            }
            let role = match key.role {
                None => {
                    self.error(
                        Check::Schema,
                        loc,
                        format!(
                            "`{path}`: missing required key `role` (viewer, operator or admin)"
                        ),
                    );
                    continue;
                }
                Some(role) => match Role::parse(&role.value) {
                    Some(r) => r,
                    None => {
                        let mut message = format!(
                            "`{path}.role`: unknown role {:?}; expected viewer, operator or admin",
                            role.value
                        );
                        if let Some(hint) =
                            did_you_mean(&role.value, Role::ALL.iter().map(|r| r.as_str()))
                        {
                            message.push_str(&format!("; did you mean `{hint}`?"));
                        }
                        self.error(Check::Schema, role.loc, message);
                        continue;
                    }
                },
            };
            let Some(secret) = key.key else {
                self.error(Check::Schema, loc, format!("`{path}`: missing required key `key`"));
                continue;
            };
            if secret.value.is_empty() {
                self.error(
                    Check::Schema,
                    secret.loc,
                    format!("`{path}.key`: the key is empty; set it, or remove the entry"),
                );
                continue;
            }
            if !seen_keys.insert(secret.value.clone()) {
                self.error(
                    Check::Schema,
                    secret.loc,
                    format!(
                        "`{path}.key`: the same key is configured twice; each key must be unique"
                    ),
                );
            }
            self.check_key_strength(&secret, &format!("{path}.key"));
            keys.push(ApiKey { id: id.value, key: Secret::new(secret.value), role });
        }
        AuthConfig { keys, protect_reads: raw.protect_reads.is_some_and(|p| p.value) }
    }

    fn check_key_strength(&mut self, key: &Spanned<String>, path: &str) {
        if key.value.chars().count() < 16 {
            self.warning(
                Check::Schema,
                key.loc,
                format!("`{path}`: the key is shorter than 16 characters and easy to guess"),
            );
        }
    }

    fn service(&mut self, key: &str, raw: Spanned<RawService>) -> Service {
        let path = format!("services.{key}");
        let loc = raw.loc;
        let raw = raw.value;
        let url = match &raw.url {
            Some(url) => self.url(url, &format!("{path}.url")),
            None => {
                self.error(Check::Schema, loc, format!("`{path}`: missing required key `url`"));
                None
            }
        };
        let health_endpoint = match raw.health_endpoint {
            Some(h) if !h.value.starts_with('/') => {
                self.error(
                    Check::Schema,
                    h.loc,
                    format!(
                        "`{path}.health_endpoint`: expected a path starting with \"/\", found {:?}",
                        h.value
                    ),
                );
                h.value
            }
            Some(h) => h.value,
            None => defaults::HEALTH_ENDPOINT.to_owned(),
        };
        if let Some(env) = &raw.api_key_env
            && !is_env_name(&env.value)
        {
            self.error(
                Check::Schema,
                env.loc,
                format!("`{path}.api_key_env`: expected an environment variable name like \"QAAGENT_API_KEY\", found {:?}", env.value),
            );
        }
        Service {
            key: key.to_owned(),
            name: raw.name.map_or_else(|| key.to_owned(), |n| n.value),
            description: raw.description.map(|d| d.value),
            url: url.unwrap_or_else(placeholder_url),
            health_endpoint,
            api_key_env: raw.api_key_env.map(|e| e.value),
            features: raw
                .features
                .map(|f| f.value.into_iter().map(|f| f.value).collect())
                .unwrap_or_default(),
            repo_url: raw.repo_url.and_then(|u| self.url(&u, &format!("{path}.repo_url"))),
            docs_url: raw.docs_url.and_then(|u| self.url(&u, &format!("{path}.docs_url"))),
        }
    }

    fn workflow(
        &mut self,
        key: &str,
        raw: Spanned<RawWorkflow>,
        services: &IndexMap<String, Service>,
    ) -> Workflow {
        let path = format!("workflows.{key}");
        let loc = raw.loc;
        let raw = raw.value;
        let concurrency = raw
            .concurrency
            .as_ref()
            .map(|c| self.int(Some(c), &format!("{path}.concurrency"), 1, 10_000, 1));
        let raw_steps = match raw.steps {
            None => {
                self.error(Check::Schema, loc, format!("`{path}`: missing required key `steps`"));
                Vec::new()
            }
            Some(steps) if steps.value.is_empty() => {
                self.error(
                    Check::Schema,
                    steps.loc,
                    format!("`{path}.steps`: a workflow needs at least one step"),
                );
                Vec::new()
            }
            Some(steps) => steps.value,
        };

        // Explicit ids first, so derived ids can avoid them.
        let mut taken: HashSet<String> = HashSet::new();
        for (i, step) in raw_steps.iter().enumerate() {
            if let Some(id) = &step.value.id {
                if !is_step_id(&id.value) {
                    self.error(
                        Check::StepIds,
                        id.loc,
                        format!("`{path}.steps[{i}].id`: expected letters, digits, `_` or `-`, found {:?}", id.value),
                    );
                } else if !taken.insert(id.value.clone()) {
                    self.error(
                        Check::StepIds,
                        id.loc,
                        format!("`{path}.steps[{i}].id`: duplicate step id {:?}", id.value),
                    );
                }
            }
        }
        let mut steps = Vec::with_capacity(raw_steps.len());
        let mut earlier: Vec<String> = Vec::new();
        for (i, step) in raw_steps.into_iter().enumerate() {
            let step_path = format!("{path}.steps[{i}]");
            let id = match &step.value.id {
                Some(id) => id.value.clone(),
                None => {
                    let base = step
                        .value
                        .step_type
                        .as_ref()
                        .map_or("step", |t| t.value.as_str())
                        .to_owned();
                    let mut candidate = base.clone();
                    let mut n = 2;
                    while taken.contains(&candidate) {
                        candidate = format!("{base}_{n}");
                        n += 1;
                    }
                    taken.insert(candidate.clone());
                    candidate
                }
            };
            if let Some(step) = self.step(&step_path, id.clone(), step, services, &earlier) {
                steps.push(step);
            }
            earlier.push(id);
        }
        Workflow {
            key: key.to_owned(),
            name: raw.name.map_or_else(|| key.to_owned(), |n| n.value),
            description: raw.description.map(|d| d.value),
            concurrency,
            steps,
        }
    }

    fn step(
        &mut self,
        path: &str,
        id: String,
        raw: Spanned<RawStep>,
        services: &IndexMap<String, Service>,
        earlier: &[String],
    ) -> Option<StepDef> {
        let loc = raw.loc;
        let raw = raw.value;
        let Some(type_name) = raw.step_type.clone() else {
            self.error(Check::Schema, loc, format!("`{path}`: missing required key `type`"));
            return None;
        };
        let known = StepKind::BUILT_IN.contains(&type_name.value.as_str())
            || self.ctx.extra_step_types.contains(&type_name.value);
        if !known {
            let candidates = StepKind::BUILT_IN
                .iter()
                .copied()
                .chain(self.ctx.extra_step_types.iter().map(String::as_str));
            let mut message = format!("`{path}.type`: unknown step type {:?}", type_name.value);
            match did_you_mean(&type_name.value, candidates) {
                Some(hint) => message.push_str(&format!("; did you mean `{hint}`?")),
                None => message
                    .push_str(&format!("; expected one of {}", StepKind::BUILT_IN.join(", "))),
            }
            self.error(Check::StepTypes, type_name.loc, message);
            return None;
        }
        let type_name = type_name.value;
        for (field, field_loc) in raw.type_fields_set() {
            let owners = TYPE_FIELDS.iter().find(|(f, _)| *f == field).map_or(&[][..], |(_, o)| *o);
            if !owners.contains(&type_name.as_str()) {
                self.error(
                    Check::Schema,
                    field_loc,
                    format!("`{path}.{field}`: not a field of `{type_name}` steps (it belongs to `{}` steps)", owners.join("`, `")),
                );
            }
        }
        let custom = !StepKind::BUILT_IN.contains(&type_name.as_str());
        if let Some(with) = &raw.with
            && !custom
        {
            self.error(
                Check::Schema,
                with.loc,
                format!("`{path}.with`: only steps of registered custom types take `with`"),
            );
        }

        let service = match &raw.service {
            Some(service) => {
                if !services.contains_key(&service.value) {
                    let mut message =
                        format!("`{path}.service`: unknown service {:?}", service.value);
                    match did_you_mean(&service.value, services.keys().map(String::as_str)) {
                        Some(hint) => message.push_str(&format!("; did you mean `{hint}`?")),
                        None if services.is_empty() => {
                            message.push_str("; no services are configured")
                        }
                        None => message.push_str(&format!(
                            "; configured services: {}",
                            services.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                        )),
                    }
                    self.error(Check::Services, service.loc, message);
                } else if matches!(type_name.as_str(), "report" | "command" | "gate") {
                    self.warning(
                        Check::Services,
                        service.loc,
                        format!(
                            "`{path}.service`: `{type_name}` steps call no service; this is ignored"
                        ),
                    );
                }
                Some(service.value.clone())
            }
            None if StepKind::needs_service(&type_name) => {
                self.error(
                    Check::Services,
                    loc,
                    format!("`{path}`: `{type_name}` steps need a `service`"),
                );
                None
            }
            None => None,
        };
        let condition = match &raw.condition {
            None => Condition::default(),
            Some(c) => Condition::parse(&c.value).unwrap_or_else(|| {
                let mut message = format!("`{path}.condition`: unknown condition {:?}", c.value);
                match did_you_mean(&c.value, Condition::ALL.iter().map(|c| c.as_str())) {
                    Some(hint) => message.push_str(&format!("; did you mean `{hint}`?")),
                    None => message
                        .push_str("; expected one of on_success, on_failure, has_failures, always"),
                }
                self.error(Check::Conditions, c.loc, message);
                Condition::default()
            }),
        };
        let retries = self.int(raw.retries.as_ref(), &format!("{path}.retries"), 0, 100, 0);
        let retry_delay = self.seconds(
            raw.retry_delay.as_ref(),
            &format!("{path}.retry_delay"),
            true,
            defaults::RETRY_DELAY_SECS,
        );
        let is_gate = type_name == "gate";
        let timeout =
            match self.opt_seconds(raw.timeout.as_ref(), &format!("{path}.timeout"), false) {
                Some(t) => Some(t),
                None if is_gate => None,
                None => Some(Duration::from_secs_f64(defaults::STEP_TIMEOUT_SECS)),
            };
        let parallel = raw.parallel.as_ref().is_some_and(|p| p.value);
        if is_gate && parallel {
            self.error(
                Check::Schema,
                raw.parallel.as_ref().map_or(loc, |p| p.loc),
                format!("`{path}.parallel`: a gate cannot run in parallel with other steps"),
            );
        }

        let kind = match type_name.as_str() {
            "discover" => StepKind::Discover,
            "test" => StepKind::Test,
            "submit_bugs" => StepKind::SubmitBugs,
            "verify" => StepKind::Verify,
            "report" => StepKind::Report,
            "http" => StepKind::Http(self.http_step(path, loc, &raw, earlier)),
            "command" => StepKind::Command(self.command_step(path, loc, &raw)),
            "gate" => StepKind::Gate(self.gate_step(path, &raw, earlier)),
            _ => StepKind::Custom(CustomStep {
                type_name: type_name.clone(),
                with: raw.with.as_ref().map_or(serde_json::Value::Null, |w| w.value.value.clone()),
                shown_with: raw
                    .with
                    .as_ref()
                    .map_or(serde_json::Value::Null, |w| w.value.shown.clone()),
            }),
        };
        Some(StepDef {
            id,
            name: raw.name.map(|n| n.value),
            kind,
            service,
            condition,
            parallel,
            retries,
            retry_delay,
            timeout,
        })
    }

    fn http_step(&mut self, path: &str, loc: Loc, raw: &RawStep, earlier: &[String]) -> HttpStep {
        const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        let method = match &raw.method {
            None => "GET".to_owned(),
            Some(m) => {
                let upper = m.value.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    self.error(
                        Check::Schema,
                        m.loc,
                        format!(
                            "`{path}.method`: expected one of {}, found {:?}",
                            METHODS.join(", "),
                            m.value
                        ),
                    );
                }
                upper
            }
        };
        let request_path = match &raw.path {
            None => {
                self.error(Check::Schema, loc, format!("`{path}`: `http` steps need a `path`"));
                String::new()
            }
            Some(p) if !p.value.starts_with('/') => {
                self.error(
                    Check::Schema,
                    p.loc,
                    format!(
                        "`{path}.path`: expected a path starting with \"/\", found {:?}",
                        p.value
                    ),
                );
                p.value.clone()
            }
            Some(p) => p.value.clone(),
        };
        let request_path =
            MaybeSecret::new(request_path, raw.path.as_ref().is_some_and(|p| p.interpolated));
        if let Some(body) = &raw.body {
            let mut refs = Vec::new();
            collect_step_refs(&body.value.value, &mut refs);
            for step_ref in refs {
                if !earlier.contains(&step_ref) {
                    self.error(
                        Check::StepIds,
                        body.loc,
                        format!("`{path}.body`: refers to step {step_ref:?}, which is not an earlier step of this workflow"),
                    );
                }
            }
        }
        let expect_status = match &raw.expect_status {
            None => Vec::new(),
            Some(s) => {
                let codes: Option<Vec<u16>> = match &s.value {
                    serde_json::Value::Array(items) => items.iter().map(status_code).collect(),
                    single => status_code(single).map(|c| vec![c]),
                };
                codes.filter(|c| !c.is_empty()).unwrap_or_else(|| {
                    self.error(
                        Check::Schema,
                        s.loc,
                        format!("`{path}.expect_status`: expected an HTTP status 100-599 or a list of them, found {}", s.value),
                    );
                    Vec::new()
                })
            }
        };
        if let Some(pointer) = &raw.failures_from
            && !(pointer.value.is_empty() || pointer.value.starts_with('/'))
        {
            self.error(
                Check::Schema,
                pointer.loc,
                format!("`{path}.failures_from`: expected a JSON pointer like \"/results/failures\", found {:?}", pointer.value),
            );
        }
        HttpStep {
            method,
            path: request_path,
            body: raw.body.as_ref().map(|b| b.value.value.clone()),
            shown_body: raw.body.as_ref().map(|b| b.value.shown.clone()),
            headers: self
                .string_map(raw.headers.as_ref(), &format!("{path}.headers"), false)
                .into_iter()
                .map(|(name, value)| (name, value.into_secret()))
                .collect(),
            expect_status,
            failures_from: raw.failures_from.as_ref().map(|p| p.value.clone()),
        }
    }

    fn command_step(&mut self, path: &str, loc: Loc, raw: &RawStep) -> CommandStep {
        let argv: Vec<String> = raw
            .argv
            .as_ref()
            .map(|a| a.value.iter().map(|s| s.value.clone()).collect())
            .unwrap_or_default();
        match &raw.argv {
            None => self.error(
                Check::Schema,
                loc,
                format!("`{path}`: `command` steps need an `argv` list"),
            ),
            Some(a) if argv.is_empty() => self.error(
                Check::Schema,
                a.loc,
                format!("`{path}.argv`: expected a non-empty list (program, then arguments)"),
            ),
            Some(a) if argv[0].trim().is_empty() => {
                let at = a.value.first().map_or(a.loc, |s| s.loc);
                self.error(
                    Check::Schema,
                    at,
                    format!("`{path}.argv[0]`: the program name is empty"),
                );
            }
            Some(_) => {}
        }
        let shown_argv = raw
            .argv
            .as_ref()
            .map(|a| {
                a.value.iter().map(|s| MaybeSecret::new(s.value.clone(), s.interpolated)).collect()
            })
            .unwrap_or_default();
        CommandStep {
            argv,
            shown_argv,
            cwd: raw.cwd.as_ref().map(|c| self.resolve(&c.value)),
            env: self.string_map(raw.env.as_ref(), &format!("{path}.env"), true),
            junit: raw.junit.as_ref().map(|j| PathBuf::from(&j.value)),
        }
    }

    fn gate_step(&mut self, path: &str, raw: &RawStep, earlier: &[String]) -> GateStep {
        for (field, value) in [("artifact", &raw.artifact), ("retry_from", &raw.retry_from)] {
            if let Some(target) = value
                && !earlier.contains(&target.value)
            {
                let mut message = format!(
                    "`{path}.{field}`: {:?} is not an earlier step of this workflow",
                    target.value
                );
                match did_you_mean(&target.value, earlier.iter().map(String::as_str)) {
                    Some(hint) => message.push_str(&format!("; did you mean `{hint}`?")),
                    None if earlier.is_empty() => message.push_str("; the gate is the first step"),
                    None => message.push_str(&format!("; earlier steps: {}", earlier.join(", "))),
                }
                self.error(Check::GateArtifacts, target.loc, message);
            }
        }
        let on_timeout = match &raw.on_timeout {
            None => OnTimeout::default(),
            Some(o) => match o.value.as_str() {
                "approve" => OnTimeout::Approve,
                "reject" => OnTimeout::Reject,
                other => {
                    let mut message = format!(
                        "`{path}.on_timeout`: expected `approve` or `reject`, found {other:?}"
                    );
                    if let Some(hint) = did_you_mean(other, ["approve", "reject"]) {
                        message.push_str(&format!("; did you mean `{hint}`?"));
                    }
                    self.error(Check::Schema, o.loc, message);
                    OnTimeout::default()
                }
            },
        };
        GateStep {
            message: raw.message.as_ref().map(|m| m.value.clone()),
            artifact: raw.artifact.as_ref().map(|a| a.value.clone()),
            on_timeout,
            retry_from: raw.retry_from.as_ref().map(|r| r.value.clone()),
        }
    }

    fn string_map(
        &mut self,
        raw: Option<&Spanned<IndexMap<Spanned<String>, Spanned<String>>>>,
        path: &str,
        env_names: bool,
    ) -> IndexMap<String, MaybeSecret> {
        let mut out = IndexMap::new();
        for (key, value) in raw.map(|m| m.value.iter()).into_iter().flatten() {
            if env_names && !is_env_name(&key.value) {
                self.error(
                    Check::Schema,
                    key.loc,
                    format!(
                        "`{}`: expected an environment variable name, found {:?}",
                        join_key(path, &key.value),
                        key.value
                    ),
                );
            }
            out.insert(
                key.value.clone(),
                MaybeSecret::new(value.value.clone(), value.interpolated),
            );
        }
        out
    }

    /// Warns about a webhook secret that gives a short signing key, or a
    /// `whsec_` secret that is not base64 (it is then used as plain text).
    fn secret_strength(&mut self, path: &str, secret: &Spanned<String>) {
        use base64::Engine as _;
        let text = secret.value.as_str();
        if let Some(b64) = text.strip_prefix("whsec_")
            && base64::engine::general_purpose::STANDARD.decode(b64).is_err()
        {
            self.warning(
                Check::Schema,
                secret.loc,
                format!(
                    "`{path}.secret`: starts with `whsec_` but the rest is not base64, so the whole text is the signing key; receivers using a Standard Webhooks library will not verify it"
                ),
            );
        }
        let bytes = signing_key(text).len();
        if bytes < MIN_SECRET_BYTES {
            self.warning(
                Check::Schema,
                secret.loc,
                format!(
                    "`{path}.secret`: the signing key is {bytes} bytes; use at least {MIN_SECRET_BYTES} random bytes (e.g. `whsec_` and 32 bytes in base64)"
                ),
            );
        }
    }

    fn webhook(&mut self, index: usize, raw: Spanned<RawWebhook>) -> Option<Webhook> {
        let path = format!("webhooks[{index}]");
        let loc = raw.loc;
        let raw = raw.value;
        let url = match &raw.url {
            Some(url) => self.url(url, &format!("{path}.url")),
            None => {
                self.error(Check::Schema, loc, format!("`{path}`: missing required key `url`"));
                None
            }
        };
        let events = match raw.events {
            None => defaults::WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            Some(events) => {
                if events.value.is_empty() {
                    self.warning(
                        Check::WebhookEvents,
                        events.loc,
                        format!("`{path}.events`: the list is empty, so nothing is ever delivered"),
                    );
                }
                let mut out = Vec::new();
                for (i, event) in events.value.into_iter().enumerate() {
                    if event.value != "*" && !EVENT_TYPES.contains(&event.value.as_str()) {
                        let mut message =
                            format!("`{path}.events[{i}]`: unknown event type {:?}", event.value);
                        match did_you_mean(&event.value, EVENT_TYPES) {
                            Some(hint) => message.push_str(&format!("; did you mean `{hint}`?")),
                            None => message.push_str("; use an event type such as `workflow.completed`, or \"*\" for all"),
                        }
                        self.error(Check::WebhookEvents, event.loc, message);
                    }
                    out.push(event.value);
                }
                out
            }
        };
        let max_attempts = self.int(
            raw.max_attempts.as_ref(),
            &format!("{path}.max_attempts"),
            1,
            1000,
            defaults::WEBHOOK_MAX_ATTEMPTS.into(),
        );
        let retry_delay = self.seconds(
            raw.retry_delay.as_ref(),
            &format!("{path}.retry_delay"),
            false,
            defaults::WEBHOOK_RETRY_DELAY_SECS,
        );
        let secret = raw.secret.filter(|s| !s.value.is_empty());
        if let Some(secret) = &secret {
            self.secret_strength(&path, secret);
        }
        Some(Webhook {
            url: url?,
            events,
            secret: secret.map(|s| Secret::new(s.value)),
            max_attempts,
            retry_delay,
        })
    }
}

/// `path` against the configuration's folder: absolute paths stay, relative ones are
/// joined, and `./` segments dropped (`./aegis-data` under `/srv/qa` reads as
/// `/srv/qa/aegis-data`).
fn resolve_path(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    let joined = if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) };
    let cleaned: PathBuf =
        joined.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    // `cwd: .` next to a config given as a bare file name is the working directory,
    // not an empty path (which no process can change into).
    if cleaned.as_os_str().is_empty() { PathBuf::from(".") } else { cleaned }
}

fn status_code(value: &serde_json::Value) -> Option<u16> {
    value.as_u64().filter(|c| (100..=599).contains(c)).and_then(|c| u16::try_from(c).ok())
}

/// Collects the step ids named by `{{ steps.ID… }}` references in a request body.
pub(crate) fn collect_step_refs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else { break };
                let expr = after[..end].trim();
                if let Some(reference) = expr.strip_prefix("steps.") {
                    let id = reference.split('.').next().unwrap_or_default();
                    out.push(id.to_owned());
                }
                rest = &after[end + 2..];
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_step_refs(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_step_refs(v, out)),
        _ => {}
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_step_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Stands in for a URL that failed validation; the configuration is invalid then and
/// never handed out.
fn placeholder_url() -> Url {
    Url::parse("http://invalid.invalid/").expect("a constant URL parses")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::resolve_path;

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        assert_eq!(
            resolve_path(Path::new("/srv/qa"), "./aegis-data"),
            PathBuf::from("/srv/qa/aegis-data")
        );
        assert_eq!(
            resolve_path(Path::new("/srv/qa"), "/var/lib/aegis"),
            PathBuf::from("/var/lib/aegis")
        );
        assert_eq!(resolve_path(Path::new("."), "."), PathBuf::from("."));
        assert_eq!(resolve_path(Path::new(""), "."), PathBuf::from("."));
        assert_eq!(resolve_path(Path::new("."), "scripts"), PathBuf::from("scripts"));
    }
}
