//! Health endpoints, request ids, base path and the OpenAPI document.

use actix_web::test::TestRequest;

use crate::common::{call, fixture};

#[actix_web::test]
async fn health_reports_version_uptime_and_counts() {
    let f = fixture("").await;
    let (status, headers, body) = call(&f.state, TestRequest::get().uri("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64());
    assert_eq!(body["services_configured"], 1);
    assert_eq!(body["workflows_configured"], 2);
    assert!(headers.contains_key("x-request-id"));
}

#[actix_web::test]
async fn liveness_and_readiness() {
    let f = fixture("").await;
    for path in ["/health/live", "/healthz", "/health/ready"] {
        let (status, _, _) = call(&f.state, TestRequest::get().uri(path)).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, body) = call(&f.state, TestRequest::get().uri("/health/status")).await;
    assert_eq!(status, 200);
    assert_eq!(body["dependencies"][0]["name"], "history");
    assert_eq!(body["dependencies"][0]["status"], "healthy");
}

#[actix_web::test]
async fn request_ids_are_echoed_or_generated() {
    let f = fixture("").await;
    let (_, headers, _) = call(
        &f.state,
        TestRequest::get().uri("/health").insert_header(("X-Request-ID", "ci-run-42")),
    )
    .await;
    assert_eq!(headers.get("x-request-id").unwrap(), "ci-run-42");
    let (_, first, _) = call(&f.state, TestRequest::get().uri("/health")).await;
    let (_, second, _) = call(&f.state, TestRequest::get().uri("/nope")).await;
    assert_ne!(first.get("x-request-id"), second.get("x-request-id"));
    let (_, replaced, _) = call(
        &f.state,
        TestRequest::get().uri("/health").insert_header(("X-Request-ID", "has space")),
    )
    .await;
    assert_ne!(replaced.get("x-request-id").unwrap(), "has space");
}

#[actix_web::test]
async fn everything_moves_under_base_path() {
    let f = fixture("server: {base_path: /aegis}").await;
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/aegis/health")).await;
    assert_eq!(status, 200);
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/health")).await;
    assert_eq!(status, 404);
    let (_, _, doc) = call(&f.state, TestRequest::get().uri("/aegis/api/openapi.json")).await;
    assert!(doc["paths"].as_object().unwrap().contains_key("/aegis/api/runs"));
}

#[actix_web::test]
async fn openapi_lists_every_served_route() {
    let f = fixture("").await;
    let (status, _, doc) = call(&f.state, TestRequest::get().uri("/api/openapi.json")).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/",
        "/health",
        "/health/live",
        "/healthz",
        "/health/ready",
        "/health/status",
        "/api/openapi.json",
        "/api/workflows",
        "/api/workflows/{key}",
        "/api/workflows/{key}/history",
        "/api/runs",
        "/api/runs/{id}",
        "/api/history",
        "/api/portfolio",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
    }
}
