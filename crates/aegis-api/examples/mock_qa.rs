//! A fast local stand-in for the QA services, for load tests: answers the calls of the
//! `full_pipeline` shape instantly and prints its URL on stdout, then serves until its
//! standard input closes.
//!
//! `cargo run --release -p aegis-api --example mock_qa`

use std::io::Read;

use aegis_core::testing::{MockService, Route};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mock = MockService::start().await?;
        mock.route("GET", "/health", Route::ok(json!({"status": "ok"})));
        mock.route("GET", "/api/routes", Route::ok(json!({"routes": ["/login", "/cart"], "route_count": 2})));
        mock.route(
            "POST",
            "/api/runs",
            Route::ok(json!({"total": 2, "passed": 1, "failed": 1, "failures": [{"test": "checkout", "error": "500"}]})),
        );
        mock.route("POST", "/api/v1/reports", Route::ok(json!({"created": 1})));
        println!("{}", mock.url());
        // Serve until the parent closes our stdin (or exits).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        Ok(())
    })
}
