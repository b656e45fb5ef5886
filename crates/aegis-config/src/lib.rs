//! The `.aegis.yaml` model: discovery, `${VAR}` interpolation and validation with
//! located diagnostics.
//!
//! Loading runs in stages, each reporting every problem it finds rather than the first:
//!
//! 1. `node`: the YAML text becomes a tree of located nodes (syntax, duplicate keys,
//!    size and alias-expansion limits);
//! 2. `interpolate`: `${VAR}` and `${VAR:-default}` are expanded in every string;
//! 3. `de` and `raw`: the tree is deserialized into raw serde structs that reject
//!    unknown keys and wrong types, with a "did you mean" hint;
//! 4. `validate`: raw structs become the validated [`Config`] — defaults, ranges,
//!    required keys and cross-references (services, step ids, gate artifacts).
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join(".aegis.yaml"), "
//! services:
//!   qaagent: { url: http://localhost:8080 }
//! workflows:
//!   smoke:
//!     steps:
//!       - { type: discover, service: qaagent }
//! ")?;
//! let config = aegis_config::LoadOptions::new().cwd(dir.path()).load()?;
//! assert_eq!(config.server().port(), 8000);
//! assert_eq!(config.workflows()["smoke"].steps()[0].id(), "discover");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod de;
mod diagnostic;
mod error;
mod interpolate;
mod load;
mod model;
mod node;
mod raw;
mod suggest;
mod validate;

pub use diagnostic::{Check, Finding, Severity};
pub use error::{ConfigError, Result};
pub use load::{EnvLookup, FILE_NAME, LoadOptions, Report};
pub use model::{
    AegisInfo, ApiKey, AuthConfig, CommandStep, Condition, Config, CustomStep, EVENT_TYPES,
    GateStep, HistoryConfig, HttpStep, IpNet, LlmConfig, MIN_SECRET_BYTES, MaybeSecret, OnTimeout,
    Role, Secret, ServerConfig, Service, StepDef, StepKind, Webhook, Workflow, is_loopback_host,
    shown_url, signing_key,
};
pub use node::{Loc, MAX_CONFIG_BYTES};
