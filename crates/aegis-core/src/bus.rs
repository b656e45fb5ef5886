//! The in-process bus every committed event is published on, and its
//! followers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::event::Event;

/// What a [`Subscription`] receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// The subscriber fell behind and this many events were dropped for it;
    /// the engine never waits for a subscriber.
    Lagged(u64),
}

/// How many bytes of events the recent-events buffer holds at most (their JSON
/// size, [`event_size`]), whatever `event_log_size` allows: events carry step
/// failures and patches, so a count alone does not bound the memory.
pub const RECENT_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The in-process bus every event is published on.
///
/// Publishing never blocks: each subscriber has a bounded buffer and a slow one
/// lags (and is told by how much) instead of slowing runs. The bus also keeps
/// the last `event_log_size` events for late readers, and at most
/// [`RECENT_MAX_BYTES`] of them.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    recent: Mutex<Recent>,
    recent_capacity: usize,
    recent_max_bytes: usize,
}

/// The recent events and their total size.
#[derive(Debug, Default)]
struct Recent {
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
}

/// About how many bytes `event` takes as JSON: the exact length of its data plus
/// its envelope's strings and a fixed allowance for the field names, numbers and
/// time. Cheap next to serializing it (no allocation).
pub fn event_size(event: &Event) -> usize {
    const ENVELOPE: usize = 192;
    crate::limits::json_len(&event.data)
        + event.id.len()
        + event.event_type.len()
        + event.run_id.len()
        + event.workflow.len()
        + event.request_id.as_ref().map_or(0, String::len)
        + ENVELOPE
}

impl EventBus {
    /// A bus whose subscribers each buffer up to `capacity` events and which
    /// remembers the last `recent_capacity` events (at most [`RECENT_MAX_BYTES`]).
    pub fn new(capacity: usize, recent_capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            recent: Mutex::new(Recent {
                events: VecDeque::with_capacity(recent_capacity.min(4096)),
                bytes: 0,
            }),
            recent_capacity,
            recent_max_bytes: RECENT_MAX_BYTES,
        }
    }

    /// The same bus with another byte bound on its recent events.
    pub fn with_recent_max_bytes(mut self, bytes: usize) -> Self {
        self.recent_max_bytes = bytes;
        self
    }

    /// Follows every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription { receiver: self.sender.subscribe() }
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<Arc<Event>> {
        let recent = match self.recent.lock() {
            Ok(recent) => recent,
            Err(poisoned) => poisoned.into_inner(),
        };
        recent.events.iter().map(|(event, _)| Arc::clone(event)).collect()
    }

    /// Publishes an event to every subscriber without waiting for any.
    pub fn publish(&self, event: Arc<Event>) {
        if self.recent_capacity > 0 {
            let size = event_size(&event);
            let mut recent = match self.recent.lock() {
                Ok(recent) => recent,
                Err(poisoned) => poisoned.into_inner(),
            };
            recent.events.push_back((Arc::clone(&event), size));
            recent.bytes += size;
            // The newest event always stays, even one larger than the bound alone.
            while recent.events.len() > 1
                && (recent.events.len() > self.recent_capacity
                    || recent.bytes > self.recent_max_bytes)
            {
                if let Some((_, dropped)) = recent.events.pop_front() {
                    recent.bytes -= dropped;
                }
            }
        }
        // An error only means nobody is subscribed right now.
        let _ = self.sender.send(event);
    }
}

/// A follower of the [`EventBus`].
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
}

impl Subscription {
    /// The next event, or how many were missed; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.receiver.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Received::Lagged(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            schema_version: crate::event::SCHEMA_VERSION.to_owned(),
            id: format!("e{seq}"),
            seq,
            event_type: "run.cancelled".to_owned(),
            time: jiff::Timestamp::now(),
            run_id: "r".to_owned(),
            workflow: "wf".to_owned(),
            request_id: None,
            data: serde_json::Value::Null,
        })
    }

    fn sized(seq: u64, bytes: usize) -> Arc<Event> {
        let mut event = (*event(seq)).clone();
        event.data = serde_json::Value::String("x".repeat(bytes));
        Arc::new(event)
    }

    #[test]
    fn recent_events_are_bounded_in_count_and_in_bytes() {
        let bus = EventBus::new(4, 5);
        for seq in 1..=8 {
            bus.publish(event(seq));
        }
        let seqs: Vec<u64> = bus.recent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8]);

        // Each event is about 1,200 bytes: three fit in 4,000, four do not.
        let bus = EventBus::new(4, 100).with_recent_max_bytes(4_000);
        for seq in 1..=10 {
            bus.publish(sized(seq, 1_000));
        }
        let seqs: Vec<u64> = bus.recent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [8, 9, 10]);
        // One event larger than the bound alone is kept, and only it.
        bus.publish(sized(11, 10_000));
        let seqs: Vec<u64> = bus.recent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [11]);
        bus.publish(event(12));
        let seqs: Vec<u64> = bus.recent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [12]);
    }

    #[test]
    fn event_size_is_close_to_the_serialized_length() {
        for event in [event(1), sized(2, 5_000)] {
            let exact = serde_json::to_vec(&*event).map(|v| v.len()).unwrap_or(0);
            let size = event_size(&event);
            assert!(size >= exact && size <= exact + 192, "{size} vs {exact}");
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_many_it_missed() {
        let bus = EventBus::new(2, 0);
        let mut sub = bus.subscribe();
        for seq in 1..=5 {
            bus.publish(event(seq));
        }
        match sub.recv().await {
            Some(Received::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("expected lag, got {other:?}"),
        }
        match sub.recv().await {
            Some(Received::Event(e)) => assert_eq!(e.seq, 4),
            other => panic!("expected event, got {other:?}"),
        }
    }
}
