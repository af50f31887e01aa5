//! Run ownership: which host holds each unfinished run, by a lease it renews, and how another
//! host claims a run whose lease expired.

use crate::error::JournalError;
use crate::journal::Journal;
use wasaga_core::clock::now_ms;
use wasaga_db::{DbError, Dialect};

/// Which unfinished runs a claim may take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Those no live host holds: without an owner, or whose owner's lease has expired.
    Expired,
    /// Every one, leased or not: for a process that knows every previous owner is dead (the
    /// one executor of a SQLite journal, which holds its file lock).
    Every,
}

impl Journal {
    /// Takes over unfinished runs (running or compensating) that no live host holds: those
    /// without an owner or whose lease has expired, and waiting runs that are due (their
    /// timer passed, or a signal, a child's end or a cancellation woke them; timed by this
    /// host's clock, as waits are) (this host's own included: a run whose
    /// lease it let lapse is one it stopped driving), or, with [`Takeover::Every`], every
    /// one of them. Returns their ids, oldest
    /// first, at most `limit`.
    pub async fn claim(&self, limit: u32, takeover: Takeover) -> Result<Vec<String>, JournalError> {
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms as i64);
        let (host_now, all) = (now_ms() as i64, i64::from(takeover == Takeover::Every));
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let sql = match tx.dialect() {
                        Dialect::Sqlite => {
                            "UPDATE runs SET owner = $1, lease_expires_at_ms = $2 + $3,
                                 wake_at_ms = NULL, waiting_for = NULL
                             WHERE run_id IN (
                                 SELECT run_id FROM runs
                                 WHERE status IN ('running', 'compensating') AND wake_at_ms IS NULL
                                   AND (owner IS NULL OR lease_expires_at_ms < $2 OR $4 = 1)
                                 ORDER BY created_at_ms, run_id LIMIT $5)
                                OR run_id IN (
                                 SELECT run_id FROM runs
                                 WHERE wake_at_ms IS NOT NULL AND wake_at_ms <= $2
                                 ORDER BY wake_at_ms, run_id LIMIT $5)
                             RETURNING run_id, created_at_ms"
                        }
                        Dialect::Postgres => {
                            "UPDATE runs SET owner = $1,
                                 lease_expires_at_ms = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3,
                                 wake_at_ms = NULL, waiting_for = NULL
                             WHERE run_id IN (
                                 SELECT run_id FROM runs
                                 WHERE status IN ('running', 'compensating') AND wake_at_ms IS NULL
                                   AND (owner IS NULL
                                        OR lease_expires_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
                                        OR $2 = 1)
                                 ORDER BY created_at_ms, run_id LIMIT $4
                                 FOR UPDATE SKIP LOCKED)
                                OR run_id IN (
                                 SELECT run_id FROM runs
                                 WHERE wake_at_ms IS NOT NULL AND wake_at_ms <= $5
                                 ORDER BY wake_at_ms, run_id LIMIT $4
                                 FOR UPDATE SKIP LOCKED)
                             RETURNING run_id, created_at_ms"
                        }
                    };
                    let limit = i64::from(limit);
                    let rows = match tx.dialect() {
                        Dialect::Sqlite => {
                            tx.fetch_all(sql, wasaga_db::args![&*owner, host_now, lease_ms, all, limit])
                                .await?
                        }
                        Dialect::Postgres => {
                            tx.fetch_all(sql, wasaga_db::args![&*owner, all, lease_ms, limit, host_now])
                                .await?
                        }
                    };
                    let mut claimed = rows
                        .iter()
                        .map(|r| Ok((r.int(1)?, r.text(0)?)))
                        .collect::<Result<Vec<_>, DbError>>()?;
                    claimed.sort();
                    Ok::<_, JournalError>(claimed.into_iter().map(|(_, id)| id).collect::<Vec<_>>())
                })
            })
            .await
            .inspect(|claimed| {
                self.leases.claimed.inc_by(claimed.len() as u64);
            })
    }

    /// Takes a stuck run for this host, so that `runs retry` can compensate it again. A stuck
    /// run holds no live lease (nothing executes it), unless another host is retrying it now.
    pub async fn claim_stuck(&self, run_id: &str) -> Result<bool, JournalError> {
        let (run_id, owner, lease_ms) = (
            run_id.to_owned(),
            self.owner.clone(),
            self.run_lease_ms as i64,
        );
        let host_now = now_ms() as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let sql = match tx.dialect() {
                        Dialect::Sqlite => {
                            "UPDATE runs SET owner = $1, lease_expires_at_ms = $2 + $3
                             WHERE run_id = $4 AND status = 'stuck'
                               AND (owner IS NULL OR owner = $1 OR lease_expires_at_ms < $2)"
                        }
                        Dialect::Postgres => {
                            "UPDATE runs SET owner = $1,
                                 lease_expires_at_ms = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3
                             WHERE run_id = $2 AND status = 'stuck'
                               AND (owner IS NULL OR owner = $1
                                    OR lease_expires_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))"
                        }
                    };
                    let changed = match tx.dialect() {
                        Dialect::Sqlite => {
                            tx.execute(sql, wasaga_db::args![&*owner, host_now, lease_ms, &run_id])
                                .await?
                        }
                        Dialect::Postgres => {
                            tx.execute(sql, wasaga_db::args![&*owner, &run_id, lease_ms]).await?
                        }
                    };
                    Ok::<_, JournalError>(changed == 1)
                })
            })
            .await
    }

    /// Extends this host's leases on `run_ids`; returns the ids of those it has lost: runs
    /// another host took over, or that this host gave up. A run with no row yet is not lost:
    /// its first write, which creates it, may still be on its way.
    ///
    /// On PostgreSQL a run whose row is locked right now (a write of it in flight, in a batch
    /// with other runs' writes) is skipped rather than waited for: waiting for many rows in one
    /// statement while a batch holds some of them and waits for others would be a deadlock.
    /// Its lease is extended next time; it lasts three renewal periods.
    pub async fn renew(&self, run_ids: &[String]) -> Result<Vec<String>, JournalError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(run_ids).expect("strings always serialize");
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms as i64);
        let host_now = now_ms() as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let lost = match tx.dialect() {
                        Dialect::Sqlite => {
                            tx.execute(
                                "UPDATE runs SET lease_expires_at_ms = $1 + $2
                                 WHERE owner = $3 AND run_id IN (SELECT value FROM json_each($4))",
                                wasaga_db::args![host_now, lease_ms, &*owner, &ids],
                            )
                            .await?;
                            tx.fetch_all(
                                "SELECT run_id FROM runs
                                 WHERE run_id IN (SELECT value FROM json_each($1))
                                   AND (owner IS NULL OR owner <> $2)",
                                wasaga_db::args![&ids, &*owner],
                            )
                            .await?
                        }
                        Dialect::Postgres => {
                            tx.execute(
                                "UPDATE runs SET lease_expires_at_ms =
                                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $1
                                 WHERE run_id IN (
                                     SELECT run_id FROM runs
                                     WHERE owner = $2
                                       AND run_id IN (SELECT json_array_elements_text(CAST($3 AS json)))
                                     FOR UPDATE SKIP LOCKED)",
                                wasaga_db::args![lease_ms, &*owner, &ids],
                            )
                            .await?;
                            tx.fetch_all(
                                "SELECT run_id FROM runs
                                 WHERE run_id IN (SELECT json_array_elements_text(CAST($1 AS json)))
                                   AND (owner IS NULL OR owner <> $2)",
                                wasaga_db::args![&ids, &*owner],
                            )
                            .await?
                        }
                    };
                    Ok::<_, JournalError>(
                        lost.iter()
                            .map(|r| r.text(0))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                })
            })
            .await
            .inspect(|lost: &Vec<String>| {
                self.leases
                    .renewed
                    .inc_by(run_ids.len().saturating_sub(lost.len()) as u64);
                self.leases.lost.inc_by(lost.len() as u64);
            })
    }

    /// Gives up this host's leases on its unfinished runs, so another host (or this one's next
    /// start) resumes them at once rather than after the lease expires. For a clean shutdown.
    pub async fn release_leases(&self) -> Result<u64, JournalError> {
        let owner = self.owner.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    Ok::<_, JournalError>(
                        tx.execute(
                            "UPDATE runs SET owner = NULL, lease_expires_at_ms = 0
                             WHERE owner = $1 AND status IN ('running', 'compensating')",
                            wasaga_db::args![&*owner],
                        )
                        .await?,
                    )
                })
            })
            .await
    }
}
