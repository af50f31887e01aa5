//! How long the journal keeps what. A finished run (completed or compensated) is pruned once
//! its retention period has passed since it ended: its events and signals go, and its row is
//! emptied and marked pruned, so that its id stays taken as long as the ledger keeps the
//! operation records its steps made (a new run under that id would be answered from them).
//! The row goes once those records are pruned too. A module version is kept as long as a run
//! executes it or it is a workflow's active version or the one before it; one that only pruned
//! runs name keeps its row, without its bytes. Unfinished and stuck runs are never pruned,
//! nor a run whose parent has not ended (the parent reads the child's outcome when it resumes).

use crate::error::JournalError;
use crate::journal::Journal;

/// Runs one pruning statement deletes at most: a pass over a large backlog is many short
/// transactions, never one that holds the writer for long.
pub const PRUNED_PER_BATCH_MAX: u32 = 500;

/// The condition on `runs r` that a run may be pruned before `$1` (ms).
macro_rules! prunable {
    () => {
        "r.status IN ('completed', 'compensated') AND r.pruned_at_ms IS NULL AND r.updated_at_ms < $1
         AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = r.parent_run_id
                         AND p.status IN ('running', 'compensating', 'stuck'))"
    };
}

/// The runs listed by `$listed` (over `$2`) that may be pruned before `$1`.
macro_rules! chosen {
    ($listed:literal) => {
        concat!(
            "SELECT r.run_id FROM runs r WHERE r.run_id IN (",
            $listed,
            ") AND ",
            prunable!()
        )
    };
}

/// Module versions no run that is not pruned executes, and that no workflow has as its
/// active version or the one before it.
macro_rules! unneeded_modules {
    () => {
        "SELECT m.hash FROM modules m
         WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.module_hash = m.hash AND r.pruned_at_ms IS NULL)
           AND NOT EXISTS (SELECT 1 FROM deployments d JOIN workflows w ON w.name = d.workflow
                           WHERE d.hash = m.hash AND d.version >= w.active_version - 1
                             AND d.version <= w.active_version)"
    };
}

/// Prunes the runs `$listed` names, in one dialect's SQL.
macro_rules! prune_listed {
    ($tx:expr, $chosen:expr, $marked:expr, $listed:literal) => {{
        $tx.execute(
            concat!(
                "DELETE FROM events WHERE run_id IN (",
                chosen!($listed),
                ")"
            ),
            $chosen,
        )
        .await?;
        $tx.execute(
            concat!(
                "DELETE FROM signals WHERE run_id IN (",
                chosen!($listed),
                ")"
            ),
            $chosen,
        )
        .await?;
        $tx.execute(
            concat!(
                "UPDATE runs SET input = '', output = NULL, error = NULL, pruned_at_ms = $3
                 WHERE run_id IN (",
                chosen!($listed),
                ")"
            ),
            $marked,
        )
        .await?
    }};
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

    /// Prunes the runs of `run_ids` that may still be pruned before `cutoff_ms` (checked again
    /// here, in the pruning transaction): their events and signals are deleted and their rows
    /// emptied and marked pruned. Returns how many were pruned.
    pub async fn prune_runs(
        &self,
        run_ids: &[String],
        cutoff_ms: u64,
    ) -> Result<u64, JournalError> {
        let mut pruned = 0;
        let now = wasaga_core::clock::now_ms() as i64;
        for batch in run_ids.chunks(PRUNED_PER_BATCH_MAX as usize) {
            let ids = serde_json::to_string(batch).expect("strings always serialize");
            pruned += self
                .db
                .write(move |tx| {
                    Box::pin(async move {
                        let chosen = wasaga_db::args![cutoff_ms as i64, &ids];
                        let marked = wasaga_db::args![cutoff_ms as i64, &ids, now];
                        let runs = match tx.dialect() {
                            wasaga_db::Dialect::Sqlite => {
                                prune_listed!(tx, chosen, marked, "SELECT value FROM json_each($2)")
                            }
                            wasaga_db::Dialect::Postgres => prune_listed!(
                                tx,
                                chosen,
                                marked,
                                "SELECT json_array_elements_text(CAST($2 AS json))"
                            ),
                        };
                        Ok::<_, JournalError>(runs)
                    })
                })
                .await?;
        }
        Ok(pruned)
    }

    /// When the oldest run that may still make or undo ledger operations began: the oldest
    /// unfinished or stuck run's creation (`None` if there is none). No operation made before
    /// it belongs to such a run.
    pub async fn oldest_open_run_ms(&self) -> Result<Option<u64>, JournalError> {
        self.db
            .read(|tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional(
                            "SELECT MIN(created_at_ms) FROM runs
                             WHERE status IN ('running', 'compensating', 'stuck')",
                            &[],
                        )
                        .await?;
                    Ok(row
                        .map(|r| r.opt_int(0))
                        .transpose()?
                        .flatten()
                        .map(|ms| ms.max(0) as u64))
                })
            })
            .await
    }

    /// Prunes the module versions no run needs: their deployments go, and the module itself,
    /// or only its bytes while pruned runs still name it. Returns how many.
    pub async fn prune_modules(&self) -> Result<u64, JournalError> {
        self.db
            .write(|tx| {
                Box::pin(async move {
                    tx.execute(
                        concat!("DELETE FROM deployments WHERE hash IN (", unneeded_modules!(), ")"),
                        &[],
                    )
                    .await?;
                    let emptied = tx
                        .execute(
                            concat!(
                                "UPDATE modules SET bytes = $1, size_bytes = 0
                                 WHERE size_bytes > 0 AND hash IN (",
                                unneeded_modules!(),
                                ") AND EXISTS (SELECT 1 FROM runs r WHERE r.module_hash = modules.hash)"
                            ),
                            wasaga_db::args![&[] as &[u8]],
                        )
                        .await?;
                    let deleted = tx
                        .execute(
                            concat!(
                                "DELETE FROM modules WHERE hash IN (",
                                unneeded_modules!(),
                                ") AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.module_hash = modules.hash)"
                            ),
                            &[],
                        )
                        .await?;
                    Ok::<_, JournalError>(emptied + deleted)
                })
            })
            .await
    }
}
