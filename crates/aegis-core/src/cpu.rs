//! Whether the machine has CPU to spare, from the kernel's CPU time counters
//! (`/proc/stat` on Linux, or the file `EngineBuilder::cpu_counters` names;
//! without counters it always has).
//!
//! The webhook dispatcher gives way to runs with it: its threads already have
//! the lowest priority, but each delivery it makes also costs the store a
//! commit and the receiver a request, at normal priority. While runs are in
//! flight and the machine is saturated, it claims at most one batch a second.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one reading holds: callers within it share it.
const SAMPLE: Duration = Duration::from_millis(100);

/// The share of the CPU time busy at normal priority from which the machine
/// has none to spare. Not higher: a server saturated by runs that wait on
/// their commits and services still shows about a tenth idle (measured on 2
/// cores with `bench/webhooks.py`: 90 % busy at the median, 83 % at p10),
/// which a delivery's commit and receiver would take from the runs.
const SATURATED: f64 = 0.75;

/// CPU time counters of all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    /// Time at normal priority: user, system, interrupts, stolen.
    busy: u64,
    /// Everything counted, also idle, waiting for I/O and niced user time.
    total: u64,
}

impl Times {
    /// Reads the `cpu` line of `/proc/stat` text: `user nice system idle
    /// iowait irq softirq steal guest guest_nice` (guest time is also counted
    /// in user time, so it is left out). `None` when the text has no such line.
    pub(crate) fn parse(stat: &str) -> Option<Times> {
        let line = stat.lines().find(|line| line.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..] else {
            // Kernels before 2.6.11 had fewer fields; counted as "can't tell".
            return None;
        };
        let busy = user + system + irq + softirq + steal;
        Some(Times { busy, total: busy + nice + idle + iowait })
    }

    /// Whether the span from `earlier` to `self` was busy at normal priority
    /// for at least [`SATURATED`] of the time. A span without ticks is not.
    pub(crate) fn saturated_since(&self, earlier: &Times) -> bool {
        let total = self.total.saturating_sub(earlier.total);
        let busy = self.busy.saturating_sub(earlier.busy);
        total > 0 && busy as f64 >= SATURATED * total as f64
    }
}

/// Where the platform keeps the counters: `/proc/stat` on Linux.
pub(crate) fn default_counters() -> Option<PathBuf> {
    cfg!(target_os = "linux").then(|| PathBuf::from("/proc/stat"))
}

/// The counters in `path` now; `None` when they cannot be read.
fn read(path: &Path) -> Option<Times> {
    Times::parse(&std::fs::read_to_string(path).ok()?)
}

/// Readings of the machine's CPU time, shared by the dispatcher's workers.
#[derive(Debug)]
pub(crate) struct Gauge {
    counters: Option<PathBuf>,
    last: Mutex<Option<Reading>>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    times: Times,
    saturated: bool,
}

impl Gauge {
    /// A gauge of the counters in `counters`; without, never saturated.
    pub(crate) fn new(counters: Option<PathBuf>) -> Gauge {
        Gauge { counters, last: Mutex::new(None) }
    }

    /// Whether the machine was saturated over the last reading's span
    /// (since the one before it), read again once the last is [`SAMPLE`] old.
    pub(crate) fn saturated(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reading) = *last
            && reading.at.elapsed() < SAMPLE
        {
            return reading.saturated;
        }
        let Some(times) = self.counters.as_deref().and_then(read) else { return false };
        let saturated = last.is_some_and(|before| times.saturated_since(&before.times));
        *last = Some(Reading { at: Instant::now(), times, saturated });
        saturated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  1000 100 500 8000 50 10 20 5 0 0\n\
                          cpu0 500 50 250 4000 25 5 10 2 0 0\nintr 1 2 3\n";

    #[test]
    fn the_cpu_line_counts_niced_idle_and_io_wait_time_as_spare() {
        let times = Times::parse(BEFORE).unwrap();
        assert_eq!(times, Times { busy: 1000 + 500 + 10 + 20 + 5, total: 9685 });
    }

    #[test]
    fn saturated_when_three_quarters_of_the_span_were_busy() {
        let before = Times::parse(BEFORE).unwrap();
        // 200 ticks later: 150 busy (user 120, system 30), 50 idle.
        let busy = Times::parse("cpu  1120 100 530 8050 50 10 20 5 0 0\n").unwrap();
        assert!(busy.saturated_since(&before));
        // 149 busy of 200, the rest idle or waiting for I/O.
        let spare = Times::parse("cpu  1119 100 530 8040 60 10 20 5 0 0\n").unwrap();
        assert!(!spare.saturated_since(&before));
        // 100 busy, 100 niced (the dispatcher's own time is spare).
        let niced = Times::parse("cpu  1100 200 500 8000 50 10 20 5 0 0\n").unwrap();
        assert!(!niced.saturated_since(&before));
        // No ticks between two readings: nothing to tell.
        assert!(!before.saturated_since(&before));
    }

    #[test]
    fn text_without_a_full_cpu_line_tells_nothing() {
        for text in
            ["", "intr 1 2\n", "cpu  1 2 3\n", "cpu  1 2 3 x 5 6 7 8\n", "cpu0 1 2 3 4 5 6 7 8\n"]
        {
            assert_eq!(Times::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_gauge_reads_a_span_of_its_counters() {
        let dir = std::env::temp_dir().join(format!("aegis-cpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stat");
        std::fs::write(&path, BEFORE).unwrap();
        let gauge = Gauge::new(Some(path.clone()));
        // The first reading has no span before it.
        assert!(!gauge.saturated());
        std::fs::write(&path, "cpu  1120 100 530 8050 50 10 20 5 0 0\n").unwrap();
        std::thread::sleep(SAMPLE);
        assert!(gauge.saturated());
        // Counters that cannot be read tell nothing.
        std::fs::write(&path, "garbage").unwrap();
        std::thread::sleep(SAMPLE);
        assert!(!gauge.saturated());
        assert!(!Gauge::new(None).saturated());
        assert!(!Gauge::new(Some(dir.join("missing"))).saturated());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_has_counters() {
        let path = default_counters().unwrap();
        assert!(read(&path).is_some());
        let gauge = Gauge::new(Some(path));
        // The first reading has no span before it.
        assert!(!gauge.saturated());
    }
}
