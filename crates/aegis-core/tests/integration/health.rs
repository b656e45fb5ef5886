//! Service health checks: healthy, unhealthy and unreachable, with the API key.

use aegis_core::HealthStatus;
use aegis_core::testing::{MockService, Route, refused_url};
use serde_json::json;

use crate::common::env;

#[tokio::test]
async fn each_service_is_checked_with_its_api_key() {
    let up = MockService::start().await.expect("mock");
    up.route("GET", "/health", Route::ok(json!({ "status": "ok" })));
    let sick = MockService::start().await.expect("mock");
    sick.route("GET", "/ready", Route::json(503, json!({})));
    let gone = refused_url().await.expect("port");
    let key = std::env::var("HOME").expect("HOME is set");
    let env = env(&format!(
        "services:
  up: {{ url: '{}', api_key_env: HOME }}
  sick: {{ url: '{}', health_endpoint: /ready }}
  gone: {{ url: '{gone}' }}
workflows:\n  w:\n    steps:\n      - {{ type: report }}\n",
        up.url(),
        sick.url()
    ));
    let health = env.engine.check_services().await;
    let found: Vec<(&str, HealthStatus, Option<u16>, Option<&str>)> = health
        .iter()
        .map(|h| (h.key.as_str(), h.status, h.http_status, h.error.as_deref()))
        .collect();
    assert_eq!(
        found,
        vec![
            ("up", HealthStatus::Healthy, Some(200), None),
            ("sick", HealthStatus::Unhealthy, Some(503), Some("HTTP 503")),
            ("gone", HealthStatus::Unreachable, None, Some("connection refused")),
        ]
    );
    assert_eq!(up.requests()[0].header("x-api-key"), Some(key.as_str()));
    assert_eq!(sick.requests()[0].header("x-api-key"), None);
}
