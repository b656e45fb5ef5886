//! Integration tests of aegis-history: the conformance suite on every backend, faults, crashes.

#![expect(clippy::unwrap_used, reason = "test helpers panic on failure like tests do")]

#[path = "integration/batches.rs"]
mod batches;
#[path = "integration/conformance.rs"]
mod conformance;
#[path = "integration/crash.rs"]
mod crash;
#[path = "integration/faults.rs"]
mod faults;
#[path = "integration/outbox.rs"]
mod outbox;
