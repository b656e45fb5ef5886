//! The modules of `aegis-core` form layers: no module reaches, through the
//! others, back to itself. A cycle (say `run` → `gate` → `run`) is how a
//! core becomes one knot that nobody can read a part of alone; this test
//! names the cycle so that the change that makes one is the one that fixes
//! it. A module is a file of `src/` or a folder (`src/steps/`); it depends
//! on every module it names as `crate::<module>` in code (comments, doc
//! links included, do not count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The code of a file without its comments.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a piece of code names as `crate::<module>`.
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn modules(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).expect("name").to_owned();
        let files = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("read module folder")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect()
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            vec![path.clone()]
        } else {
            continue;
        };
        let deps = graph.entry(name.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            deps.extend(named(&code(&text)).into_iter().filter(|d| *d != name));
        }
    }
    graph
}

/// A cycle through `at`, if the walk from it finds one (depth-first, with
/// an explicit stack: the graph is small, but recursion is not needed).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for start in graph.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        let mut path: Vec<&str> = vec![start];
        let mut stack: Vec<Vec<&str>> = vec![
            graph[start].iter().map(String::as_str).filter(|d| graph.contains_key(*d)).collect(),
        ];
        marks.insert(start, Mark::Open);
        while let Some(next) = stack.last_mut() {
            match next.pop() {
                Some(dep) => match marks.get(dep) {
                    Some(Mark::Open) => {
                        let from = path.iter().position(|m| *m == dep).unwrap_or(0);
                        let mut found: Vec<String> =
                            path[from..].iter().map(|m| (*m).to_owned()).collect();
                        found.push(dep.to_owned());
                        return Some(found);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(dep, Mark::Open);
                        path.push(dep);
                        stack.push(
                            graph[dep]
                                .iter()
                                .map(String::as_str)
                                .filter(|d| graph.contains_key(*d))
                                .collect(),
                        );
                    }
                },
                None => {
                    stack.pop();
                    if let Some(done) = path.pop() {
                        marks.insert(done, Mark::Done);
                    }
                }
            }
        }
    }
    None
}

#[test]
fn the_modules_of_the_core_import_each_other_in_no_cycle() {
    let graph = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.contains_key("engine") && graph.contains_key("run"), "{graph:?}");
    if let Some(cycle) = cycle(&graph) {
        panic!("aegis-core modules import each other in a cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |graph: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        graph.entry(a.to_owned()).or_default().insert(b.to_owned());
        graph.entry(b.to_owned()).or_default();
    };
    edge(&mut graph, "engine", "run");
    edge(&mut graph, "run", "state");
    assert_eq!(cycle(&graph), None);
    edge(&mut graph, "state", "run");
    assert_eq!(cycle(&graph), Some(vec!["run".into(), "state".into(), "run".into()]));
    // Comments and doc links do not count; code does.
    let text = "//! see [`crate::gate`]\nuse crate::state::Inner; // not crate::run\n";
    assert_eq!(named(&code(text)), BTreeSet::from(["state".to_owned()]));
}
