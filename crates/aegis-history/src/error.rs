//! The error type of the history store.

use std::path::PathBuf;
use std::sync::Arc;

/// Results returned by every history operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while recording or reading history.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The parent directory of the database file could not be created.
    #[error("failed to create directory {path} for the history database")]
    CreateDir {
        /// The directory that could not be created.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The database file exists but could not be read to check what it is.
    #[error("failed to read history database at {path}")]
    ReadFile {
        /// The database file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file at the path is not an SQLite database; it was left untouched.
    #[error("file at {path} is not an SQLite database (the file was left untouched)")]
    NotADatabase {
        /// The offending file.
        path: PathBuf,
    },

    /// SQLite refused to open or read the database (corrupt file, permissions, ...).
    #[error("failed to open history database at {path}")]
    Open {
        /// The database file, or `:memory:`.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer Aegis; it was left untouched.
    #[error(
        "history database at {path} has schema version {found}, newer than the {supported} this \
         build supports (the file was left untouched; upgrade aegis)"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The `user_version` found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },

    /// Applying a schema migration failed; the migration was rolled back.
    #[error("failed to migrate history database at {path} to schema version {version}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version being applied.
        version: i64,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// The connection pool for reads could not be built or handed out a connection.
    #[error("history read pool failed")]
    Pool {
        /// The pool error.
        #[source]
        source: r2d2::Error,
    },

    /// A query failed.
    #[error("history query failed")]
    Query {
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// A write failed; the caller's change was not recorded.
    #[error("history write failed")]
    Write {
        /// The SQLite error, shared by every write of the failed batch.
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// A stored value could not be decoded (the database was edited by hand or is damaged).
    #[error("history database holds an invalid {what}: {value:?}")]
    InvalidStoredValue {
        /// Which kind of value.
        what: &'static str,
        /// The stored text.
        value: String,
    },

    /// A JSON column could not be encoded or decoded.
    #[error("failed to encode or decode JSON for {what}")]
    Json {
        /// Which field.
        what: &'static str,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },

    /// A list cursor was not produced by this store.
    #[error("invalid cursor {cursor:?}")]
    InvalidCursor {
        /// The cursor as given.
        cursor: String,
    },

    /// A timestamp is outside the range the store can keep.
    #[error("timestamp {value} is out of range for the history store")]
    TimestampOutOfRange {
        /// The timestamp, printed.
        value: String,
    },

    /// A run with this id already exists.
    #[error("run {run_id} already exists")]
    DuplicateRun {
        /// The run id.
        run_id: String,
    },

    /// A webhook delivery with this id already exists.
    #[error("webhook delivery {id} already exists")]
    DuplicateDelivery {
        /// The delivery id.
        id: String,
    },

    /// No webhook delivery with this id exists.
    #[error("webhook delivery {id} not found")]
    DeliveryNotFound {
        /// The delivery id.
        id: String,
    },

    /// No run with this id exists.
    #[error("run {run_id} not found")]
    RunNotFound {
        /// The run id.
        run_id: String,
    },

    /// The gate is not waiting for a decision (never waited, or already decided).
    #[error("gate {gate_id} of run {run_id} is not waiting for a decision")]
    GateNotPending {
        /// The run id.
        run_id: String,
        /// The gate id.
        gate_id: String,
    },

    /// A compare-and-set on a run's status lost: the run's committed status
    /// is not one the change is allowed from.
    #[error("run {run_id} is {status}")]
    StatusConflict {
        /// The run id.
        run_id: String,
        /// The run's committed status.
        status: String,
    },

    /// An event's `seq` is not the next one of its run's ledger.
    #[error("event seq {seq} of run {run_id} is not the next in its ledger")]
    SeqConflict {
        /// The run id.
        run_id: String,
        /// The refused seq.
        seq: u64,
    },

    /// A write was abandoned before it was answered (the commit that held
    /// it panicked).
    #[error("history write was abandoned")]
    Closed,

    /// A blocking task of the backend panicked or was cancelled.
    #[error("history background task failed")]
    Task {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}
