//! Bounds on JSON that comes in from clients, services and programs (SPEC section 8,
//! "Limits on what comes in"), measured without recursion.
//!
//! Everything the engine stores is read back later by `serde_json`, whose parser
//! refuses documents nested deeper than 128 levels, and whose serializer, cloner and
//! destructor recurse once per level. So nothing deeper than [`MAX_JSON_DEPTH`] is
//! accepted or stored, and the checks here walk values with an explicit stack: a
//! hostile document cannot overflow the thread's stack while it is being measured.

use std::fmt::Write as _;

use serde_json::Value;

/// The deepest JSON the server accepts or stores: request bodies, step data, JSON
/// Patches and patched artifacts. Half of `serde_json`'s own read limit, so whatever
/// is stored (inside an event envelope or a history row) always reads back.
pub const MAX_JSON_DEPTH: usize = 64;

/// The largest downstream response body a step reads, and the largest step data
/// stored.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The most operations one JSON Patch may hold.
pub const MAX_PATCH_OPERATIONS: usize = 1_000;

/// The largest artifact a JSON Patch may produce, as compact JSON.
pub const MAX_PATCHED_ARTIFACT_BYTES: usize = 1024 * 1024;

/// The nesting depth of JSON text, found by counting brackets outside strings, up to
/// `limit + 1`: the scan stops as soon as the text is known to be too deep, so its
/// cost is bounded by the text's length and nothing is allocated.
///
/// Malformed text gets a depth too (unbalanced brackets count as they come); the
/// parser that runs afterwards reports what is wrong with it.
pub fn text_depth(bytes: &[u8], limit: usize) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > limit {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The nesting depth of a value: 0 for a scalar, 1 for `[]` or `{"a": 1}`, 2 for
/// `[[1]]`. Walks with an explicit stack, never recursion.
pub fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    // Each entry is a value and the number of containers around it.
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, around)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(around + 1);
                stack.extend(items.iter().map(|item| (item, around + 1)));
            }
            Value::Object(members) => {
                deepest = deepest.max(around + 1);
                stack.extend(members.values().map(|member| (member, around + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// The length of a value written as compact JSON (what `serde_json::to_vec` gives),
/// computed without writing it and without recursion.
pub fn json_len(value: &Value) -> usize {
    let mut total = 0usize;
    let mut stack: Vec<&Value> = vec![value];
    while let Some(value) = stack.pop() {
        total = total.saturating_add(match value {
            Value::Null => 4,
            Value::Bool(true) => 4,
            Value::Bool(false) => 5,
            Value::Number(number) => number_len(number),
            Value::String(text) => string_len(text),
            Value::Array(items) => {
                stack.extend(items.iter());
                // Brackets and the commas between items.
                2 + items.len().saturating_sub(1)
            }
            Value::Object(members) => {
                stack.extend(members.values());
                // Braces, commas between members, and each key with its quotes and colon.
                let keys: usize = members.keys().map(|key| string_len(key) + 1).sum();
                2 + members.len().saturating_sub(1) + keys
            }
        });
    }
    total
}

/// The length of a string as a quoted JSON string, escapes included, as `serde_json`
/// writes it.
pub fn string_len(text: &str) -> usize {
    let escapes: usize = text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    text.len() + escapes + 2
}

fn number_len(number: &serde_json::Number) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail; a failure would only make the estimate short.
    let _ = write!(count, "{number}");
    count.0
}

/// Why data cannot be stored: it would not read back, or it is larger than the
/// server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unstorable {
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
    /// Larger than [`MAX_RESPONSE_BYTES`] as JSON.
    TooLarge,
}

impl std::fmt::Display for Unstorable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unstorable::TooDeep => write!(f, "nested deeper than {MAX_JSON_DEPTH} levels"),
            Unstorable::TooLarge => write!(f, "larger than {} MiB", MAX_RESPONSE_BYTES >> 20),
        }
    }
}

/// Checks that a step's data can be stored and read back.
pub fn check_storable(value: &Value) -> Result<(), Unstorable> {
    if value_depth(value) > MAX_JSON_DEPTH {
        return Err(Unstorable::TooDeep);
    }
    if json_len(value) > MAX_RESPONSE_BYTES {
        return Err(Unstorable::TooLarge);
    }
    Ok(())
}

/// A step's result, with data that could not be stored turned into a failure that
/// says why (and carries no data). Applied to every attempt of every step, built-in
/// or an embedder's, so nothing stored is unreadable.
pub(crate) fn storable_outcome(
    outcome: Result<Value, crate::StepError>,
) -> Result<Value, crate::StepError> {
    match outcome {
        Ok(data) => match check_storable(&data) {
            Ok(()) => Ok(data),
            Err(why) => Err(crate::StepError::new(format!("step data {why}; not stored"))),
        },
        Err(err) => {
            let (message, data) = err.into_parts();
            match data {
                Some(data) => match check_storable(&data) {
                    Ok(()) => Err(crate::StepError::new(message).with_data(data)),
                    Err(why) => Err(crate::StepError::new(format!(
                        "{message} (its data is {why} and was not stored)"
                    ))),
                },
                None => Err(crate::StepError::new(message)),
            }
        }
    }
}

/// What kind of JSON value `value` is, as refusals name it ("an array").
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn text_depth_counts_brackets_outside_strings() {
        assert_eq!(text_depth(b"1", 64), 0);
        assert_eq!(text_depth(br#"{"a": [1, {"b": "[[[["}]}"#, 64), 3);
        assert_eq!(text_depth(br#"["\"[[", "\\", []]"#, 64), 2);
        assert_eq!(text_depth(nested(64).as_bytes(), 64), 64);
        assert_eq!(text_depth(nested(100_000).as_bytes(), 64), 65);
    }

    #[test]
    fn value_depth_matches_the_text() {
        for depth in [0, 1, 2, 63, 64, 65, 127] {
            let text = if depth == 0 { "7".to_owned() } else { nested(depth) };
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value_depth(&value), depth, "{text}");
        }
        assert_eq!(value_depth(&json!({"a": [1, {"b": {}}], "c": 1})), 4);
    }

    #[test]
    fn json_len_is_the_compact_serialized_length() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(-12.5e-7),
            json!(u64::MAX),
            json!(""),
            json!("quote \" back \\ nl \n ctl \u{1} é ☃"),
            json!([]),
            json!({}),
            json!([1, [2, 3], {"k\"ey": [null, {"x": ""}]}]),
        ];
        for value in values {
            assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len(), "{value}");
        }
    }

    #[test]
    fn deep_or_huge_data_is_not_storable() {
        let deep: Value = serde_json::from_str(&nested(65)).unwrap();
        assert_eq!(check_storable(&deep), Err(Unstorable::TooDeep));
        let huge = Value::String("x".repeat(MAX_RESPONSE_BYTES));
        assert_eq!(check_storable(&huge), Err(Unstorable::TooLarge));
        assert_eq!(check_storable(&json!({"ok": [1, 2]})), Ok(()));
        let failed = storable_outcome(Ok(deep)).unwrap_err();
        assert_eq!(failed.message(), "step data nested deeper than 64 levels; not stored");
    }
}
