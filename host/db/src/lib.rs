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

mod postgres;
mod sqlite;
pub mod url;
mod wal_vfs;

use std::path::PathBuf;
use wasaga_core::BoxFuture;
use wasaga_core::crash::CrashSwitch;

pub use postgres::PostgresDatabase;
pub use sqlite::SqliteDatabase;

/// Where a database lives, as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Location {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database; wasaga's tables live in `schema`.
    Postgres { url: String, schema: String },
}

/// The PostgreSQL schema wasaga's tables live in unless the URL says `?schema=...`.
pub const DEFAULT_SCHEMA: &str = "wasaga";

impl Location {
    /// Reads `postgres://...` (optionally with `?schema=name`) or a SQLite file path
    /// (optionally `sqlite:` prefixed).
    pub fn parse(text: &str) -> Result<Location, String> {
        Self::parse_with_schema(text, DEFAULT_SCHEMA)
    }

    /// As [`Location::parse`], with `schema` where a PostgreSQL URL names none.
    pub fn parse_with_schema(text: &str, schema: &str) -> Result<Location, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (url, schema) = take_schema_param(text, schema)?;
            return Ok(Location::Postgres { url, schema });
        }
        if text.contains("://") {
            return Err(format!(
                "'{text}' is not a database wasaga can use: give a SQLite file path or a postgres:// URL"
            ));
        }
        let path = text.strip_prefix("sqlite:").unwrap_or(text);
        if path.is_empty() {
            return Err("the database path is empty".to_owned());
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }

    /// A name for messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => format!("sqlite:{}", path.display()),
            Location::Postgres { url, schema } if schema == DEFAULT_SCHEMA => {
                crate::url::without_password(url)
            }
            Location::Postgres { url, schema } => {
                format!("{} (schema {schema})", crate::url::without_password(url))
            }
        }
    }
}

/// Splits wasaga's own `schema` query parameter off a PostgreSQL URL.
fn take_schema_param(url: &str, default: &str) -> Result<(String, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), default.to_owned()));
    };
    let mut schema = default.to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = name.to_owned(),
            None => rest.push(pair),
        }
    }
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(format!(
            "schema '{schema}' must be 1 to 63 lowercase letters, digits or '_', not starting with a digit"
        ));
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, schema))
}

/// Which SQL dialect a transaction speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement argument. PostgreSQL types its parameters, so nulls carry their type.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    OptInt(Option<i64>),
    OptText(Option<&'a str>),
    /// A `text[]` (PostgreSQL only).
    TextList(&'a [String]),
    /// A `bigint[]` (PostgreSQL only).
    IntList(&'a [i64]),
    /// A `text[]` whose elements may be null (PostgreSQL only).
    OptTextList(&'a [Option<String>]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

/// Builds a `&[Arg]` from expressions that convert into [`Arg`].
#[macro_export]
#[doc(hidden)]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::Arg::from($arg)),*]
    };
}

/// Names a closure as a unit of database work, so that its higher-ranked signature is known
/// where it is made (and it can go to [`Database::write`] or [`Database::write_early`]).
pub fn work<T, E, F>(work: F) -> F
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
{
    work
}

/// One column value of a fetched row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A fetched row: its values in select order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn column(&self, index: usize) -> Result<&Value, DbError> {
        self.0
            .get(index)
            .ok_or_else(|| DbError::Decode(format!("row has no column {index}")))
    }

    pub fn int(&self, index: usize) -> Result<i64, DbError> {
        match self.column(index)? {
            Value::Int(v) => Ok(*v),
            other => Err(DbError::Decode(format!(
                "column {index} is {other:?}, not an integer"
            ))),
        }
    }

    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, DbError> {
        match self.column(index)? {
            Value::Null => Ok(None),
            _ => self.int(index).map(Some),
        }
    }

    pub fn text(&self, index: usize) -> Result<String, DbError> {
        match self.column(index)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(DbError::Decode(format!(
                "column {index} is {other:?}, not text"
            ))),
        }
    }

    pub fn opt_text(&self, index: usize) -> Result<Option<String>, DbError> {
        match self.column(index)? {
            Value::Null => Ok(None),
            _ => self.text(index).map(Some),
        }
    }

    pub fn blob(&self, index: usize) -> Result<Vec<u8>, DbError> {
        match self.column(index)? {
            Value::Blob(v) => Ok(v.clone()),
            Value::Text(v) => Ok(v.clone().into_bytes()),
            other => Err(DbError::Decode(format!(
                "column {index} is {other:?}, not bytes"
            ))),
        }
    }
}

/// Why a statement or transaction failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The database refused or could not run a statement.
    #[error("{database}: {reason}")]
    Statement { database: String, reason: String },
    /// A value came back in a shape the schema does not allow.
    #[error("unexpected value in the database: {0}")]
    Decode(String),
    /// The transaction could not be committed; nothing in it is durable.
    #[error("{database}: commit failed: {reason}")]
    Commit { database: String, reason: String },
    /// Committed work could not be made durable (the WAL's sync failed): whether it survives a
    /// crash is unknown, so the database takes no more work until the process restarts.
    #[error(
        "{database}: {reason}; whether the latest writes reached the disk is unknown, so no more are taken: check the disk, then restart wasaga, which resumes every run from what is durable"
    )]
    Unsynced { database: String, reason: String },
    /// The database has been shut down.
    #[error("{0} is closed")]
    Closed(String),
}

/// A transaction, on either backend. Statements use `$1`, `$2`, ... placeholders.
pub trait Tx: Send {
    fn dialect(&self) -> Dialect;

    /// Runs a statement that returns no rows; returns how many rows it changed.
    fn execute<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Runs a query and returns its first row, if any.
    fn fetch_optional<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Option<Row>, DbError>>;

    /// Runs a query and returns all its rows.
    fn fetch_all<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, DbError>>;
}

/// Work run inside one transaction.
pub type Work<T, E> =
    Box<dyn for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static>;

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open database {database}: {cause}; {hint}")]
pub struct OpenError {
    pub database: String,
    pub cause: String,
    pub hint: &'static str,
}

/// How many write transactions were committed, and how many writers' jobs they carried.
#[derive(Debug, Default)]
pub struct CommitStats {
    commits: std::sync::atomic::AtomicU64,
    jobs: std::sync::atomic::AtomicU64,
}

impl CommitStats {
    fn record(&self, jobs: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.jobs.fetch_add(jobs as u64, Relaxed);
    }

    /// `(commits, jobs)` so far.
    pub fn read(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.commits.load(Relaxed), self.jobs.load(Relaxed))
    }
}

/// An open database, SQLite or PostgreSQL.
#[derive(Debug)]
pub enum Database {
    Sqlite(SqliteDatabase),
    Postgres(PostgresDatabase),
}

/// Connections a PostgreSQL database is given, and SQLite readers: sizes of the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// PostgreSQL connections one host opens to the database at most.
    pub postgres_connections_max: u32,
    /// PostgreSQL connections kept open even when idle (opened in the background once the
    /// database is open), so that the first writes find them ready.
    pub postgres_connections_min: u32,
}

impl Default for PoolSizes {
    fn default() -> Self {
        PoolSizes {
            postgres_connections_max: 32,
            postgres_connections_min: 0,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_files_and_urls() {
        assert_eq!(
            Location::parse("wasaga.db"),
            Ok(Location::Sqlite("wasaga.db".into()))
        );
        assert_eq!(
            Location::parse("sqlite:/tmp/x.db"),
            Ok(Location::Sqlite("/tmp/x.db".into()))
        );
        assert_eq!(
            Location::parse("postgres://u@h:5/db"),
            Ok(Location::Postgres {
                url: "postgres://u@h:5/db".into(),
                schema: "wasaga".into()
            })
        );
        assert_eq!(
            Location::parse("postgres://u@h:5/db?sslmode=disable&schema=bench_1"),
            Ok(Location::Postgres {
                url: "postgres://u@h:5/db?sslmode=disable".into(),
                schema: "bench_1".into()
            })
        );
        assert!(
            Location::parse("postgres://u@h/db?schema=Bad-Name")
                .expect_err("must be refused")
                .contains("lowercase")
        );
        assert!(
            Location::parse("mysql://h/db")
                .expect_err("must be refused")
                .contains("SQLite file path or a postgres://")
        );
    }
}
