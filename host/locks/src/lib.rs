//! Locks owned by runs, with fencing tokens. The executor depends only on [`LockService`];
//! the backend is chosen by URL in the host config: the journal's own database (default), a
//! SQLite file of its own, PostgreSQL, Redis or ZooKeeper. A lease alone never decides correctness: participants refuse calls carrying a
//! fencing token older than the newest they have seen for that key.

mod database;
mod postgres;
mod queue;
mod redis;
mod wakeups;
mod zookeeper;

use wakeups::Wakeups;

pub use database::DatabaseLocks;
pub use postgres::PostgresLocks;
pub use queue::{HANDOVERS_MAX, Queued, SAFETY_NET_MS};
pub use redis::RedisLocks;
pub use zookeeper::ZooKeeperLocks;

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

    /// Waits for a key that ended because a release on another host (or process) was heard,
    /// rather than by asking again after a pause: for tests and metrics.
    fn woken(&self) -> u64 {
        0
    }
}

/// Tries `attempt` until it grants a lease, for at most `wait_ms`; an attempt's
/// `Err(holder)` means the lock is taken (by `holder`). Backends without a queue of their own
/// (rows, Redis keys) acquire through this. Between attempts it waits for a release to be
/// heard through `wakeups` (with the safety net's bound), or, without them, pauses with a
/// growing backoff.
async fn poll<F, A>(
    key: &str,
    wait_ms: u32,
    wakeups: Option<&Wakeups>,
    mut attempt: F,
) -> Result<Lease, LockError>
where
    F: FnMut() -> A,
    A: std::future::Future<Output = Result<Result<Lease, String>, LockError>>,
{
    let started = std::time::Instant::now();
    let wait = std::time::Duration::from_millis(u64::from(wait_ms));
    // Heard from before the first attempt, so a release just after it is not missed.
    let mut watch = match wakeups {
        Some(wakeups) if wait_ms > 0 => Some(wakeups.watch(key).await),
        _ => None,
    };
    let mut backoff = std::time::Duration::from_millis(2);
    loop {
        match attempt().await? {
            Ok(lease) => return Ok(lease),
            Err(holder) => {
                let waited = started.elapsed();
                if waited >= wait {
                    return Err(LockError::Timeout {
                        key: key.to_owned(),
                        holder,
                        waited_ms: waited.as_millis() as u64,
                    });
                }
                let left = wait - waited;
                match &mut watch {
                    Some(watch) => watch.pause(left, backoff).await,
                    None => tokio::time::sleep(backoff.min(left)).await,
                }
                backoff = (backoff * 2).min(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Who a lock is "held by" when it is free but a waiter of another host asked for it first:
/// the key goes to that waiter next.
const FIRST_IN_LINE_ELSEWHERE: &str = "another run (a run of another host is first in line for it)";

/// How long a waiter's place in a key's queue at the backend lasts after its last attempt: a
/// few of its asks (which renew it) even if notifications are lost, so that a waiter that is
/// gone (its host stopped) holds nobody up for long.
fn place_ms(wakeups: Option<&Wakeups>) -> u32 {
    let asks_every = wakeups.map_or(std::time::Duration::from_millis(50), |w| w.safety_net());
    (asks_every * 4)
        .max(std::time::Duration::from_millis(PLACE_MIN_MS))
        .as_millis()
        .min(u128::from(u32::MAX)) as u32
}

/// The shortest life of a waiter's place in a key's queue at the backend.
const PLACE_MIN_MS: u64 = 1_000;

/// Where locks come from, as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LockBackend {
    /// Lease rows in the journal's database.
    Journal,
    /// Lease rows in a SQLite file of their own (shared by several hosts on one machine).
    Sqlite(std::path::PathBuf),
    /// A Redis server, `redis://host:port[/db]`.
    Redis(String),
    /// A ZooKeeper ensemble, `zookeeper://host:port[,host:port...]`.
    ZooKeeper(String),
    /// A PostgreSQL database, `postgres://user@host:port/db`.
    Postgres(String),
}

impl std::str::FromStr for LockBackend {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        match url.split_once("://").map(|(scheme, _)| scheme) {
            _ if url == "journal" => Ok(LockBackend::Journal),
            Some("redis") => Ok(LockBackend::Redis(url.to_owned())),
            Some("zookeeper") => Ok(LockBackend::ZooKeeper(url.to_owned())),
            Some("postgres" | "postgresql") => Ok(LockBackend::Postgres(url.to_owned())),
            _ if url.starts_with("sqlite:") && url.len() > "sqlite:".len() => {
                Ok(LockBackend::Sqlite(url["sqlite:".len()..].into()))
            }
            _ => Err(format!(
                "lock backend '{url}' is not supported; use 'journal' (the journal's database), sqlite:<file>, postgres://..., redis://host:port or zookeeper://host:port"
            )),
        }
    }
}

/// Builds the lock service for `backend`, with this host's runs waiting in line for each key
/// ([`Queued`]); `journal` is the journal's database.
pub async fn connect(
    backend: &LockBackend,
    journal: &std::sync::Arc<wasaga_db::Database>,
) -> Result<Box<dyn LockService>, LockError> {
    Ok(Box::new(Queued::new(
        connect_backend(backend, journal).await?,
    )))
}

/// Builds the bare lock service for `backend`, without a line per key.
pub async fn connect_backend(
    backend: &LockBackend,
    journal: &std::sync::Arc<wasaga_db::Database>,
) -> Result<Box<dyn LockService>, LockError> {
    Ok(match backend {
        LockBackend::Journal => Box::new(DatabaseLocks::new(journal.clone())),
        LockBackend::Sqlite(path) => {
            let db = wasaga_db::Database::open(
                &wasaga_db::Location::Sqlite(path.clone()),
                wasaga_db::PoolSizes::default(),
                wasaga_core::crash::CrashSwitch::default(),
            )
            .await
            .map_err(|e| LockError::Backend {
                backend: format!("sqlite:{}", path.display()),
                reason: e.to_string(),
            })?;
            Box::new(DatabaseLocks::new(std::sync::Arc::new(db)))
        }
        LockBackend::Redis(url) => Box::new(RedisLocks::new(url)?),
        LockBackend::ZooKeeper(url) => Box::new(ZooKeeperLocks::new(url)?),
        LockBackend::Postgres(url) => Box::new(PostgresLocks::new(url)?),
    })
}
