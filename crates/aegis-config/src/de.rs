//! A serde `Deserializer` over the located [`Node`] tree that never stops at the first
//! problem.
//!
//! The raw structs in [`crate::raw`] derive `Deserialize` with `deny_unknown_fields`.
//! Deserializing them straight from YAML would end at the first unknown key or wrong
//! type; this deserializer instead records each problem as a located [`Finding`] in a
//! shared sink and hands serde a neutral value of the expected type so the walk goes on.
//! Any finding in the sink makes the result unusable, so the neutral values never
//! escape.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};

use crate::diagnostic::{Check, Finding};
use crate::node::{Loc, Node, NodeKind};
use crate::suggest::did_you_mean;

/// A value together with where it was written and whether `${VAR}` produced it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) loc: Loc,
    pub(crate) interpolated: bool,
}

const SPANNED: &str = "$aegis::Spanned";
const SPANNED_FIELDS: &[&str] = &["$line", "$col", "$interpolated", "$value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a located value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let mut loc = Loc::START;
                let mut interpolated = false;
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "$line" => loc.line = map.next_value()?,
                        "$col" => loc.col = map.next_value()?,
                        "$interpolated" => interpolated = map.next_value()?,
                        _ => value = Some(map.next_value()?),
                    }
                }
                let value = value.ok_or_else(|| de::Error::missing_field("$value"))?;
                Ok(Spanned { value, loc, interpolated })
            }
        }

        deserializer.deserialize_struct(
            SPANNED,
            SPANNED_FIELDS,
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}

/// The error serde sees. It only surfaces if a raw struct itself rejects input the
/// deserializer let through, which [`from_node`] turns into a finding too.
#[derive(Debug)]
pub(crate) struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
}

/// Where findings collect while a tree is deserialized.
#[derive(Default)]
pub(crate) struct Sink {
    findings: RefCell<Vec<Finding>>,
}

impl Sink {
    pub(crate) fn push(&self, finding: Finding) {
        self.findings.borrow_mut().push(finding);
    }

    pub(crate) fn into_findings(self) -> Vec<Finding> {
        self.findings.into_inner()
    }
}

/// Deserializes `T` from `node`, recording every schema problem in `sink`.
pub(crate) fn from_node<'n, T: Deserialize<'n> + Default>(node: &'n Node, sink: &Sink) -> T {
    let de = NodeDe { node, path: String::new(), sink };
    match T::deserialize(de) {
        Ok(value) => value,
        Err(err) => {
            sink.push(Finding::error(Check::Schema, node.loc, err.to_string()));
            T::default()
        }
    }
}

/// Joins a key onto a dotted path (`server` + `port` = `server.port`).
pub(crate) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

struct NodeDe<'n, 's> {
    node: &'n Node,
    path: String,
    sink: &'s Sink,
}

impl<'n, 's> NodeDe<'n, 's> {
    fn name(&self) -> &str {
        if self.path.is_empty() { "the document" } else { &self.path }
    }

    fn mismatch(&self, expected: &str) {
        let message =
            format!("`{}`: expected {expected}, found {}", self.name(), self.node.describe());
        self.sink.push(Finding::error(Check::Schema, self.node.loc, message));
    }

    /// The node's text when it is a string that `${VAR}` produced: such strings stand
    /// in for numbers and booleans (`port: ${PORT:-8000}`).
    fn interpolated_text(&self) -> Option<&'n str> {
        match &self.node.kind {
            NodeKind::Str(s) if self.node.interpolated => Some(s.trim()),
            _ => None,
        }
    }

    fn integer(&self) -> Option<i64> {
        match &self.node.kind {
            NodeKind::Int(i) => Some(*i),
            _ => self.interpolated_text().and_then(|s| s.parse().ok()),
        }
    }

    fn float(&self) -> Option<f64> {
        match &self.node.kind {
            NodeKind::Int(i) => Some(*i as f64),
            NodeKind::Float(f) if f.is_finite() => Some(*f),
            _ => self
                .interpolated_text()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|f| f.is_finite()),
        }
    }
}

macro_rules! deserialize_integer {
    ($($method:ident => $visit:ident($ty:ty)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.integer() {
                Some(i) => match <$ty>::try_from(i) {
                    Ok(v) => visitor.$visit(v),
                    Err(_) => {
                        self.mismatch(&format!("an integer {}-{}", <$ty>::MIN, <$ty>::MAX));
                        visitor.$visit(0)
                    }
                },
                None => {
                    self.mismatch("an integer");
                    visitor.$visit(0)
                }
            }
        }
    )*};
}

impl<'de, 'n: 'de, 's> de::Deserializer<'de> for NodeDe<'n, 's> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Null => visitor.visit_unit(),
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            NodeKind::Int(i) => visitor.visit_i64(*i),
            NodeKind::Float(f) => visitor.visit_f64(*f),
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            NodeKind::Seq(items) => visitor.visit_seq(Seq::new(&self, items)),
            NodeKind::Map(entries) => visitor.visit_map(Map::new(&self, entries, None)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let parsed = match &self.node.kind {
            NodeKind::Bool(b) => Some(*b),
            _ => self.interpolated_text().and_then(|s| match s {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            }),
        };
        match parsed {
            Some(b) => visitor.visit_bool(b),
            None => {
                self.mismatch("true or false");
                visitor.visit_bool(false)
            }
        }
    }

    deserialize_integer! {
        deserialize_i8 => visit_i8(i8),
        deserialize_i16 => visit_i16(i16),
        deserialize_i32 => visit_i32(i32),
        deserialize_i64 => visit_i64(i64),
        deserialize_u8 => visit_u8(u8),
        deserialize_u16 => visit_u16(u16),
        deserialize_u32 => visit_u32(u32),
        deserialize_u64 => visit_u64(u64),
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.float() {
            Some(f) => visitor.visit_f64(f),
            None => {
                self.mismatch("a number");
                visitor.visit_f64(0.0)
            }
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            // Plain scalars such as `version: 1.0` or `name: 2024` are meant as text.
            NodeKind::Bool(_) | NodeKind::Int(_) | NodeKind::Float(_) => {
                visitor.visit_string(self.node.key_text().unwrap_or_default())
            }
            NodeKind::Null | NodeKind::Seq(_) | NodeKind::Map(_) => {
                self.mismatch("a string");
                visitor.visit_str("")
            }
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(items) => visitor.visit_seq(Seq::new(&self, items)),
            _ => {
                self.mismatch("a list");
                visitor.visit_seq(Seq::new(&self, &[]))
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor.visit_map(Map::new(&self, entries, None)),
            _ => {
                self.mismatch("a mapping");
                visitor.visit_map(Map::new(&self, &[], None))
            }
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED {
            return visitor.visit_map(SpannedAccess { de: Some(self), step: 0 });
        }
        match &self.node.kind {
            NodeKind::Map(entries) => visitor.visit_map(Map::new(&self, entries, Some(fields))),
            _ => {
                self.mismatch("a mapping");
                visitor.visit_map(Map::new(&self, &[], None))
            }
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Enums in the raw model are plain strings naming a unit variant.
        let text = match &self.node.kind {
            NodeKind::Str(s) => s.as_str(),
            _ => "",
        };
        if variants.contains(&text) {
            return visitor.visit_enum(text.into_deserializer());
        }
        let expected = variants.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
        let mut message = format!(
            "`{}`: expected one of {expected}, found {}",
            self.name(),
            self.node.describe()
        );
        if let Some(hint) = did_you_mean(text, variants.iter().copied()) {
            message.push_str(&format!("; did you mean `{hint}`?"));
        }
        self.sink.push(Finding::error(Check::Schema, self.node.loc, message));
        match variants.first() {
            Some(first) => visitor.visit_enum(first.into_deserializer()),
            None => Err(DeError("empty enum".to_owned())),
        }
    }

    forward_to_deserialize_any! {
        i128 u128 bytes byte_buf unit_struct tuple_struct identifier
    }
}

struct Seq<'n, 's> {
    items: std::iter::Enumerate<std::slice::Iter<'n, Node>>,
    path: String,
    sink: &'s Sink,
}

impl<'n, 's> Seq<'n, 's> {
    fn new(parent: &NodeDe<'n, 's>, items: &'n [Node]) -> Self {
        Seq { items: items.iter().enumerate(), path: parent.path.clone(), sink: parent.sink }
    }
}

impl<'de, 'n: 'de, 's> SeqAccess<'de> for Seq<'n, 's> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some((index, node)) => {
                let de = NodeDe { node, path: format!("{}[{index}]", self.path), sink: self.sink };
                seed.deserialize(de).map(Some)
            }
            None => Ok(None),
        }
    }
}

struct Map<'n, 's> {
    entries: std::slice::Iter<'n, (Node, Node)>,
    pending: Option<(&'n Node, String)>,
    path: String,
    sink: &'s Sink,
    fields: Option<&'static [&'static str]>,
}

impl<'n, 's> Map<'n, 's> {
    fn new(
        parent: &NodeDe<'n, 's>,
        entries: &'n [(Node, Node)],
        fields: Option<&'static [&'static str]>,
    ) -> Self {
        Map {
            entries: entries.iter(),
            pending: None,
            path: parent.path.clone(),
            sink: parent.sink,
            fields,
        }
    }
}

impl<'de, 'n: 'de, 's> MapAccess<'de> for Map<'n, 's> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (key, value) in self.entries.by_ref() {
            let Some(text) = key.key_text() else {
                let at =
                    if self.path.is_empty() { String::new() } else { format!("`{}`: ", self.path) };
                let message = format!(
                    "{at}mapping keys must be plain scalars (text or numbers), found {}",
                    key.describe()
                );
                self.sink.push(Finding::error(Check::Schema, key.loc, message));
                continue;
            };
            let path = join_key(&self.path, &text);
            if let Some(fields) = self.fields
                && !fields.contains(&text.as_str())
            {
                let mut message = format!("unknown key `{path}`");
                match did_you_mean(&text, fields.iter().copied()) {
                    Some(hint) => message.push_str(&format!("; did you mean `{hint}`?")),
                    None => {
                        let known =
                            fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
                        message.push_str(&format!(" (expected one of {known})"));
                    }
                }
                self.sink.push(Finding::error(Check::Schema, key.loc, message));
                continue;
            }
            self.pending = Some((value, path));
            return seed.deserialize(key_deserializer(key, text)).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.pending.take() {
            Some((node, path)) => seed.deserialize(NodeDe { node, path, sink: self.sink }),
            None => Err(DeError("value requested before key".to_owned())),
        }
    }
}

/// Keys reach serde as strings; a `Spanned<String>` key also gets the key's location.
fn key_deserializer(key: &Node, text: String) -> KeyDe {
    KeyDe { text, loc: key.loc }
}

struct KeyDe {
    text: String,
    loc: Loc,
}

impl<'de> de::Deserializer<'de> for KeyDe {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_string(self.text)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED {
            return visitor.visit_map(KeySpannedAccess {
                text: Some(self.text),
                loc: self.loc,
                step: 0,
            });
        }
        visitor.visit_string(self.text)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Feeds the `Spanned` visitor its location fields, then the value itself.
struct SpannedAccess<'n, 's> {
    de: Option<NodeDe<'n, 's>>,
    step: usize,
}

impl<'de, 'n: 'de, 's> MapAccess<'de> for SpannedAccess<'n, 's> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match SPANNED_FIELDS.get(self.step) {
            Some(field) => seed.deserialize(field.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let step = self.step;
        self.step += 1;
        let Some(de) = self.de.as_ref() else {
            return Err(DeError("spanned value read twice".to_owned()));
        };
        match step {
            0 => seed.deserialize(de.node.loc.line.into_deserializer()),
            1 => seed.deserialize(de.node.loc.col.into_deserializer()),
            2 => seed.deserialize(de.node.interpolated.into_deserializer()),
            _ => match self.de.take() {
                Some(de) => seed.deserialize(de),
                None => Err(DeError("spanned value read twice".to_owned())),
            },
        }
    }
}

/// Like [`SpannedAccess`] for a key, whose text is owned rather than borrowed.
struct KeySpannedAccess {
    text: Option<String>,
    loc: Loc,
    step: usize,
}

impl<'de> MapAccess<'de> for KeySpannedAccess {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match SPANNED_FIELDS.get(self.step) {
            Some(field) => seed.deserialize(field.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize(self.loc.line.into_deserializer()),
            1 => seed.deserialize(self.loc.col.into_deserializer()),
            2 => seed.deserialize(false.into_deserializer()),
            _ => seed.deserialize(self.text.take().unwrap_or_default().into_deserializer()),
        }
    }
}
