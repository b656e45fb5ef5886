//! Fuzzes the configuration loader: any bytes as `.aegis.yaml` are either a
//! configuration or located findings, never a panic, a hang or a stack overflow.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for each input: the loader is fuzzed as
/// it runs, reading a real file.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("aegis-fuzz-{}.yaml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    if std::fs::write(path, data).is_err() {
        return;
    }
    // Environment lookups are answered from the input's own length, so `${VAR}`
    // interpolation runs without reading the fuzzer's environment.
    let options = aegis_config::LoadOptions::new()
        .env(|name| (name.len() % 2 == 0).then(|| format!("value-of-{name}")))
        .step_types(["custom"]);
    let report = options.check_file(path);
    for finding in report.findings() {
        // Every finding has a place in the file.
        assert!(finding.loc().line >= 1 && finding.loc().col >= 1, "{finding:?}");
    }
    if report.is_valid() {
        let config = report.into_config().expect("a valid report has a config");
        // What `config show` prints can always be produced.
        let _ = config.to_redacted_json().to_string();
    }
});
