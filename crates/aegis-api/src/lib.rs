//! The Aegis HTTP API: routes, middleware, error mapping and the OpenAPI document.
//!
//! [`app`] builds the actix-web application the server runs and the tests drive with
//! `actix_web::test`, so both exercise the same routes, limits and middleware.

mod auth;
mod body;
mod error;
mod metrics;
mod middleware;
mod openapi;
mod routes;
mod state;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{App, HttpRequest, HttpResponse, Resource, guard, web};

/// The API's JSON shapes (shared with `aegis-cli`).
pub use aegis_wire as dto;
pub use error::{ApiError, ErrorBody, ErrorDetail, Result};
pub use middleware::{REQUEST_ID, RequestId, RequestLine, RequestLog, client_ip, request_id};
pub use openapi::openapi;
pub use state::AppState;

/// A route for `GET` that answers `HEAD` too (actix sends the head without the body).
fn get() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// `base_path` without its trailing slash redirects to the dashboard at `base_path/`,
/// keeping the query string.
async fn to_base(req: HttpRequest) -> HttpResponse {
    let location = match req.query_string() {
        "" => format!("{}/", req.path()),
        query => format!("{}/?{query}", req.path()),
    };
    HttpResponse::PermanentRedirect().insert_header(("Location", location)).finish()
}

/// A resource whose unmatched methods get a JSON 405.
fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse> {
    Err(ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse> {
    Err(ApiError::NoRoute(req.path().to_owned()))
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest, limit: usize) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType(
            "expected a JSON body with `Content-Type: application/json`".to_owned(),
        ),
        JsonPayloadError::Deserialize(de) if de.is_data() => {
            ApiError::Unprocessable(format!("invalid request body: {de}"))
        }
        JsonPayloadError::Deserialize(de) => ApiError::BadRequest(format!("malformed JSON: {de}")),
        other => ApiError::BadRequest(format!("cannot read the request body: {other}")),
    };
    api.into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid query string: {err}")).into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid path: {err}")).into()
}

/// Builds the application: every route under `server.base_path`, JSON error bodies for
/// every failure, `X-Request-ID` on every response, one log line per request.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.config().server().max_body_bytes();
    let base_path = state.config().server().base_path().to_owned();
    // Under a base path, the bare prefix (`/aegis`) would otherwise miss every route.
    let bare_base =
        (!base_path.is_empty()).then(|| web::resource(base_path.as_str()).route(get().to(to_base)));
    App::new()
        .app_data(state)
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(move |err, req| json_error(err, req, limit)),
        )
        .app_data(web::PayloadConfig::default().limit(limit))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .wrap(actix_web::middleware::from_fn(middleware::surface))
        // Outside the surface middleware, so that its 408s and 413s are counted too.
        .wrap(actix_web::middleware::from_fn(metrics::count_requests))
        .service(bare_base.into_iter().collect::<Vec<_>>())
        .service(
            // Routing tries the patterns in this order; a static one is a string
            // comparison, a pattern with `{…}` a regular expression. So the routes a
            // probe or scraper calls often come first.
            web::scope(&base_path)
                .service(resource("/").route(get().to(routes::index::index)))
                .service(resource("/health").route(get().to(routes::health::health)))
                .service(resource("/health/live").route(get().to(routes::health::live)))
                .service(resource("/healthz").route(get().to(routes::health::healthz)))
                .service(resource("/health/ready").route(get().to(routes::health::ready)))
                .service(resource("/health/status").route(get().to(routes::health::status)))
                .service(resource("/metrics").route(get().to(metrics::metrics)))
                .service(resource("/runs/{id}").route(get().to(routes::index::run_page)))
                .service(resource("/assets/{name:.+}").route(get().to(routes::index::asset)))
                .service(resource("/api/openapi.json").route(get().to(openapi::document)))
                .service(resource("/api/workflows").route(get().to(routes::workflows::list)))
                .service(resource("/api/workflows/{key}").route(get().to(routes::workflows::get)))
                .service(
                    resource("/api/workflows/{key}/history")
                        .route(get().to(routes::runs::workflow_history)),
                )
                .service(resource("/api/runs").route(get().to(routes::runs::list)))
                .service(resource("/api/runs/{id}").route(get().to(routes::runs::get)))
                .service(resource("/api/history").route(get().to(routes::runs::history)))
                .service(resource("/api/portfolio").route(get().to(routes::portfolio::portfolio)))
                .service(resource("/api/services").route(get().to(routes::services::list)))
                .service(
                    resource("/api/services/{key}/health")
                        .route(get().to(routes::services::health)),
                )
                .service(
                    resource("/api/workflows/{key}/run")
                        .route(web::post().to(routes::control::start)),
                )
                .service(
                    resource("/api/runs/{id}/cancel")
                        .route(web::post().to(routes::control::cancel)),
                )
                .service(resource("/api/runs/{id}/events").route(get().to(routes::events::poll)))
                .service(
                    resource("/api/runs/{id}/events/stream")
                        .route(get().to(routes::events::run_stream)),
                )
                .service(
                    resource("/api/runs/{id}/artifacts").route(get().to(routes::artifacts::list)),
                )
                .service(
                    resource("/api/runs/{id}/artifacts/{name}")
                        .route(get().to(routes::artifacts::download)),
                )
                .service(resource("/api/gates").route(get().to(routes::gates::list)))
                .service(
                    resource("/api/runs/{id}/gates/{gate}/approve")
                        .route(web::post().to(routes::gates::approve)),
                )
                .service(
                    resource("/api/runs/{id}/gates/{gate}/reject")
                        .route(web::post().to(routes::gates::reject)),
                )
                .service(
                    resource("/api/webhooks/deliveries")
                        .route(get().to(routes::webhooks::deliveries)),
                )
                .service(
                    resource("/api/webhooks/deliveries/{id}/redeliver")
                        .route(web::post().to(routes::webhooks::redeliver)),
                )
                .service(resource("/api/events").route(get().to(routes::events::recent)))
                .service(
                    resource("/api/events/stream").route(get().to(routes::events::global_stream)),
                )
                .default_service(web::to(no_route)),
        )
        .default_service(web::to(no_route))
}
