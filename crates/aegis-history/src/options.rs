//! Plain-value options for the history backends.

use std::time::Duration;

/// How hard SQLite works to make a commit survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit is in the WAL file when the
    /// write returns, so it survives the process being killed (the OS keeps
    /// the written pages). A power loss or kernel crash can lose the last
    /// commits, never corrupt the database. Fast: no fsync per commit.
    #[default]
    ProcessCrash,
    /// `synchronous=FULL`: the WAL is fsynced at every commit, so a commit
    /// also survives a power loss. Costs one fsync per batch of writes.
    PowerLoss,
}

/// Options shared by the backends; each uses the fields that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Keep at most this many finished runs per workflow (the newest); 0
    /// keeps everything. Active runs are never deleted.
    pub max_records: u32,
    /// SQLite: how many read connections the pool keeps.
    pub read_pool_size: u32,
    /// SQLite: how long a connection waits for a lock held by another
    /// process before failing.
    pub busy_timeout: Duration,
    /// SQLite: commit durability.
    pub durability: Durability,
    /// SQLite: the most writes grouped into one transaction.
    pub max_batch: usize,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            max_records: 0,
            read_pool_size: 4,
            busy_timeout: Duration::from_secs(5),
            durability: Durability::default(),
            max_batch: 1024,
        }
    }
}

impl HistoryOptions {
    /// The defaults with a retention limit.
    pub fn with_max_records(max_records: u32) -> Self {
        Self { max_records, ..Self::default() }
    }
}
