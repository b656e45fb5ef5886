//! The OpenAPI 3 document, generated from the handlers' annotations.

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Aegis", description = "QA control plane: services, workflows, runs, events, gates."),
    paths(
        crate::routes::index::index,
        crate::routes::health::health,
        crate::routes::health::live,
        crate::routes::health::healthz,
        crate::routes::health::ready,
        crate::routes::health::status,
        document,
        crate::metrics::metrics,
        crate::routes::workflows::list,
        crate::routes::workflows::get,
        crate::routes::runs::workflow_history,
        crate::routes::runs::list,
        crate::routes::runs::get,
        crate::routes::runs::history,
        crate::routes::portfolio::portfolio,
        crate::routes::services::list,
        crate::routes::services::health,
        crate::routes::control::start,
        crate::routes::control::cancel,
        crate::routes::events::poll,
        crate::routes::events::run_stream,
        crate::routes::artifacts::list,
        crate::routes::artifacts::download,
        crate::routes::events::recent,
        crate::routes::events::global_stream,
        crate::routes::gates::list,
        crate::routes::gates::approve,
        crate::routes::gates::reject,
        crate::routes::webhooks::deliveries,
        crate::routes::webhooks::redeliver,
    ),
    components(schemas(crate::error::ErrorBody, crate::dto::Run, crate::dto::RunPage, crate::dto::RunWithSteps, crate::dto::DeliveryPage, crate::dto::Delivery, crate::dto::DeliveryAttempt, crate::dto::Redelivery)),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, with paths under `base_path` and the server's version.
pub fn openapi(base_path: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    if !base_path.is_empty() {
        let paths = std::mem::take(&mut doc.paths.paths);
        doc.paths.paths =
            paths.into_iter().map(|(path, item)| (format!("{base_path}{path}"), item)).collect();
    }
    doc
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", responses((status = 200, body = Object)))]
pub(crate) async fn document(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(openapi(state.config().server().base_path()))
}
