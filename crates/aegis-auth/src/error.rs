//! Why a request or a bind address was refused.

use aegis_config::Role;

/// A refused credential or bind address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential was presented where one is needed (HTTP 401).
    #[error("an API key is required: send `X-API-Key: KEY` or `Authorization: Bearer KEY`")]
    MissingCredentials,
    /// The credential matches no configured key (HTTP 401).
    #[error("the API key is not valid")]
    InvalidCredentials,
    /// The key is valid but its role is too low (HTTP 403).
    #[error("the `{key_id}` key has the {actual} role; this needs {required} or above")]
    Forbidden {
        /// The key's id (never the key).
        key_id: String,
        /// What the key has.
        actual: Role,
        /// What the action needs.
        required: Role,
    },
    /// The server was asked to listen where it must not.
    #[error(
        "refusing to bind {host}: a non-loopback address needs `server.allow_external_bind: true` and \
         configured auth (`auth.api_key` or `auth.keys`){missing}"
    )]
    ExternalBind {
        /// The requested host.
        host: String,
        /// What is missing, as a suffix naming it.
        missing: String,
    },
}

/// Result of an authentication or bind check.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;
