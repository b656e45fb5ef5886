//! Finding the presented API key in a request and checking it.

use actix_web::HttpRequest;
use aegis_auth::{Access, Identity, bearer_token};

use crate::error::Result;
use crate::state::AppState;

/// The key from `X-API-Key`, else from `Authorization: Bearer`.
fn presented_key(req: &HttpRequest) -> Option<&str> {
    if let Some(key) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key);
    }
    req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_token)
}

/// Checks that the request may do `access`; the identity says who it is.
pub(crate) fn require(req: &HttpRequest, state: &AppState, access: Access) -> Result<Identity> {
    Ok(state.auth().authorize(presented_key(req), access)?)
}
