//! Integration tests of the engine against local mock QA services on 127.0.0.1.

mod commits;
mod common;
mod control;
mod events;
mod gates;
mod health;
mod layers;
mod procs_files;
mod runs;
mod steps;
mod webhooks;
