//! `GET /`: a placeholder until the dashboard lands.

use actix_web::HttpResponse;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Aegis</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem">
<h1>Aegis</h1>
<p>The dashboard is not built yet: this page is a placeholder until it lands.</p>
<p>The API is live: see <a href="api/openapi.json">api/openapi.json</a>,
<a href="health">health</a> and <a href="api/history?limit=10">recent runs</a>.</p>
</body>
</html>
"#;

/// The placeholder page.
#[utoipa::path(get, path = "/", tag = "dashboard", responses((status = 200, content_type = "text/html")))]
pub(crate) async fn index() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAGE)
}
