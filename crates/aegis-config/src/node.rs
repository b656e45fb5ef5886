//! The YAML document as a tree of located nodes: the first stage of loading.
//!
//! Parsing produces a [`Node`] tree rather than typed structs so that every later
//! stage (interpolation, schema, validation) can report each finding at the line and
//! column of the node it concerns, and keep going after the first one.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

/// A 1-based line and column in the configuration file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1.
    pub col: u32,
}

impl Loc {
    /// The start of the file, where findings that belong to no node are reported.
    pub const START: Loc = Loc { line: 1, col: 1 };

    fn from_saphyr(location: &serde_saphyr::Location) -> Loc {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).max(1);
        Loc { line: clamp(location.line()), col: clamp(location.column()) }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One YAML node with its location.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) loc: Loc,
    /// Set when a `${VAR}` reference was expanded inside this (string) node.
    pub(crate) interpolated: bool,
}

/// The shape of a YAML node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short description of the value for "found …" messages: strings are quoted,
    /// numbers and booleans shown as written, collections named.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Null => "null".to_owned(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => format!("{f:?}"),
            NodeKind::Str(s) => {
                let mut shown: String = s.chars().take(60).collect();
                if shown.len() < s.len() {
                    shown.push('…');
                }
                format!("{shown:?}")
            }
            NodeKind::Seq(_) => "a list".to_owned(),
            NodeKind::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The text of a scalar used as a mapping key, or `None` for a collection key.
    pub(crate) fn key_text(&self) -> Option<String> {
        match &self.kind {
            NodeKind::Null => Some(String::new()),
            NodeKind::Bool(b) => Some(b.to_string()),
            NodeKind::Int(i) => Some(i.to_string()),
            NodeKind::Float(f) => Some(f.to_string()),
            NodeKind::Str(s) => Some(s.clone()),
            NodeKind::Seq(_) | NodeKind::Map(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<NodeKind>::deserialize(deserializer)?;
        Ok(Node {
            kind: spanned.value,
            loc: Loc::from_saphyr(&spanned.referenced),
            interpolated: false,
        })
    }
}

impl<'de> Deserialize<'de> for NodeKind {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = NodeKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<NodeKind, E> {
        Ok(NodeKind::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<NodeKind, E> {
        Ok(NodeKind::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<NodeKind, E> {
        // Integers beyond i64 are out of range for every key; keep them as floats so the
        // schema reports them as such rather than failing the whole parse.
        Ok(i64::try_from(v).map_or(NodeKind::Float(v as f64), NodeKind::Int))
    }

    fn visit_i128<E>(self, v: i128) -> Result<NodeKind, E> {
        Ok(i64::try_from(v).map_or(NodeKind::Float(v as f64), NodeKind::Int))
    }

    fn visit_u128<E>(self, v: u128) -> Result<NodeKind, E> {
        Ok(i64::try_from(v).map_or(NodeKind::Float(v as f64), NodeKind::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<NodeKind, E> {
        Ok(NodeKind::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<NodeKind, E> {
        Ok(NodeKind::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<NodeKind, E> {
        Ok(NodeKind::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<NodeKind, E> {
        Err(E::custom("binary values are not supported"))
    }

    fn visit_unit<E>(self) -> Result<NodeKind, E> {
        Ok(NodeKind::Null)
    }

    fn visit_none<E>(self) -> Result<NodeKind, E> {
        Ok(NodeKind::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<NodeKind, D::Error> {
        NodeKind::deserialize(d)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<NodeKind, D::Error> {
        NodeKind::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeKind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(NodeKind::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeKind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(NodeKind::Map(entries))
    }
}

/// Why a document could not be turned into a tree.
#[derive(Debug)]
pub(crate) struct ParseFailure {
    pub(crate) loc: Loc,
    pub(crate) message: String,
}

/// The largest configuration file accepted. Real configurations are a few kilobytes;
/// the cap keeps a mistaken path (a log, a database) from being parsed at all.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The most events alias expansion may replay: far above any real configuration, far
/// below what a "billion laughs" document asks for.
const MAX_ALIAS_REPLAY: usize = 10_000;

/// Parses YAML text into a tree. `Ok(None)` means the document holds no value at all
/// (an empty file, or only comments).
pub(crate) fn parse(text: &str) -> Result<Option<Node>, ParseFailure> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ParseFailure {
            loc: Loc::START,
            message: format!(
                "file is {} bytes, larger than the {MAX_CONFIG_BYTES}-byte limit for a configuration",
                text.len()
            ),
        });
    }
    if text.contains('\0') {
        return Err(ParseFailure {
            loc: Loc::START,
            message: "file contains NUL bytes; is it a binary file?".to_owned(),
        });
    }
    if text.trim().is_empty()
        || text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(None);
    }
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAY;
    options.alias_limits.max_replay_stack_depth = 16;
    if let Some(budget) = options.budget.as_mut() {
        budget.max_depth = 64;
        budget.max_nodes = 100_000;
        budget.max_aliases = 1_000;
    }
    match serde_saphyr::from_str_with_options::<Node>(text, options) {
        Ok(node) if matches!(node.kind, NodeKind::Null) => Ok(None),
        Ok(node) => Ok(Some(node)),
        Err(err) => Err(describe_error(text, &err)),
    }
}

/// The anchor name of the alias (`*name`) written at `loc`, if one is there.
fn alias_name(text: &str, loc: Loc) -> Option<String> {
    let line = text.lines().nth(usize::try_from(loc.line).ok()?.checked_sub(1)?)?;
    let rest: String = line.chars().skip(usize::try_from(loc.col).ok()?.checked_sub(1)?).collect();
    let name: String = rest
        .strip_prefix('*')?
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}'))
        .collect();
    (!name.is_empty()).then_some(name)
}

fn describe_error(text: &str, err: &serde_saphyr::Error) -> ParseFailure {
    let message = err.without_snippet().to_string();
    // The library's message sometimes ends with its own " at line X column Y"; the
    // location is printed in front of every finding already.
    let message = strip_location_suffix(&message);
    let loc = err.location().map_or(Loc::START, |l| Loc::from_saphyr(&l));
    if let serde_saphyr::Error::UnknownAnchor { .. } = err.without_snippet() {
        // A missing anchor is a mistake at one alias, not an expansion limit: name it
        // there (the library gives the place, and the name is what is written there).
        let message = match alias_name(text, loc) {
            Some(name) => format!(
                "alias `*{name}` refers to an anchor `&{name}` that is not defined before it"
            ),
            None => "an alias refers to an anchor that is not defined before it".to_owned(),
        };
        return ParseFailure { loc, message };
    }
    let lowered = message.to_lowercase();
    if lowered.contains("alias") || lowered.contains("budget") {
        // Expansion limits are a property of the whole document, not of one node.
        return ParseFailure {
            loc: Loc::START,
            message: format!(
                "the document expands anchors and aliases past the limit of {MAX_ALIAS_REPLAY} nodes; is it a \"billion laughs\" document?"
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(", set DuplicateKeyPolicy").next().unwrap_or(rest);
        return ParseFailure {
            loc,
            message: format!("duplicate key `{key}`: each key may appear once in a mapping"),
        };
    }
    ParseFailure { loc, message: format!("invalid YAML: {message}") }
}

fn strip_location_suffix(message: &str) -> String {
    let trimmed = message.trim();
    if let Some(idx) = trimmed.rfind(" at line ") {
        let tail = &trimmed[idx + " at line ".len()..];
        if tail
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == ',' || c.is_ascii_alphabetic())
            && tail.contains("column")
        {
            return trimmed[..idx].to_owned();
        }
    }
    trimmed.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_locations_of_nested_values() {
        let node = parse("a:\n  b: [1, two]\n").unwrap().unwrap();
        let NodeKind::Map(entries) = &node.kind else { panic!("not a map") };
        let (key, value) = &entries[0];
        assert_eq!(key.key_text().as_deref(), Some("a"));
        let NodeKind::Map(inner) = &value.kind else { panic!("not a map") };
        let NodeKind::Seq(items) = &inner[0].1.kind else { panic!("not a seq") };
        assert_eq!(items[1].kind, NodeKind::Str("two".into()));
        assert_eq!(items[1].loc, Loc { line: 2, col: 10 });
    }

    #[test]
    fn an_alias_to_an_undefined_anchor_is_reported_at_the_alias() {
        let failure =
            parse("services:\n  qa:\n    url: http://x\n    features: *nosuch\n").unwrap_err();
        assert_eq!(failure.loc, Loc { line: 4, col: 15 }, "{}", failure.message);
        assert_eq!(
            failure.message,
            "alias `*nosuch` refers to an anchor `&nosuch` that is not defined before it"
        );
        let failure = parse("a: [1, *x]\nb: &x 2\n").unwrap_err();
        assert_eq!(failure.loc, Loc { line: 1, col: 8 }, "{}", failure.message);
        assert!(failure.message.contains("`&x`"), "{}", failure.message);
    }

    #[test]
    fn comment_only_documents_are_empty() {
        assert!(parse("# nothing here\n\n  # still nothing\n").unwrap().is_none());
        assert!(parse("").unwrap().is_none());
        assert!(parse("~\n").unwrap().is_none());
    }
}
