//! API errors and the one place they become HTTP responses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use aegis_auth::AuthError;
use serde::Serialize;

/// Everything a handler can fail with. Each variant has one status and one error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed input: 400.
    #[error("{0}")]
    BadRequest(String),
    /// Credentials missing, invalid, or not enough: 401 or 403.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An id or key that names nothing: 404.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// What kind of thing (`run`, `workflow`, …).
        what: &'static str,
        /// The id as given.
        id: String,
    },
    /// No route at this path: 404.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// The path exists but not with this method: 405.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The request conflicts with the current state: 409.
    #[error("{0}")]
    Conflict(String),
    /// The body did not arrive within the read timeout: 408.
    #[error("the request body did not arrive within {} seconds", crate::body::READ_TIMEOUT.as_secs())]
    RequestTimeout,
    /// The body is over the limit: 413.
    #[error("request body is larger than the {limit}-byte limit")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body has the wrong content type: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed JSON with the wrong shape, or a patch that does not apply: 422.
    #[error("{0}")]
    Unprocessable(String),
    /// The run queue is full: 429.
    #[error("{0}")]
    QueueFull(String),
    /// Not ready to serve yet: 503.
    #[error("{0}")]
    NotReady(String),
    /// The history store failed.
    #[error("history store: {0}")]
    History(#[from] aegis_history::Error),
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(aegis_core::Error),
    /// A bug or an I/O failure on the server's side: 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The one table from an error to its status and machine-readable code: every
    /// response status and body code comes from here.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use aegis_history::Error as History;
        match self {
            ApiError::BadRequest(_) | ApiError::History(History::InvalidCursor { .. }) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ApiError::Auth(AuthError::Forbidden { .. }) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Auth(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound { .. }
            | ApiError::NoRoute(_)
            | ApiError::History(History::RunNotFound { .. })
            | ApiError::History(History::DeliveryNotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Conflict(_) | ApiError::History(History::GateNotPending { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity")
            }
            ApiError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::History(_) | ApiError::Engine(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        }
    }

    /// The machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }
}

impl From<aegis_core::Error> for ApiError {
    /// Engine errors a client caused become their 4xx variant here, so every route
    /// (not only the gates routes) answers them with the same status.
    fn from(err: aegis_core::Error) -> ApiError {
        match err {
            aegis_core::Error::UnknownWorkflow(key) => {
                ApiError::NotFound { what: "workflow", id: key }
            }
            aegis_core::Error::UnknownRun(id) => ApiError::NotFound { what: "run", id },
            aegis_core::Error::UnknownGate { gate_id, .. } => {
                ApiError::NotFound { what: "gate", id: gate_id }
            }
            err @ (aegis_core::Error::RunNotWaiting { .. }
            | aegis_core::Error::GateNotPending { .. }
            | aegis_core::Error::Contended(_)) => ApiError::Conflict(err.to_string()),
            err @ aegis_core::Error::InvalidPatch(_) => ApiError::Unprocessable(err.to_string()),
            aegis_core::Error::QueueFull { limit } => ApiError::QueueFull(format!(
                "the run queue is full ({limit} runs waiting); retry later"
            )),
            aegis_core::Error::History(err) => ApiError::History(err),
            aegis_core::Error::ShuttingDown => {
                ApiError::NotReady(aegis_core::Error::ShuttingDown.to_string())
            }
            other => ApiError::Engine(other),
        }
    }
}

/// The error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and human-readable message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`not_found`, `unauthorized`, …).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            log::error!("request failed: {self}");
        }
        let mut response = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(ErrorBody {
            error: ErrorDetail { code: self.code().to_owned(), message: self.to_string() },
        })
    }
}

/// Result of a handler.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: impl Into<ApiError>, status: u16, code: &str) {
        let err = err.into();
        assert_eq!(err.status_code().as_u16(), status, "{err}");
        assert_eq!(err.code(), code, "{err}");
    }

    #[test]
    fn engine_errors_a_client_caused_are_4xx_through_the_generic_conversion() {
        let (run_id, gate_id) = ("r1".to_owned(), "review".to_owned());
        check(
            aegis_core::Error::GateNotPending { run_id: run_id.clone(), gate_id: gate_id.clone() },
            409,
            "conflict",
        );
        check(
            aegis_core::Error::RunNotWaiting { run_id: run_id.clone(), status: "running".into() },
            409,
            "conflict",
        );
        check(aegis_core::Error::UnknownGate { run_id, gate_id }, 404, "not_found");
        check(aegis_core::Error::InvalidPatch("x".into()), 422, "unprocessable_entity");
        check(aegis_core::Error::QueueFull { limit: 1 }, 429, "queue_full");
        check(aegis_core::Error::ShuttingDown, 503, "not_ready");
        check(aegis_core::Error::UnknownRun("r".into()), 404, "not_found");
        check(aegis_core::Error::RunAborted("r".into()), 500, "internal_error");
        check(aegis_core::Error::Contended("r".into()), 409, "conflict");
        check(
            aegis_core::Error::History(aegis_history::Error::GateNotPending {
                run_id: "r".into(),
                gate_id: "g".into(),
            }),
            409,
            "conflict",
        );
        check(ApiError::RequestTimeout, 408, "request_timeout");
        check(ApiError::PayloadTooLarge { limit: 1 }, 413, "payload_too_large");
    }
}
