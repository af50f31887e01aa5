//! Locks owned by runs, with fencing tokens. The `LockService` trait is what the executor
//! depends on; the database backend keeps lease rows with an expiry and a per-key token that
//! only ever grows, in the journal's own database.

use crate::db::Database;
use crate::journal::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: String,
    pub fencing_token: u64,
    pub expires_at_ms: u64,
}

/// Why a lock operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock '{key}' is still held by {holder} after waiting {waited_ms} ms")]
    Timeout {
        key: String,
        holder: String,
        waited_ms: u64,
    },
    #[error("lock backend {backend} failed: {reason}")]
    Backend { backend: String, reason: String },
}

/// A lock backend.
pub trait LockService: Send + Sync + std::fmt::Debug {
    /// Takes `key` for `owner` for `ttl_ms`, waiting at most `wait_ms`. Re-acquiring a key the
    /// owner already holds renews it with a new token.
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> crate::BoxFuture<'a, Result<Lease, LockError>>;

    /// Gives `lease` back; a lease that has already passed to someone else is left alone.
    fn release<'a>(&'a self, lease: &'a Lease) -> crate::BoxFuture<'a, Result<(), LockError>>;

    /// Gives back every lease `owner` holds (at the end of a run).
    fn release_all<'a>(&'a self, owner: &'a str) -> crate::BoxFuture<'a, Result<(), LockError>>;
}

/// Locks as rows of the database's `locks` table.
#[derive(Debug)]
pub struct DatabaseLocks {
    db: Arc<Database>,
}

impl DatabaseLocks {
    pub fn new(db: Arc<Database>) -> Self {
        DatabaseLocks { db }
    }

    fn backend_error(&self, e: sqlx::Error) -> LockError {
        LockError::Backend {
            backend: format!("sqlite:{}", self.db.path().display()),
            reason: e.to_string(),
        }
    }

    async fn try_acquire(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u32,
    ) -> Result<Result<Lease, String>, sqlx::Error> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_ms();
                    let expires_at_ms = now + u64::from(ttl_ms);
                    let token: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO locks (key, owner, token, expires_at_ms) VALUES (?1, ?2, 1, ?3)
                         ON CONFLICT (key) DO UPDATE SET owner = ?2, token = token + 1, expires_at_ms = ?3
                         WHERE owner IS NULL OR expires_at_ms < ?4 OR owner = ?2
                         RETURNING token",
                    )
                    .bind(&key)
                    .bind(&owner)
                    .bind(expires_at_ms as i64)
                    .bind(now as i64)
                    .fetch_optional(&mut *conn)
                    .await?;
                    Ok(match token {
                        Some(token) => {
                            Ok(Lease { key, owner, fencing_token: token as u64, expires_at_ms })
                        }
                        None => Err(sqlx::query_scalar("SELECT owner FROM locks WHERE key = ?")
                            .bind(&key)
                            .fetch_optional(&mut *conn)
                            .await?
                            .flatten()
                            .unwrap_or_else(|| "another run".to_owned())),
                    })
                })
            })
            .await
    }

    async fn clear(&self, owner: String, lease: Option<(String, u64)>) -> Result<(), LockError> {
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let query = match &lease {
                        Some((key, token)) => sqlx::query(
                            "UPDATE locks SET owner = NULL, expires_at_ms = 0 WHERE owner = ? AND key = ? AND token = ?",
                        )
                        .bind(&owner)
                        .bind(key)
                        .bind(*token as i64),
                        None => sqlx::query("UPDATE locks SET owner = NULL, expires_at_ms = 0 WHERE owner = ?")
                            .bind(&owner),
                    };
                    query.execute(conn).await?;
                    Ok::<_, sqlx::Error>(())
                })
            })
            .await
            .map_err(|e| self.backend_error(e))
    }
}

impl LockService for DatabaseLocks {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> crate::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut pause_ms = 2;
            loop {
                match self
                    .try_acquire(key, owner, ttl_ms)
                    .await
                    .map_err(|e| self.backend_error(e))?
                {
                    Ok(lease) => return Ok(lease),
                    Err(holder) => {
                        let waited_ms = started.elapsed().as_millis() as u64;
                        if waited_ms >= u64::from(wait_ms) {
                            return Err(LockError::Timeout {
                                key: key.to_owned(),
                                holder,
                                waited_ms,
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                        pause_ms = (pause_ms * 2).min(50);
                    }
                }
            }
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> crate::BoxFuture<'a, Result<(), LockError>> {
        let target = Some((lease.key.clone(), lease.fencing_token));
        Box::pin(self.clear(lease.owner.clone(), target))
    }

    fn release_all<'a>(&'a self, owner: &'a str) -> crate::BoxFuture<'a, Result<(), LockError>> {
        Box::pin(self.clear(owner.to_owned(), None))
    }
}
