//! Snapshot tests of the exact diagnostics for each file under `tests/data`.

use std::path::{Path, PathBuf};

use aegis_config::{LoadOptions, Severity};

/// The environment every test file sees: a few set variables, nothing else.
pub(crate) fn test_env(name: &str) -> Option<String> {
    match name {
        "AEGIS_TEST_PORT" => Some("9001".to_owned()),
        "AEGIS_TEST_KEY" => Some("test-admin-key-0123456789".to_owned()),
        "AEGIS_TEST_CI_KEY" => Some("test-ci-key-0123456789abc".to_owned()),
        "AEGIS_TEST_PORT_WORD" => Some("eighty".to_owned()),
        "AEGIS_CI_KEY" => Some("ci-key-from-env-0123456789".to_owned()),
        "WEBHOOK_SECRET" => Some("webhook-secret-from-env".to_owned()),
        _ => None,
    }
}

fn data_files(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Renders a file's findings as `config validate` prints them, with a stable path.
fn render(path: &Path) -> (bool, String) {
    let report = LoadOptions::new().env(test_env).check_file(path);
    let shown = Path::new(path.file_name().unwrap());
    let text = report
        .findings()
        .iter()
        .map(|f| f.display(shown).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    (report.is_valid(), text)
}

#[test]
fn bad_files_are_rejected_with_located_findings() {
    let files = data_files("bad");
    assert!(files.len() >= 40, "expected at least 40 bad files, found {}", files.len());
    for path in files {
        let (valid, text) = render(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(!valid, "{name} should be invalid");
        assert!(!text.is_empty(), "{name} should have findings");
        insta::assert_snapshot!(format!("bad__{name}"), text);
    }
}

#[test]
fn good_files_are_accepted() {
    let files = data_files("good");
    assert!(files.len() >= 8, "expected at least 8 good files, found {}", files.len());
    for path in files {
        let (valid, text) = render(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(valid, "{name} should be valid, got:\n{text}");
        let report = LoadOptions::new().env(test_env).check_file(&path);
        assert!(report.findings().iter().all(|f| f.severity() == Severity::Warning));
        insta::assert_snapshot!(format!("good__{name}"), text);
    }
}

#[test]
fn several_errors_are_all_reported() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad/several-errors.yaml");
    let report = LoadOptions::new().env(test_env).check_file(&path);
    let errors = report.findings().iter().filter(|f| f.severity() == Severity::Error).count();
    assert!(errors >= 8, "expected every error reported, got {errors}: {:#?}", report.findings());
}

#[test]
fn a_five_megabyte_file_is_refused_at_line_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let mut text = String::from("services:\n");
    while text.len() < 5 * 1024 * 1024 {
        text.push_str("  # padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).unwrap();
    let report = LoadOptions::new().env(test_env).check_file(&path);
    assert!(!report.is_valid());
    let finding = &report.findings()[0];
    assert_eq!((finding.loc().line, finding.loc().col), (1, 1));
    assert!(
        finding.message().contains("larger than the 1048576-byte limit"),
        "{}",
        finding.message()
    );
}
