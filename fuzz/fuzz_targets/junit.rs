//! Fuzzes the JUnit XML parser of `command` steps: any text is a report or an
//! error message, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else { return };
    if let Ok(report) = aegis_core::fuzzing::parse_junit(xml) {
        let passed = report["passed"].as_u64().unwrap();
        let total = report["total"].as_u64().unwrap();
        assert!(passed <= total, "{report}");
    }
});
