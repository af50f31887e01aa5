//! A wasaga SQLite database (WAL, `synchronous=FULL`): a pool of readers, and one writer task
//! that owns the only write connection and commits concurrent writers' work together.
//!
//! Group commit: the writer takes every job waiting in its queue, runs each inside its own
//! savepoint of one transaction, and commits once: one fsync for the whole batch. A job whose
//! work fails is rolled back to its savepoint without touching the others. No job's caller
//! hears back before the transaction holding its work is durable.
//!
//! Every commit passes the crash switch, so the crash tests can die right before or after it.

use crate::BoxFuture;
use crate::crash::CrashSwitch;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Schema migrations, applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_fences_and_registers.sql"),
    include_str!("../migrations/0003_two_phase.sql"),
];

/// Jobs waiting for the writer; senders wait when it is full.
const WRITE_QUEUE_MAX: usize = 4096;
/// Jobs committed together at most.
const BATCH_JOBS_MAX: usize = 512;

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open database {path}: {cause}; check that its directory exists and is writable")]
pub struct OpenError {
    pub path: PathBuf,
    pub cause: sqlx::Error,
}

/// The work of one writer: runs on the write connection inside a savepoint.
type Work = Box<
    dyn for<'c> FnOnce(
            &'c mut SqliteConnection,
        ) -> BoxFuture<'c, Result<Box<dyn Any + Send>, Box<dyn Any + Send>>>
        + Send,
>;

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Box<dyn Any + Send>, JobFailure>>,
}

enum JobFailure {
    /// The job's own work failed; its error value.
    Work(Box<dyn Any + Send>),
    /// The batch could not be committed.
    Commit(String),
}

/// An open database.
#[derive(Debug)]
pub struct Database {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    readers: SqlitePool,
}

impl Database {
    /// Opens (creating and migrating if needed) the database at `path` and starts its writer.
    pub async fn open(path: &Path, crash: CrashSwitch) -> Result<Self, OpenError> {
        let open_error = |cause| OpenError {
            path: path.to_owned(),
            cause,
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
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        tokio::spawn(writer(conn, queue, crash));
        Ok(Database {
            path: path.to_owned(),
            jobs,
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reader pool, for queries that need no transaction.
    pub fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// Runs `work` in a write transaction and returns its value once that transaction is
    /// durable. If `work` fails, everything it wrote is rolled back and its error returned.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    {
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                match work(conn).await {
                    Ok(value) => Ok(Box::new(value) as Box<dyn Any + Send>),
                    Err(error) => Err(Box::new(error) as Box<dyn Any + Send>),
                }
            })
        });
        let (reply, answer) = oneshot::channel();
        let gone = || E::from(sqlx::Error::PoolClosed);
        self.jobs
            .send(Job { work, reply })
            .await
            .map_err(|_| gone())?;
        match answer.await.map_err(|_| gone())? {
            Ok(value) => Ok(*value
                .downcast::<T>()
                .expect("a job's value has the job's type")),
            Err(JobFailure::Work(error)) => Err(*error
                .downcast::<E>()
                .expect("a job's error has the job's type")),
            Err(JobFailure::Commit(reason)) => Err(E::from(sqlx::Error::Protocol(reason))),
        }
    }
}

/// The writer task: batches jobs into transactions until every sender is gone.
async fn writer(mut conn: SqliteConnection, mut queue: mpsc::Receiver<Job>, crash: CrashSwitch) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_JOBS_MAX);
    while queue.recv_many(&mut batch, BATCH_JOBS_MAX).await > 0 {
        let (works, replies): (Vec<Work>, Vec<_>) =
            batch.drain(..).map(|j| (j.work, j.reply)).unzip();
        let outcomes = run_batch(&mut conn, works, &crash).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting does not need its answer.
            let _ = reply.send(outcome);
        }
    }
}

async fn run_batch(
    conn: &mut SqliteConnection,
    works: Vec<Work>,
    crash: &CrashSwitch,
) -> Vec<Result<Box<dyn Any + Send>, JobFailure>> {
    let all_failed = |reason: String, n: usize| {
        (0..n)
            .map(|_| Err(JobFailure::Commit(reason.clone())))
            .collect::<Vec<_>>()
    };
    if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return all_failed(
            format!("cannot begin a write transaction: {e}"),
            works.len(),
        );
    }
    let jobs = works.len();
    let mut outcomes = Vec::with_capacity(jobs);
    for work in works {
        let outcome = async {
            sqlx::raw_sql("SAVEPOINT job").execute(&mut *conn).await?;
            let result = work(conn).await;
            match &result {
                Ok(_) => sqlx::raw_sql("RELEASE job").execute(&mut *conn).await?,
                Err(_) => {
                    sqlx::raw_sql("ROLLBACK TO job; RELEASE job")
                        .execute(&mut *conn)
                        .await?
                }
            };
            Ok::<_, sqlx::Error>(result)
        }
        .await;
        match outcome {
            Ok(Ok(value)) => outcomes.push(Ok(value)),
            Ok(Err(error)) => outcomes.push(Err(JobFailure::Work(error))),
            Err(e) => {
                // The savepoint machinery itself failed: nothing in this batch can be trusted.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                return all_failed(format!("write transaction failed: {e}"), jobs);
            }
        }
    }
    crash.before_commit();
    if let Err(e) = sqlx::raw_sql("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return all_failed(format!("commit failed: {e}"), jobs);
    }
    crash.after_commit();
    outcomes
}
