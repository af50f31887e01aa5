//! The databases wasaga keeps its journal, ledger and lease rows in: an embedded SQLite file
//! (the default) or a PostgreSQL database (many hosts). Everything above this module is
//! written once against [`Tx`], a transaction that runs SQL with `$1`-style placeholders, so
//! the journal and the ledger behave the same on both.
//!
//! Work is a closure over `&mut dyn Tx` that runs inside one transaction:
//! [`Database::write`] returns its value only once that transaction is durable, and rolls back
//! everything it wrote if it fails. On SQLite one writer thread commits concurrent writers'
//! work together (group commit); on PostgreSQL each write is its own transaction on a pooled
//! connection, and the server groups concurrent commits into one WAL flush.

mod database;
mod location;
mod postgres;
mod sqlite;
mod tx;
pub mod url;
mod wal_vfs;

pub use database::Database;
pub use location::{DEFAULT_SCHEMA, Location};
pub use postgres::PostgresDatabase;
pub use sqlite::SqliteDatabase;
pub use tx::{
    Arg, CommitStats, DbError, Dialect, OpenError, PoolSizes, Row, Tx, Value, Work, work,
};
