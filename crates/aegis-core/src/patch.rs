//! Applying a reviewer's RFC 6902 JSON Patch to a gate's artifact within bounds
//! (SPEC section 8): at most [`MAX_PATCH_OPERATIONS`] operations, and a result at
//! most [`MAX_PATCHED_ARTIFACT_BYTES`] as JSON and [`MAX_JSON_DEPTH`] levels deep.
//!
//! The bounds hold *while* the patch is applied, not only afterwards: `copy` can
//! double the document with each 40-byte operation, so a short patch could ask for
//! gigabytes. Before each operation the size and depth it adds are measured (the
//! value it inserts, where it inserts it); an operation that would take the artifact
//! past a bound is refused before it runs. Nothing here recurses over the data.

use serde::Deserialize;
use serde_json::Value;

use crate::limits::{
    MAX_JSON_DEPTH, MAX_PATCH_OPERATIONS, MAX_PATCHED_ARTIFACT_BYTES, json_len, string_len,
    value_depth,
};

use json_patch::PatchOperation;

/// The deepest patch accepted: an artifact's depth plus the array and the operation
/// object around each value.
pub const MAX_PATCH_DEPTH: usize = MAX_JSON_DEPTH + 2;

/// Why a patch was refused. The artifact is never changed by a refused patch: the
/// patch is applied to a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatchRefusal {
    /// The patch is not a JSON array of RFC 6902 operations.
    NotAPatch(String),
    /// The patch itself is nested deeper than [`MAX_PATCH_DEPTH`].
    PatchTooDeep,
    /// More than [`MAX_PATCH_OPERATIONS`] operations.
    TooManyOperations {
        /// How many the patch holds.
        count: usize,
    },
    /// The operation (0-based) would nest the artifact deeper than [`MAX_JSON_DEPTH`].
    TooDeep {
        /// The operation's index, or `None` when the artifact was too deep as given.
        operation: Option<usize>,
    },
    /// The operation (0-based) would make the artifact larger than
    /// [`MAX_PATCHED_ARTIFACT_BYTES`].
    TooLarge {
        /// The operation's index, or `None` when the result as a whole is too large.
        operation: Option<usize>,
    },
    /// The operation does not apply (a bad path, a failed `test`).
    DoesNotApply {
        /// The operation's index.
        operation: usize,
        /// What went wrong.
        message: String,
    },
}

impl std::fmt::Display for PatchRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |operation: &Option<usize>| match operation {
            Some(index) => format!("operation {index} would make "),
            None => String::new(),
        };
        match self {
            PatchRefusal::NotAPatch(why) => {
                write!(f, "the patch is not an RFC 6902 JSON Patch array: {why}")
            }
            PatchRefusal::PatchTooDeep => {
                write!(f, "the patch is nested deeper than {MAX_PATCH_DEPTH} levels")
            }
            PatchRefusal::TooManyOperations { count } => write!(
                f,
                "the patch has {count} operations, more than the limit of {MAX_PATCH_OPERATIONS}"
            ),
            PatchRefusal::TooDeep { operation } => write!(
                f,
                "{}the artifact nested deeper than {MAX_JSON_DEPTH} levels",
                at(operation)
            ),
            PatchRefusal::TooLarge { operation } => write!(
                f,
                "{}the artifact larger than the limit of {} MiB",
                at(operation),
                MAX_PATCHED_ARTIFACT_BYTES >> 20
            ),
            PatchRefusal::DoesNotApply { operation, message } => {
                write!(f, "operation {operation} does not apply: {message}")
            }
        }
    }
}

/// Applies `patch` to a copy of `artifact` and returns the patched copy, or why the
/// patch was refused. A pure function: nothing outside it changes either way.
pub fn apply_patch(patch: &Value, artifact: &Value) -> Result<Value, PatchRefusal> {
    // The patch wraps each value in an array and an operation object, so a value
    // that may stand at the artifact's top level may make the patch two levels
    // deeper than the artifact's own limit (still far within what reads back).
    if value_depth(patch) > MAX_PATCH_DEPTH {
        return Err(PatchRefusal::PatchTooDeep);
    }
    let Value::Array(items) = patch else {
        return Err(PatchRefusal::NotAPatch(format!("found {}", crate::limits::json_kind(patch))));
    };
    if items.len() > MAX_PATCH_OPERATIONS {
        return Err(PatchRefusal::TooManyOperations { count: items.len() });
    }
    let operations = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            PatchOperation::deserialize(item)
                .map_err(|err| PatchRefusal::NotAPatch(format!("operation {index}: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut doc = artifact.clone();
    // An upper bound on the document's compact JSON length: exact at the start,
    // raised by what each operation inserts and lowered by what it removes. When it
    // passes the limit the exact length is measured again before anything is refused,
    // so the bound never refuses a patch whose result would fit.
    let mut size = json_len(&doc);
    for (index, operation) in operations.iter().enumerate() {
        // The reviewer sees which operation and path did not apply.
        let at = |message: &dyn std::fmt::Display| PatchRefusal::DoesNotApply {
            operation: index,
            message: format!("{} {}: {message}", op_name(operation), op_path(operation)),
        };
        let change = measure(&doc, operation).map_err(|message| at(&message))?;
        if let Some(inserted_depth) = change.inserted_depth
            && inserted_depth > MAX_JSON_DEPTH
        {
            return Err(PatchRefusal::TooDeep { operation: Some(index) });
        }
        if change.added > 0 && size.saturating_add(change.added) > MAX_PATCHED_ARTIFACT_BYTES {
            size = json_len(&doc);
            if size.saturating_add(change.added).saturating_sub(change.removed)
                > MAX_PATCHED_ARTIFACT_BYTES
            {
                return Err(PatchRefusal::TooLarge { operation: Some(index) });
            }
        }
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(operation))
            .map_err(|err| at(&err.kind))?;
        size = size.saturating_add(change.added).saturating_sub(change.removed);
    }
    // The artifact as given may have been deeper or larger than a patch may leave it
    // (step data may be up to 16 MiB); what the patch produces is held to the bounds.
    if value_depth(&doc) > MAX_JSON_DEPTH {
        return Err(PatchRefusal::TooDeep { operation: None });
    }
    if json_len(&doc) > MAX_PATCHED_ARTIFACT_BYTES {
        return Err(PatchRefusal::TooLarge { operation: None });
    }
    Ok(doc)
}

/// What one operation would do to the document, measured before it runs.
#[derive(Debug, Default)]
struct Change {
    /// An upper bound on the bytes it adds to the compact JSON.
    added: usize,
    /// A lower bound on the bytes it removes.
    removed: usize,
    /// How deep the document is at the inserted value's deepest point, if it
    /// inserts one.
    inserted_depth: Option<usize>,
}

/// The operation's name, as written in the patch.
fn op_name(operation: &PatchOperation) -> &'static str {
    match operation {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// The operation's target path.
fn op_path(operation: &PatchOperation) -> &str {
    match operation {
        PatchOperation::Add(op) => op.path.as_str(),
        PatchOperation::Remove(op) => op.path.as_str(),
        PatchOperation::Replace(op) => op.path.as_str(),
        PatchOperation::Move(op) => op.path.as_str(),
        PatchOperation::Copy(op) => op.path.as_str(),
        PatchOperation::Test(op) => op.path.as_str(),
    }
}
fn measure(doc: &Value, operation: &PatchOperation) -> Result<Change, String> {
    match operation {
        PatchOperation::Add(op) => Ok(insertion(doc, op.path.as_str(), &op.value, true)),
        PatchOperation::Replace(op) => Ok(insertion(doc, op.path.as_str(), &op.value, true)),
        PatchOperation::Copy(op) => {
            let source = doc.pointer(op.from.as_str()).ok_or("\"from\" path is invalid")?;
            Ok(insertion(doc, op.path.as_str(), source, true))
        }
        PatchOperation::Move(op) => {
            let source = doc.pointer(op.from.as_str()).ok_or("\"from\" path is invalid")?;
            // The value leaves `from` and arrives at `path`: only its key can grow
            // the document, but its depth changes with where it lands.
            let mut change = insertion(doc, op.path.as_str(), source, false);
            change.removed = 0;
            Ok(change)
        }
        PatchOperation::Remove(op) => Ok(Change {
            removed: doc.pointer(op.path.as_str()).map_or(0, json_len),
            ..Change::default()
        }),
        PatchOperation::Test(_) => Ok(Change::default()),
    }
}

/// The change of inserting `value` at `path`: its length (when `counts_value`), the
/// key and comma around it, the value it replaces, and the depth it reaches.
fn insertion(doc: &Value, path: &str, value: &Value, counts_value: bool) -> Change {
    let tokens = path.split('/').skip(1).count();
    let key = path.rsplit_once('/').map_or("", |(_, key)| key);
    // Key, quotes, colon and comma (an upper bound: an array index adds only a comma).
    let frame = string_len(key) + 2;
    let added = if counts_value { json_len(value).saturating_add(frame) } else { frame };
    // An existing member of an object (or the whole document) is replaced; an array
    // index inserts before the item there, which stays.
    let parent_is_array = path
        .rsplit_once('/')
        .and_then(|(parent, _)| doc.pointer(parent))
        .is_some_and(Value::is_array);
    let removed = match doc.pointer(path) {
        Some(old) if !parent_is_array => json_len(old),
        _ => 0,
    };
    Change { added, removed, inserted_depth: Some(tokens + value_depth(value)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applies_a_patch_to_a_copy() {
        let artifact = json!({"failures": [{"name": "a"}, {"name": "b"}]});
        let patch = json!([
            {"op": "remove", "path": "/failures/0"},
            {"op": "add", "path": "/reviewed", "value": true},
            {"op": "copy", "from": "/failures", "path": "/kept"},
            {"op": "move", "from": "/kept", "path": "/moved"},
            {"op": "test", "path": "/reviewed", "value": true},
        ]);
        let after = apply_patch(&patch, &artifact).unwrap();
        assert_eq!(
            after,
            json!({"failures": [{"name": "b"}], "reviewed": true, "moved": [{"name": "b"}]})
        );
    }

    #[test]
    fn refuses_what_does_not_apply() {
        let artifact = json!({"a": 1});
        let refusal = apply_patch(&json!([{"op": "remove", "path": "/nope"}]), &artifact);
        assert_eq!(
            refusal,
            Err(PatchRefusal::DoesNotApply {
                operation: 0,
                message: "remove /nope: path is invalid".into()
            })
        );
        let refusal = apply_patch(&json!([{"op": "test", "path": "/a", "value": 2}]), &artifact);
        assert!(matches!(refusal, Err(PatchRefusal::DoesNotApply { operation: 0, .. })));
        assert!(matches!(
            apply_patch(&json!({"op": "add"}), &artifact),
            Err(PatchRefusal::NotAPatch(_))
        ));
        assert!(matches!(
            apply_patch(&json!([{"op": "nope", "path": ""}]), &artifact),
            Err(PatchRefusal::NotAPatch(_))
        ));
    }

    #[test]
    fn refuses_more_than_a_thousand_operations() {
        let ops: Vec<Value> =
            (0..=MAX_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": ""})).collect();
        assert_eq!(
            apply_patch(&Value::Array(ops), &json!(null)),
            Err(PatchRefusal::TooManyOperations { count: 1001 })
        );
    }

    #[test]
    fn copy_amplification_is_refused_before_it_allocates() {
        // Each operation doubles the document: 30 of them would ask for gigabytes.
        let mut ops = vec![json!({"op": "add", "path": "/a", "value": "x".repeat(1000)})];
        for _ in 0..30 {
            ops.push(json!({"op": "copy", "from": "", "path": "/a"}));
            ops.push(json!({"op": "copy", "from": "/a", "path": "/b"}));
        }
        let refusal = apply_patch(&Value::Array(ops), &json!({})).unwrap_err();
        assert!(matches!(refusal, PatchRefusal::TooLarge { operation: Some(_) }), "{refusal}");
    }

    #[test]
    fn deepening_past_64_levels_is_refused() {
        // `copy` of the document into itself adds a level per operation.
        let ops: Vec<Value> =
            (0..100).map(|_| json!({"op": "copy", "from": "", "path": "/a"})).collect();
        let refusal = apply_patch(&Value::Array(ops), &json!({"x": 1})).unwrap_err();
        assert_eq!(refusal, PatchRefusal::TooDeep { operation: Some(63) });
        // An added value placed deep enough goes over too.
        let mut deep = json!(1);
        for _ in 0..63 {
            deep = json!([deep]);
        }
        let ok = apply_patch(&json!([{"op": "add", "path": "/a", "value": deep}]), &json!({}));
        assert_eq!(ok.map(|v| value_depth(&v)), Ok(64));
        let over =
            apply_patch(&json!([{"op": "add", "path": "/a", "value": {"b": deep}}]), &json!({}));
        assert_eq!(over, Err(PatchRefusal::TooDeep { operation: Some(0) }));
        let too_deep_patch = json!([{"op": "add", "path": "/a", "value": [{"b": deep}]}]);
        assert_eq!(apply_patch(&too_deep_patch, &json!({})), Err(PatchRefusal::PatchTooDeep));
    }

    #[test]
    fn the_result_must_fit_even_when_each_step_shrinks() {
        // A large artifact (step data may be 16 MiB) may be cut down by a patch,
        // but a patch cannot leave it over the limit.
        let big = json!({"keep": "x".repeat(2 * MAX_PATCHED_ARTIFACT_BYTES), "small": 1});
        let cut = apply_patch(&json!([{"op": "remove", "path": "/keep"}]), &big).unwrap();
        assert_eq!(cut, json!({"small": 1}));
        let kept = apply_patch(&json!([{"op": "remove", "path": "/small"}]), &big);
        assert_eq!(kept, Err(PatchRefusal::TooLarge { operation: None }));
    }

    #[test]
    fn replacing_near_the_limit_is_allowed() {
        let half = "y".repeat(MAX_PATCHED_ARTIFACT_BYTES / 2 + 1000);
        let artifact = json!({"a": half.clone()});
        let ops: Vec<Value> =
            (0..5).map(|_| json!({"op": "replace", "path": "/a", "value": half})).collect();
        assert_eq!(apply_patch(&Value::Array(ops), &artifact), Ok(artifact));
    }
}
