//! How long the journal keeps what: a finished run (completed or compensated) with its events
//! and signals until its retention period has passed since it ended, and a module version as
//! long as a run executes it or it is a workflow's active version or the one before it (the
//! version a rollback goes to). Unfinished and stuck runs are never pruned, nor a run whose
//! parent has not ended (the parent reads the child's outcome when it resumes).

use crate::error::JournalError;
use crate::journal::Journal;

/// Runs one pruning statement deletes at most: a pass over a large backlog is many short
/// transactions, never one that holds the writer for long.
pub const PRUNED_PER_BATCH_MAX: u32 = 500;

/// The condition on `runs r` that a run may be pruned before `$1` (ms).
macro_rules! prunable {
    () => {
        "r.status IN ('completed', 'compensated') AND r.updated_at_ms < $1
         AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id
                         AND p.status IN ('running', 'compensating', 'stuck'))"
    };
}

/// Deletes from `$table` what belongs to the runs listed by `$listed` (over `$2`) that may
/// be pruned before `$1`.
macro_rules! delete_chosen {
    ($table:literal, $listed:literal) => {
        concat!(
            "DELETE FROM ",
            $table,
            " WHERE run_id IN (SELECT r.run_id FROM runs r WHERE r.run_id IN (",
            $listed,
            ") AND ",
            prunable!(),
            ")"
        )
    };
}

/// Module versions no run executes and no workflow has as its active version or the one
/// before it.
macro_rules! unneeded_modules {
    () => {
        "SELECT m.hash FROM modules m
         WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.module_hash = m.hash)
           AND NOT EXISTS (SELECT 1 FROM deployments d JOIN workflows w ON w.name = d.workflow
                           WHERE d.hash = m.hash AND d.version >= w.active_version - 1
                             AND d.version <= w.active_version)"
    };
}

impl Journal {
    /// Finished runs that ended before `cutoff_ms` and may be pruned, oldest first, at most
    /// `limit`.
    pub async fn prunable_runs(
        &self,
        cutoff_ms: u64,
        limit: u32,
    ) -> Result<Vec<String>, JournalError> {
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch_all(
                            concat!(
                                "SELECT r.run_id FROM runs r WHERE ",
                                prunable!(),
                                " ORDER BY r.updated_at_ms, r.run_id LIMIT $2"
                            ),
                            wasaga_db::args![cutoff_ms as i64, i64::from(limit)],
                        )
                        .await?;
                    rows.iter()
                        .map(|r| r.text(0).map_err(JournalError::from))
                        .collect()
                })
            })
            .await
    }

    /// Deletes the runs of `run_ids` that may still be pruned before `cutoff_ms` (checked
    /// again here, in the deleting transaction), with their events and signals; returns how
    /// many were deleted.
    pub async fn prune_runs(
        &self,
        run_ids: &[String],
        cutoff_ms: u64,
    ) -> Result<u64, JournalError> {
        let mut deleted = 0;
        for batch in run_ids.chunks(PRUNED_PER_BATCH_MAX as usize) {
            let ids = serde_json::to_string(batch).expect("strings always serialize");
            deleted += self
                .db
                .write(move |tx| {
                    Box::pin(async move {
                        let args = wasaga_db::args![cutoff_ms as i64, &ids];
                        let runs = match tx.dialect() {
                            wasaga_db::Dialect::Sqlite => {
                                tx.execute(
                                    delete_chosen!("events", "SELECT value FROM json_each($2)"),
                                    args,
                                )
                                .await?;
                                tx.execute(
                                    delete_chosen!("signals", "SELECT value FROM json_each($2)"),
                                    args,
                                )
                                .await?;
                                tx.execute(
                                    delete_chosen!("runs", "SELECT value FROM json_each($2)"),
                                    args,
                                )
                                .await?
                            }
                            wasaga_db::Dialect::Postgres => {
                                tx.execute(
                                    delete_chosen!(
                                        "events",
                                        "SELECT json_array_elements_text(CAST($2 AS json))"
                                    ),
                                    args,
                                )
                                .await?;
                                tx.execute(
                                    delete_chosen!(
                                        "signals",
                                        "SELECT json_array_elements_text(CAST($2 AS json))"
                                    ),
                                    args,
                                )
                                .await?;
                                tx.execute(
                                    delete_chosen!(
                                        "runs",
                                        "SELECT json_array_elements_text(CAST($2 AS json))"
                                    ),
                                    args,
                                )
                                .await?
                            }
                        };
                        Ok::<_, JournalError>(runs)
                    })
                })
                .await?;
        }
        Ok(deleted)
    }

    /// Deletes the module versions no run executes and no workflow has as its active version
    /// or the one before it; returns how many.
    pub async fn prune_modules(&self) -> Result<u64, JournalError> {
        self.db
            .write(|tx| {
                Box::pin(async move {
                    tx.execute(
                        concat!(
                            "DELETE FROM deployments WHERE hash IN (",
                            unneeded_modules!(),
                            ")"
                        ),
                        &[],
                    )
                    .await?;
                    let modules = tx
                        .execute(
                            concat!(
                                "DELETE FROM modules WHERE hash IN (",
                                unneeded_modules!(),
                                ")"
                            ),
                            &[],
                        )
                        .await?;
                    Ok::<_, JournalError>(modules)
                })
            })
            .await
    }
}
