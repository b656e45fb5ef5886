//! API tests: the same `aegis_api::app` the server runs, driven with `actix_web::test`.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on broken fixtures")]

mod common;
mod control;
mod dashboard;
mod errors;
mod gates;
mod health;
mod runs;
mod webhooks;
