//! The PostgreSQL lock backend: lease rows with an expiry and a per-key fencing token that only
//! ever grows, as in the SQLite backend, but timed by the database's clock so that hosts with
//! skewed clocks agree on when a lease has expired. The table is created on first use.
//!
//! The pool connects lazily, so a database that was down serves new runs once it is back.

use crate::service::{Lease, LockError, LockService};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;
use tokio::sync::OnceCell;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS wasaga_locks (
    key           TEXT PRIMARY KEY,
    owner         TEXT,
    token         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS wasaga_lock_waiters (
    key         TEXT NOT NULL,
    owner       TEXT NOT NULL,
    since_us    BIGINT NOT NULL,
    stale_at_ms BIGINT NOT NULL,
    PRIMARY KEY (key, owner)
)";

/// The database's clock, in milliseconds since the Unix epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// The database's clock in microseconds: every grant's token is at least this, as Redis's
/// are, so tokens from every backend are on one scale and a deployment can move
/// between them without the ledger refusing the new backend's tokens as stale.
const NOW_US: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)";

/// Locks in a PostgreSQL database.
pub struct PostgresLocks {
    /// The URL without its password, for messages.
    shown: String,
    pool: PgPool,
    schema: OnceCell<()>,
    /// Releases on other hosts, heard by `LISTEN`.
    wakeups: crate::wakeups::Wakeups,
}

impl std::fmt::Debug for PostgresLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLocks")
            .field("url", &self.shown)
            .finish()
    }
}

impl PostgresLocks {
    /// A backend for `postgres://...`; nothing connects until first use.
    pub fn new(url: &str) -> Result<Self, LockError> {
        let shown = wasaga_db::url::without_password(url);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .map_err(|e| LockError::Backend {
                backend: shown.clone(),
                reason: e.to_string(),
            })?;
        Ok(PostgresLocks {
            shown,
            pool,
            schema: OnceCell::new(),
            wakeups: crate::wakeups::Wakeups::postgres(url),
        })
    }

    /// Waiters ask again at least this often even when they hear no release (by default
    /// [`crate::SAFETY_NET_MS`]).
    pub fn with_safety_net(mut self, every: Duration) -> Self {
        self.wakeups.set_safety_net(every);
        self
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> LockError {
        LockError::Backend {
            backend: self.shown.clone(),
            reason: e.to_string(),
        }
    }

    async fn ready(&self) -> Result<(), LockError> {
        self.schema
            .get_or_try_init(|| async {
                sqlx::raw_sql(SCHEMA).execute(&self.pool).await.map(|_| ())
            })
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// One attempt at `key`, honouring the queue of waiters of other hosts as
    /// `DatabaseLocks::try_acquire` does.
    async fn try_acquire(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u32,
        waiting: Option<u32>,
    ) -> Result<Result<Lease, String>, LockError> {
        self.ready().await?;
        let granted: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH granted AS (
                 INSERT INTO wasaga_locks AS l (key, owner, token, expires_at_ms) VALUES ($1, $2, {NOW_US}, {NOW_MS} + $3)
                 ON CONFLICT (key) DO UPDATE SET owner = $2, token = GREATEST(l.token + 1, {NOW_US}), expires_at_ms = {NOW_MS} + $3
                 WHERE (l.owner IS NULL OR l.expires_at_ms < {NOW_MS} OR l.owner = $2)
                   AND (l.owner = $2 OR NOT EXISTS (
                       SELECT 1 FROM wasaga_lock_waiters w
                       WHERE w.key = $1 AND w.owner <> $2 AND w.stale_at_ms >= {NOW_MS}
                         AND w.since_us < COALESCE(
                             (SELECT m.since_us FROM wasaga_lock_waiters m WHERE m.key = $1 AND m.owner = $2),
                             9223372036854775807)))
                 RETURNING token, expires_at_ms),
             gone AS (
                 DELETE FROM wasaga_lock_waiters
                 WHERE key = $1 AND (owner = $2 OR stale_at_ms < {NOW_MS}) AND EXISTS (SELECT 1 FROM granted))
             SELECT token, expires_at_ms FROM granted"
        )))
        .bind(key)
        .bind(owner)
        .bind(i64::from(ttl_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.unavailable(e))?;
        if let Some((token, expires_at_ms)) = granted {
            return Ok(Ok(Lease {
                key: key.to_owned(),
                owner: owner.to_owned(),
                fencing_token: token as u64,
                ttl_ms,
                expires_at_ms: expires_at_ms as u64,
            }));
        }
        if let Some(place_ms) = waiting {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO wasaga_lock_waiters AS w (key, owner, since_us, stale_at_ms)
                 VALUES ($1, $2, {NOW_US}, {NOW_MS} + $3)
                 ON CONFLICT (key, owner) DO UPDATE SET
                     since_us = CASE WHEN w.stale_at_ms < {NOW_MS} THEN EXCLUDED.since_us ELSE w.since_us END,
                     stale_at_ms = EXCLUDED.stale_at_ms"
            )))
            .bind(key)
            .bind(owner)
            .bind(i64::from(place_ms))
            .execute(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        Ok(Err(sqlx::query_scalar::<_, Option<String>>(
            "SELECT owner FROM wasaga_locks WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.unavailable(e))?
        .flatten()
        .unwrap_or_else(|| {
            crate::poll::FIRST_IN_LINE_ELSEWHERE.to_owned()
        })))
    }
}

impl LockService for PostgresLocks {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        let place_ms = crate::poll::place_ms(Some(&self.wakeups));
        Box::pin(async move {
            let waiting = (wait_ms > 0).then_some(place_ms);
            let got = crate::poll::poll(key, wait_ms, Some(&self.wakeups), move || {
                self.try_acquire(key, owner, ttl_ms, waiting)
            })
            .await;
            if waiting.is_some() && matches!(got, Err(LockError::Timeout { .. })) {
                // Out of the queue now, not when its place goes stale.
                let _ =
                    sqlx::query("DELETE FROM wasaga_lock_waiters WHERE key = $1 AND owner = $2")
                        .bind(key)
                        .bind(owner)
                        .execute(&self.pool)
                        .await;
            }
            got
        })
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            self.ready().await?;
            let extended: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "UPDATE wasaga_locks SET expires_at_ms = {NOW_MS} + $4
                 WHERE key = $1 AND owner = $2 AND token = $3 RETURNING expires_at_ms"
            )))
            .bind(&lease.key)
            .bind(&lease.owner)
            .bind(lease.fencing_token as i64)
            .bind(i64::from(lease.ttl_ms))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
            match extended {
                Some(expires_at_ms) => Ok(Lease {
                    expires_at_ms: expires_at_ms as u64,
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
        Box::pin(async move {
            self.ready().await?;
            // The release is announced in its own transaction: waiters on other hosts hear of
            // it once it has committed, and of nothing that did not.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH freed AS (
                     UPDATE wasaga_locks SET owner = NULL, expires_at_ms = 0
                     WHERE key = $1 AND owner = $2 AND token = $3 RETURNING key)
                 SELECT pg_notify('{}', key) FROM freed",
                crate::wakeups::PG_CHANNEL
            )))
            .bind(&lease.key)
            .bind(&lease.owner)
            .bind(lease.fencing_token as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
            Ok(())
        })
    }

    fn hand_over<'a>(
        &'a self,
        lease: &'a Lease,
        owner: &'a str,
        ttl_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Option<Lease>, LockError>> {
        Box::pin(async move {
            self.ready().await?;
            let handed: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE wasaga_locks AS l SET owner = $1, token = GREATEST(l.token + 1, {NOW_US}), expires_at_ms = {NOW_MS} + $2
                 WHERE key = $3 AND owner = $4 AND token = $5
                 RETURNING token, expires_at_ms"
            )))
            .bind(owner)
            .bind(i64::from(ttl_ms))
            .bind(&lease.key)
            .bind(&lease.owner)
            .bind(lease.fencing_token as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
            Ok(handed.map(|(token, expires_at_ms)| Lease {
                key: lease.key.clone(),
                owner: owner.to_owned(),
                fencing_token: token as u64,
                ttl_ms,
                expires_at_ms: expires_at_ms as u64,
            }))
        })
    }

    fn woken(&self) -> u64 {
        self.wakeups.woken()
    }
}
