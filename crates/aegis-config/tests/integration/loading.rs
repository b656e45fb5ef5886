//! Discovery, interpolation, defaults and redaction.

use std::path::Path;

use aegis_config::{ConfigError, LoadOptions, StepKind};

use crate::diagnostics::test_env;

const MINIMAL: &str = "services:\n  qa: {url: http://localhost:8080}\nworkflows:\n  w:\n    steps: [{type: discover, service: qa}]\n";

#[test]
fn discovery_prefers_flag_then_env_then_walks_up() {
    let root = tempfile::tempdir().unwrap();
    let nested = root.path().join("a/b/c");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(root.path().join(".aegis.yaml"), MINIMAL).unwrap();
    let other = root.path().join("other.yaml");
    std::fs::write(&other, MINIMAL).unwrap();

    let walked = LoadOptions::new().env(|_| None).cwd(&nested).locate().unwrap();
    assert_eq!(walked, root.path().join(".aegis.yaml"));

    let other_text = other.to_string_lossy().into_owned();
    let from_env = LoadOptions::new()
        .env(move |name| (name == "AEGIS_CONFIG").then(|| other_text.clone()))
        .cwd(&nested)
        .locate()
        .unwrap();
    assert_eq!(from_env, other);

    let flag = root.path().join("flag.yaml");
    let from_flag =
        LoadOptions::new().env(|_| Some("/nope".into())).path(Some(flag.clone())).locate().unwrap();
    assert_eq!(from_flag, flag);
}

#[test]
fn discovery_without_any_file_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let err = LoadOptions::new().env(|_| None).cwd(root.path()).locate().unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }));
    assert!(err.to_string().contains("pass --config PATH or set AEGIS_CONFIG"), "{err}");
}

#[test]
fn a_nonexistent_path_is_reported_not_panicked_on() {
    let report =
        LoadOptions::new().env(|_| None).check_file(Path::new("/definitely/not/here.yaml"));
    assert!(!report.is_valid());
    let finding = &report.findings()[0];
    assert_eq!((finding.loc().line, finding.loc().col), (1, 1));
    assert!(
        finding.message().starts_with("cannot read the file: No such file"),
        "{}",
        finding.message()
    );
}

#[test]
fn defaults_follow_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".aegis.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    let config = LoadOptions::new().env(|_| None).path(Some(path)).load().unwrap();
    let server = config.server();
    assert_eq!(
        (server.host(), server.port(), server.allow_external_bind()),
        ("127.0.0.1", 8000, false)
    );
    assert_eq!(
        (server.base_path(), server.cors_origins().len(), server.max_concurrent_runs()),
        ("", 0, 16)
    );
    assert_eq!(server.max_body_bytes(), 1024 * 1024);
    assert_eq!(config.data_dir(), dir.path().join("aegis-data"));
    assert_eq!(config.history().db_path(), dir.path().join("aegis_history.db"));
    assert_eq!((config.history().max_records(), config.event_log_size()), (0, 100));
    assert!(!config.auth().enabled());
    assert_eq!(config.aegis().name(), "Aegis");
    assert_eq!(config.aegis().version(), env!("CARGO_PKG_VERSION"));
    let service = &config.services()["qa"];
    assert_eq!((service.name(), service.health_endpoint()), ("qa", "/health"));
    let workflow = &config.workflows()["w"];
    assert_eq!(workflow.name(), "w");
    let step = &workflow.steps()[0];
    assert_eq!((step.id(), step.retries(), step.parallel()), ("discover", 0, false));
    assert_eq!(step.retry_delay().as_secs_f64(), 1.0);
    assert_eq!(step.timeout().map(|t| t.as_secs()), Some(30));
    assert!(matches!(step.kind(), StepKind::Discover));
}

#[test]
fn aegis_db_path_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".aegis.yaml");
    std::fs::write(&path, format!("history_db_path: from-file.db\n{MINIMAL}")).unwrap();
    let config = LoadOptions::new()
        .env(|name| (name == "AEGIS_DB_PATH").then(|| "/var/lib/aegis/h.db".to_owned()))
        .path(Some(path))
        .load()
        .unwrap();
    assert_eq!(config.history().db_path(), Path::new("/var/lib/aegis/h.db"));
}

#[test]
fn interpolated_values_are_typed_and_secrets_redacted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/good/interpolation.yaml");
    let config = LoadOptions::new().env(test_env).path(Some(path)).load().unwrap();
    assert_eq!(config.server().port(), 9001);
    assert_eq!(config.auth().keys()[0].key().expose(), "test-admin-key-0123456789");
    let StepKind::Command(command) = config.workflows()["w"].steps()[0].kind() else {
        panic!("not a command")
    };
    assert_eq!(command.argv(), ["echo", "${NOT_EXPANDED}"]);

    let shown = serde_json::to_string(&config.to_redacted_json()).unwrap();
    assert!(!shown.contains("test-admin-key"), "{shown}");
    assert!(!shown.contains("test-ci-key"), "{shown}");
    assert!(shown.contains("\"TOKEN\":\"***\""), "{shown}");
    assert!(shown.contains("\"PLAIN\":\"visible\""), "{shown}");
    assert!(!format!("{config:?}").contains("test-admin-key"));
}

#[test]
fn custom_step_types_are_accepted_when_registered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".aegis.yaml");
    std::fs::write(
        &path,
        "workflows:\n  w:\n    steps:\n      - {type: lighthouse, with: {url: /}}\n",
    )
    .unwrap();
    let rejected = LoadOptions::new().env(|_| None).path(Some(path.clone())).load().unwrap_err();
    assert!(rejected.to_string().contains("1 error"), "{rejected}");
    let config = LoadOptions::new()
        .env(|_| None)
        .step_types(["lighthouse"])
        .path(Some(path))
        .load()
        .unwrap();
    let StepKind::Custom(custom) = config.workflows()["w"].steps()[0].kind() else {
        panic!("not custom")
    };
    assert_eq!(custom.with()["url"], "/");
}

#[test]
fn values_from_variables_anywhere_in_a_step_and_every_header_are_shown_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".aegis.yaml");
    std::fs::write(
        &path,
        "\
services:
  qa: {url: \"https://user:pw-in-url@qa.example\"}
workflows:
  w:
    steps:
      - type: http
        service: qa
        path: /api/${TOKEN}/x
        headers: {Authorization: Bearer literal-header-token, X-Token: \"${TOKEN}\"}
        body: {user: me, token: \"${TOKEN}\", nested: [\"pre-${TOKEN}\", 3]}
      - {type: command, argv: [deploy, --token, \"${TOKEN}\", --verbose]}
      - {type: lighthouse, with: {key: \"${TOKEN}\", url: /}}
",
    )
    .unwrap();
    let config = LoadOptions::new()
        .env(|name| (name == "TOKEN").then(|| "var-secret-0123".to_owned()))
        .step_types(["lighthouse"])
        .path(Some(path))
        .load()
        .unwrap();
    // The steps use the real values.
    let steps = config.workflows()["w"].steps();
    let StepKind::Http(http) = steps[0].kind() else { panic!("not http") };
    assert_eq!(http.path(), "/api/var-secret-0123/x");
    assert_eq!(http.body().unwrap()["nested"][0], "pre-var-secret-0123");
    assert_eq!(http.headers()["Authorization"].expose(), "Bearer literal-header-token");
    let StepKind::Command(command) = steps[1].kind() else { panic!("not a command") };
    assert_eq!(command.argv(), ["deploy", "--token", "var-secret-0123", "--verbose"]);

    // What is shown has none of them.
    let shown = config.to_redacted_json();
    let text = shown.to_string();
    for secret in ["var-secret-0123", "literal-header-token", "pw-in-url"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    for secret in ["var-secret-0123", "literal-header-token"] {
        assert!(!format!("{:?}", config.workflows()).contains(secret), "{secret} in Debug");
    }
    assert_eq!(shown["services"]["qa"]["url"], "https://user:***@qa.example/");
    let steps = &shown["workflows"]["w"]["steps"];
    assert_eq!(steps[0]["path"], "***");
    assert_eq!(steps[0]["headers"]["Authorization"], "***");
    assert_eq!(
        steps[0]["body"],
        serde_json::json!({"user": "me", "token": "***", "nested": ["***", 3]})
    );
    assert_eq!(steps[1]["argv"], serde_json::json!(["deploy", "--token", "***", "--verbose"]));
    assert_eq!(steps[2]["with"], serde_json::json!({"key": "***", "url": "/"}));
}
