//! Bad input gets a 4xx JSON error, never a 5xx.

use actix_web::test::TestRequest;

use crate::common::{assert_error, call, fixture};

#[actix_web::test]
async fn unknown_routes_and_methods() {
    let f = fixture("").await;
    let (status, _, body) = call(&f.state, TestRequest::get().uri("/api/nothing-here")).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, _, body) = call(&f.state, TestRequest::delete().uri("/api/runs")).await;
    assert_eq!(status, 405);
    assert_error(&body, "method_not_allowed");
    let (status, _, body) = call(&f.state, TestRequest::post().uri("/health")).await;
    assert_eq!(status, 405);
    assert_error(&body, "method_not_allowed");
}

#[actix_web::test]
async fn unknown_ids_are_404_whatever_their_format() {
    let f = fixture("").await;
    for id in [
        "0196a1b2-0000-7000-8000-000000000000",
        "not-a-uuid",
        "%E2%9C%93",
        "..%2F..%2Fetc%2Fpasswd",
        "a%00b",
    ] {
        let (status, _, body) =
            call(&f.state, TestRequest::get().uri(&format!("/api/runs/{id}"))).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_error(&body, "not_found");
    }
    let (status, _, body) = call(&f.state, TestRequest::get().uri("/api/workflows/nope")).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, _, _) =
        call(&f.state, TestRequest::get().uri("/api/workflows/nope/history")).await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn absurd_query_values_are_400() {
    let f = fixture("").await;
    for query in [
        "limit=0",
        "limit=-5",
        "limit=1000000",
        "limit=ten",
        "limit=99999999999999999999",
        "status=exploded",
        "cursor=garbage",
        "cursor=%00%01",
    ] {
        let (status, _, body) =
            call(&f.state, TestRequest::get().uri(&format!("/api/runs?{query}"))).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_error(&body, "bad_request");
    }
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/api/history?limit=abc")).await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn protected_reads_need_a_key() {
    let yaml = "auth:\n  protect_reads: true\n  keys:\n    - {id: dash, key: viewer-key-0123456789abcdef, role: viewer}";
    let f = fixture(yaml).await;
    let (status, headers, body) = call(&f.state, TestRequest::get().uri("/api/runs")).await;
    assert_eq!(status, 401);
    assert_error(&body, "unauthorized");
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    let (status, _, _) =
        call(&f.state, TestRequest::get().uri("/api/runs").insert_header(("X-API-Key", "wrong")))
            .await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        &f.state,
        TestRequest::get()
            .uri("/api/runs")
            .insert_header(("X-API-Key", "viewer-key-0123456789abcdef")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &f.state,
        TestRequest::get()
            .uri("/api/runs")
            .insert_header(("Authorization", "Bearer viewer-key-0123456789abcdef")),
    )
    .await;
    assert_eq!(status, 200);
    // Liveness stays public.
    let (status, _, _) = call(&f.state, TestRequest::get().uri("/health")).await;
    assert_eq!(status, 200);
}

/// Regression: a body over `server.max_body_bytes` sent to a route that reads no body
/// used to be ignored and the run started (202); the limit holds on every route.
#[actix_web::test]
async fn an_oversize_body_is_413_even_where_no_body_is_read() {
    let f = fixture("server: {max_body_bytes: 1024}").await;
    let big = vec![b'x'; 4096];
    let (status, headers, body) = call(
        &f.state,
        TestRequest::post()
            .uri("/api/workflows/nightly/run")
            .insert_header(("Content-Type", "application/json"))
            .set_payload(big),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_error(&body, "payload_too_large");
    assert!(headers.contains_key("x-request-id"));
    let (_, _, runs) = call(&f.state, TestRequest::get().uri("/api/runs")).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "no run for a refused request");
    let (status, _, _) = call(
        &f.state,
        TestRequest::post().uri("/api/workflows/nightly/run").set_payload(vec![b'x'; 1024]),
    )
    .await;
    assert_eq!(status, 202, "a body at the limit is fine");
}
