//! `discover`, `test`, `verify` and `submit_bugs`: the calls to QA services.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::http::{Call, call};
use crate::step::{Step, StepContext, StepError};

/// `GET {service}/api/routes` → `{routes, route_count}`.
#[derive(Debug)]
pub(crate) struct Discover;

#[async_trait]
impl Step for Discover {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let response = call(
            ctx,
            Call {
                method: "GET",
                path: "/api/routes",
                body: None,
                headers: Vec::new(),
                expect_status: &[],
            },
        )
        .await?;
        let routes = match response {
            Value::Array(routes) => routes,
            Value::Object(mut object) => match object.remove("routes") {
                Some(Value::Array(routes)) => routes,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(json!({ "route_count": routes.len(), "routes": routes }))
    }
}

/// `POST {service}/api/runs` → `{total, passed, failed, failures}` (plus
/// `verify_only: true` for `verify`).
#[derive(Debug)]
pub(crate) struct RunTests {
    pub(crate) verify_only: bool,
}

#[async_trait]
impl Step for RunTests {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let body = if self.verify_only { json!({ "verify_only": true }) } else { json!({}) };
        let response = call(
            ctx,
            Call {
                method: "POST",
                path: "/api/runs",
                body: Some(&body),
                headers: Vec::new(),
                expect_status: &[],
            },
        )
        .await?;
        let mut data = test_results(response);
        if self.verify_only {
            data.insert("verify_only".into(), Value::Bool(true));
        }
        Ok(Value::Object(data))
    }
}

/// Normalises a test service's answer into `{total, passed, failed, failures}`,
/// keeping any other fields it sent.
pub(crate) fn test_results(response: Value) -> Map<String, Value> {
    let mut data = match response {
        Value::Object(object) => object,
        Value::Null => Map::new(),
        other => {
            let mut object = Map::new();
            object.insert("response".into(), other);
            object
        }
    };
    let failures = match data.remove("failures") {
        Some(Value::Array(failures)) => failures,
        _ => Vec::new(),
    };
    let failed = data.get("failed").and_then(Value::as_u64).unwrap_or(failures.len() as u64);
    let total = data.get("total").and_then(Value::as_u64).unwrap_or(failed);
    let passed = data.get("passed").and_then(Value::as_u64).unwrap_or(total.saturating_sub(failed));
    data.insert("total".into(), total.into());
    data.insert("passed".into(), passed.into());
    data.insert("failed".into(), failed.into());
    data.insert("failures".into(), Value::Array(failures));
    data
}

/// Files the failures of earlier steps with `POST {service}/api/v1/reports`.
#[derive(Debug)]
pub(crate) struct SubmitBugs;

#[async_trait]
impl Step for SubmitBugs {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let failures: Vec<Value> =
            ctx.earlier_steps().flat_map(|step| step.failures().iter().cloned()).collect();
        if failures.is_empty() {
            return Ok(json!({ "submitted": 0, "response": null }));
        }
        let count = failures.len();
        let body = json!({ "failures": failures });
        let response = call(
            ctx,
            Call {
                method: "POST",
                path: "/api/v1/reports",
                body: Some(&body),
                headers: Vec::new(),
                expect_status: &[],
            },
        )
        .await?;
        Ok(json!({ "submitted": count, "response": response }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_results_fill_in_missing_counts() {
        let data = test_results(json!({ "failures": [{"name": "a"}], "total": 3 }));
        assert_eq!(
            Value::Object(data),
            json!({"total": 3, "passed": 2, "failed": 1, "failures": [{"name": "a"}]})
        );
        let data = test_results(Value::Null);
        assert_eq!(
            Value::Object(data),
            json!({"total": 0, "passed": 0, "failed": 0, "failures": []})
        );
    }
}
