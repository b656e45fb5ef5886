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

/// The in-process bus every event is published on.
///
/// Publishing never blocks: each subscriber has a bounded buffer and a slow one
/// lags (and is told by how much) instead of slowing runs. The bus also keeps
/// the last `event_log_size` events for late readers.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    recent_capacity: usize,
}

impl EventBus {
    /// A bus whose subscribers each buffer up to `capacity` events and which
    /// remembers the last `recent_capacity` events.
    pub fn new(capacity: usize, recent_capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            recent: Mutex::new(VecDeque::with_capacity(recent_capacity)),
            recent_capacity,
        }
    }

    /// Follows every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription { receiver: self.sender.subscribe() }
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<Arc<Event>> {
        match self.recent.lock() {
            Ok(recent) => recent.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    /// Publishes an event to every subscriber without waiting for any.
    pub fn publish(&self, event: Arc<Event>) {
        if self.recent_capacity > 0 {
            let mut recent = match self.recent.lock() {
                Ok(recent) => recent,
                Err(poisoned) => poisoned.into_inner(),
            };
            if recent.len() == self.recent_capacity {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(&event));
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
