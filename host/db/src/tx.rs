//! The one interface above the databases: a transaction ([`Tx`]) that runs SQL with `$1`-style
//! placeholders, its arguments and rows, and how it fails.

use wasaga_core::BoxFuture;

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

/// How many write transactions were committed, how many writers' jobs they carried, and how
/// long each took to become durable: the `wasaga_db_commit_*` metrics.
#[derive(Debug)]
pub struct CommitStats {
    commits: std::sync::atomic::AtomicU64,
    jobs: std::sync::atomic::AtomicU64,
    /// From a transaction's start to the answer that it is durable (on SQLite, a group
    /// commit's first job to its `fdatasync`).
    commit_seconds: wasaga_core::metrics::Histogram,
    /// Writers' jobs per commit: how much group commit shares.
    jobs_per_commit: wasaga_core::metrics::Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            commits: Default::default(),
            jobs: Default::default(),
            commit_seconds: wasaga_core::metrics::latency_histogram(),
            jobs_per_commit: wasaga_core::metrics::size_histogram(),
        }
    }
}

impl CommitStats {
    pub(crate) fn record(&self, jobs: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.jobs.fetch_add(jobs as u64, Relaxed);
        self.jobs_per_commit.observe(jobs as f64);
    }

    /// A commit that began at `began` is durable now.
    pub(crate) fn durable(&self, began: std::time::Instant) {
        self.commit_seconds
            .observe(wasaga_core::metrics::seconds_since(began));
    }

    /// `(commits, jobs)` so far.
    pub fn read(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.commits.load(Relaxed), self.jobs.load(Relaxed))
    }

    /// Registers the commit metrics into `registry` (a sub-registry labelled with which
    /// database this is).
    pub fn register(&self, registry: &mut wasaga_core::metrics::Registry) {
        registry.register(
            "db_commit_duration_seconds",
            "Time from a write transaction's start to its being durable",
            self.commit_seconds.clone(),
        );
        registry.register(
            "db_commit_jobs",
            "Writers' jobs committed together in one transaction (group commit)",
            self.jobs_per_commit.clone(),
        );
    }
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
