//! Embedding the engine: build it from a configuration and a history store,
//! register a custom step type, run a workflow and follow its events.
//!
//! Run with `cargo run -p aegis-core --example embed`.

use std::sync::Arc;

use aegis_config::StepKind;
use aegis_core::{Engine, Received, RunOptions, Step, StepContext, StepError};
use aegis_history::{HistoryBackend, InMemoryHistory, Trigger};
use serde_json::{Value, json};

/// A custom step type: counts the words of its `with: { text }` option and
/// reports long words as "failures".
#[derive(Debug)]
struct WordCount;

#[async_trait::async_trait]
impl Step for WordCount {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let StepKind::Custom(custom) = ctx.step().kind() else {
            return Err(StepError::new("word_count needs `with:` options"));
        };
        let text = custom.with()["text"].as_str().unwrap_or_default();
        let long: Vec<Value> =
            text.split_whitespace().filter(|w| w.len() > 8).map(|w| json!({ "word": w })).collect();
        Ok(json!({ "words": text.split_whitespace().count(), "failures": long }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(".aegis.yaml"),
        "
data_dir: ./data
workflows:
  words:
    steps:
      - { id: count, type: word_count, with: { text: 'embedding the aegis pipeline engine is straightforward' } }
      - { id: summary, type: report, condition: always }
",
    )?;
    let config =
        aegis_config::LoadOptions::new().cwd(dir.path()).step_types(["word_count"]).load()?;
    let history: Arc<dyn HistoryBackend> = Arc::new(InMemoryHistory::default());
    let engine =
        Engine::builder(config, history).step_type("word_count", Arc::new(WordCount)).build()?;

    // Follow events while the run executes.
    let mut events = engine.subscribe();
    let follower = tokio::spawn(async move {
        while let Some(received) = events.recv().await {
            match received {
                Received::Event(event) => {
                    println!("#{:<2} {:<18} {}", event.seq, event.event_type, event.data);
                    if event.event_type == "workflow.completed" {
                        break;
                    }
                }
                Received::Lagged(missed) => println!("(missed {missed} events)"),
                _ => {}
            }
        }
    });

    let summary = engine.run("words", RunOptions::new(Trigger::Api)).await?;
    follower.await?;
    println!("run {} {}: {}", summary.run_id, summary.status, summary.steps[0].data);
    Ok(())
}
