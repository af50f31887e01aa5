//! Moving unfinished runs to a new version of their workflow: only a run nobody executes now
//! (it waits), still at the position whose journal was checked, still on the module it was
//! checked from. The move is an event in the run's journal (`module-upgraded`, naming both
//! modules), so a replay, on any host, executes the module the run was moved to.

use crate::error::JournalError;
use crate::journal::Journal;
use wasaga_core::clock::now_ms;
use wasaga_core::event::Event;

/// How an upgrade of one run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgraded {
    /// The run now executes the new module.
    Moved,
    /// The run was not moved: it executes now on a host, or moved on since it was checked.
    Busy,
}

impl Journal {
    /// Moves `run_id` from module `from` to `to` (deployed `version`), if it is unfinished,
    /// executed by nobody, and still at `next_seq` (the position its journal was checked at).
    pub async fn upgrade_run(
        &self,
        run_id: &str,
        from: &str,
        to: &str,
        version: Option<i64>,
        next_seq: i64,
    ) -> Result<Upgraded, JournalError> {
        let event = Event::ModuleUpgraded {
            from: from.to_owned(),
            to: to.to_owned(),
            version,
        };
        let body = serde_json::to_string(&event).expect("events always serialize");
        let (run_id, from, to) = (run_id.to_owned(), from.to_owned(), to.to_owned());
        let now = now_ms() as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let moved = tx
                        .execute(
                            "UPDATE runs SET module_hash = $1, next_seq = next_seq + 1, updated_at_ms = $2
                             WHERE run_id = $3 AND next_seq = $4 AND module_hash = $5
                               AND status = 'running' AND owner IS NULL",
                            wasaga_db::args![&to, now, &run_id, next_seq, &from],
                        )
                        .await?;
                    if moved != 1 {
                        return Ok(Upgraded::Busy);
                    }
                    tx.execute(
                        "INSERT INTO events (run_id, seq, at_ms, kind, body) VALUES ($1, $2, $3, $4, $5)",
                        wasaga_db::args![&run_id, next_seq, now, "module-upgraded", &body],
                    )
                    .await?;
                    Ok(Upgraded::Moved)
                })
            })
            .await
    }
}
