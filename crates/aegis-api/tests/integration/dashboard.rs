//! The embedded dashboard: both pages, assets with content types and ETags, and all of it
//! under `base_path`.

use actix_web::body::MessageBody;
use actix_web::dev::Service;
use actix_web::test::{self, TestRequest};

use crate::common::{call, fixture};

/// Status, headers and body text of one request.
async fn fetch(
    state: &actix_web::web::Data<aegis_api::AppState>,
    req: TestRequest,
) -> (u16, actix_web::http::header::HeaderMap, String) {
    let app = test::init_service(aegis_api::app(state.clone())).await;
    let response = app.call(req.to_request()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().try_into_bytes().unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(headers: &'a actix_web::http::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[actix_web::test]
async fn both_pages_are_the_dashboard_with_a_base_pointing_at_its_root() {
    let f = fixture("").await;
    for (path, base) in [("/", "./"), ("/runs/0190-abc", "../")] {
        let (status, headers, body) = fetch(&f.state, TestRequest::get().uri(path)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8", "{path}");
        assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
        assert!(header(&headers, "content-security-policy").contains("default-src 'self'"));
        assert!(body.contains(&format!("<base href=\"{base}\">")), "{path}: {body}");
        assert!(body.contains("assets/app.js"), "{path}");
        assert!(!body.contains("placeholder"), "{path}");
    }
}

#[actix_web::test]
async fn assets_have_their_content_type_and_an_etag_that_revalidates() {
    let f = fixture("").await;
    for (path, kind) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = fetch(&f.state, TestRequest::get().uri(path)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), kind, "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty());
        let etag = header(&headers, "etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{path}: {etag:?}");

        let again = TestRequest::get().uri(path).insert_header(("If-None-Match", etag.as_str()));
        let (status, headers, body) = fetch(&f.state, again).await;
        assert_eq!(status, 304, "{path}");
        assert_eq!(header(&headers, "etag"), etag);
        assert!(body.is_empty());

        let stale = TestRequest::get().uri(path).insert_header(("If-None-Match", "\"old\""));
        let (status, _, _) = fetch(&f.state, stale).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[actix_web::test]
async fn unknown_assets_are_json_404s() {
    let f = fixture("").await;
    for path in ["/assets/nope.js", "/assets/../index.html", "/assets/%2e%2e/index.html"] {
        let (status, _, body) = call(&f.state, TestRequest::get().uri(path)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
}

#[actix_web::test]
async fn the_dashboard_moves_under_base_path() {
    let f = fixture("server: {base_path: /aegis}").await;
    for (path, base) in [("/aegis/", "./"), ("/aegis/runs/x", "../")] {
        let (status, _, body) = fetch(&f.state, TestRequest::get().uri(path)).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(&format!("<base href=\"{base}\">")), "{path}");
    }
    // The base path without its slash redirects to the landing page.
    let (status, _, _) = fetch(&f.state, TestRequest::get().uri("/aegis")).await;
    assert_eq!(status, 308, "/aegis");
    let (status, _, _) = fetch(&f.state, TestRequest::get().uri("/aegis/assets/app.js")).await;
    assert_eq!(status, 200);
    for outside in ["/", "/assets/app.js", "/runs/x"] {
        let (status, _, _) = fetch(&f.state, TestRequest::get().uri(outside)).await;
        assert_eq!(status, 404, "{outside}");
    }
}
