//! The webhook outbox: delivery rows written with the events they carry,
//! claimed by a dispatcher, and the attempts made to deliver them.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;

use crate::error::Error;
use crate::model::RunId;

crate::model::text_enum! {
    /// Where a delivery is.
    DeliveryStatus, "delivery status" {
        /// Waiting for its next attempt.
        Pending => "pending",
        /// A receiver answered 2xx.
        Delivered => "delivered",
        /// Every allowed attempt failed.
        Failed => "failed",
        /// The receiver answered 410 Gone: no more attempts.
        Gone => "gone",
    }
}

/// A delivery as enqueued: one event for one webhook, due at once.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The delivery id (unique).
    pub id: String,
    /// The webhook's position in the configuration's `webhooks` list.
    pub webhook: u32,
    /// The event carried (sent as `webhook-id`).
    pub event_id: String,
    /// The run the event belongs to.
    pub run_id: RunId,
    /// The event type.
    pub event_type: String,
    /// The request body: the event envelope byte for byte as in the ledger.
    pub envelope: String,
    /// When it was enqueued (and first due).
    pub created_at: Timestamp,
}

/// A delivery as stored: what was enqueued, and where it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event, the webhook and the body, as enqueued.
    pub enqueued: NewDelivery,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts made since it was enqueued or last redelivered.
    pub attempt_count: u32,
    /// When the next attempt is due; `None` unless pending.
    pub next_attempt_at: Option<Timestamp>,
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryAttempt {
    /// 1 for the first attempt (counting again from 1 after a redelivery).
    pub attempt: u32,
    /// When the request was sent.
    pub at: Timestamp,
    /// The receiver's status code, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// What an attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// Done: the receiver accepted it.
    Delivered,
    /// Try again at this time.
    Retry {
        /// When the next attempt is due.
        at: Timestamp,
    },
    /// The receiver said 410 Gone.
    Gone,
    /// No attempts left.
    Failed,
}

/// An attempt and its outcome, recorded by [`crate::Write::RecordDeliveryAttempt`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryResult {
    /// The delivery id.
    pub id: String,
    /// The attempt made.
    pub attempt: DeliveryAttempt,
    /// What follows.
    pub outcome: DeliveryOutcome,
}

/// Which due deliveries to claim ([`crate::HistoryBackend::claim_deliveries`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryClaim {
    /// Only this webhook's deliveries.
    pub webhook: u32,
    /// Deliveries due at or before this time.
    pub now: Timestamp,
    /// The claim lapses at this time unless an attempt is recorded first,
    /// so a dispatcher that dies leaves its deliveries to the next one.
    pub until: Timestamp,
    /// At most this many.
    pub limit: u32,
}

/// What to list ([`crate::HistoryBackend::list_deliveries`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryQuery {
    /// Only deliveries with this status.
    pub status: Option<DeliveryStatus>,
    /// Only this webhook's deliveries.
    pub webhook: Option<u32>,
    /// Only deliveries of this run's events.
    pub run_id: Option<RunId>,
    /// At most this many (clamped to [`crate::MAX_PAGE_SIZE`]).
    pub limit: u32,
    /// Continue after the page that returned this cursor.
    pub cursor: Option<String>,
}

/// A delivery with every attempt made, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryDetail {
    /// The delivery.
    pub delivery: Delivery,
    /// Every attempt, across redeliveries, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
}

/// One page of the delivery log, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPage {
    /// The deliveries.
    pub deliveries: Vec<DeliveryDetail>,
    /// Pass this as [`DeliveryQuery::cursor`] for the next page.
    pub next_cursor: Option<String>,
}
