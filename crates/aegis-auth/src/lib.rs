//! Aegis credentials: named API keys with roles (`viewer` < `operator` < `admin`),
//! verification in constant time, and the guard that keeps the server off public
//! interfaces unless it is both told to and protected.
//!
//! This crate knows nothing of HTTP frameworks: `aegis-api` extracts the presented key
//! from the request and asks [`Authenticator::authorize`] what it may do.
//!
//! ```
//! use aegis_auth::{Access, Authenticator};
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join(".aegis.yaml");
//! # std::fs::write(&path, "auth:\n  keys:\n    - {id: ci, key: ci-key-0123456789abcdef, role: operator}\nworkflows:\n  w: {steps: [{type: report}]}\n")?;
//! let config = aegis_config::LoadOptions::new().path(Some(path)).load()?;
//! let auth = Authenticator::new(config.auth());
//! let who = auth.authorize(Some("ci-key-0123456789abcdef"), Access::Operate)?;
//! assert_eq!(who.key_id(), Some("ci"));
//! assert!(auth.authorize(Some("ci-key-0123456789abcdef"), Access::Admin).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;

use std::fmt;

use aegis_config::{AuthConfig, Role, ServerConfig, is_loopback_host};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

pub use error::{AuthError, Result};

/// What a request wants to do, mapped to the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Reads: public unless `auth.protect_reads`, then `viewer`.
    Read,
    /// Starting and cancelling runs, deciding gates: `operator`.
    Operate,
    /// Webhook delivery management: `admin`.
    Admin,
}

impl Access {
    fn required_role(self) -> Role {
        match self {
            Access::Read => Role::Viewer,
            Access::Operate => Role::Operator,
            Access::Admin => Role::Admin,
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    key_id: Option<String>,
    role: Role,
}

impl Identity {
    /// The id of the key presented, `None` when auth is off or the access was public.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The role the request acts with.
    pub fn role(&self) -> Role {
        self.role
    }

    /// How the identity is recorded, e.g. as who decided a gate.
    pub fn display_name(&self) -> &str {
        self.key_id.as_deref().unwrap_or("anonymous")
    }
}

/// A configured key, kept only as its SHA-256 digest so comparisons take the same time
/// whatever the presented key's length.
struct StoredKey {
    id: String,
    digest: [u8; 32],
    role: Role,
}

/// Checks presented API keys against the configured ones.
pub struct Authenticator {
    keys: Vec<StoredKey>,
    protect_reads: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<(&str, Role)> = self.keys.iter().map(|k| (k.id.as_str(), k.role)).collect();
        f.debug_struct("Authenticator")
            .field("keys", &ids)
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl Authenticator {
    /// Builds the checker from the `auth:` section.
    pub fn new(config: &AuthConfig) -> Authenticator {
        let keys = config
            .keys()
            .iter()
            .map(|k| StoredKey {
                id: k.id().to_owned(),
                digest: digest(k.key().expose()),
                role: k.role(),
            })
            .collect();
        Authenticator { keys, protect_reads: config.protect_reads() }
    }

    /// Whether any key is configured; with none, auth is off.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Finds the key matching `presented`. Every configured key is compared, in
    /// constant time, whether or not an earlier one matched.
    pub fn identify(&self, presented: &str) -> Option<Identity> {
        let presented = digest(presented);
        let mut found: Option<&StoredKey> = None;
        for key in &self.keys {
            let matched: Choice = key.digest.ct_eq(&presented);
            if bool::from(matched) && found.is_none() {
                found = Some(key);
            }
        }
        found.map(|k| Identity { key_id: Some(k.id.clone()), role: k.role })
    }

    /// Decides whether a request presenting `presented` may do `access`.
    pub fn authorize(&self, presented: Option<&str>, access: Access) -> Result<Identity> {
        if !self.enabled() {
            return Ok(Identity { key_id: None, role: Role::Admin });
        }
        let presented = presented.map(str::trim).filter(|k| !k.is_empty());
        if access == Access::Read && !self.protect_reads && presented.is_none() {
            return Ok(Identity { key_id: None, role: Role::Viewer });
        }
        let identity = self
            .identify(presented.ok_or(AuthError::MissingCredentials)?)
            .ok_or(AuthError::InvalidCredentials)?;
        let required = access.required_role();
        if identity.role < required {
            return Err(AuthError::Forbidden {
                key_id: identity.display_name().to_owned(),
                actual: identity.role,
                required,
            });
        }
        Ok(identity)
    }
}

/// The key in an `Authorization` header value, if it uses the `Bearer` scheme.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Refuses a non-loopback `host` unless `server.allow_external_bind` is set and auth is
/// configured, saying exactly which is missing.
pub fn check_bind(host: &str, server: &ServerConfig, auth: &AuthConfig) -> Result<()> {
    if is_loopback_host(host) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !server.allow_external_bind() {
        missing.push("`server.allow_external_bind` is false");
    }
    if !auth.enabled() {
        missing.push("no API key is configured");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(AuthError::ExternalBind {
        host: host.to_owned(),
        missing: format!(" ({})", missing.join(" and ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> aegis_config::Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".aegis.yaml");
        std::fs::write(&path, format!("{yaml}\nworkflows:\n  w: {{steps: [{{type: report}}]}}\n"))
            .unwrap();
        aegis_config::LoadOptions::new().env(|_| None).path(Some(path)).load().unwrap()
    }

    const KEYS: &str = "auth:\n  api_key: admin-key-0123456789abcdef\n  keys:\n    - {id: viewer, key: viewer-key-0123456789abcdef, role: viewer}\n    - {id: ci, key: operator-key-0123456789abcdef, role: operator}\n";

    #[test]
    fn auth_off_lets_everyone_do_everything() {
        let auth = Authenticator::new(config("").auth());
        assert!(!auth.enabled());
        for access in [Access::Read, Access::Operate, Access::Admin] {
            assert_eq!(auth.authorize(None, access).unwrap().role(), Role::Admin);
        }
    }

    #[test]
    fn the_role_matrix() {
        let auth = Authenticator::new(config(KEYS).auth());
        let check = |key: Option<&str>, access| {
            auth.authorize(key, access).map(|i| i.display_name().to_owned())
        };
        // Reads are public unless protected; a presented key must still be valid.
        assert_eq!(check(None, Access::Read), Ok("anonymous".to_owned()));
        assert_eq!(check(Some("wrong"), Access::Read), Err(AuthError::InvalidCredentials));
        assert_eq!(check(None, Access::Operate), Err(AuthError::MissingCredentials));
        assert_eq!(check(Some("wrong"), Access::Operate), Err(AuthError::InvalidCredentials));
        assert!(matches!(
            check(Some("viewer-key-0123456789abcdef"), Access::Operate),
            Err(AuthError::Forbidden { actual: Role::Viewer, required: Role::Operator, .. })
        ));
        assert_eq!(
            check(Some("operator-key-0123456789abcdef"), Access::Operate),
            Ok("ci".to_owned())
        );
        assert!(matches!(
            check(Some("operator-key-0123456789abcdef"), Access::Admin),
            Err(AuthError::Forbidden { actual: Role::Operator, required: Role::Admin, .. })
        ));
        assert_eq!(
            check(Some("admin-key-0123456789abcdef"), Access::Admin),
            Ok("api_key".to_owned())
        );
        assert_eq!(check(Some("  "), Access::Operate), Err(AuthError::MissingCredentials));
    }

    #[test]
    fn protect_reads_needs_a_viewer_key() {
        let auth = Authenticator::new(config(&format!("{KEYS}  protect_reads: true\n")).auth());
        assert_eq!(auth.authorize(None, Access::Read), Err(AuthError::MissingCredentials));
        assert_eq!(
            auth.authorize(Some("viewer-key-0123456789abcdef"), Access::Read).unwrap().key_id(),
            Some("viewer")
        );
    }

    #[test]
    fn keys_never_appear_in_debug_output() {
        let config = config(KEYS);
        let auth = Authenticator::new(config.auth());
        let shown = format!("{auth:?} {:?}", config.auth());
        for secret in [
            "admin-key-0123456789abcdef",
            "viewer-key-0123456789abcdef",
            "operator-key-0123456789abcdef",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("\"ci\""));
    }

    #[test]
    fn bearer_tokens_are_parsed_case_insensitively() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn the_bind_guard_says_exactly_what_is_missing() {
        let open = config("");
        let protected = config(&format!("server: {{allow_external_bind: true}}\n{KEYS}"));
        assert!(check_bind("127.0.0.1", open.server(), open.auth()).is_ok());
        assert!(check_bind("::1", open.server(), open.auth()).is_ok());
        assert!(check_bind("[::1]", open.server(), open.auth()).is_ok());
        assert!(check_bind("localhost", open.server(), open.auth()).is_ok());
        assert!(check_bind("127.10.0.1", open.server(), open.auth()).is_ok());
        let err = check_bind("0.0.0.0", open.server(), open.auth()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to bind 0.0.0.0: a non-loopback address needs `server.allow_external_bind: true` and configured auth \
             (`auth.api_key` or `auth.keys`) (`server.allow_external_bind` is false and no API key is configured)"
        );
        let only_flag = config("server: {allow_external_bind: true}");
        let err = check_bind("0.0.0.0", only_flag.server(), only_flag.auth()).unwrap_err();
        assert!(err.to_string().ends_with("(no API key is configured)"), "{err}");
        let only_auth = config(KEYS);
        let err = check_bind("192.0.2.7", only_auth.server(), only_auth.auth()).unwrap_err();
        assert!(err.to_string().ends_with("(`server.allow_external_bind` is false)"), "{err}");
        assert!(check_bind("0.0.0.0", protected.server(), protected.auth()).is_ok());
    }
}
