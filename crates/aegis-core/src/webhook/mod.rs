//! Webhooks: the outbox rows the ledger commits with each event, and the
//! dispatcher that delivers them (SPEC section 6).
//!
//! A delivery per (event, webhook whose `events` lists the event's type or
//! `"*"`) is written in the history transaction of its event
//! ([`Outbox::deliveries`], called from the ledger's commit), so a committed
//! event always has its deliveries and a restart resumes every pending one.
//! The dispatcher (`crate::dispatch`) claims due deliveries per webhook, sends
//! them with a bounded number in flight per webhook, and records every
//! attempt.

pub(crate) mod sign;

use aegis_config::Webhook;
use aegis_history::{EventRecord, NewDelivery, Write};
use tokio::sync::Notify;

/// The event type a webhook raises when it gives up on a delivery.
pub(crate) const WEBHOOK_FAILED: &str = "webhook.failed";

/// The configured webhooks and a wake-up per webhook for its dispatcher.
#[derive(Debug)]
pub(crate) struct Outbox {
    webhooks: Vec<Webhook>,
    wakes: Vec<Notify>,
}

impl Outbox {
    pub(crate) fn new(webhooks: &[Webhook]) -> Self {
        Self {
            webhooks: webhooks.to_vec(),
            wakes: webhooks.iter().map(|_| Notify::new()).collect(),
        }
    }

    pub(crate) fn webhooks(&self) -> &[Webhook] {
        &self.webhooks
    }

    /// The outbox rows for these events, to commit in their transaction.
    /// The body is the envelope exactly as the ledger stores it.
    pub(crate) fn deliveries<'a>(
        &self,
        records: impl IntoIterator<Item = &'a EventRecord>,
    ) -> Vec<Write> {
        let mut writes = Vec::new();
        if self.webhooks.is_empty() {
            return writes;
        }
        for record in records {
            for (index, webhook) in self.webhooks.iter().enumerate() {
                if !webhook.matches(&record.event_type) {
                    continue;
                }
                let Ok(index) = u32::try_from(index) else { continue };
                writes.push(Write::EnqueueDelivery(NewDelivery {
                    id: delivery_id(&record.id, index),
                    webhook: index,
                    event_id: record.id.clone(),
                    run_id: record.run_id.clone(),
                    event_type: record.event_type.clone(),
                    envelope: record.envelope.clone(),
                    created_at: record.time,
                }));
            }
        }
        writes
    }

    /// Wakes the dispatchers of the webhooks these writes enqueued for, once
    /// they are committed.
    pub(crate) fn committed(&self, writes: &[Write]) {
        for write in writes {
            if let Write::EnqueueDelivery(new) = write
                && let Some(wake) = self.wakes.get(new.webhook as usize)
            {
                wake.notify_one();
            }
        }
    }

    pub(crate) fn wake(&self, index: usize) -> Option<&Notify> {
        self.wakes.get(index)
    }
}

impl Outbox {
    /// Wakes every webhook's dispatcher (a delivery was queued again and
    /// which webhook it belongs to is not known here).
    pub(crate) fn wake_all(&self) {
        for wake in &self.wakes {
            wake.notify_one();
        }
    }
}

/// A delivery's id: its event and webhook, so it is the same however often
/// the event's commit is retried, and unique.
fn delivery_id(event_id: &str, webhook: u32) -> String {
    format!("{event_id}.{webhook}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> aegis_config::Config {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(".aegis.yaml");
        std::fs::write(&path, yaml).expect("config written");
        aegis_config::LoadOptions::new().path(Some(path)).load().expect("valid config")
    }

    fn record(event_type: &str) -> EventRecord {
        EventRecord {
            run_id: "r1".into(),
            seq: 1,
            id: format!("e-{event_type}"),
            event_type: event_type.to_owned(),
            time: jiff::Timestamp::UNIX_EPOCH,
            envelope: format!("{{\"type\":\"{event_type}\"}}"),
        }
    }

    #[test]
    fn a_delivery_per_matching_webhook() {
        let config = config(
            "webhooks:\n  - url: http://127.0.0.1:1/a\n    events: [workflow.completed]\n  - url: http://127.0.0.1:1/b\n    events: [\"*\"]\n  - url: http://127.0.0.1:1/c\n    events: [step.started]\n",
        );
        let outbox = Outbox::new(config.webhooks());
        let records = [record("workflow.completed"), record("run.queued")];
        let writes = outbox.deliveries(&records);
        let got: Vec<(String, u32, String)> = writes
            .iter()
            .map(|w| match w {
                Write::EnqueueDelivery(d) => (d.event_type.clone(), d.webhook, d.envelope.clone()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("workflow.completed".to_owned(), 0, records[0].envelope.clone()),
                ("workflow.completed".to_owned(), 1, records[0].envelope.clone()),
                ("run.queued".to_owned(), 1, records[1].envelope.clone()),
            ]
        );
        assert!(Outbox::new(&[]).deliveries(&records).is_empty());
    }
}
