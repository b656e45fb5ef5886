//! How the SQLite outbox stores deliveries: those committed with their
//! events are spooled (one row per transaction and webhook) and unpacked as
//! the dispatcher claims them; an unpacked delivery names its event while the
//! event is in the ledger and keeps a copy of the body once its run is
//! deleted.

use aegis_history::conformance::{delivery, event, new_run, ts};
use aegis_history::{
    DeliveryClaim, DeliveryQuery, DeliveryStatus, HistoryBackend, HistoryOptions, NewRun,
    SqliteHistory, Write,
};

fn stored(path: &std::path::Path) -> Vec<(String, String, Option<i64>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt =
        conn.prepare("SELECT id, envelope, event_seq FROM deliveries ORDER BY seq").unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// The spool's rows: webhook, count, and the delivery ids they hold.
fn spooled(path: &std::path::Path) -> Vec<(u32, i64, Vec<String>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt =
        conn.prepare("SELECT webhook, count, entries FROM delivery_spool ORDER BY seq").unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .map(|(webhook, count, entries)| {
            let entries: Vec<serde_json::Value> = serde_json::from_str(&entries).unwrap();
            let ids = entries.iter().map(|e| e[0].as_str().unwrap().to_owned()).collect();
            (webhook, count, ids)
        })
        .collect()
}

/// Commits event `seq` of `run` with its delivery `id` to webhook 0 (and the
/// run first when `create`).
async fn commit_event(history: &SqliteHistory, run: &NewRun, seq: u64, id: &str, create: bool) {
    let mut writes = Vec::new();
    if create {
        writes.push(Write::CreateRun(run.clone()));
    }
    writes.push(Write::AppendEvent(event(&run.id, seq)));
    writes.push(Write::EnqueueDelivery(delivery(id, &run.id, seq, 0, i64::try_from(seq).unwrap())));
    history.commit(writes).await.unwrap();
}

fn claim(webhook: u32, limit: u32) -> DeliveryClaim {
    DeliveryClaim { webhook, now: ts(10), until: ts(20), limit }
}

#[tokio::test]
async fn deliveries_committed_with_their_events_are_spooled_and_unpacked_when_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis_history.db");
    let history = SqliteHistory::open(&path, HistoryOptions::with_max_records(1)).await.unwrap();
    let old = new_run("r-old", "nightly", 0);
    let mut other = delivery("d-other", &old.id, 9, 0, 1);
    other.envelope = "{\"not\":\"in the ledger\"}".to_owned();
    history
        .commit(vec![
            Write::CreateRun(old.clone()),
            Write::AppendEvent(event(&old.id, 1)),
            Write::AppendEvent(event(&old.id, 2)),
            Write::EnqueueDelivery(delivery("d-1", &old.id, 1, 0, 1)),
            Write::EnqueueDelivery(delivery("d-2", &old.id, 2, 0, 2)),
            Write::EnqueueDelivery(delivery("d-1b", &old.id, 1, 1, 1)),
            Write::EnqueueDelivery(other.clone()),
        ])
        .await
        .unwrap();
    // The deliveries of the events committed here are one spool row per
    // webhook; a body that is not the ledger's is a row of its own, copied.
    assert_eq!(
        spooled(&path),
        [(0, 2, vec!["d-1".to_owned(), "d-2".to_owned()]), (1, 1, vec!["d-1b".to_owned()])]
    );
    assert_eq!(stored(&path), [("d-other".to_owned(), other.envelope.clone(), None)]);
    // Spooled deliveries count as pending and are due.
    let counts = history.delivery_counts().await.unwrap();
    assert_eq!(counts, [(0, DeliveryStatus::Pending, 3), (1, DeliveryStatus::Pending, 1)]);
    assert_eq!(history.next_delivery_due(1).await.unwrap(), Some(ts(1)));

    // A claim of one leaves the spool alone while the log has a due row; a
    // claim of more unpacks the webhook's oldest spool row, and only it.
    let first = history.claim_deliveries(&claim(0, 1)).await.unwrap();
    assert_eq!(first.iter().map(|d| d.enqueued.id.as_str()).collect::<Vec<_>>(), ["d-other"]);
    assert_eq!(spooled(&path).len(), 2);
    let claimed = history.claim_deliveries(&claim(0, 10)).await.unwrap();
    let bodies: Vec<&str> = claimed.iter().map(|d| d.enqueued.envelope.as_str()).collect();
    assert_eq!(bodies, [event(&old.id, 1).envelope.as_str(), event(&old.id, 2).envelope.as_str()]);
    assert_eq!(claimed[1].enqueued.event_id, "r-old-2");
    assert_eq!(spooled(&path), [(1, 1, vec!["d-1b".to_owned()])]);
    // Unpacked, a delivery names its event instead of copying the body.
    assert_eq!(
        stored(&path),
        [
            ("d-other".to_owned(), other.envelope.clone(), None),
            ("d-1".to_owned(), String::new(), Some(1)),
            ("d-2".to_owned(), String::new(), Some(2)),
        ]
    );

    // Retention (one run kept) deletes the old run and its events: the spool
    // row still holding one of them is unpacked first, and every delivery
    // copies its envelope.
    let newer = new_run("r-new", "nightly", 5);
    history.create_run(&newer).await.unwrap();
    history
        .update_run(
            &newer.id,
            &aegis_history::RunUpdate::status(aegis_history::RunStatus::Succeeded),
        )
        .await
        .unwrap();
    history
        .update_run(&old.id, &aegis_history::RunUpdate::status(aegis_history::RunStatus::Succeeded))
        .await
        .unwrap();
    history.apply_retention().await.unwrap();
    assert!(history.get_run(&old.id).await.unwrap().is_none(), "retention kept the old run");
    assert!(spooled(&path).is_empty());
    let kept = stored(&path);
    assert_eq!(kept[1], ("d-1".to_owned(), event(&old.id, 1).envelope, None));
    assert_eq!(kept[3], ("d-1b".to_owned(), event(&old.id, 1).envelope, None));
    let page =
        history.list_deliveries(&DeliveryQuery { limit: 10, ..Default::default() }).await.unwrap();
    let ids: Vec<&str> = page.deliveries.iter().map(|d| d.delivery.enqueued.id.as_str()).collect();
    assert_eq!(ids, ["d-1b", "d-2", "d-1", "d-other"]);
    assert_eq!(page.deliveries[0].delivery.enqueued.envelope, event(&old.id, 1).envelope);
}

#[tokio::test]
async fn the_log_and_a_redelivery_see_spooled_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis_history.db");
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    let run = new_run("r", "nightly", 0);
    commit_event(&history, &run, 1, "d-1", true).await;
    commit_event(&history, &run, 2, "d-2", false).await;
    assert_eq!(spooled(&path).len(), 2);
    // A redelivery of a spooled (never attempted) delivery finds it,
    // unpacking the one spool row that holds it.
    history.commit(vec![Write::Redeliver("d-2".to_owned(), ts(3))]).await.unwrap();
    assert_eq!(spooled(&path), [(0, 1, vec!["d-1".to_owned()])]);
    let unknown = history.commit(vec![Write::Redeliver("d-none".to_owned(), ts(3))]).await;
    assert!(matches!(unknown, Err(aegis_history::Error::DeliveryNotFound { .. })), "{unknown:?}");
    assert_eq!(spooled(&path).len(), 1);
    commit_event(&history, &run, 3, "d-3", false).await;
    // The log lists it, pending, with its body and no attempts.
    let page = history
        .list_deliveries(&DeliveryQuery {
            run_id: Some(run.id.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<(&str, DeliveryStatus, &str)> = page
        .deliveries
        .iter()
        .map(|d| {
            (
                d.delivery.enqueued.id.as_str(),
                d.delivery.status,
                d.delivery.enqueued.envelope.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("d-3", DeliveryStatus::Pending, event(&run.id, 3).envelope.as_str()),
            ("d-1", DeliveryStatus::Pending, event(&run.id, 1).envelope.as_str()),
            ("d-2", DeliveryStatus::Pending, event(&run.id, 2).envelope.as_str()),
        ]
    );
    // The log is in the order deliveries entered it: d-2 first, unpacked by
    // its redelivery.
    assert_eq!(page.deliveries[2].delivery.next_attempt_at, Some(ts(3)));
    assert!(spooled(&path).is_empty());
    // Nothing is lost across a restart either way.
    drop(history);
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    let claimed = history.claim_deliveries(&claim(0, 10)).await.unwrap();
    assert_eq!(claimed.len(), 3);
}

#[tokio::test]
async fn spooled_ids_and_types_keep_every_character() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis_history.db");
    let history = SqliteHistory::open(&path, HistoryOptions::default()).await.unwrap();
    let run = new_run("r", "nightly", 0);
    let mut odd = event(&run.id, 1);
    odd.event_type = "odd \"type\" \\ \u{7}".to_owned();
    let mut new = delivery("d-\"1\"\\", &run.id, 1, 0, 1);
    new.event_type = odd.event_type.clone();
    history
        .commit(vec![
            Write::CreateRun(run.clone()),
            Write::AppendEvent(odd.clone()),
            Write::EnqueueDelivery(new.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(spooled(&path), [(0, 1, vec![new.id.clone()])]);
    let claimed = history.claim_deliveries(&claim(0, 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].enqueued, new);
}
