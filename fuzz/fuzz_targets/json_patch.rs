//! Fuzzes the bounded JSON Patch applier: a patch and an artifact (two JSON texts,
//! split at the first NUL byte) are either applied within the limits or refused;
//! what is applied is what an unbounded RFC 6902 applier gives.

#![no_main]

use aegis_core::limits::{MAX_JSON_DEPTH, MAX_PATCHED_ARTIFACT_BYTES, json_len, value_depth};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (patch, artifact) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    let (Ok(patch), Ok(artifact)) =
        (serde_json::from_slice::<Value>(patch), serde_json::from_slice::<Value>(artifact))
    else {
        return;
    };
    let Ok(applied) = aegis_core::apply_patch(&patch, &artifact) else { return };
    assert!(value_depth(&applied) <= MAX_JSON_DEPTH);
    assert!(json_len(&applied) <= MAX_PATCHED_ARTIFACT_BYTES);
    assert_eq!(json_len(&applied), serde_json::to_vec(&applied).unwrap().len());
    // Every state on the way was within the limits, so the unbounded applier cannot
    // run away on this patch either; it must agree.
    let operations: json_patch::Patch = serde_json::from_value(patch).unwrap();
    let mut reference = artifact;
    json_patch::patch(&mut reference, &operations).unwrap();
    assert_eq!(applied, reference);
});
