//! `aegis-cli config validate`, `config show` and `completions` as a user runs them.

use std::path::Path;

use aegis_tests::{aegis_cli, run, workspace_root};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_example_config_validates_with_a_check_line_each() {
    let root = workspace_root();
    let out = run(aegis_cli(&root).args(["config", "validate", "--config", ".aegis.yaml.example"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches('✓').count(), 10, "{}", out.stdout);
    assert!(out.stdout.contains("✓ gate artifacts name earlier steps"));
    assert!(out.stdout.trim_end().ends_with(".aegis.yaml.example is valid"));
    assert!(!out.stdout.contains('\x1b'), "no escape codes when piped");
}

#[test]
fn a_python_era_config_loads_unchanged() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/aegis-config/tests/data/good/python-aegis.example.yaml");
    let dir = tempfile::tempdir().unwrap();
    let out =
        run(aegis_cli(dir.path()).arg("config").arg("validate").arg("--config").arg(&fixture));
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn an_invalid_config_exits_1_with_every_finding_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.yaml",
        "server:\n  port: eighty\nservices:\n  qa: {url: http://localhost:1}\nworkflows:\n  w:\n    steps:\n      - {type: tset, service: qa}\n      - {type: test, service: qaa}\n",
    );
    let out = run(aegis_cli(dir.path()).args(["config", "validate", "--config", "bad.yaml"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "bad.yaml:2:9: error: `server.port`: expected an integer 1-65535, found \"eighty\""
    );
    assert_eq!(
        lines[1],
        "bad.yaml:8:16: error: `workflows.w.steps[0].type`: unknown step type \"tset\"; did you mean `test`?"
    );
    assert_eq!(
        lines[2],
        "bad.yaml:9:31: error: `workflows.w.steps[1].service`: unknown service \"qaa\"; did you mean `qa`?"
    );
    assert_eq!(lines[3], "✗ bad.yaml: 3 errors");
    assert!(!out.stdout.contains('✓'));
    // The file is only read, never rewritten.
    assert!(std::fs::read_to_string(&path).unwrap().contains("eighty"));
}

#[test]
fn a_nonexistent_config_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(aegis_cli(dir.path()).args(["config", "validate", "--config", "missing.yaml"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with(
            "missing.yaml:1:1: error: cannot read the file: No such file or directory"
        ),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"));
}

#[test]
fn discovery_walks_up_and_honours_aegis_config() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    write(dir.path(), ".aegis.yaml", "workflows:\n  w:\n    steps: [{type: report}]\n");
    let out = run(aegis_cli(&nested).args(["config", "validate"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(".aegis.yaml is valid"));

    write(dir.path(), "other.yaml", "workflows: [oops]\n");
    let out = run(aegis_cli(&nested)
        .env("AEGIS_CONFIG", dir.path().join("other.yaml"))
        .args(["config", "validate"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains("other.yaml:1:12: error: `workflows`: expected a mapping, found a list"),
        "{out:?}"
    );
}

#[test]
fn no_config_anywhere_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(aegis_cli(dir.path()).args(["config", "validate"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no .aegis.yaml found"), "{out:?}");
    assert!(out.stderr.contains("pass --config PATH or set AEGIS_CONFIG"), "{out:?}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(aegis_cli(dir.path()).args(["config", "validate", "--frobnicate"]));
    assert_eq!(out.code, Some(2), "{out:?}");
    let out = run(aegis_cli(dir.path()).args(["config"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn show_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".aegis.yaml",
        "auth:\n  api_key: ${ADMIN_KEY}\n  keys:\n    - {id: ci, key: literal-ci-key-0123456789, role: operator}\nservices:\n  qa: {url: \"http://user:pw-in-url@localhost:8080\"}\nwebhooks:\n  - url: http://localhost:9000/h\n    secret: ${HOOK_SECRET}\nworkflows:\n  w:\n    steps:\n      - type: command\n        argv: [make, test]\n        env: {TOKEN: \"${ADMIN_KEY}\", MODE: fast}\n",
    );
    let out = run(aegis_cli(dir.path())
        .env("ADMIN_KEY", "admin-secret-value-123456")
        .env("HOOK_SECRET", "hook-secret-value")
        .args(["config", "show", "--json"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    for secret in
        ["admin-secret-value-123456", "hook-secret-value", "literal-ci-key-0123456789", "pw-in-url"]
    {
        assert!(!out.stdout.contains(secret), "{secret} leaked: {}", out.stdout);
    }
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["server"]["port"], 8000);
    assert_eq!(shown["auth"]["keys"][0]["id"], "api_key");
    assert_eq!(shown["auth"]["keys"][0]["key"], "***");
    assert_eq!(shown["auth"]["keys"][1]["role"], "operator");
    assert_eq!(shown["webhooks"][0]["secret"], "***");
    assert_eq!(shown["webhooks"][0]["events"], serde_json::json!(["workflow.completed"]));
    assert_eq!(shown["workflows"]["w"]["steps"][0]["env"]["TOKEN"], "***");
    assert_eq!(shown["workflows"]["w"]["steps"][0]["env"]["MODE"], "fast");
    assert_eq!(shown["workflows"]["w"]["steps"][0]["timeout"], 30.0);

    let yaml = run(aegis_cli(dir.path())
        .env("ADMIN_KEY", "admin-secret-value-123456")
        .env("HOOK_SECRET", "hook-secret-value")
        .args(["config", "show"]));
    assert_eq!(yaml.code, Some(0), "{yaml:?}");
    assert!(yaml.stdout.contains("port: 8000"), "{}", yaml.stdout);
    assert!(!yaml.stdout.contains("admin-secret-value"));
}

#[test]
fn show_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".aegis.yaml", "server: {port: 0}\n");
    let out = run(aegis_cli(dir.path()).args(["config", "show"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.contains(
            ".aegis.yaml:1:16: error: `server.port`: expected an integer 1-65535, found 0"
        ),
        "{out:?}"
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(aegis_cli(dir.path()).args(["completions", shell]));
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(out.stdout.contains("aegis-cli"), "{shell}");
    }
    let out = run(aegis_cli(dir.path()).args(["completions", "cmd.exe"]));
    assert_eq!(out.code, Some(2), "{out:?}");
}

/// Runs `aegis-cli ARGS` on a real pseudo-terminal through util-linux `script`.
fn on_a_terminal(args: &str, no_color: bool) -> String {
    let root = workspace_root();
    let bin = aegis_tests::binary("aegis-cli");
    let mut cmd = std::process::Command::new("script");
    cmd.current_dir(&root).env_remove("NO_COLOR").args([
        "-qec",
        &format!("{} {args}", bin.display()),
        "/dev/null",
    ]);
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    run(&mut cmd).stdout
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let args = "config validate --config .aegis.yaml.example";
    assert!(on_a_terminal(args, false).contains("\x1b[32m✓\x1b[0m"), "a terminal gets colour");
    let plain = on_a_terminal(args, true);
    assert!(plain.contains("✓ YAML syntax is valid"), "{plain}");
    assert!(!plain.contains('\x1b'), "NO_COLOR means no escape codes: {plain:?}");
}
