//! `{{ steps.ID.a.b }}` references to earlier step data in `http` bodies.

use indexmap::IndexMap;
use serde_json::Value;

use crate::step::{StepError, StepOutcome};

/// Replaces references in every string of `value`. A string that is exactly
/// one reference becomes the referenced JSON value; otherwise each reference
/// is replaced by its text (strings as they are, other values as JSON).
pub(crate) fn resolve(
    value: &Value,
    steps: &IndexMap<String, StepOutcome>,
) -> Result<Value, StepError> {
    Ok(match value {
        Value::String(text) => resolve_string(text, steps)?,
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| resolve(v, steps)).collect::<Result<_, _>>()?)
        }
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, steps)?)))
                .collect::<Result<_, StepError>>()?,
        ),
        other => other.clone(),
    })
}

fn resolve_string(text: &str, steps: &IndexMap<String, StepOutcome>) -> Result<Value, StepError> {
    let trimmed = text.trim();
    if let Some(inner) = trimmed.strip_prefix("{{").and_then(|t| t.strip_suffix("}}"))
        && !inner.contains("{{")
    {
        return lookup(inner.trim(), steps).cloned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let reference = rest[start + 2..start + len].trim();
        match lookup(reference, steps)? {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn lookup<'a>(
    reference: &str,
    steps: &'a IndexMap<String, StepOutcome>,
) -> Result<&'a Value, StepError> {
    let missing = || {
        StepError::new(format!("body refers to {reference}, which earlier steps did not produce"))
    };
    let mut parts = reference.split('.');
    if parts.next() != Some("steps") {
        return Err(StepError::new(format!(
            "unknown reference {reference:?}: expected steps.ID.field"
        )));
    }
    let step = parts.next().and_then(|id| steps.get(id)).ok_or_else(missing)?;
    let mut value = &step.data;
    for part in parts {
        value = match value {
            Value::Object(object) => object.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(missing)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn steps() -> IndexMap<String, StepOutcome> {
        let outcome = StepOutcome {
            step_id: "routes".into(),
            step_type: "discover".into(),
            index: 0,
            success: true,
            skipped: false,
            error: None,
            data: json!({ "route_count": 3, "routes": ["/a", "/b"], "name": "x" }),
            duration_ms: 1,
            attempts: Vec::new(),
        };
        IndexMap::from([("routes".to_owned(), outcome)])
    }

    #[test]
    fn a_whole_reference_keeps_its_json_type() {
        let body =
            json!({ "n": "{{ steps.routes.route_count }}", "r": "{{steps.routes.routes.1}}" });
        assert_eq!(resolve(&body, &steps()).ok(), Some(json!({ "n": 3, "r": "/b" })));
    }

    #[test]
    fn references_inside_text_are_substituted() {
        let body =
            json!(["found {{ steps.routes.route_count }} routes in {{ steps.routes.name }}"]);
        assert_eq!(resolve(&body, &steps()).ok(), Some(json!(["found 3 routes in x"])));
    }

    #[test]
    fn a_missing_reference_is_an_error() {
        let err = resolve(&json!("{{ steps.nope.x }}"), &steps()).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("body refers to steps.nope.x, which earlier steps did not produce")
        );
    }
}
