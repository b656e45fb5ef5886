//! How the SQLite outbox stores a delivery's body: by reference to the ledger
//! while its event is there, as a copy once its run is deleted.

use aegis_history::conformance::{delivery, event, new_run, ts};
use aegis_history::{
    DeliveryClaim, DeliveryQuery, HistoryBackend, HistoryOptions, SqliteHistory, Write,
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

#[tokio::test]
async fn a_delivery_names_its_event_and_keeps_a_copy_only_when_it_must() {
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
            Write::EnqueueDelivery(delivery("d-1", &old.id, 1, 0, 1)),
            Write::EnqueueDelivery(other.clone()),
        ])
        .await
        .unwrap();
    // The event committed with its delivery is named; a body that is not the
    // ledger's is kept as given.
    assert_eq!(
        stored(&path),
        [
            ("d-1".to_owned(), String::new(), Some(1)),
            ("d-other".to_owned(), other.envelope.clone(), None),
        ]
    );
    let claimed = history
        .claim_deliveries(&DeliveryClaim { webhook: 0, now: ts(10), until: ts(20), limit: 10 })
        .await
        .unwrap();
    let bodies: Vec<&str> = claimed.iter().map(|d| d.enqueued.envelope.as_str()).collect();
    assert_eq!(bodies, [event(&old.id, 1).envelope.as_str(), other.envelope.as_str()]);

    // Retention (one run kept) deletes the old run and its events: the
    // delivery copies the envelope first and still carries it.
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
    assert_eq!(stored(&path)[0], ("d-1".to_owned(), event(&old.id, 1).envelope, None));
    let page =
        history.list_deliveries(&DeliveryQuery { limit: 10, ..Default::default() }).await.unwrap();
    let bodies: Vec<&str> =
        page.deliveries.iter().map(|d| d.delivery.enqueued.envelope.as_str()).collect();
    assert_eq!(bodies, [other.envelope.as_str(), event(&old.id, 1).envelope.as_str()]);
}
