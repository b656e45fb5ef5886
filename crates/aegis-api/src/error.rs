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
    /// The machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Auth(AuthError::Forbidden { .. }) => "forbidden",
            ApiError::Auth(_) => "unauthorized",
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unprocessable(_) => "unprocessable_entity",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::NotReady(_) => "not_ready",
            ApiError::History(aegis_history::Error::InvalidCursor { .. }) => "bad_request",
            ApiError::History(aegis_history::Error::RunNotFound { .. }) => "not_found",
            ApiError::History(aegis_history::Error::GateNotPending { .. }) => "conflict",
            ApiError::History(_) | ApiError::Engine(_) | ApiError::Internal(_) => "internal_error",
        }
    }
}

impl From<aegis_core::Error> for ApiError {
    fn from(err: aegis_core::Error) -> ApiError {
        match err {
            aegis_core::Error::UnknownWorkflow(key) => {
                ApiError::NotFound { what: "workflow", id: key }
            }
            aegis_core::Error::UnknownRun(id) => ApiError::NotFound { what: "run", id },
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
        match self.code() {
            "bad_request" => StatusCode::BAD_REQUEST,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
            "conflict" => StatusCode::CONFLICT,
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unprocessable_entity" => StatusCode::UNPROCESSABLE_ENTITY,
            "queue_full" => StatusCode::TOO_MANY_REQUESTS,
            "not_ready" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
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
