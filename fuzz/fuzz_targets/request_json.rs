//! Fuzzes the request-body depth check: the bracket count taken before parsing
//! agrees with the parsed value's depth, so a body that passes the check parses
//! without reaching `serde_json`'s recursion limit and is exactly as deep as
//! counted, and the size the limits use is the serialized size.

#![no_main]

use aegis_core::limits::{MAX_JSON_DEPTH, json_len, text_depth, value_depth};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let counted = text_depth(data, MAX_JSON_DEPTH);
    assert!(counted <= MAX_JSON_DEPTH + 1);
    match serde_json::from_slice::<Value>(data) {
        Ok(value) => {
            // A document that parses is at most 128 deep, and its depth is counted
            // exactly up to the limit.
            assert_eq!(counted, value_depth(&value).min(MAX_JSON_DEPTH + 1), "{value}");
            assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len());
        }
        Err(err) => {
            // A body within the depth limit never fails for its depth.
            if counted <= MAX_JSON_DEPTH {
                assert!(!err.to_string().contains("recursion limit"), "{err}");
            }
        }
    }
});
