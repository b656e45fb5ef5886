//! Black-box tests: the real binaries, started as a user would start them.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on broken fixtures")]

mod backpressure;
mod cli_config;
mod cli_server;
mod cli_shapes;
mod dashboard;
mod demo;
mod durability;
mod gates;
mod hostile_input;
mod procs_files;
mod secrets;
mod server_api;
mod server_bad_input;
mod server_lifecycle;
mod server_metrics;
mod server_openapi;
mod server_surface;
mod support;
mod webhooks;
