//! Durable run history for Aegis: the [`HistoryBackend`] trait and its
//! [`InMemoryHistory`] and [`SqliteHistory`] implementations.
//!
//! Runs must never be lost: every write is durable when its future returns.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use aegis_history::{HistoryBackend, HistoryOptions, NewRun, RunId, SqliteHistory, Trigger};
//!
//! let history: Arc<dyn HistoryBackend> =
//!     Arc::new(SqliteHistory::open_in_memory(HistoryOptions::default()).await?);
//! let run = NewRun {
//!     id: RunId::new("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b"),
//!     workflow: "nightly".into(),
//!     trigger: Trigger::Cli,
//!     request_id: None,
//!     created_at: jiff::Timestamp::now(),
//! };
//! history.create_run(&run).await?;
//! assert_eq!(history.recent(10).await?.len(), 1);
//! # Ok::<(), aegis_history::Error>(())
//! # }).unwrap();
//! ```

mod backend;
#[cfg(feature = "test-support")]
pub mod conformance;
mod cursor;
mod error;
mod memory;
mod model;
mod options;
mod outbox;
#[cfg(feature = "test-support")]
pub mod seed;
mod sqlite;

pub use backend::{HistoryBackend, UnfinishedRuns};
pub use error::{Error, Result};
pub use memory::InMemoryHistory;
pub use model::{
    Attempt, CloseSteps, EventRecord, GateDecision, GateDecisionKind, ListQuery, MAX_PAGE_SIZE,
    NewRun, Page, PendingGate, RunDetail, RunId, RunRecord, RunStatus, RunUpdate, StepRecord,
    StepStatus, Transition, Trigger, Write,
};
pub use options::{Durability, HistoryOptions};
pub use outbox::{
    Delivery, DeliveryAttempt, DeliveryClaim, DeliveryDetail, DeliveryOutcome, DeliveryPage,
    DeliveryQuery, DeliveryResult, DeliveryStatus, NewDelivery,
};
pub use sqlite::{SCHEMA_VERSION, SqliteHistory};
