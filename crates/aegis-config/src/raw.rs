//! The raw model: serde structs that mirror `.aegis.yaml` key for key.
//!
//! Every field is optional here and every value keeps its location; required keys,
//! ranges and cross-references are checked when [`crate::validate`] turns these into
//! the validated [`crate::Config`].

use indexmap::IndexMap;
use serde::Deserialize;

use crate::de::Spanned;
use crate::node::Loc;

pub(crate) type S<T> = Option<Spanned<T>>;

/// A value where a number belongs, kept as written so validation can say what was
/// expected and what was found in one message (`expected an integer 1-65535, found
/// "eighty"`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
    /// Anything else, described for the message.
    Other(String),
}

impl Number {
    pub(crate) fn describe(&self) -> String {
        match self {
            Number::Int(i) => i.to_string(),
            Number::Float(f) => format!("{f:?}"),
            Number::Other(description) => description.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> serde::de::Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
        Ok(Number::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
        Ok(i64::try_from(v).map_or(Number::Float(v as f64), Number::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
        Ok(Number::Float(v))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Number, E> {
        Ok(Number::Other(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Number, E> {
        // Numbers written as text, as `${VAR}` produces them, count as numbers.
        let trimmed = v.trim();
        Ok(match (trimmed.parse::<i64>(), trimmed.parse::<f64>()) {
            (Ok(i), _) => Number::Int(i),
            (_, Ok(f)) if f.is_finite() => Number::Float(f),
            _ => Number::Other(format!("{v:?}")),
        })
    }

    fn visit_unit<E>(self) -> Result<Number, E> {
        Ok(Number::Other("null".to_owned()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Number::Other("a list".to_owned()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(Number::Other("a mapping".to_owned()))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) aegis: S<RawAegis>,
    pub(crate) llm: S<RawLlm>,
    pub(crate) server: S<RawServer>,
    pub(crate) data_dir: S<String>,
    pub(crate) history_db_path: S<String>,
    pub(crate) history_max_records: S<Number>,
    pub(crate) event_log_size: S<Number>,
    pub(crate) auth: S<RawAuth>,
    pub(crate) services: S<IndexMap<Spanned<String>, Spanned<RawService>>>,
    pub(crate) workflows: S<IndexMap<Spanned<String>, Spanned<RawWorkflow>>>,
    pub(crate) webhooks: S<Vec<Spanned<RawWebhook>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAegis {
    pub(crate) name: S<String>,
    pub(crate) version: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLlm {
    pub(crate) ollama_base_url: S<String>,
    pub(crate) default_model: S<String>,
    pub(crate) timeout: S<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) host: S<String>,
    pub(crate) port: S<Number>,
    pub(crate) allow_external_bind: S<bool>,
    pub(crate) base_path: S<String>,
    pub(crate) cors_origins: S<Vec<Spanned<String>>>,
    pub(crate) trusted_proxies: S<Vec<Spanned<String>>>,
    pub(crate) max_concurrent_runs: S<Number>,
    pub(crate) max_queued_runs: S<Number>,
    pub(crate) max_body_bytes: S<Number>,
    pub(crate) shutdown_grace: S<Number>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub(crate) api_key: S<String>,
    pub(crate) keys: S<Vec<Spanned<RawKey>>>,
    pub(crate) protect_reads: S<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub(crate) id: S<String>,
    pub(crate) key: S<String>,
    pub(crate) role: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) name: S<String>,
    pub(crate) description: S<String>,
    pub(crate) url: S<String>,
    pub(crate) health_endpoint: S<String>,
    pub(crate) api_key_env: S<String>,
    pub(crate) features: S<Vec<Spanned<String>>>,
    pub(crate) repo_url: S<String>,
    pub(crate) docs_url: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkflow {
    pub(crate) name: S<String>,
    pub(crate) description: S<String>,
    pub(crate) concurrency: S<Number>,
    pub(crate) steps: S<Vec<Spanned<RawStep>>>,
}

/// One step, with the fields of every built-in type; validation rejects a field used
/// on a type it does not belong to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub(crate) id: S<String>,
    #[serde(rename = "type")]
    pub(crate) step_type: S<String>,
    pub(crate) name: S<String>,
    pub(crate) service: S<String>,
    pub(crate) condition: S<String>,
    pub(crate) parallel: S<bool>,
    pub(crate) retries: S<Number>,
    pub(crate) retry_delay: S<Number>,
    pub(crate) timeout: S<Number>,
    // http
    pub(crate) method: S<String>,
    pub(crate) path: S<String>,
    pub(crate) body: S<TrackedJson>,
    pub(crate) headers: S<IndexMap<Spanned<String>, Spanned<String>>>,
    pub(crate) expect_status: S<serde_json::Value>,
    pub(crate) failures_from: S<String>,
    // command
    pub(crate) argv: S<Vec<Spanned<String>>>,
    pub(crate) cwd: S<String>,
    pub(crate) env: S<IndexMap<Spanned<String>, Spanned<String>>>,
    pub(crate) junit: S<String>,
    // gate
    pub(crate) message: S<String>,
    pub(crate) artifact: S<String>,
    pub(crate) on_timeout: S<String>,
    pub(crate) retry_from: S<String>,
    // custom step types registered by embedders
    pub(crate) with: S<TrackedJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) url: S<String>,
    pub(crate) events: S<Vec<Spanned<String>>>,
    pub(crate) secret: S<String>,
    pub(crate) max_attempts: S<Number>,
    pub(crate) retry_delay: S<Number>,
}

/// Field names of the type-specific step keys, with the step types they belong to.
pub(crate) const TYPE_FIELDS: &[(&str, &[&str])] = &[
    ("method", &["http"]),
    ("path", &["http"]),
    ("body", &["http"]),
    ("headers", &["http"]),
    ("expect_status", &["http"]),
    ("failures_from", &["http"]),
    ("argv", &["command"]),
    ("cwd", &["command"]),
    ("env", &["command"]),
    ("junit", &["command"]),
    ("message", &["gate"]),
    ("artifact", &["gate"]),
    ("on_timeout", &["gate"]),
    ("retry_from", &["gate"]),
];

impl RawStep {
    /// The type-specific fields this step sets, with their locations.
    pub(crate) fn type_fields_set(&self) -> Vec<(&'static str, Loc)> {
        let locs: [(&str, Option<Loc>); 14] = [
            ("method", self.method.as_ref().map(|s| s.loc)),
            ("path", self.path.as_ref().map(|s| s.loc)),
            ("body", self.body.as_ref().map(|s| s.loc)),
            ("headers", self.headers.as_ref().map(|s| s.loc)),
            ("expect_status", self.expect_status.as_ref().map(|s| s.loc)),
            ("failures_from", self.failures_from.as_ref().map(|s| s.loc)),
            ("argv", self.argv.as_ref().map(|s| s.loc)),
            ("cwd", self.cwd.as_ref().map(|s| s.loc)),
            ("env", self.env.as_ref().map(|s| s.loc)),
            ("junit", self.junit.as_ref().map(|s| s.loc)),
            ("message", self.message.as_ref().map(|s| s.loc)),
            ("artifact", self.artifact.as_ref().map(|s| s.loc)),
            ("on_timeout", self.on_timeout.as_ref().map(|s| s.loc)),
            ("retry_from", self.retry_from.as_ref().map(|s| s.loc)),
        ];
        locs.into_iter().filter_map(|(name, loc)| loc.map(|l| (name, l))).collect()
    }
}

/// A JSON value from the file (an `http` body, a custom step's `with:`) that
/// remembers which of its strings `${VAR}` produced, so it can be shown with each of
/// them as `***` while the real value is used.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TrackedJson {
    /// The value as the step uses it.
    pub(crate) value: serde_json::Value,
    /// The value as it is shown: strings from `${VAR}` replaced.
    pub(crate) shown: serde_json::Value,
}

/// One level of a [`TrackedJson`], before its strings are known to be secret or not.
enum TrackedKind {
    Scalar(serde_json::Value),
    Seq(Vec<TrackedJson>),
    Map(Vec<(String, TrackedJson)>),
}

impl<'de> Deserialize<'de> for TrackedJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The tree is at most 64 levels deep (the parser's budget), so this recursion
        // over it is bounded.
        let spanned = Spanned::<TrackedKind>::deserialize(deserializer)?;
        Ok(match spanned.value {
            TrackedKind::Scalar(value @ serde_json::Value::String(_)) if spanned.interpolated => {
                TrackedJson {
                    value,
                    shown: serde_json::Value::String(crate::Secret::REDACTED.to_owned()),
                }
            }
            TrackedKind::Scalar(value) => TrackedJson { shown: value.clone(), value },
            TrackedKind::Seq(items) => {
                let (value, shown) = items.into_iter().map(|t| (t.value, t.shown)).unzip();
                TrackedJson {
                    value: serde_json::Value::Array(value),
                    shown: serde_json::Value::Array(shown),
                }
            }
            TrackedKind::Map(members) => {
                let mut value = serde_json::Map::new();
                let mut shown = serde_json::Map::new();
                for (key, member) in members {
                    value.insert(key.clone(), member.value);
                    shown.insert(key, member.shown);
                }
                TrackedJson {
                    value: serde_json::Value::Object(value),
                    shown: serde_json::Value::Object(shown),
                }
            }
        })
    }
}

impl<'de> Deserialize<'de> for TrackedKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KindVisitor;

        impl<'de> serde::de::Visitor<'de> for KindVisitor {
            type Value = TrackedKind;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, v: bool) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(v.into()))
            }

            fn visit_i64<E>(self, v: i64) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(v.into()))
            }

            fn visit_u64<E>(self, v: u64) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(v.into()))
            }

            fn visit_f64<E>(self, v: f64) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(
                    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
                ))
            }

            fn visit_str<E>(self, v: &str) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(v.into()))
            }

            fn visit_string<E>(self, v: String) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(v.into()))
            }

            fn visit_unit<E>(self) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(serde_json::Value::Null))
            }

            fn visit_none<E>(self) -> Result<TrackedKind, E> {
                Ok(TrackedKind::Scalar(serde_json::Value::Null))
            }

            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<TrackedKind, D::Error> {
                TrackedKind::deserialize(d)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TrackedKind, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<TrackedJson>()? {
                    items.push(item);
                }
                Ok(TrackedKind::Seq(items))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TrackedKind, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<TrackedJson>()?;
                    members.push((key, value));
                }
                Ok(TrackedKind::Map(members))
            }
        }

        deserializer.deserialize_any(KindVisitor)
    }
}
