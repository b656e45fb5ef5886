//! The webhook delivery log and redelivery: admin only, the SPEC's shape,
//! filters, pagination, URLs without credentials, 404 and 202.

use std::time::{Duration, Instant};

use actix_web::test::TestRequest;
use aegis_core::testing::{MockService, Route};
use serde_json::{Value, json};

use crate::common::{Fixture, assert_error, call, fixture_with};

const ADMIN: &str = "admin-key-0123456789abcdef";
const OPERATOR: &str = "operator-key-0123456789abcdef";

async fn setup() -> (MockService, Fixture) {
    let hooks = MockService::start().await.unwrap();
    hooks.route("POST", "/all", Route::ok(json!({})));
    hooks.route("POST", "/gone", Route::json(410, json!({})));
    // Credentials in a webhook URL are never shown.
    let with_credentials = hooks.url().replace("http://", "http://user:hunter2@");
    let yaml = format!(
        "auth:\n  keys:\n    - {{id: root, key: {ADMIN}, role: admin}}\n    - {{id: ci, key: {OPERATOR}, role: operator}}\nwebhooks:\n  - url: \"{with_credentials}/all\"\n    events: [\"*\"]\n  - url: \"{}/gone\"\n    events: [workflow.completed]\nworkflows:\n  nightly:\n    steps: [{{type: report}}]\n",
        hooks.url()
    );
    (hooks, fixture_with(&yaml).await)
}

fn admin(req: TestRequest) -> TestRequest {
    req.insert_header(("X-API-Key", ADMIN))
}

async fn deliveries(f: &Fixture, query: &str) -> Value {
    let (status, _, body) =
        call(&f.state, admin(TestRequest::get().uri(&format!("/api/webhooks/deliveries{query}"))))
            .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until every delivery of the log has left `pending`.
async fn settled(f: &Fixture, expected: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = deliveries(f, "?limit=1000").await;
        let list = body["deliveries"].as_array().cloned().unwrap_or_default();
        if list.len() == expected && list.iter().all(|d| d["status"] != "pending") {
            return body;
        }
        assert!(Instant::now() < deadline, "deliveries never settled: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn the_delivery_log_shows_each_delivery_with_its_attempts() {
    let (hooks, f) = setup().await;
    let (status, _, run) =
        call(&f.state, admin(TestRequest::post().uri("/api/workflows/nightly/run?wait=true")))
            .await;
    assert_eq!(status, 200, "{run}");
    let run_id = run["run_id"].as_str().or(run["id"].as_str()).unwrap().to_owned();
    let (_, _, events) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{run_id}/events"))).await;
    let events = events["events"].as_array().cloned().unwrap_or_default();
    assert!(events.len() >= 4, "{events:?}");
    // One delivery per event for "*", one more for workflow.completed.
    let body = settled(&f, events.len() + 1).await;
    let list = body["deliveries"].as_array().unwrap();
    let gone: Vec<&Value> = list.iter().filter(|d| d["webhook"] == 1).collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["status"], "gone");
    assert_eq!(gone[0]["event_type"], "workflow.completed");
    assert_eq!(gone[0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(gone[0]["attempts"][0]["status_code"], 410);
    let first = &list[list.len() - 1];
    let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "id",
            "webhook",
            "url",
            "event_id",
            "event_type",
            "run_id",
            "status",
            "attempts",
            "next_attempt_at"
        ]
    );
    assert_eq!(first["status"], "delivered");
    assert_eq!(first["run_id"], run_id.as_str());
    assert_eq!(first["event_type"], "run.queued");
    assert_eq!(first["next_attempt_at"], Value::Null);
    let attempt = &first["attempts"][0];
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["status_code"], 200);
    assert!(attempt["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{attempt}");
    assert!(attempt["duration_ms"].is_u64(), "{attempt}");
    assert!(!body.to_string().contains("hunter2"), "{body}");
    assert!(!body.to_string().contains("user"), "{body}");
    assert_eq!(first["url"], format!("{}/all", hooks.url()));
    // Newest first: the log lists events in the reverse of their order.
    let ids: Vec<&str> = list
        .iter()
        .filter(|d| d["webhook"] == 0)
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    expected.reverse();
    assert_eq!(ids, expected);
    assert_eq!(hooks.requests_to("/all").len(), events.len());

    // Filters.
    let gone = deliveries(&f, "?status=gone").await;
    assert_eq!(gone["deliveries"].as_array().unwrap().len(), 1);
    let only = deliveries(&f, "?webhook=1").await;
    assert_eq!(only["deliveries"].as_array().unwrap().len(), 1);
    let by_run = deliveries(&f, &format!("?run={run_id}&webhook=0")).await;
    assert_eq!(by_run["deliveries"].as_array().unwrap().len(), events.len());
    assert!(deliveries(&f, "?run=other").await["deliveries"].as_array().unwrap().is_empty());
    // Pages of two cover the log once each.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = deliveries(&f, &format!("?limit=2&cursor={cursor}")).await;
        seen.extend(page["deliveries"].as_array().unwrap().iter().map(|d| d["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, list.iter().map(|d| d["id"].clone()).collect::<Vec<_>>());
    for bad in ["?status=sent", "?webhook=first", "?limit=0", "?cursor=zz"] {
        let (status, _, body) = call(
            &f.state,
            admin(TestRequest::get().uri(&format!("/api/webhooks/deliveries{bad}"))),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_error(&body, "bad_request");
    }

    // Redelivery: 202, a fresh attempt count, the same webhook-id.
    let id = first["id"].as_str().unwrap();
    let (status, _, body) = call(
        &f.state,
        admin(TestRequest::post().uri(&format!("/api/webhooks/deliveries/{id}/redeliver"))),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let page = deliveries(&f, &format!("?run={run_id}&webhook=0&limit=1000")).await;
        let found = page["deliveries"].as_array().unwrap().iter().find(|d| d["id"] == id).cloned();
        if let Some(d) = found.filter(|d| d["attempts"].as_array().unwrap().len() == 2) {
            break d;
        }
        assert!(Instant::now() < deadline, "never redelivered: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again["status"], "delivered");
    let numbers: Vec<&Value> =
        again["attempts"].as_array().unwrap().iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, vec![&json!(1), &json!(1)]);
    let sent: Vec<String> = hooks
        .requests_to("/all")
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .filter(|h| h == first["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 2, "the same webhook-id twice");

    // The metrics count deliveries by webhook and status.
    let (_, _, metrics) = call(&f.state, admin(TestRequest::get().uri("/metrics"))).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(&format!(
            "aegis_webhook_deliveries_total{{webhook=\"0\",status=\"delivered\"}} {}",
            events.len()
        )),
        "{metrics}"
    );
    assert!(metrics.contains("aegis_webhook_deliveries_total{webhook=\"1\",status=\"gone\"} 1"));
    assert!(metrics.contains("aegis_webhook_outbox_pending 0"), "{metrics}");
}

#[actix_web::test]
async fn only_admins_see_the_log_and_unknown_deliveries_are_404() {
    let (_hooks, f) = setup().await;
    let (status, _, body) =
        call(&f.state, TestRequest::get().uri("/api/webhooks/deliveries")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = call(
        &f.state,
        TestRequest::get().uri("/api/webhooks/deliveries").insert_header(("X-API-Key", OPERATOR)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_error(&body, "forbidden");
    let (status, _, body) = call(
        &f.state,
        TestRequest::post()
            .uri("/api/webhooks/deliveries/nope/redeliver")
            .insert_header(("X-API-Key", OPERATOR)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) =
        call(&f.state, admin(TestRequest::post().uri("/api/webhooks/deliveries/nope/redeliver")))
            .await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "not_found");
    let (_, _, doc) = call(&f.state, TestRequest::get().uri("/api/openapi.json")).await;
    assert!(doc["paths"]["/api/webhooks/deliveries"]["get"].is_object(), "{}", doc["paths"]);
    assert!(doc["paths"]["/api/webhooks/deliveries/{id}/redeliver"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Delivery"].is_object());
}
