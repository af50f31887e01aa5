//! Where locks come from, and the backend a URL names, behind this host's queue.

use crate::database::DatabaseLocks;
use crate::postgres::PostgresLocks;
use crate::queue::Queued;
use crate::redis::RedisLocks;
use crate::service::{LockError, LockService};
use crate::zookeeper::ZooKeeperLocks;

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

impl LockBackend {
    /// The backend's kind, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            LockBackend::Journal => "journal",
            LockBackend::Sqlite(_) => "sqlite",
            LockBackend::Redis(_) => "redis",
            LockBackend::ZooKeeper(_) => "zookeeper",
            LockBackend::Postgres(_) => "postgres",
        }
    }
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
    Ok(Box::new(
        Queued::new(connect_backend(backend, journal).await?).with_backend_name(backend.kind()),
    ))
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
