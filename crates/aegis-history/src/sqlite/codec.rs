//! Conversions between model values and SQLite column values.

use jiff::Timestamp;
use rusqlite::Row;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{RunId, RunRecord};

/// Columns of `runs` in the order [`run_from_row`] reads them.
pub(crate) const RUN_COLUMNS: &str = "id, workflow, status, trigger, request_id, created_at, \
                                      started_at, completed_at, duration_ms, error";

pub(crate) fn ts_to_sql(at: Timestamp) -> Result<i64> {
    i64::try_from(at.as_nanosecond())
        .map_err(|_| Error::TimestampOutOfRange { value: at.to_string() })
}

pub(crate) fn opt_ts_to_sql(at: Option<Timestamp>) -> Result<Option<i64>> {
    at.map(ts_to_sql).transpose()
}

pub(crate) fn ts_from_sql(nanos: i64) -> Result<Timestamp> {
    Timestamp::from_nanosecond(i128::from(nanos))
        .map_err(|_| Error::InvalidStoredValue { what: "timestamp", value: nanos.to_string() })
}

pub(crate) fn opt_ts_from_sql(nanos: Option<i64>) -> Result<Option<Timestamp>> {
    nanos.map(ts_from_sql).transpose()
}

/// Durations beyond `i64::MAX` ms are not meaningful; they saturate.
pub(crate) fn ms_to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(crate) fn ms_from_sql(ms: i64) -> Result<u64> {
    u64::try_from(ms)
        .map_err(|_| Error::InvalidStoredValue { what: "duration", value: ms.to_string() })
}

pub(crate) fn u32_from_sql(value: i64, what: &'static str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::InvalidStoredValue { what, value: value.to_string() })
}

pub(crate) fn json_to_sql(value: Option<&Value>, what: &'static str) -> Result<Option<String>> {
    value
        .map(|v| serde_json::to_string(v).map_err(|source| Error::Json { what, source }))
        .transpose()
}

pub(crate) fn json_from_sql(text: Option<String>, what: &'static str) -> Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|source| Error::Json { what, source }))
        .transpose()
}

pub(crate) fn query_err(source: rusqlite::Error) -> Error {
    Error::Query { source }
}

/// Reads a run from a row selected with [`RUN_COLUMNS`].
pub(crate) fn run_from_row(row: &Row<'_>) -> Result<RunRecord> {
    let get = |e: rusqlite::Error| Error::Query { source: e };
    let status: String = row.get(2).map_err(get)?;
    let trigger: String = row.get(3).map_err(get)?;
    Ok(RunRecord {
        id: RunId::new(row.get::<_, String>(0).map_err(get)?),
        workflow: row.get(1).map_err(get)?,
        status: status.parse()?,
        trigger: trigger.parse()?,
        request_id: row.get(4).map_err(get)?,
        created_at: ts_from_sql(row.get(5).map_err(get)?)?,
        started_at: opt_ts_from_sql(row.get(6).map_err(get)?)?,
        completed_at: opt_ts_from_sql(row.get(7).map_err(get)?)?,
        duration_ms: row.get::<_, Option<i64>>(8).map_err(get)?.map(ms_from_sql).transpose()?,
        error: row.get(9).map_err(get)?,
    })
}
