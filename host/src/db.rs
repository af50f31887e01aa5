//! A wasaga SQLite database: one writer connection behind a lock (SQLite admits one writer at a
//! time anyway) and a pool of readers. Opening applies the embedded migrations.
//!
//! Write transactions are `BEGIN IMMEDIATE` so they never fail half-way on a lock upgrade,
//! and every commit passes the crash switch so the crash tests can die right before or after it.

use crate::crash::CrashSwitch;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

/// Schema migrations, applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_initial.sql")];

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open database {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    pub source: sqlx::Error,
}

/// An open database.
#[derive(Debug)]
pub struct Database {
    path: PathBuf,
    writer: Mutex<Writer>,
    readers: SqlitePool,
    crash: CrashSwitch,
}

#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
    /// A transaction was begun and neither committed nor rolled back (its owner was dropped,
    /// e.g. on an error): the next user rolls it back first.
    in_transaction: bool,
}

/// A write transaction holding the writer. Dropping it without [`WriteTx::commit`] rolls it back.
#[derive(Debug)]
pub struct WriteTx<'a> {
    writer: MutexGuard<'a, Writer>,
    crash: &'a CrashSwitch,
}

impl Database {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub async fn open(path: &Path, crash: CrashSwitch) -> Result<Self, OpenError> {
        let open_error = |source| OpenError {
            path: path.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(open_error)?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut conn)
            .await
            .map_err(open_error)?;
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let target = index as i64 + 1;
            if version >= target {
                continue;
            }
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(open_error)?;
            sqlx::raw_sql(*migration)
                .execute(&mut *tx)
                .await
                .map_err(open_error)?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {target}"
            )))
            .execute(&mut *tx)
            .await
            .map_err(open_error)?;
            tx.commit().await.map_err(open_error)?;
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(open_error)?;
        Ok(Database {
            path: path.to_owned(),
            writer: Mutex::new(Writer {
                conn,
                in_transaction: false,
            }),
            readers,
            crash,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reader pool, for queries that need no transaction.
    pub fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// Begins a write transaction, waiting for the writer.
    pub async fn begin(&self) -> Result<WriteTx<'_>, sqlx::Error> {
        let mut writer = self.writer.lock().await;
        if writer.in_transaction {
            sqlx::raw_sql("ROLLBACK").execute(&mut writer.conn).await?;
            writer.in_transaction = false;
        }
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut writer.conn)
            .await?;
        writer.in_transaction = true;
        Ok(WriteTx {
            writer,
            crash: &self.crash,
        })
    }
}

impl WriteTx<'_> {
    /// The connection the transaction runs on.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.writer.conn
    }

    /// Makes the transaction durable (`synchronous=FULL`: fsynced before this returns).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.crash.before_commit();
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.writer.conn)
            .await?;
        self.writer.in_transaction = false;
        self.crash.after_commit();
        Ok(())
    }
}
