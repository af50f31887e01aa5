//! An open database, SQLite or PostgreSQL, and the transactions it runs.

use crate::location::Location;
use crate::postgres::{self, PostgresDatabase};
use crate::sqlite::SqliteDatabase;
use crate::tx::{DbError, Dialect, OpenError, PoolSizes, Tx};
use std::path::PathBuf;
use wasaga_core::BoxFuture;
use wasaga_core::crash::CrashSwitch;

/// An open database, SQLite or PostgreSQL.
#[derive(Debug)]
pub enum Database {
    Sqlite(SqliteDatabase),
    Postgres(PostgresDatabase),
}

impl Database {
    /// Opens (creating and migrating if needed) the database at `location`.
    pub async fn open(
        location: &Location,
        pools: PoolSizes,
        crash: CrashSwitch,
    ) -> Result<Database, OpenError> {
        Ok(match location {
            Location::Sqlite(path) => Database::Sqlite(SqliteDatabase::open(path, crash).await?),
            Location::Postgres { url, schema } => {
                Database::Postgres(PostgresDatabase::open(url, schema, pools, crash).await?)
            }
        })
    }

    /// Deletes everything wasaga keeps at `location`: the SQLite file and its WAL, or the
    /// PostgreSQL schema with all its tables. For benchmarks, which start from nothing.
    pub async fn destroy(location: &Location) -> Result<(), OpenError> {
        match location {
            Location::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.as_os_str().to_owned();
                    file.push(suffix);
                    // Missing files are what we want.
                    let _ = std::fs::remove_file(PathBuf::from(file));
                }
                Ok(())
            }
            Location::Postgres { url, schema } => postgres::drop_schema(url, schema).await,
        }
    }

    pub fn location(&self) -> &Location {
        match self {
            Database::Sqlite(db) => db.location(),
            Database::Postgres(db) => db.location(),
        }
    }

    /// Write transactions committed so far, and the jobs they carried.
    pub fn commit_stats(&self) -> (u64, u64) {
        match self {
            Database::Sqlite(db) => db.stats().read(),
            Database::Postgres(db) => db.stats().read(),
        }
    }

    /// Registers this database's commit metrics into `registry`.
    pub fn register_metrics(&self, registry: &mut wasaga_core::metrics::Registry) {
        match self {
            Database::Sqlite(db) => db.stats().register(registry),
            Database::Postgres(db) => db.stats().register(registry),
        }
    }

    /// The database's name for messages.
    pub fn describe(&self) -> String {
        self.location().describe()
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `work` in a write transaction and returns its value once that transaction is
    /// durable. If `work` fails, nothing it wrote commits and its error is returned.
    ///
    /// Work should check before it writes. On SQLite, jobs share a transaction (group commit)
    /// without a savepoint each: a job that fails after writing rolls the whole batch back, and
    /// every other job in it fails with a database error (which callers retry). On PostgreSQL a
    /// write is its own transaction.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        match self {
            Database::Sqlite(db) => db.write(Box::new(work)).await,
            Database::Postgres(db) => db.write(Box::new(work)).await,
        }
    }

    /// As [`Database::write`], but on SQLite the answer comes as soon as `work` has run in its
    /// batch, before the batch is durable. Only for work whose result feeds the run that asked
    /// and nothing outside the host (a step's outcome, to its module): commits become durable
    /// in order, so whatever the run writes next, in this batch or a later one, is durable
    /// only with this; readers are answered only after a sync; and if this batch never
    /// becomes durable, the run's next append fails its position fence and the run resumes
    /// from the durable journal.
    pub async fn write_early<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        match self {
            Database::Sqlite(db) => db.write_early(Box::new(work)).await,
            Database::Postgres(db) => db.write(Box::new(work)).await,
        }
    }

    /// Runs `work`, which must be a single statement, durably: as [`Database::write`], but on
    /// PostgreSQL without an explicit transaction around it (the statement is its own, and
    /// BEGIN and COMMIT would cost two more round trips). On SQLite it joins a batch like any
    /// write.
    pub async fn write_one<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        self.write_one_grouped(1, work).await
    }

    /// As [`Database::write_one`], for a statement that carries `jobs` writers' work (a batch
    /// of them), which the commit statistics count.
    pub async fn write_one_grouped<T, E, F>(&self, jobs: usize, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        match self {
            Database::Sqlite(db) => db.write(Box::new(work)).await,
            Database::Postgres(db) => db.write_one(jobs, Box::new(work)).await,
        }
    }

    /// Runs `work` in a read-only transaction: it sees one consistent snapshot of everything
    /// committed before it began.
    pub async fn read<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        match self {
            Database::Sqlite(db) => db.read(Box::new(work)).await,
            Database::Postgres(db) => db.read(Box::new(work)).await,
        }
    }
}
