//! The database lock backend: lease rows with an expiry and a per-key fencing token that only
//! ever grows, in the journal's own database.

use super::{Lease, LockError, LockService};
use crate::db::Database;
use crate::journal::now_ms;
use std::sync::Arc;

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
                        Some(token) => Ok(Lease {
                            key,
                            owner,
                            fencing_token: token as u64,
                            ttl_ms,
                            expires_at_ms,
                        }),
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

    async fn update(&self, lease: Lease, expires_at_ms: u64) -> Result<bool, LockError> {
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let owner = (expires_at_ms > 0).then_some(&lease.owner);
                    let updated = sqlx::query(
                        "UPDATE locks SET owner = ?, expires_at_ms = ? WHERE key = ? AND owner = ? AND token = ?",
                    )
                    .bind(owner)
                    .bind(expires_at_ms as i64)
                    .bind(&lease.key)
                    .bind(&lease.owner)
                    .bind(lease.fencing_token as i64)
                    .execute(conn)
                    .await?
                    .rows_affected();
                    Ok::<_, sqlx::Error>(updated == 1)
                })
            })
            .await
            .map_err(|e| self.backend_error(e))
    }
}

impl LockService for DatabaseLocks {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.db.path().display())
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> crate::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(super::poll(key, wait_ms, move || async move {
            self.try_acquire(key, owner, ttl_ms)
                .await
                .map_err(|e| self.backend_error(e))
        }))
    }

    fn extend<'a>(&'a self, lease: &'a Lease) -> crate::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            let expires_at_ms = now_ms() + u64::from(lease.ttl_ms);
            if self.update(lease.clone(), expires_at_ms).await? {
                Ok(Lease {
                    expires_at_ms,
                    ..lease.clone()
                })
            } else {
                Err(lease.lost())
            }
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> crate::BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move { self.update(lease.clone(), 0).await.map(|_| ()) })
    }
}
