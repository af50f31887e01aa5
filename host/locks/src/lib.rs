//! Locks owned by runs, with fencing tokens. The executor depends only on [`LockService`];
//! the backend is chosen by URL in the host config: the journal's own database (default), a
//! SQLite file of its own, PostgreSQL, Redis or ZooKeeper. A lease alone never decides
//! correctness: participants refuse calls carrying a fencing token older than the newest they have seen for that key.

mod connect;
mod database;
mod poll;
mod postgres;
mod queue;
mod redis;
mod service;
mod wakeups;
mod zookeeper;

pub use connect::{LockBackend, connect, connect_backend};
pub use database::DatabaseLocks;
pub use postgres::PostgresLocks;
pub use queue::{HANDOVERS_MAX, Queued, SAFETY_NET_MS};
pub use redis::RedisLocks;
pub use service::{Lease, LockError, LockService};
pub use zookeeper::ZooKeeperLocks;
