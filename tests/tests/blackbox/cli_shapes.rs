//! One JSON shape per CLI command whatever the mode: `aegis-cli run NAME --json` prints
//! a run the same way when it ran in-process and when it ran on a server
//! (`--server URL ... --wait --json`): the shape of `GET /api/runs/{id}`.

use std::collections::BTreeSet;

use aegis_tests::{Server, aegis_cli, run, write_config};
use serde_json::Value;

const CONFIG: &str = r#"
workflows:
  w:
    steps:
      - { id: first, type: command, argv: [sh, -c, "echo hello"] }
      - { id: never, type: command, argv: [sh, -c, "true"], condition: has_failures }
      - { id: last, type: report }
"#;

/// Every key path of a JSON value (`steps[].attempts[].error`), values aside.
fn shape(value: &Value, at: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = format!("{at}.{key}");
                out.insert(path.clone());
                // A step's data is the step's own business, not the run's shape.
                if key != "data" {
                    shape(inner, &path, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                shape(item, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

fn printed(out: &aegis_tests::Finished) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn run_json_has_the_same_shape_in_process_and_against_a_server() {
    let here = tempfile::tempdir().unwrap();
    write_config(here.path(), CONFIG);
    let local = run(aegis_cli(here.path()).args(["run", "w", "--json"]));
    assert_eq!(local.code, Some(0), "{local:?}");
    let local = printed(&local);

    let there = tempfile::tempdir().unwrap();
    write_config(there.path(), CONFIG);
    let server = Server::start(there.path());
    let remote = run(aegis_cli(there.path()).args([
        "--server",
        &server.url(),
        "run",
        "w",
        "--wait",
        "--json",
    ]));
    assert_eq!(remote.code, Some(0), "{remote:?}");
    let remote = printed(&remote);

    for json in [&local, &remote] {
        assert_eq!(json["status"], "succeeded", "{json}");
        assert_eq!(json["workflow"], "w", "{json}");
        let steps: Vec<&str> =
            json["steps"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(steps, ["first", "never", "last"], "{json}");
    }
    assert_eq!(local["trigger"], "cli");
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    shape(&local, "", &mut a);
    shape(&remote, "", &mut b);
    assert_eq!(a, b, "in-process:\n{local:#}\nserver:\n{remote:#}");
}
