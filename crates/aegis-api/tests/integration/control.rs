//! Starting, waiting for and cancelling runs; events, SSE replay and artifacts; services.

use std::time::Duration;

use actix_web::test::{self, TestRequest};
use aegis_core::testing::{MockService, Route, refused_url};
use serde_json::json;

use crate::common::{assert_error, call, fixture_with};

const OPERATOR: &str = "operator-key-0123456789abcdef";
const VIEWER: &str = "viewer-key-0123456789abcdef";

async fn qa_service() -> MockService {
    let qa = MockService::start().await.unwrap();
    qa.route("GET", "/health", Route::ok(json!({"status": "ok"})));
    qa.route("GET", "/api/routes", Route::ok(json!({"routes": ["/a", "/b"]})));
    qa.route(
        "POST",
        "/api/runs",
        Route::ok(json!({"total": 3, "passed": 2, "failed": 1, "failures": [{"test": "t1"}]})),
    );
    qa
}

fn config(qa: &MockService, extra: &str) -> String {
    format!(
        "{extra}\nservices:\n  qa: {{url: \"{}\"}}\nworkflows:\n  smoke:\n    steps:\n      - {{id: discover, type: discover, service: qa}}\n      - {{id: test, type: test, service: qa}}\n      - {{type: report}}\n",
        qa.url()
    )
}

#[actix_web::test]
async fn start_returns_202_with_links_and_the_run_finishes() {
    let qa = qa_service().await;
    let f = fixture_with(&config(&qa, "")).await;
    let (status, _, body) = call(
        &f.state,
        TestRequest::post()
            .uri("/api/workflows/smoke/run")
            .insert_header(("X-Request-ID", "req-1")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(body["links"]["self"], format!("/api/runs/{run_id}"));
    assert_eq!(body["links"]["stream"], format!("/api/runs/{run_id}/events/stream"));

    // Follow the stream to the end: the run finishes and the stream closes.
    let app = test::init_service(aegis_api::app(f.state.clone())).await;
    let resp = test::call_service(
        &app,
        TestRequest::get().uri(&format!("/api/runs/{run_id}/events/stream")).to_request(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-accel-buffering").unwrap(), "no");
    assert_eq!(resp.headers().get("content-type").unwrap(), "text/event-stream");
    let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
    let ids: Vec<u64> =
        body.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert!(ids.len() >= 5, "{body}");
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "seq is contiguous from 1");
    assert!(body.contains("\"type\":\"workflow.completed\""));
    assert!(body.contains("\"request_id\":\"req-1\""), "events carry the request id");

    let (status, _, run) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{run_id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["request_id"], "req-1");
    assert_eq!(run["steps"].as_array().unwrap().len(), 3);
}

#[actix_web::test]
async fn wait_true_returns_the_finished_run() {
    let qa = qa_service().await;
    let f = fixture_with(&config(&qa, "")).await;
    let (status, _, body) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run?wait=true")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["trigger"], "api");
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps[0]["id"], "discover");
    assert_eq!(steps[1]["data"]["failed"], 1);
    assert_eq!(steps[1]["attempts"][0]["attempt"], 1);
    let (status, _, body) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run?wait=maybe")).await;
    assert_eq!(status, 400);
    assert_error(&body, "bad_request");
}

#[actix_web::test]
async fn polling_events_after_a_seq_and_resuming_the_stream() {
    let qa = qa_service().await;
    let f = fixture_with(&config(&qa, "")).await;
    let (_, _, run) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run?wait=true")).await;
    let id = run["id"].as_str().unwrap();
    let (status, _, all) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/events"))).await;
    assert_eq!(status, 200);
    let total = all["events"].as_array().unwrap().len() as u64;
    assert_eq!(all["last_seq"], total);
    let (_, _, later) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/events?after=3"))).await;
    let seqs: Vec<u64> =
        later["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (4..=total).collect::<Vec<_>>());

    let app = test::init_service(aegis_api::app(f.state.clone())).await;
    let req = TestRequest::get()
        .uri(&format!("/api/runs/{id}/events/stream"))
        .insert_header(("Last-Event-ID", "2"))
        .to_request();
    let body =
        String::from_utf8(test::read_body(test::call_service(&app, req).await).await.to_vec())
            .unwrap();
    let ids: Vec<u64> =
        body.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids, (3..=total).collect::<Vec<_>>(), "no gap and no repeat after Last-Event-ID");

    for bad in ["after=-1", "after=x"] {
        let (status, _, _) =
            call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/events?{bad}"))).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/api/runs/nope/events")).await;
    assert_eq!(status, 404);
    let (status, _, _) =
        call(&f.state, TestRequest::get().uri("/api/runs/nope/events/stream")).await;
    assert_eq!(status, 404);

    let (_, _, recent) =
        call(&f.state, TestRequest::get().uri("/api/events?event_type=workflow.completed")).await;
    assert_eq!(recent["events"].as_array().unwrap().len(), 1);
    let (status, _, _) =
        call(&f.state, TestRequest::get().uri("/api/events?event_type=nope")).await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn artifacts_are_listed_and_downloaded_without_traversal() {
    let qa = qa_service().await;
    let f = fixture_with(&config(&qa, "")).await;
    let (_, _, run) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run?wait=true")).await;
    let id = run["id"].as_str().unwrap();
    let (status, _, list) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/artifacts"))).await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        list["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"test.json"), "{names:?}");
    let (status, headers, data) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/artifacts/test.json")))
            .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert_eq!(data["failed"], 1);
    for name in ["..%2F..%2Fhistory.db", "..", "%2e%2e", "nope.json", "a%00b", "%2Fetc%2Fpasswd"] {
        let (status, _, body) =
            call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/artifacts/{name}")))
                .await;
        assert_eq!(status, 404, "{name}: {body}");
    }
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/api/runs/nope/artifacts")).await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn starting_needs_the_operator_role() {
    let qa = qa_service().await;
    let keys = format!(
        "auth:\n  keys:\n    - {{id: ci, key: {OPERATOR}, role: operator}}\n    - {{id: dash, key: {VIEWER}, role: viewer}}"
    );
    let f = fixture_with(&config(&qa, &keys)).await;
    let (status, _, body) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run")).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    let (status, _, body) = call(
        &f.state,
        TestRequest::post().uri("/api/workflows/smoke/run").insert_header(("X-API-Key", VIEWER)),
    )
    .await;
    assert_eq!(status, 403);
    assert_error(&body, "forbidden");
    let (status, _, _) = call(
        &f.state,
        TestRequest::post()
            .uri("/api/workflows/smoke/run")
            .insert_header(("Authorization", format!("Bearer {OPERATOR}"))),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, _) = call(
        &f.state,
        TestRequest::post().uri("/api/workflows/nope/run").insert_header(("X-API-Key", OPERATOR)),
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn a_full_queue_is_429_and_cancel_stops_a_run() {
    let qa = MockService::start().await.unwrap();
    qa.route("GET", "/api/routes", Route::ok(json!({"routes": []})).delay(Duration::from_secs(30)));
    qa.route(
        "POST",
        "/api/runs",
        Route::ok(json!({"total": 0, "passed": 0, "failed": 0, "failures": []})),
    );
    let f =
        fixture_with(&config(&qa, "server: {max_concurrent_runs: 1, max_queued_runs: 1}")).await;
    let (first, _, running) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run")).await;
    let (second, _, _) = call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run")).await;
    let (third, _, full) =
        call(&f.state, TestRequest::post().uri("/api/workflows/smoke/run")).await;
    assert_eq!((first, second, third), (202, 202, 429), "{full}");
    assert_error(&full, "queue_full");

    let id = running["run_id"].as_str().unwrap();
    let (status, _, _) =
        call(&f.state, TestRequest::post().uri(&format!("/api/runs/{id}/cancel"))).await;
    assert_eq!(status, 202);
    let app = test::init_service(aegis_api::app(f.state.clone())).await;
    let req = TestRequest::get().uri(&format!("/api/runs/{id}/events/stream")).to_request();
    let body =
        String::from_utf8(test::read_body(test::call_service(&app, req).await).await.to_vec())
            .unwrap();
    assert!(body.contains("\"type\":\"run.cancelled\""), "{body}");
    let (_, _, run) = call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}"))).await;
    assert_eq!(run["status"], "cancelled");
    let (status, _, body) =
        call(&f.state, TestRequest::post().uri(&format!("/api/runs/{id}/cancel"))).await;
    assert_eq!(status, 409, "{body}");
    let (status, _, _) = call(&f.state, TestRequest::post().uri("/api/runs/nope/cancel")).await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn services_report_live_health_even_when_down() {
    let qa = qa_service().await;
    let down = refused_url().await.unwrap();
    let yaml = format!(
        "services:\n  qa: {{url: \"{}\"}}\n  down: {{url: \"{down}\"}}\nworkflows:\n  w: {{steps: [{{type: report}}]}}\n",
        qa.url()
    );
    let f = fixture_with(&yaml).await;
    let (status, _, body) = call(&f.state, TestRequest::get().uri("/api/services")).await;
    assert_eq!(status, 200);
    assert_eq!(body["services"][0]["status"], "healthy");
    assert_eq!(body["services"][1]["status"], "unreachable");
    let (status, _, one) =
        call(&f.state, TestRequest::get().uri("/api/services/down/health")).await;
    assert_eq!(status, 200);
    assert_eq!(one["status"], "unreachable");
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/api/services/nope/health")).await;
    assert_eq!(status, 404);
}
