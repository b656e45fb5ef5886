//! Conversions between model values and SQLite column values.

use jiff::Timestamp;
use rusqlite::Row;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Attempt, RunId, RunRecord};

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

/// One attempt as a step's `attempts` column stores it (`started_at` in
/// nanoseconds, as every time column).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAttempt {
    attempt: u32,
    success: bool,
    error: Option<String>,
    duration_ms: u64,
    started_at: i64,
}

/// A step's attempts as its row stores them: a JSON array of
/// [`StoredAttempt`] objects, or NULL for none.
pub(crate) fn attempts_to_sql(attempts: &[Attempt]) -> Result<Option<String>> {
    if attempts.is_empty() {
        return Ok(None);
    }
    let stored = attempts
        .iter()
        .map(|a| {
            Ok(StoredAttempt {
                attempt: a.attempt,
                success: a.success,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
                started_at: ts_to_sql(a.started_at)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    serde_json::to_string(&stored)
        .map(Some)
        .map_err(|source| Error::Json { what: "step attempts", source })
}

/// Reads what [`attempts_to_sql`] stored, in attempt order.
pub(crate) fn attempts_from_sql(text: Option<String>) -> Result<Vec<Attempt>> {
    let Some(text) = text else { return Ok(Vec::new()) };
    let stored: Vec<StoredAttempt> = serde_json::from_str(&text)
        .map_err(|source| Error::Json { what: "step attempts", source })?;
    let mut attempts = stored
        .into_iter()
        .map(|a| {
            Ok(Attempt {
                attempt: a.attempt,
                success: a.success,
                error: a.error,
                duration_ms: a.duration_ms,
                started_at: ts_from_sql(a.started_at)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    attempts.sort_by_key(|a| a.attempt);
    Ok(attempts)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_round_trip_through_their_column() {
        let at = Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap();
        let attempts = vec![
            Attempt {
                attempt: 1,
                success: false,
                error: Some("boom \"x\"".into()),
                duration_ms: 5,
                started_at: at,
            },
            Attempt { attempt: 2, success: true, error: None, duration_ms: 7, started_at: at },
        ];
        let text = attempts_to_sql(&attempts).unwrap();
        assert_eq!(attempts_from_sql(text).unwrap(), attempts);
        assert_eq!(attempts_to_sql(&[]).unwrap(), None);
        assert!(attempts_from_sql(None).unwrap().is_empty());
    }

    /// A column that is not what this build writes is an error naming it,
    /// never a panic or an attempt made up.
    #[test]
    fn malformed_attempts_are_refused_with_what_they_are() {
        for bad in [
            "{}",
            "[1]",
            r#"[{"attempt":-1,"success":true,"duration_ms":1,"started_at":1}]"#,
            r#"[{"attempt":1,"success":"yes","duration_ms":1,"started_at":1}]"#,
            "[",
            "null",
        ] {
            let err = attempts_from_sql(Some(bad.to_owned())).unwrap_err().to_string();
            assert!(err.contains("step attempts"), "{bad}: {err}");
        }
    }
}
