//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` expansion in every string value.
//!
//! Expansion runs on the node tree before the schema stage, so a variable may stand for
//! any scalar (`port: ${PORT:-8000}`) and an unset one is reported at its own line and
//! column; `${VAR:?message}` says `message` there instead of suggesting a default (what
//! a key must say: a default key written into a file is no key). `$${` writes a literal
//! `${`.

use crate::diagnostic::{Check, Finding};
use crate::node::{Loc, Node, NodeKind};

/// Expands references in every string of `node` (keys are left as written).
pub(crate) fn expand_tree(
    node: &mut Node,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    findings: &mut Vec<Finding>,
) {
    match &mut node.kind {
        NodeKind::Str(text) => {
            if !text.contains('$') {
                return;
            }
            let origin = Origin::new(source, node.loc, text);
            match expand(text, env) {
                Ok(Some(expanded)) => {
                    *text = expanded;
                    node.interpolated = true;
                }
                Ok(None) => {}
                Err(problems) => {
                    for problem in problems {
                        findings.push(Finding::error(
                            Check::Variables,
                            origin.at(problem.offset),
                            problem.message,
                        ));
                    }
                }
            }
        }
        NodeKind::Seq(items) => {
            for item in items {
                expand_tree(item, source, env, findings);
            }
        }
        NodeKind::Map(entries) => {
            for (_, value) in entries {
                expand_tree(value, source, env, findings);
            }
        }
        NodeKind::Null | NodeKind::Bool(_) | NodeKind::Int(_) | NodeKind::Float(_) => {}
    }
}

/// Maps a character offset inside a scalar back to a file position. Only a scalar on
/// one line that is written as it reads (plain, or quoted without escapes) maps exactly;
/// anything else is reported at the start of the scalar.
struct Origin {
    loc: Loc,
    exact: bool,
    quote_width: u32,
}

impl Origin {
    fn new(source: &str, loc: Loc, text: &str) -> Origin {
        let line = source.lines().nth(loc.line.saturating_sub(1) as usize).unwrap_or("");
        let rest: String = line.chars().skip(loc.col.saturating_sub(1) as usize).collect();
        let (quote_width, body) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => (1, rest[q.len_utf8()..].to_owned()),
            _ => (0, rest),
        };
        Origin { loc, exact: !text.contains('\n') && body.starts_with(text), quote_width }
    }

    fn at(&self, offset: usize) -> Loc {
        if !self.exact {
            return self.loc;
        }
        let offset = u32::try_from(offset).unwrap_or(0);
        Loc { line: self.loc.line, col: self.loc.col + self.quote_width + offset }
    }
}

struct Problem {
    /// Character offset of the `${` within the scalar.
    offset: usize,
    message: String,
}

/// Expands one string: `Ok(None)` when it holds no reference.
fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Vec<Problem>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && chars.get(i + 1) == Some(&'$') && chars.get(i + 2) == Some(&'{') {
            out.push_str("${");
            changed = true;
            i += 3;
            continue;
        }
        if chars[i] != '$' || chars.get(i + 1) != Some(&'{') {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        changed = true;
        let start = i;
        let Some(close) = chars[i + 2..].iter().position(|&c| c == '}').map(|p| p + i + 2) else {
            problems.push(Problem {
                offset: start,
                message: "unterminated `${`: expected `}`".to_owned(),
            });
            break;
        };
        let inner: String = chars[i + 2..close].iter().collect();
        let (name, unset) = split_reference(&inner);
        if !is_var_name(name) {
            problems.push(Problem {
                offset: start,
                message: format!("invalid variable reference `${{{inner}}}`: a name is letters, digits and `_`, not starting with a digit"),
            });
        } else {
            match (env(name), unset) {
                (Some(value), _) => out.push_str(&value),
                (None, Unset::Default(default)) => out.push_str(default),
                (None, Unset::Required(message)) => problems.push(Problem {
                    offset: start,
                    message: if message.trim().is_empty() {
                        format!("environment variable `{name}` is not set")
                    } else {
                        format!("environment variable `{name}` is not set: {}", message.trim())
                    },
                }),
                (None, Unset::Unspecified) => problems.push(Problem {
                    offset: start,
                    message: format!("environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"),
                }),
            }
        }
        i = close + 1;
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(changed.then_some(out))
}

/// What a reference says to do when its variable is unset.
enum Unset<'a> {
    /// `${VAR}`: an error that suggests a default.
    Unspecified,
    /// `${VAR:-default}`: use the default.
    Default(&'a str),
    /// `${VAR:?message}`: an error that says the message.
    Required(&'a str),
}

/// Splits the inside of `${…}` into the name and what to do when it is unset. The
/// first `:` decides; a name never holds one, so anything else is an invalid name.
fn split_reference(inner: &str) -> (&str, Unset<'_>) {
    if let Some((name, rest)) = inner.split_once(':') {
        if let Some(default) = rest.strip_prefix('-') {
            return (name, Unset::Default(default));
        }
        if let Some(message) = rest.strip_prefix('?') {
            return (name, Unset::Required(message));
        }
    }
    (inner, Unset::Unspecified)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/qa".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn check(input: &str) -> Result<Option<String>, Vec<String>> {
        expand(input, &env)
            .map_err(|ps| ps.into_iter().map(|p| format!("{}: {}", p.offset, p.message)).collect())
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(check("plain"), Ok(None));
        assert_eq!(check("${HOME_DIR}/x"), Ok(Some("/home/qa/x".to_owned())));
        assert_eq!(check("${UNSET:-fallback}"), Ok(Some("fallback".to_owned())));
        assert_eq!(check("${UNSET:-}"), Ok(Some(String::new())));
        assert_eq!(check("${EMPTY:-x}"), Ok(Some(String::new())));
        assert_eq!(check("cost $5"), Ok(None));
        assert_eq!(check("$${HOME_DIR}"), Ok(Some("${HOME_DIR}".to_owned())));
    }

    #[test]
    fn reports_each_unset_variable_at_its_offset() {
        let err = check("a ${ONE} b ${TWO}").unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].starts_with("2: environment variable `ONE` is not set"));
        assert!(err[1].starts_with("11: environment variable `TWO` is not set"));
        assert!(check("${BAD NAME}").unwrap_err()[0].contains("invalid variable reference"));
        assert!(check("x ${OPEN").unwrap_err()[0].contains("unterminated"));
    }

    #[test]
    fn a_required_variable_says_its_message_and_suggests_no_default() {
        assert_eq!(check("${HOME_DIR:?needed}"), Ok(Some("/home/qa".to_owned())));
        let err = check("k ${KEY:?pass it with -e KEY=...}").unwrap_err();
        assert_eq!(err, ["2: environment variable `KEY` is not set: pass it with -e KEY=..."]);
        assert_eq!(check("${KEY:?}").unwrap_err(), ["0: environment variable `KEY` is not set"]);
        assert!(check("${A:x}").unwrap_err()[0].contains("invalid variable reference"));
    }

    #[test]
    fn maps_offsets_to_columns_through_quotes() {
        let source = "key: \"a ${X}\"\n";
        let origin = Origin::new(source, Loc { line: 1, col: 6 }, "a ${X}");
        assert_eq!(origin.at(2), Loc { line: 1, col: 9 });
    }
}
