//! Durable waits in the `runs` table: a waiting run gives up its owner and keeps a wake-up
//! time (`wake_at_ms`) and what it waits for (`waiting_for`); signals wait in `signals` until
//! the run consumes them; child runs name their parent; a cancellation is a reason on the row.
//!
//! Every write that could race with a run going to sleep locks the run's row first
//! (PostgreSQL; SQLite has one writer), and going to sleep looks, after locking the row, for
//! what would wake it at once (a signal already there, a child already ended, a cancellation):
//! so a wake-up is never lost between a run's last look and its sleep.

use crate::append::{create_run, refused};
use crate::error::JournalError;
use crate::journal::Journal;
use wasaga_core::clock::now_ms;
use wasaga_core::event::{Event, RunStatus};
use wasaga_db::{Dialect, Tx};

/// What else may end a wait at once, looked at when the run goes to sleep.
#[derive(Debug, Clone)]
pub enum WakeCheck {
    /// A timer only.
    Timer,
    /// The signal `name`, of which the run's journal has consumed `consumed` already.
    Signal { name: String, consumed: u32 },
    /// The child run `run_id`.
    Child { run_id: String },
}

/// The answer to a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signalled {
    /// Kept, and the run woken if it waits for it.
    Accepted,
    /// A signal with this `signal_id` and payload was accepted before: this one changes
    /// nothing.
    Duplicate,
    /// A signal with this `signal_id` was accepted before with another payload: refused, as
    /// a run id used again with another input is.
    Conflict,
    /// The run has ended: nothing will ever consume the signal.
    Finished(RunStatus),
    /// The run holds `signals_per_run_max` signals it has not taken yet.
    TooMany(u32),
}

/// The answer to a cancellation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// Asked for now: the run and these unfinished descendants stop and compensate.
    Requested { children: Vec<String> },
    /// Someone asked before (the first reason stands).
    AlreadyRequested(String),
    /// The run has ended, or is compensating already: there is nothing to cancel.
    Finished(RunStatus),
}

/// Locks `run_id`'s row for the rest of the transaction (PostgreSQL) and returns its status
/// and cancellation, if the run exists.
async fn lock_run(
    tx: &mut dyn Tx,
    run_id: &str,
) -> Result<Option<(RunStatus, Option<String>)>, JournalError> {
    let sql = match tx.dialect() {
        Dialect::Sqlite => "SELECT status, cancel_reason FROM runs WHERE run_id = $1",
        Dialect::Postgres => "SELECT status, cancel_reason FROM runs WHERE run_id = $1 FOR UPDATE",
    };
    let Some(row) = tx.fetch_optional(sql, wasaga_db::args![run_id]).await? else {
        return Ok(None);
    };
    let status = row.text(0)?;
    let status = RunStatus::parse(&status).ok_or_else(|| JournalError::Corrupt {
        run_id: run_id.to_owned(),
        seq: 0,
        reason: format!("unknown status {status}"),
    })?;
    Ok(Some((status, row.opt_text(1)?)))
}

/// The run id of the child a parent's call `call` starts: `<parent>~c<call>`. No client may
/// put `~` in a run id, so no run started from outside can take a child's id.
pub fn child_run_id(parent: &str, call: u32) -> String {
    format!("{parent}~c{call}")
}

impl Journal {
    /// Puts a run this host owns at `next_seq` to sleep: it gives up its lease and is due
    /// again at `wake_at_ms`, or at once if `check` finds its wait already over or the run was
    /// cancelled. Fails with the fence's error if the run is no longer this host's there.
    /// Returns whether it sleeps (false: due at once).
    pub async fn suspend(
        &self,
        run_id: &str,
        next_seq: i64,
        wake_at_ms: u64,
        waiting_for: String,
        check: WakeCheck,
    ) -> Result<bool, JournalError> {
        let (run_id, owner) = (run_id.to_owned(), self.owner.clone());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let ready = match &check {
                        WakeCheck::Timer => false,
                        WakeCheck::Signal { name, consumed } => {
                            let count = tx
                                .fetch_optional(
                                    "SELECT COUNT(*) FROM signals WHERE run_id = $1 AND name = $2",
                                    wasaga_db::args![&run_id, name.as_str()],
                                )
                                .await?
                                .map_or(Ok(0), |r| r.int(0))?;
                            count > i64::from(*consumed)
                        }
                        WakeCheck::Child { run_id: child } => {
                            // Locking the child's row waits for a write that ends it: its
                            // trigger then finds this run waiting, or this check finds it ended.
                            matches!(
                                lock_run(tx, child).await?,
                                Some((RunStatus::Completed | RunStatus::Compensated, _))
                            )
                        }
                    };
                    let wake = if ready { 0 } else { wake_at_ms as i64 };
                    let changed = tx
                        .execute(
                            "UPDATE runs SET owner = NULL, lease_expires_at_ms = 0,
                                 wake_at_ms = CASE WHEN cancel_reason IS NULL THEN $1 ELSE 0 END,
                                 waiting_for = $2
                             WHERE run_id = $3 AND owner = $4 AND next_seq = $5",
                            wasaga_db::args![wake, &waiting_for, &run_id, &*owner, next_seq],
                        )
                        .await?;
                    if changed != 1 {
                        return Err(refused(tx, &run_id, &owner, next_seq).await);
                    }
                    let cancelled = lock_run(tx, &run_id)
                        .await?
                        .is_some_and(|(_, reason)| reason.is_some());
                    Ok(!ready && !cancelled)
                })
            })
            .await
    }

    /// Keeps a signal for `run_id` and wakes the run if it waits for `name`. A `signal_id`
    /// seen before for the run is a duplicate and changes nothing.
    pub async fn signal(
        &self,
        run_id: &str,
        name: &str,
        signal_id: &str,
        payload: &str,
        sent_by: &str,
        per_run_max: u32,
    ) -> Result<Signalled, JournalError> {
        let (run_id, name, signal_id, payload, sent_by) = (
            run_id.to_owned(),
            name.to_owned(),
            signal_id.to_owned(),
            payload.to_owned(),
            sent_by.to_owned(),
        );
        let now = now_ms() as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let Some((status, _)) = lock_run(tx, &run_id).await? else {
                        return Err(JournalError::UnknownRun(run_id));
                    };
                    let seen = tx
                        .fetch_optional(
                            "SELECT name, payload FROM signals WHERE run_id = $1 AND signal_id = $2",
                            wasaga_db::args![&run_id, &signal_id],
                        )
                        .await?;
                    if let Some(row) = seen {
                        let same = row.text(0)? == name && row.text(1)? == payload;
                        return Ok(if same {
                            Signalled::Duplicate
                        } else {
                            Signalled::Conflict
                        });
                    }
                    if status != RunStatus::Running {
                        return Ok(Signalled::Finished(status));
                    }
                    // Signals the run took are journaled by their waits; only the others count
                    // against the bound (a run may wait for thousands of signals in its life).
                    // A signal payload is a JSON string in the event's body, so its own quotes
                    // are escaped there and cannot match the outcome's tag.
                    let kept = tx
                        .fetch_optional(
                            "SELECT (SELECT COUNT(*) FROM signals WHERE run_id = $1)
                                  - (SELECT COUNT(*) FROM events WHERE run_id = $1 AND kind = 'wait-ended'
                                       AND body LIKE '%\"ended\":\"signal\"%')",
                            wasaga_db::args![&run_id],
                        )
                        .await?
                        .map_or(Ok(0), |r| r.int(0))?;
                    if kept >= i64::from(per_run_max) {
                        return Ok(Signalled::TooMany(per_run_max));
                    }
                    tx.execute(
                        "INSERT INTO signals (run_id, name, signal_id, payload, sent_by, at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        wasaga_db::args![&run_id, &name, &signal_id, &payload, &sent_by, now],
                    )
                    .await?;
                    let waiting_for = format!("signal:{name}");
                    tx.execute(
                        "UPDATE runs SET wake_at_ms = 0
                         WHERE run_id = $1 AND waiting_for = $2 AND wake_at_ms IS NOT NULL",
                        wasaga_db::args![&run_id, &waiting_for],
                    )
                    .await?;
                    Ok(Signalled::Accepted)
                })
            })
            .await
    }

    /// The signals named `name` kept for `run_id`, oldest first: `(signal_id, payload)`.
    pub async fn signals(
        &self,
        run_id: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, JournalError> {
        let (run_id, name) = (run_id.to_owned(), name.to_owned());
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch_all(
                            "SELECT signal_id, payload FROM signals
                             WHERE run_id = $1 AND name = $2 ORDER BY seq",
                            wasaga_db::args![&run_id, &name],
                        )
                        .await?;
                    rows.iter()
                        .map(|r| Ok((r.text(0)?, r.text(1)?)))
                        .collect::<Result<Vec<_>, JournalError>>()
                })
            })
            .await
    }

    /// Asks `run_id` and its unfinished descendants to stop: each compensates at its next
    /// journal point (a waiting one is woken for it). `reason` says who asked and why.
    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<Cancelled, JournalError> {
        let (run_id, reason) = (run_id.to_owned(), reason.to_owned());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let Some((status, asked)) = lock_run(tx, &run_id).await? else {
                        return Err(JournalError::UnknownRun(run_id));
                    };
                    if status != RunStatus::Running {
                        return Ok(Cancelled::Finished(status));
                    }
                    if let Some(asked) = asked {
                        return Ok(Cancelled::AlreadyRequested(asked));
                    }
                    let mut children = Vec::new();
                    let mut frontier = vec![run_id.clone()];
                    while let Some(parent) = frontier.pop() {
                        let rows = tx
                            .fetch_all(
                                "SELECT run_id FROM runs WHERE parent_run_id = $1
                                   AND status = 'running' AND cancel_reason IS NULL",
                                wasaga_db::args![&parent],
                            )
                            .await?;
                        for row in rows {
                            let child = row.text(0)?;
                            frontier.push(child.clone());
                            children.push(child);
                        }
                    }
                    for id in std::iter::once(&run_id).chain(children.iter()) {
                        let why = if *id == run_id {
                            reason.clone()
                        } else {
                            format!("its parent {run_id} was cancelled ({reason})")
                        };
                        tx.execute(
                            "UPDATE runs SET cancel_reason = $1,
                                 wake_at_ms = CASE WHEN wake_at_ms IS NULL THEN NULL ELSE 0 END
                             WHERE run_id = $2 AND status = 'running'",
                            wasaga_db::args![&why, id.as_str()],
                        )
                        .await?;
                    }
                    Ok(Cancelled::Requested { children })
                })
            })
            .await
    }

    /// Which of `run_ids` someone asked to cancel, with the reason.
    pub async fn cancellations(
        &self,
        run_ids: &[String],
    ) -> Result<Vec<(String, String)>, JournalError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(run_ids).expect("strings always serialize");
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let sql = match tx.dialect() {
                        Dialect::Sqlite => {
                            "SELECT run_id, cancel_reason FROM runs
                             WHERE run_id IN (SELECT value FROM json_each($1))
                               AND cancel_reason IS NOT NULL"
                        }
                        Dialect::Postgres => {
                            "SELECT run_id, cancel_reason FROM runs
                             WHERE run_id IN (SELECT json_array_elements_text(CAST($1 AS json)))
                               AND cancel_reason IS NOT NULL"
                        }
                    };
                    let rows = tx.fetch_all(sql, wasaga_db::args![&ids]).await?;
                    rows.iter()
                        .map(|r| Ok((r.text(0)?, r.text(1)?)))
                        .collect::<Result<Vec<_>, JournalError>>()
                })
            })
            .await
    }

    /// Creates the child run `run_id` of `parent` (unless it exists), with no owner and due at
    /// once, so whichever host claims runs first drives it. Returns whether it was created.
    pub async fn create_child(
        &self,
        run_id: &str,
        parent: &str,
        started: &Event,
    ) -> Result<bool, JournalError> {
        let Event::Started { workflow, .. } = started else {
            return Err(JournalError::Corrupt {
                run_id: run_id.to_owned(),
                seq: 1,
                reason: "a child must be created from its started event".to_owned(),
            });
        };
        let workflow = workflow.clone();
        let (run_id, parent, started) = (run_id.to_owned(), parent.to_owned(), started.clone());
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms);
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    if !create_run(tx, &run_id, &started, &owner, lease_ms).await? {
                        // Created before (a crash came between the child's creation and the
                        // parent's record of it) if it is this parent's child of this
                        // workflow; any other run with the id is not adopted.
                        let existing = tx
                            .fetch_optional(
                                "SELECT parent_run_id, workflow FROM runs WHERE run_id = $1",
                                wasaga_db::args![&run_id],
                            )
                            .await?;
                        let ours = match existing {
                            Some(row) => {
                                row.opt_text(0)?.as_deref() == Some(parent.as_str())
                                    && row.text(1)? == workflow
                            }
                            None => false,
                        };
                        return if ours {
                            Ok(false)
                        } else {
                            Err(JournalError::RunExists(run_id.clone()))
                        };
                    }
                    // A parent cancelled meanwhile has its new child cancelled with it.
                    tx.execute(
                        "UPDATE runs SET parent_run_id = $1, owner = NULL, lease_expires_at_ms = 0,
                             wake_at_ms = 0, waiting_for = 'start',
                             cancel_reason = (SELECT CASE WHEN p.cancel_reason IS NULL THEN NULL
                                 ELSE 'its parent ' || p.run_id || ' was cancelled (' || p.cancel_reason || ')' END
                                 FROM runs p WHERE p.run_id = $1)
                         WHERE run_id = $2",
                        wasaga_db::args![&parent, &run_id],
                    )
                    .await?;
                    Ok(true)
                })
            })
            .await
    }

    /// How many runs wait, and the earliest time one of them is due.
    pub async fn waiting(&self) -> Result<(u64, Option<u64>), JournalError> {
        self.db
            .read(|tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional(
                            "SELECT COUNT(*), MIN(wake_at_ms) FROM runs WHERE wake_at_ms IS NOT NULL",
                            &[],
                        )
                        .await?;
                    Ok(match row {
                        Some(row) => (
                            row.int(0)? as u64,
                            row.opt_int(1)?.map(|ms| ms.max(0) as u64),
                        ),
                        None => (0, None),
                    })
                })
            })
            .await
    }
}
