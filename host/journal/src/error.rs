//! How a journal operation fails.

use wasaga_db::DbError;

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Open(#[from] wasaga_db::OpenError),
    #[error("journal database error: {0}")]
    Database(#[from] DbError),
    #[error(
        "journal of run {run_id} already has an event at seq {seq}: another process appended to it"
    )]
    VersionConflict { run_id: String, seq: i64 },
    #[error(
        "run {run_id} is now owned by {owner} (this host's lease on it expired): this host stops executing it"
    )]
    NotOwner { run_id: String, owner: String },
    #[error("journal of run {run_id} is corrupt at seq {seq}: {reason}")]
    Corrupt {
        run_id: String,
        seq: i64,
        reason: String,
    },
    /// A run was cancelled before its completion could be journaled: it compensates instead.
    #[error("run {run_id} was cancelled {reason} before it could complete")]
    Cancelled { run_id: String, reason: String },
    #[error("run {0} does not exist; `wasaga runs list` shows the known runs")]
    UnknownRun(String),
    /// A run started with its first write found its id taken.
    #[error("run {0} already exists")]
    RunExists(String),
    #[error("module {0} is not in the module store")]
    UnknownModule(String),
    #[error(
        "workflow '{0}' has never been deployed; deploy it with `wasaga deploy <file.wasm> --name {0}`"
    )]
    UnknownWorkflow(String),
    #[error(
        "workflow '{workflow}' has no version {version}; `wasaga versions {workflow}` lists them"
    )]
    UnknownVersion { workflow: String, version: i64 },
    #[error(
        "workflow '{workflow}' is at version {version}, its first: there is nothing to roll back to"
    )]
    NothingToRollBack { workflow: String, version: i64 },
}
