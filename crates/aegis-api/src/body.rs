//! Reading a request body once the credentials were checked: within
//! `server.max_body_bytes` (413, chunked bodies too) and [`READ_TIMEOUT`] (408).
//!
//! Handlers that take a body extract `web::Payload`, which reads nothing, check the
//! caller's access, and only then call [`read`]: an unauthenticated client cannot make
//! the server wait for (or buffer) a body it will refuse.

use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::web::{self, Bytes, BytesMut};
use futures_util::StreamExt;

use crate::error::{ApiError, Result};

/// How long a client gets to send the whole body.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing more than `limit` bytes and a body that takes
/// longer than [`READ_TIMEOUT`].
pub(crate) async fn read(mut payload: web::Payload, limit: usize) -> Result<Bytes> {
    let collect = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| match err {
                PayloadError::Overflow => ApiError::PayloadTooLarge { limit },
                other => ApiError::BadRequest(format!("cannot read the request body: {other}")),
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(READ_TIMEOUT, collect).await.map_err(|_| ApiError::RequestTimeout)?
}
