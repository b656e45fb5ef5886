//! `report`: a summary of the steps before it; calls no service.

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::step::{Step, StepContext, StepError};

/// The `report` step type.
#[derive(Debug)]
pub(crate) struct Report;

#[async_trait]
impl Step for Report {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
        let mut total_duration_ms = 0u64;
        let mut tests_failed = 0usize;
        let steps: Vec<Value> = ctx
            .earlier_steps()
            .map(|step| {
                if step.skipped {
                    skipped += 1;
                } else if step.success {
                    passed += 1;
                } else {
                    failed += 1;
                }
                total_duration_ms += step.duration_ms;
                tests_failed += step.failures().len();
                json!({
                    "id": step.step_id,
                    "type": step.step_type,
                    "success": step.success,
                    "skipped": step.skipped,
                    "error": step.error,
                    "duration_ms": step.duration_ms,
                    "failures": step.failures().len(),
                })
            })
            .collect();
        Ok(json!({
            "summary": { "total": steps.len(), "passed": passed, "failed": failed, "skipped": skipped },
            "total_duration_ms": total_duration_ms,
            "failures_found": tests_failed,
            "steps": steps,
        }))
    }
}
