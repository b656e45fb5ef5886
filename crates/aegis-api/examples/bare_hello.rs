//! A bare actix-web server answering `GET /health`, the yardstick for Aegis's own
//! `/health` throughput in the load test.
//!
//! `cargo run --release -p aegis-api --example bare_hello -- PORT`

use actix_web::{App, HttpResponse, HttpServer, web};

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8090);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new().route(
                "/health",
                web::get()
                    .to(|| async { HttpResponse::Ok().json(serde_json::json!({"status": "ok"})) }),
            )
        })
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
