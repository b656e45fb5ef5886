//! Run listings over a real SQLite history file.

use actix_web::test::TestRequest;
use aegis_history::{NewRun, RunId, RunStatus, RunUpdate, Trigger};

use crate::common::{call, fixture};

async fn seed(history: &dyn aegis_history::HistoryBackend, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("run-{i:04}");
        let workflow = if i % 2 == 0 { "smoke" } else { "nightly" };
        let created_at = jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap();
        history
            .create_run(&NewRun {
                id: RunId::new(id.clone()),
                workflow: workflow.to_owned(),
                trigger: Trigger::Api,
                request_id: None,
                created_at,
            })
            .await
            .unwrap();
        if i % 3 == 0 {
            history
                .update_run(&RunId::new(id.clone()), &RunUpdate::status(RunStatus::Failed))
                .await
                .unwrap();
        }
        ids.push(id);
    }
    ids
}

#[actix_web::test]
async fn pages_cover_every_run_once_newest_first() {
    let f = fixture("").await;
    let ids = seed(f.history.as_ref(), 25).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/runs?limit=10&cursor={c}"),
            None => "/api/runs?limit=10".to_owned(),
        };
        let (status, _, body) = call(&f.state, TestRequest::get().uri(&uri)).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(
            body["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
}

#[actix_web::test]
async fn filters_by_workflow_and_status() {
    let f = fixture("").await;
    seed(f.history.as_ref(), 12).await;
    let (_, _, body) =
        call(&f.state, TestRequest::get().uri("/api/runs?workflow=smoke&status=failed")).await;
    let runs = body["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    assert!(runs.iter().all(|r| r["workflow"] == "smoke" && r["status"] == "failed"));
    let (_, _, body) =
        call(&f.state, TestRequest::get().uri("/api/workflows/nightly/history?limit=2")).await;
    assert_eq!(body["runs"].as_array().unwrap().len(), 2);
    assert!(body["next_cursor"].is_string());
    let (_, _, body) = call(&f.state, TestRequest::get().uri("/api/history")).await;
    assert_eq!(body["runs"].as_array().unwrap().len(), 10);
    assert_eq!(body["runs"][0]["id"], "run-0011");
}

#[actix_web::test]
async fn run_detail_and_definitions() {
    let f = fixture("").await;
    seed(f.history.as_ref(), 1).await;
    let (status, _, body) = call(&f.state, TestRequest::get().uri("/api/runs/run-0000")).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "run-0000");
    assert_eq!(body["workflow"], "smoke");
    assert_eq!(body["trigger"], "api");
    assert!(body["steps"].as_array().unwrap().is_empty());
    let (_, _, body) = call(&f.state, TestRequest::get().uri("/api/workflows")).await;
    assert_eq!(body["workflows"][0]["key"], "smoke");
    let (_, _, body) = call(&f.state, TestRequest::get().uri("/api/workflows/nightly")).await;
    assert_eq!(body["name"], "Nightly");
    let (_, _, body) = call(&f.state, TestRequest::get().uri("/api/portfolio")).await;
    assert_eq!(body["name"], "Aegis");
    assert_eq!(body["tools"][0]["key"], "qa");
    assert!(f.db_path.exists());
}
