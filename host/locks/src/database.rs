//! The database lock backend: lease rows with an expiry and a per-key fencing token that only
//! ever grows, in the journal's own database (SQLite or PostgreSQL) or a SQLite file of their
//! own. On PostgreSQL, expiry is timed by the database server's clock, so hosts whose clocks
//! disagree still agree on when a lease has expired.

use crate::service::{Lease, LockError, LockService};
use std::sync::Arc;
use wasaga_core::clock::now_ms;
use wasaga_db::args;
use wasaga_db::{Database, DbError, Dialect};

/// Locks as rows of the database's `locks` table.
#[derive(Debug)]
pub struct DatabaseLocks {
    db: Arc<Database>,
    /// On PostgreSQL, releases on other hosts, heard by `LISTEN`; SQLite has no way to tell
    /// another process, so its waiters poll.
    wakeups: Option<crate::wakeups::Wakeups>,
}

impl DatabaseLocks {
    pub fn new(db: Arc<Database>) -> Self {
        let wakeups = match db.location() {
            wasaga_db::Location::Postgres { url, .. } => {
                Some(crate::wakeups::Wakeups::postgres(url))
            }
            wasaga_db::Location::Sqlite(_) => None,
        };
        DatabaseLocks { db, wakeups }
    }

    /// Waiters ask again at least this often even when they hear no release (by default
    /// [`crate::SAFETY_NET_MS`]); without notifications (SQLite) they poll as before.
    pub fn with_safety_net(mut self, every: std::time::Duration) -> Self {
        if let Some(wakeups) = &mut self.wakeups {
            wakeups.set_safety_net(every);
        }
        self
    }

    fn backend_error(&self, e: DbError) -> LockError {
        LockError::Backend {
            backend: self.db.describe(),
            reason: e.to_string(),
        }
    }

    /// One attempt at `key`. A free key goes to `owner` only if no live waiter of another
    /// host asked for it before `owner` did (see `lock_waiters`); a grant takes `owner`'s
    /// place out of the queue, along with places gone stale. Refused and `waiting`, `owner`
    /// takes (or keeps, and refreshes) its place for that many milliseconds.
    async fn try_acquire(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u32,
        waiting: Option<u32>,
    ) -> Result<Result<Lease, String>, DbError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let ttl = i64::from(ttl_ms);
                    let row = match tx.dialect() {
                        Dialect::Sqlite => {
                            let now = now_ms() as i64;
                            // Tokens are at least the clock in microseconds, as Redis's are:
                            // see `postgres::NOW_US`.
                            let now_us = now.saturating_mul(1_000);
                            let row = tx
                                .fetch_optional(
                                    "INSERT INTO locks (key, owner, token, expires_at_ms) VALUES ($1, $2, $5, $3 + $4)
                                     ON CONFLICT (key) DO UPDATE SET owner = $2, token = MAX(locks.token + 1, $5),
                                                                     expires_at_ms = $3 + $4
                                     WHERE (locks.owner IS NULL OR locks.expires_at_ms < $3 OR locks.owner = $2)
                                       AND (locks.owner = $2 OR NOT EXISTS (
                                           SELECT 1 FROM lock_waiters w
                                           WHERE w.key = $1 AND w.owner <> $2 AND w.stale_at_ms >= $3
                                             AND w.since_us < COALESCE(
                                                 (SELECT m.since_us FROM lock_waiters m WHERE m.key = $1 AND m.owner = $2),
                                                 9223372036854775807)))
                                     RETURNING token, expires_at_ms",
                                    args![&key, &owner, now, ttl, now_us],
                                )
                                .await?;
                            if row.is_some() {
                                tx.execute(
                                    "DELETE FROM lock_waiters WHERE key = $1 AND (owner = $2 OR stale_at_ms < $3)",
                                    args![&key, &owner, now],
                                )
                                .await?;
                            } else if let Some(place_ms) = waiting {
                                tx.execute(
                                    "INSERT INTO lock_waiters (key, owner, since_us, stale_at_ms) VALUES ($1, $2, $3, $4 + $5)
                                     ON CONFLICT (key, owner) DO UPDATE SET
                                         since_us = CASE WHEN lock_waiters.stale_at_ms < $4 THEN $3 ELSE lock_waiters.since_us END,
                                         stale_at_ms = $4 + $5",
                                    args![&key, &owner, now_us, now, i64::from(place_ms)],
                                )
                                .await?;
                            }
                            row
                        }
                        Dialect::Postgres => {
                            let row = tx
                                .fetch_optional(
                                    "WITH granted AS (
                                         INSERT INTO locks (key, owner, token, expires_at_ms)
                                         VALUES ($1, $2, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT),
                                                 CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3)
                                         ON CONFLICT (key) DO UPDATE SET owner = $2,
                                             token = GREATEST(locks.token + 1, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)),
                                             expires_at_ms = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3
                                         WHERE (locks.owner IS NULL
                                                OR locks.expires_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
                                                OR locks.owner = $2)
                                           AND (locks.owner = $2 OR NOT EXISTS (
                                               SELECT 1 FROM lock_waiters w
                                               WHERE w.key = $1 AND w.owner <> $2
                                                 AND w.stale_at_ms >= CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
                                                 AND w.since_us < COALESCE(
                                                     (SELECT m.since_us FROM lock_waiters m WHERE m.key = $1 AND m.owner = $2),
                                                     9223372036854775807)))
                                         RETURNING token, expires_at_ms),
                                     gone AS (
                                         DELETE FROM lock_waiters
                                         WHERE key = $1
                                           AND (owner = $2 OR stale_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))
                                           AND EXISTS (SELECT 1 FROM granted))
                                     SELECT token, expires_at_ms FROM granted",
                                    args![&key, &owner, ttl],
                                )
                                .await?;
                            if let (None, Some(place_ms)) = (&row, waiting) {
                                tx.execute(
                                    "INSERT INTO lock_waiters (key, owner, since_us, stale_at_ms)
                                     VALUES ($1, $2, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT),
                                             CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3)
                                     ON CONFLICT (key, owner) DO UPDATE SET
                                         since_us = CASE WHEN lock_waiters.stale_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
                                                         THEN EXCLUDED.since_us ELSE lock_waiters.since_us END,
                                         stale_at_ms = EXCLUDED.stale_at_ms",
                                    args![&key, &owner, i64::from(place_ms)],
                                )
                                .await?;
                            }
                            row
                        }
                    };
                    Ok(match row {
                        Some(row) => Ok(Lease {
                            key,
                            owner,
                            fencing_token: row.int(0)? as u64,
                            ttl_ms,
                            expires_at_ms: row.int(1)? as u64,
                        }),
                        None => Err(tx
                            .fetch_optional("SELECT owner FROM locks WHERE key = $1", args![&key])
                            .await?
                            .map(|r| r.opt_text(0))
                            .transpose()?
                            .flatten()
                            .unwrap_or_else(|| crate::poll::FIRST_IN_LINE_ELSEWHERE.to_owned())),
                    })
                })
            })
            .await
    }

    /// Gives up `owner`'s place in the queue for `key` (its wait ran out).
    async fn leave(&self, key: &str, owner: &str) -> Result<(), DbError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "DELETE FROM lock_waiters WHERE key = $1 AND owner = $2",
                        args![&key, &owner],
                    )
                    .await
                    .map(|_| ())
                })
            })
            .await
    }

    /// Extends (`extend`) or frees (`!extend`) `lease` if it is still the current grant of its
    /// key; returns the new expiry, or `None` if the lease had passed to someone else.
    async fn update(&self, lease: Lease, extend: bool) -> Result<Option<u64>, LockError> {
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let ttl = if extend { i64::from(lease.ttl_ms) } else { 0 };
                    let token = lease.fencing_token as i64;
                    let row = match (tx.dialect(), extend) {
                        // Announced in the release's transaction: waiters on other hosts hear
                        // of it once it has committed.
                        (Dialect::Postgres, false) => {
                            tx.fetch_optional(
                                "WITH freed AS (
                                     UPDATE locks SET owner = NULL, expires_at_ms = 0
                                     WHERE key = $1 AND owner = $2 AND token = $3
                                     RETURNING key, expires_at_ms)
                                 SELECT expires_at_ms, CAST(pg_notify('wasaga_lock_released', key) AS TEXT) FROM freed",
                                args![&lease.key, &lease.owner, token],
                            )
                            .await?
                        }
                        (Dialect::Sqlite, false) => {
                            tx.fetch_optional(
                                "UPDATE locks SET owner = NULL, expires_at_ms = 0
                                 WHERE key = $1 AND owner = $2 AND token = $3
                                 RETURNING expires_at_ms",
                                args![&lease.key, &lease.owner, token],
                            )
                            .await?
                        }
                        (Dialect::Sqlite, true) => {
                            tx.fetch_optional(
                                "UPDATE locks SET expires_at_ms = $1
                                 WHERE key = $2 AND owner = $3 AND token = $4
                                 RETURNING expires_at_ms",
                                args![now_ms() as i64 + ttl, &lease.key, &lease.owner, token],
                            )
                            .await?
                        }
                        (Dialect::Postgres, true) => {
                            tx.fetch_optional(
                                "UPDATE locks SET expires_at_ms =
                                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $1
                                 WHERE key = $2 AND owner = $3 AND token = $4
                                 RETURNING expires_at_ms",
                                args![ttl, &lease.key, &lease.owner, token],
                            )
                            .await?
                        }
                    };
                    row.map(|r| r.int(0).map(|ms| ms as u64))
                        .transpose()
                        .map_err(|e: DbError| e)
                })
            })
            .await
            .map_err(|e| self.backend_error(e))
    }
}

impl LockService for DatabaseLocks {
    fn describe(&self) -> String {
        self.db.describe()
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        let place_ms = crate::poll::place_ms(self.wakeups.as_ref());
        Box::pin(async move {
            let waiting = (wait_ms > 0).then_some(place_ms);
            let got = crate::poll::poll(key, wait_ms, self.wakeups.as_ref(), move || async move {
                self.try_acquire(key, owner, ttl_ms, waiting)
                    .await
                    .map_err(|e| self.backend_error(e))
            })
            .await;
            if waiting.is_some() && matches!(got, Err(LockError::Timeout { .. })) {
                // Out of the queue now, not when its place goes stale.
                let _ = self.leave(key, owner).await;
            }
            got
        })
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            match self.update(lease.clone(), true).await? {
                Some(expires_at_ms) => Ok(Lease {
                    expires_at_ms,
                    ..lease.clone()
                }),
                None => Err(lease.lost()),
            }
        })
    }

    fn release<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move { self.update(lease.clone(), false).await.map(|_| ()) })
    }

    fn hand_over<'a>(
        &'a self,
        lease: &'a Lease,
        owner: &'a str,
        ttl_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Option<Lease>, LockError>> {
        Box::pin(async move {
            let (from, to) = (lease.clone(), owner.to_owned());
            self.db
                .write(move |tx| {
                    Box::pin(async move {
                        let ttl = i64::from(ttl_ms);
                        let token = from.fencing_token as i64;
                        let row = match tx.dialect() {
                            Dialect::Sqlite => {
                                let now = now_ms() as i64;
                                tx.fetch_optional(
                                    "UPDATE locks SET owner = $1, token = MAX(token + 1, $2), expires_at_ms = $3 + $4
                                     WHERE key = $5 AND owner = $6 AND token = $7
                                     RETURNING token, expires_at_ms",
                                    args![&to, now.saturating_mul(1_000), now, ttl, &from.key, &from.owner, token],
                                )
                                .await?
                            }
                            Dialect::Postgres => {
                                tx.fetch_optional(
                                    "UPDATE locks SET owner = $1,
                                         token = GREATEST(token + 1, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)),
                                         expires_at_ms = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $2
                                     WHERE key = $3 AND owner = $4 AND token = $5
                                     RETURNING token, expires_at_ms",
                                    args![&to, ttl, &from.key, &from.owner, token],
                                )
                                .await?
                            }
                        };
                        row.map(|r| {
                            Ok::<_, DbError>(Lease {
                                key: from.key.clone(),
                                owner: to.clone(),
                                fencing_token: r.int(0)? as u64,
                                ttl_ms,
                                expires_at_ms: r.int(1)? as u64,
                            })
                        })
                        .transpose()
                    })
                })
                .await
                .map_err(|e| self.backend_error(e))
        })
    }

    fn woken(&self) -> u64 {
        self.wakeups.as_ref().map_or(0, |w| w.woken())
    }
}
