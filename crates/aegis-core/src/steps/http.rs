//! `http`: any request to a service, with templated body, expected statuses
//! and failures taken from the response by JSON pointer.

use aegis_config::StepKind;
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::http::{Call, call};
use crate::step::{Step, StepContext, StepError};

/// The `http` step type.
#[derive(Debug)]
pub(crate) struct HttpCall;

#[async_trait]
impl Step for HttpCall {
    async fn execute(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let StepKind::Http(spec) = ctx.step().kind() else {
            return Err(StepError::new("http step without http fields"));
        };
        let body = spec.body().map(|b| super::resolve_template(b, &ctx.earlier)).transpose()?;
        let headers = spec.headers().iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        let response = call(
            ctx,
            Call {
                method: spec.method(),
                path: spec.path(),
                body: body.as_ref(),
                headers,
                expect_status: spec.expect_status(),
            },
        )
        .await?;
        let Some(pointer) = spec.failures_from() else { return Ok(response) };
        let failures = match response.pointer(pointer) {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => {
                return Err(StepError::new(format!(
                    "failures_from {pointer:?} points at {}, expected an array",
                    crate::limits::json_kind(other)
                ))
                .with_data(response));
            }
        };
        Ok(match response {
            Value::Object(mut object) => {
                object.insert("failures".into(), Value::Array(failures));
                Value::Object(object)
            }
            other => json!({ "response": other, "failures": failures }),
        })
    }
}
