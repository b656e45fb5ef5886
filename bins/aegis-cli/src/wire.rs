//! What the CLI reads from a server: the run shapes shared with the API (`aegis-wire`),
//! the answer to starting a run, and how times and durations are shown.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub(crate) use aegis_wire::{Run, RunPage, RunWithSteps};

/// The `202 Accepted` answer of `POST /api/workflows/{key}/run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Accepted {
    pub(crate) run_id: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) links: serde_json::Value,
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` UTC, or the text unchanged if it does not
/// parse.
pub(crate) fn short_time(text: &str) -> String {
    match text.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => text.to_owned(),
    }
}

/// A duration for people: `850 ms`, `12.3 s`, `4m 05s`.
pub(crate) fn short_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(short_duration(0), "0 ms");
        assert_eq!(short_duration(999), "999 ms");
        assert_eq!(short_duration(12_345), "12.3 s");
        assert_eq!(short_duration(245_000), "4m 05s");
        assert_eq!(short_time("2026-11-23T14:33:53.123456Z"), "2026-11-23 14:33:53");
        assert_eq!(short_time("yesterday"), "yesterday");
    }

    #[test]
    fn an_api_run_with_steps_parses() {
        let body = serde_json::json!({
            "id": "r1", "workflow": "w", "status": "failed", "trigger": "api",
            "created_at": "2026-01-01T00:00:00Z", "started_at": null, "completed_at": null,
            "duration_ms": 5, "error": "boom", "request_id": null, "extra": 1,
            "steps": [{"id": "s", "type": "command", "index": 0, "execution": 0,
                "status": "failed", "success": false, "skipped": false, "error": "boom",
                "attempts": [{"attempt": 1, "success": false, "error": "boom", "duration_ms": 5,
                    "started_at": "2026-01-01T00:00:00Z"}]}],
            "gate_decisions": [], "pending_gates": []
        });
        let run: RunWithSteps = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.run.status, "failed");
        assert_eq!(run.steps[0].attempts.len(), 1);
    }
}
