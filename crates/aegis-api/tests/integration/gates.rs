//! Gates over HTTP: listing, approving and rejecting with JSON Patches, every
//! refusal and conflict, roles, concurrent decisions and cancelling a waiting run.

use actix_web::dev::Service;
use actix_web::test::{self, TestRequest};
use aegis_core::testing::{MockService, Route};
use serde_json::{Value, json};

use crate::common::{Fixture, assert_error, call, fixture_with};

const OPERATOR: &str = "operator-key-0123456789abcdef";
const VIEWER: &str = "viewer-key-0123456789abcdef";

async fn qa_service() -> MockService {
    let qa = MockService::start().await.unwrap();
    qa.route(
        "POST",
        "/api/runs",
        Route::ok(json!({"total": 3, "passed": 0, "failed": 3,
            "failures": [{"id": "a"}, {"id": "b"}, {"id": "c"}]})),
    );
    qa.route("POST", "/api/v1/reports", Route::ok(json!({"accepted": true})));
    qa
}

async fn gated(qa: &MockService, gate_extra: &str) -> Fixture {
    fixture_with(&format!(
        "auth:\n  keys:\n    - {{id: ci, key: {OPERATOR}, role: operator}}\n    - {{id: dash, key: {VIEWER}, role: viewer}}
services:\n  qa: {{url: \"{}\"}}
workflows:
  w:
    steps:
      - {{id: test, type: test, service: qa}}
      - {{id: review, type: gate, artifact: test, message: check{gate_extra}}}
      - {{id: bugs, type: submit_bugs, service: qa, condition: has_failures}}
",
        qa.url()
    ))
    .await
}

fn op(req: TestRequest) -> TestRequest {
    req.insert_header(("X-API-Key", OPERATOR))
}

/// Starts a run and waits until it stops at its gate.
async fn waiting_run(f: &Fixture) -> String {
    let (status, _, body) =
        call(&f.state, op(TestRequest::post().uri("/api/workflows/w/run?wait=true"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "waiting");
    body["id"].as_str().or(body["run_id"].as_str()).unwrap().to_owned()
}

async fn decide(f: &Fixture, run: &str, action: &str, body: Value) -> (u16, Value) {
    let req = op(TestRequest::post().uri(&format!("/api/runs/{run}/gates/review/{action}")))
        .set_json(body);
    let (status, _, body) = call(&f.state, req).await;
    (status, body)
}

async fn run(f: &Fixture, run: &str) -> Value {
    call(&f.state, TestRequest::get().uri(&format!("/api/runs/{run}"))).await.2
}

/// Waits (polling, no timing assertion) until the run is no longer active.
async fn finished(f: &Fixture, id: &str) -> Value {
    for _ in 0..1000 {
        let body = run(f, id).await;
        if !["queued", "running", "waiting"].contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("run {id} did not finish");
}

fn ids(failures: &Value) -> Vec<String> {
    failures.as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_owned()).collect()
}

#[actix_web::test]
async fn pending_gates_are_listed_and_an_approval_with_a_patch_continues_the_run() {
    let qa = qa_service().await;
    let f = gated(&qa, "").await;
    let id = waiting_run(&f).await;
    let (status, _, body) =
        call(&f.state, TestRequest::get().uri("/api/gates?status=pending")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gates"][0]["run_id"], id.as_str());
    assert_eq!(body["gates"][0]["gate"], "review");
    assert_eq!(body["gates"][0]["artifact"], "test");
    let (status, _, body) = call(&f.state, TestRequest::get().uri("/api/gates?status=done")).await;
    assert_eq!(status, 400);
    assert_error(&body, "bad_request");

    let patch = json!([{"op": "remove", "path": "/failures/1"}]);
    let (status, body) =
        decide(&f, &id, "approve", json!({"comment": "b is flaky", "patch": patch})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["decision"].as_str(), body["by"].as_str()), (Some("approve"), Some("ci")));
    assert_eq!(ids(&body["artifact"]["failures"]), ["a", "c"]);
    let detail = finished(&f, &id).await;
    assert_eq!(detail["status"], "succeeded", "{detail}");
    assert_eq!(detail["gate_decisions"][0]["by"], "ci");
    assert_eq!(detail["gate_decisions"][0]["comment"], "b is flaky");
    assert_eq!(detail["gate_decisions"][0]["patch"], patch);
    let reports = qa.requests_to("/api/v1/reports");
    assert_eq!(ids(&reports[0].json()["failures"]), ["a", "c"]);
    let (_, _, body) = call(&f.state, TestRequest::get().uri("/api/gates")).await;
    assert_eq!(body["gates"], json!([]));
    let (_, _, events) =
        call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}/events"))).await;
    let text = events.to_string();
    assert!(text.contains("gate.approved"), "{text}");
}

#[actix_web::test]
async fn refusals_and_conflicts_have_their_statuses_and_change_nothing() {
    let qa = qa_service().await;
    let f = gated(&qa, "").await;
    let id = waiting_run(&f).await;
    for patch in [
        json!([{"op": "remove", "path": "/nope/3"}]),
        json!([{"op": "test", "path": "/total", "value": 42}]),
        json!({"op": "remove", "path": "/failures/0"}),
    ] {
        let (status, body) = decide(&f, &id, "approve", json!({"patch": patch})).await;
        assert_eq!(status, 422, "{patch}: {body}");
        assert_error(&body, "unprocessable_entity");
    }
    let (status, body) = decide(&f, &id, "approve", json!(["not", "a", "body"])).await;
    assert_eq!(status, 422, "{body}");
    let req = op(TestRequest::post().uri(&format!("/api/runs/{id}/gates/review/approve")))
        .insert_header(("content-type", "application/json"))
        .set_payload("{not json");
    let (status, _, body) = call(&f.state, req).await;
    assert_eq!(status, 400, "{body}");
    let detail = run(&f, &id).await;
    assert_eq!(detail["status"], "waiting");
    assert_eq!(detail["pending_gates"].as_array().unwrap().len(), 1);
    assert_eq!(detail["gate_decisions"], json!([]));

    // Roles: no key 401, a viewer 403.
    let path = format!("/api/runs/{id}/gates/review/approve");
    let (status, _, _) = call(&f.state, TestRequest::post().uri(&path)).await;
    assert_eq!(status, 401);
    let (status, _, body) =
        call(&f.state, TestRequest::post().uri(&path).insert_header(("X-API-Key", VIEWER))).await;
    assert_eq!(status, 403);
    assert_error(&body, "forbidden");

    // Unknown run, unknown gate: 404.
    let (status, body) = decide(&f, "no-such-run", "approve", json!({})).await;
    assert_eq!(status, 404, "{body}");
    let req = op(TestRequest::post().uri(&format!("/api/runs/{id}/gates/nope/approve")));
    let (status, _, body) = call(&f.state, req).await;
    assert_eq!(status, 404, "{body}");

    // The first decision wins; a second one, and one on a finished run, are 409.
    let (status, body) = decide(&f, &id, "reject", json!({"comment": "no"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "rejected");
    let (status, body) = decide(&f, &id, "approve", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "conflict");
    let detail = run(&f, &id).await;
    assert_eq!(detail["status"], "rejected");
    assert_eq!(detail["gate_decisions"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn twenty_concurrent_approvals_give_one_200_and_nineteen_409() {
    let qa = qa_service().await;
    let f = gated(&qa, "").await;
    let id = waiting_run(&f).await;
    let app = test::init_service(aegis_api::app(f.state.clone())).await;
    let calls = (0..20).map(|_| {
        let req = op(TestRequest::post().uri(&format!("/api/runs/{id}/gates/review/approve")))
            .set_json(json!({"patch": [{"op": "remove", "path": "/failures/0"}]}))
            .to_request();
        app.call(req)
    });
    let mut statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses[0], 200);
    assert!(statuses[1..].iter().all(|s| *s == 409), "{statuses:?}");
    let detail = finished(&f, &id).await;
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(ids(&qa.requests_to("/api/v1/reports")[0].json()["failures"]), ["b", "c"]);
}

#[actix_web::test]
async fn reject_with_retry_from_reaches_the_gate_again() {
    let qa = qa_service().await;
    let f = gated(&qa, ", retry_from: test").await;
    let id = waiting_run(&f).await;
    let (status, body) = decide(&f, &id, "reject", json!({"comment": "again"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "running");
    let mut detail = Value::Null;
    for _ in 0..1000 {
        detail = run(&f, &id).await;
        // The pending gate is written just before the `waiting` status; the run has
        // reached the gate once both are visible.
        if detail["status"] == "waiting"
            && detail["pending_gates"].as_array().is_some_and(|g| !g.is_empty())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(detail["status"], "waiting", "{detail}");
    assert_eq!(qa.requests_to("/api/runs").len(), 2);
    let (status, body) = decide(&f, &id, "approve", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(finished(&f, &id).await["status"], "succeeded");
}

#[actix_web::test]
async fn cancelling_a_waiting_run_ends_it_cancelled() {
    let qa = qa_service().await;
    let f = gated(&qa, "").await;
    let id = waiting_run(&f).await;
    let (status, _, body) =
        call(&f.state, op(TestRequest::post().uri(&format!("/api/runs/{id}/cancel")))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(run(&f, &id).await["status"], "cancelled");
    let (status, body) = decide(&f, &id, "approve", json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, _, _) =
        call(&f.state, op(TestRequest::post().uri(&format!("/api/runs/{id}/cancel")))).await;
    assert_eq!(status, 409);
}

#[actix_web::test]
async fn the_openapi_document_has_the_gate_endpoints() {
    let qa = qa_service().await;
    let f = gated(&qa, "").await;
    let (_, _, doc) = call(&f.state, TestRequest::get().uri("/api/openapi.json")).await;
    for path in
        ["/api/gates", "/api/runs/{id}/gates/{gate}/approve", "/api/runs/{id}/gates/{gate}/reject"]
    {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}

#[actix_web::test]
async fn pending_gates_are_paginated_like_the_other_lists() {
    let qa = qa_service().await;
    let f = gated(&qa, "").await;
    let mut started = Vec::new();
    for _ in 0..5 {
        started.push(waiting_run(&f).await);
    }
    let mut seen = Vec::new();
    let mut uri = "/api/gates?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, _, body) = call(&f.state, TestRequest::get().uri(&uri)).await;
        assert_eq!(status, 200, "{body}");
        let gates = body["gates"].as_array().unwrap();
        assert!(gates.len() <= 2, "{body}");
        seen.extend(gates.iter().map(|g| g["run_id"].as_str().unwrap().to_owned()));
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/gates?limit=2&cursor={cursor}"),
            None => {
                assert!(body["next_cursor"].is_null(), "{body}");
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    started.sort();
    assert_eq!(sorted_seen, started, "every waiting gate once");
    for bad in ["limit=0", "limit=1001", "cursor=zz", "cursor=6731"] {
        let (status, _, body) =
            call(&f.state, TestRequest::get().uri(&format!("/api/gates?{bad}"))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_error(&body, "bad_request");
    }
    let (_, _, body) = call(&f.state, TestRequest::get().uri("/api/gates")).await;
    assert_eq!(body["gates"].as_array().unwrap().len(), 5, "default page holds 50");
}
