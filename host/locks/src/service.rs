//! What the executor sees of locks: a lease, how taking or keeping one fails, and the service
//! every backend provides.

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    /// The run that holds it.
    pub owner: String,
    /// Grows with every grant of this key; participants refuse older ones.
    pub fencing_token: u64,
    /// How long each grant or renewal lasts.
    pub ttl_ms: u32,
    pub expires_at_ms: u64,
}

impl Lease {
    /// The error for this lease having passed to another holder.
    pub fn lost(&self) -> LockError {
        LockError::Lost {
            key: self.key.clone(),
            fencing_token: self.fencing_token,
        }
    }
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
    #[error(
        "lock '{key}' (fencing token {fencing_token}) has expired and passed to another holder"
    )]
    Lost { key: String, fencing_token: u64 },
    #[error(
        "lock backend {backend} is unavailable: {reason}; check that it is running and reachable"
    )]
    Backend { backend: String, reason: String },
}

/// A lock backend.
pub trait LockService: Send + Sync + std::fmt::Debug {
    /// Names the backend and its address, for messages.
    fn describe(&self) -> String;

    /// Takes `key` for `owner` for `ttl_ms`, waiting at most `wait_ms`. Re-acquiring a key the
    /// owner already holds renews it with a new token.
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>>;

    /// Extends `lease` by its ttl from now, if it is still the current grant of its key.
    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>>;

    /// Gives `lease` back; a lease that has already passed to someone else is left alone.
    fn release<'a>(&'a self, lease: &'a Lease)
    -> wasaga_core::BoxFuture<'a, Result<(), LockError>>;

    /// Passes `lease`, if it is still the current grant of its key, straight to `owner` for
    /// `ttl_ms` with a new fencing token: one atomic step, so nobody else can take the key in
    /// between. `None` if it was not handed over (the lease had passed on, or this backend
    /// cannot hand over and has released it instead): the new owner must ask for the lock.
    fn hand_over<'a>(
        &'a self,
        lease: &'a Lease,
        owner: &'a str,
        ttl_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Option<Lease>, LockError>> {
        let _ = (owner, ttl_ms);
        Box::pin(async move { self.release(lease).await.map(|()| None) })
    }

    /// Registers this service's metrics (lock waits) into `registry`; the bare backends have
    /// none, their [`crate::Queued`] line measures the waits.
    fn register_metrics(&self, registry: &mut wasaga_core::metrics::Registry) {
        let _ = registry;
    }

    /// Waits for a key that ended because a release on another host (or process) was heard,
    /// rather than by asking again after a pause: for tests and metrics.
    fn woken(&self) -> u64 {
        0
    }
}
