//! Logging: `env_logger` with the `AEGIS_LOG` filter, as text or one JSON object per
//! line with the record's key-values (`run_id`, `request_id`, `status`, …) as fields.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

use crate::settings::LogFormat;

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            serde_json::Value::from(n)
        } else if let Some(n) = value.to_i64() {
            serde_json::Value::from(n)
        } else if let Some(f) = value.to_f64() {
            serde_json::Value::from(f)
        } else if let Some(b) = value.to_bool() {
            serde_json::Value::from(b)
        } else {
            serde_json::Value::from(value.to_string())
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}

/// Starts logging to stderr.
pub(crate) fn init(filter: &str, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let mut fields = serde_json::Map::new();
            fields.insert("time".to_owned(), jiff::Timestamp::now().to_string().into());
            fields.insert("level".to_owned(), record.level().as_str().to_lowercase().into());
            fields.insert("target".to_owned(), record.target().into());
            fields.insert("message".to_owned(), record.args().to_string().into());
            // A key-value that cannot be visited is left out rather than losing the line.
            let _ = record.key_values().visit(&mut JsonFields(&mut fields));
            writeln!(out, "{}", serde_json::Value::Object(fields))
        });
    }
    // A second initialisation (tests) keeps the first logger.
    let _ = builder.try_init();
}
