//! The embedded SQLite database (WAL), on rusqlite.
//!
//! One writer thread owns the only write connection. It takes every job waiting in its queue,
//! runs them one after the other in one transaction and commits once (group commit); the
//! syncer thread then `fdatasync`s the WAL and only then answers the batch's callers. The
//! writer's connection runs `synchronous=NORMAL`, so `COMMIT` writes the frames without
//! waiting for the disk, and the writer goes on with the next batch while the syncer waits:
//! what `synchronous=FULL` would do inside `COMMIT`, done beside it, and no caller, and no
//! reader (see `read_loop`), hears of a commit before that sync. The writer keeps its batch
//! open while the syncer is busy, so one sync covers everything that arrived meanwhile.
//!
//! Jobs check before they write, so a job that fails has written nothing; one that fails
//! after writing takes the whole batch down with it rather than commit a half-done job. Jobs
//! run on the writer thread itself, statement after statement, with no hand-off between
//! threads per statement: that hand-off is what dominated the profile when this went through
//! sqlx's SQLite driver (see ARCHITECTURE.md).
//!
//! Reads run on reader threads, each with its own read-only connection. The writer checkpoints
//! the WAL itself, after its own commits, so the WAL restarts in place (SQLite syncs the WAL
//! before a checkpoint copies it and the restarted WAL's header before its first frame, in
//! NORMAL as in FULL); a checkpointer thread is the backstop for a WAL that readers keep from
//! restarting. Every commit passes the crash switch, so crash tests can die right before it or
//! right after it is durable.

use crate::location::Location;
use crate::tx::{Arg, DbError, Dialect, OpenError, Row, Tx, Value, Work};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wasaga_core::BoxFuture;
use wasaga_core::crash::CrashSwitch;

/// Schema migrations, applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../schema/sqlite/0001_initial.sql"),
    include_str!("../schema/sqlite/0002_fences_and_registers.sql"),
    include_str!("../schema/sqlite/0003_two_phase.sql"),
    include_str!("../schema/sqlite/0004_ownership_and_registry.sql"),
    include_str!("../schema/sqlite/0005_append_ordered.sql"),
    include_str!("../schema/sqlite/0006_unfinished_runs.sql"),
    include_str!("../schema/sqlite/0007_hold_expiry.sql"),
    include_str!("../schema/sqlite/0008_lock_waiters.sql"),
    include_str!("../schema/sqlite/0009_outbox.sql"),
    include_str!("../schema/sqlite/0010_waits.sql"),
    include_str!("../schema/sqlite/0011_stuck_runs.sql"),
    include_str!("../schema/sqlite/0012_pruned_runs.sql"),
];

/// Jobs waiting for the writer; senders wait when it is full.
const WRITE_QUEUE_MAX: usize = 4096;
/// Jobs committed together at most.
const BATCH_JOBS_MAX: usize = 512;
/// Read jobs waiting for a reader.
const READ_QUEUE_MAX: usize = 1024;
/// Reader threads, each with its own connection.
const READERS: usize = 2;
/// Prepared statements each connection keeps.
const STATEMENT_CACHE_MAX: usize = 256;
/// How often the checkpointer looks at the WAL's size.
const CHECKPOINT_INTERVAL_MS: u64 = 200;
/// A WAL larger than this is checkpointed by the checkpointer thread with RESTART (writers wait
/// briefly): the writer's own checkpoints keep the WAL far smaller, unless long-running readers
/// keep it from restarting.
const WAL_BYTES_RESTART: u64 = 256 << 20;
/// WAL frames after which the writer checkpoints (`wal_autocheckpoint`); a checkpoint that
/// completes lets the next commit restart the WAL at its start.
const WAL_CHECKPOINT_FRAMES: u64 = 4_000;
/// Frames of zeros the WAL is given when the database opens: what it grows to between two
/// checkpoints, with room for the commit that crosses the threshold.
const WAL_PREALLOCATED_FRAMES: u64 = WAL_CHECKPOINT_FRAMES + 1_000;
/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT_MS: u64 = 30_000;

/// A SQLite database: the writer's queue and the readers' queue.
#[derive(Debug)]
pub struct SqliteDatabase {
    location: Location,
    stats: Arc<crate::tx::CommitStats>,
    writes: mpsc::Sender<Box<dyn ErasedJob>>,
    reads: mpsc::Sender<Box<dyn ErasedJob>>,
    /// Dropping it stops the checkpointer.
    _checkpoints: std::sync::mpsc::Sender<()>,
}

impl SqliteDatabase {
    /// Opens (creating and migrating if needed) the database at `path` and starts its threads.
    pub async fn open(path: &Path, crash: CrashSwitch) -> Result<Self, OpenError> {
        Self::open_syncing_with(path, crash, Box::new(|wal| wal.sync_data())).await
    }

    /// As `open`, with `sync` making the WAL durable (tests stand in a gate or a failure).
    async fn open_syncing_with(
        path: &Path,
        crash: CrashSwitch,
        sync: SyncWal,
    ) -> Result<Self, OpenError> {
        let owned = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || open_connections(&owned))
            .await
            .map_err(|e| OpenError {
                database: format!("sqlite:{}", path.display()),
                cause: e.to_string(),
                hint: "the opening thread failed",
            })??;
        let (writer, readers, checkpointer) = opened;
        let name = format!("sqlite:{}", path.display());
        let wal = std::fs::File::open(wal_path(path)).map_err(|e| OpenError {
            database: name.clone(),
            cause: format!("cannot open its write-ahead log to sync it: {e}"),
            hint: "check that the database's directory is readable and writable",
        })?;
        let (writes, write_queue) = mpsc::channel(WRITE_QUEUE_MAX);
        let (reads, read_queue) = mpsc::channel(READ_QUEUE_MAX);
        let spawn_error = |e: std::io::Error| OpenError {
            database: name.clone(),
            cause: e.to_string(),
            hint: "the host could not start a database thread",
        };
        let stats = Arc::new(crate::tx::CommitStats::default());
        let durability = Arc::new(Durability {
            stats: stats.clone(),
            ..Durability::default()
        });
        let (syncs, sync_queue) = std::sync::mpsc::channel();
        // Weak: the syncer must not keep the writer's queue open once the database is dropped.
        let wake = writes.downgrade();
        {
            let (name, durability) = (name.clone(), durability.clone());
            let crash = crash.clone();
            std::thread::Builder::new()
                .name("wasaga-sqlite-sync".into())
                .spawn(move || sync_loop(wal, sync, sync_queue, wake, durability, crash, name))
                .map_err(spawn_error)?;
        }
        {
            let (name, stats) = (name.clone(), stats.clone());
            let (syncs, durability) = (syncs.clone(), durability.clone());
            std::thread::Builder::new()
                .name("wasaga-sqlite-writer".into())
                .spawn(move || {
                    write_loop(writer, write_queue, syncs, &durability, crash, name, stats)
                })
                .map_err(spawn_error)?;
        }
        let read_queue = Arc::new(Mutex::new(read_queue));
        for (index, reader) in readers.into_iter().enumerate() {
            let (queue, name) = (read_queue.clone(), name.clone());
            let syncs = syncs.clone();
            std::thread::Builder::new()
                .name(format!("wasaga-sqlite-reader-{index}"))
                .spawn(move || read_loop(reader, queue, syncs, name))
                .map_err(spawn_error)?;
        }
        drop(syncs);
        let (checkpoints, ticks) = std::sync::mpsc::channel();
        let wal = wal_path(path);
        std::thread::Builder::new()
            .name("wasaga-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, ticks, wal))
            .map_err(spawn_error)?;
        Ok(SqliteDatabase {
            location: Location::Sqlite(path.to_owned()),
            stats,
            writes,
            reads,
            _checkpoints: checkpoints,
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn stats(&self) -> &crate::tx::CommitStats {
        &self.stats
    }

    fn closed(&self) -> DbError {
        DbError::Closed(self.location.describe())
    }

    pub(super) async fn write<T, E>(&self, work: Work<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.submit(work, false).await
    }

    /// See `Database::write_early`.
    pub(super) async fn write_early<T, E>(&self, work: Work<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.submit(work, true).await
    }

    async fn submit<T, E>(&self, work: Work<T, E>, early: bool) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(TypedJob { work, reply, early }))
            .await
            .map_err(|_| E::from(self.closed()))?;
        answer.await.map_err(|_| E::from(self.closed()))?
    }

    pub(super) async fn read<T, E>(&self, work: Work<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.reads
            .send(Box::new(TypedJob {
                work,
                reply,
                early: false,
            }))
            .await
            .map_err(|_| E::from(self.closed()))?;
        answer.await.map_err(|_| E::from(self.closed()))?
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

type Opened = (Connection, Vec<Connection>, Connection);

/// Opens the writer (migrating the schema), the readers and the checkpointer's connection.
fn open_connections(path: &Path) -> Result<Opened, OpenError> {
    let open_error = |e: rusqlite::Error| OpenError {
        database: format!("sqlite:{}", path.display()),
        cause: e.to_string(),
        hint: "check that its directory exists and is writable",
    };
    let read_write = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let vfs = super::wal_vfs::register().map_err(|cause| OpenError {
        database: format!("sqlite:{}", path.display()),
        cause,
        hint: "use a build of wasaga for Linux or another Unix",
    })?;
    let mut writer =
        Connection::open_with_flags_and_vfs(path, read_write, vfs).map_err(open_error)?;
    writer
        .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(open_error)?;
    // WAL: a commit is durable once its WAL frames are synced. The migrations below commit with
    // synchronous=FULL, the batches with NORMAL and the syncer's fdatasync (see `Durability`).
    // The writer checkpoints after its own commit every `WAL_CHECKPOINT_FRAMES`; with nothing
    // else writing, the checkpoint completes and the WAL restarts in place, so frames overwrite
    // allocated blocks (`preallocate_wal` allocates them for the first round) instead of
    // growing the file (a background checkpoint never caught up with the writer).
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA journal_size_limit = 67108864;
             PRAGMA cache_size = -8192;",
        )
        .map_err(open_error)?;
    writer
        .pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_FRAMES as i64)
        .map_err(open_error)?;
    let mode: String = writer
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError {
            database: format!("sqlite:{}", path.display()),
            cause: format!("journal_mode is {mode}, not wal"),
            hint: "put the database on a local file system that supports shared memory",
        });
    }
    writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
    migrate(&mut writer).map_err(open_error)?;
    preallocate_wal(&mut writer, path).map_err(|e| OpenError {
        database: format!("sqlite:{}", path.display()),
        cause: format!("cannot extend its write-ahead log: {e}"),
        hint: "check that the disk has a few tens of megabytes free",
    })?;
    writer
        .execute_batch("PRAGMA synchronous = NORMAL;")
        .map_err(open_error)?;

    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let reader = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            vfs,
        )
        .map_err(open_error)?;
        reader
            .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(open_error)?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
        readers.push(reader);
    }
    let checkpointer =
        Connection::open_with_flags_and_vfs(path, read_write, vfs).map_err(open_error)?;
    checkpointer
        .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(open_error)?;
    checkpointer
        .execute_batch("PRAGMA synchronous = FULL;")
        .map_err(open_error)?;
    Ok((writer, readers, checkpointer))
}

/// The WAL's length with `WAL_PREALLOCATED_FRAMES` frames of `page_size` pages: a 32-byte
/// header, then each frame's 24-byte header and page.
fn preallocated_wal_bytes(page_size: i64) -> u64 {
    32 + WAL_PREALLOCATED_FRAMES * (24 + page_size.unsigned_abs())
}

/// Extends the WAL with zeros to `WAL_PREALLOCATED_FRAMES`, so that commits overwrite blocks
/// the file system has already allocated instead of growing the file: a commit that grows the
/// file makes its fsync also commit the file system's metadata, and a fresh database's first
/// 4,000 frames went at about 75% of the rate of the frames after the first restart.
///
/// Zeros after the WAL's last frame are never taken for frames: a frame counts only if its
/// salts and checksum follow from the header's, so recovery stops at the first zero frame, as
/// it stops at the stale frames a restarted WAL leaves behind; and a WAL whose header is zeros
/// is empty. The write lock is held, so no other connection is appending frames meanwhile.
fn preallocate_wal(conn: &mut Connection, path: &Path) -> Result<(), String> {
    use std::io::Write;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let page_size: i64 = tx
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let wanted = preallocated_wal_bytes(page_size);
    let mut wal = std::fs::OpenOptions::new()
        .append(true)
        .open(wal_path(path))
        .map_err(|e| e.to_string())?;
    let mut length = wal.metadata().map_err(|e| e.to_string())?.len();
    if length < wanted {
        let zeros = vec![0u8; 1 << 20];
        while length < wanted {
            let chunk = (wanted - length).min(zeros.len() as u64) as usize;
            wal.write_all(&zeros[..chunk]).map_err(|e| e.to_string())?;
            length += chunk as u64;
        }
        wal.sync_all().map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if version >= target {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while this one waited for the write lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if now < target {
            tx.execute_batch(migration)?;
            tx.execute_batch(&format!("PRAGMA user_version = {target}"))?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// What the writer calls once a job's transaction has committed (or failed to).
type Deliver = Box<dyn FnOnce(Result<(), DbError>) + Send>;

/// A job with its result type erased, so one queue carries them all.
trait ErasedJob: Send {
    /// Whether the job's answer may be delivered before its batch is durable.
    fn early(&self) -> bool;
    /// Runs the work; returns whether it succeeded and how to deliver its result.
    fn run(self: Box<Self>, tx: &mut SqliteTx<'_>) -> (bool, Deliver);
    /// Fails the job without running it.
    fn fail(self: Box<Self>, error: DbError);
    /// Whether this is the syncer's `Wake`, which is not a job.
    fn is_wake(&self) -> bool {
        false
    }
}

/// Sent down the write queue by the syncer when it has made every commit durable, to end a
/// batch the writer keeps open while it waits for the syncer.
struct Wake;

impl ErasedJob for Wake {
    fn early(&self) -> bool {
        false
    }

    fn run(self: Box<Self>, _: &mut SqliteTx<'_>) -> (bool, Deliver) {
        (true, Box::new(|_| {}))
    }

    fn fail(self: Box<Self>, _: DbError) {}

    fn is_wake(&self) -> bool {
        true
    }
}

struct TypedJob<T, E> {
    work: Work<T, E>,
    reply: oneshot::Sender<Result<T, E>>,
    early: bool,
}

impl<T, E> ErasedJob for TypedJob<T, E>
where
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    fn early(&self) -> bool {
        self.early
    }

    fn run(self: Box<Self>, tx: &mut SqliteTx<'_>) -> (bool, Deliver) {
        let TypedJob { work, reply, .. } = *self;
        let database = tx.database;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| now(work(tx))));
        let result: Result<T, E> = match outcome {
            Ok(Some(result)) => result,
            Ok(None) => Err(E::from(DbError::Statement {
                database: database.to_owned(),
                reason: "a SQLite job waited on something other than the database".to_owned(),
            })),
            Err(panic) => Err(E::from(DbError::Statement {
                database: database.to_owned(),
                reason: format!("a database job panicked: {}", panic_message(&panic)),
            })),
        };
        let ok = result.is_ok();
        let deliver: Deliver = Box::new(move |committed| {
            let result = match committed {
                Err(error) if ok => Err(E::from(error)),
                _ => result,
            };
            // A caller that stopped waiting does not need its answer.
            let _ = reply.send(result);
        });
        (ok, deliver)
    }

    fn fail(self: Box<Self>, error: DbError) {
        let _ = self.reply.send(Err(E::from(error)));
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Polls a future that never waits (SQLite statements run synchronously) to its end.
fn now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// How far the WAL is known to be durable, shared by the writer and the syncer.
///
/// The writer commits with `synchronous=NORMAL`: `COMMIT` writes the batch's WAL frames and
/// publishes them to other connections without waiting for the disk, and the syncer thread then
/// `fdatasync`s the WAL before any caller of that batch hears back. The writer runs the next
/// batch meanwhile, so the disk's flush no longer holds up the only writer (it was half of the
/// writer's wall time). The writer numbers its commit attempts 1, 2, ...; `durable` is the
/// latest whose frames are synced (the writer compares it with its own last commit to know
/// whether the syncer is free).
#[derive(Default)]
struct Durability {
    durable: AtomicU64,
    /// Set once a sync fails: what the WAL holds is then not known to be on disk, so nothing
    /// more is written or answered until the process restarts and recovery reads the WAL.
    failed: Mutex<Option<String>>,
    /// The database's commit metrics: the syncer times each commit until it is durable.
    stats: Arc<crate::tx::CommitStats>,
}

impl Durability {
    fn failure(&self) -> Option<String> {
        match self.failed.lock() {
            Ok(failed) => failed.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn fail(&self, reason: String) {
        let mut failed = match self.failed.lock() {
            Ok(failed) => failed,
            Err(poisoned) => poisoned.into_inner(),
        };
        failed.get_or_insert(reason);
    }
}

/// How the syncer makes the WAL durable: `fdatasync`, but for tests.
type SyncWal = Box<dyn FnMut(&std::fs::File) -> std::io::Result<()> + Send>;

/// What the syncer is handed.
enum ToSync {
    /// A commit attempt, with the answers that wait for it to be durable (none if it failed;
    /// it is still reported, so that `durable` reaches its number).
    Committed {
        number: u64,
        crash_ticket: u32,
        delivers: Vec<Deliver>,
        /// When the writer began the transaction.
        began: std::time::Instant,
    },
    /// A read's answer. The read may have seen commits that are not durable yet, this
    /// process's or another's on the same file, so it waits for a sync begun after it.
    Read(Deliver),
}

/// The error every job gets once a sync has failed.
fn sync_failed(database: &str, reason: &str) -> DbError {
    DbError::Unsynced {
        database: database.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The writer thread: batches jobs into transactions until every sender is gone.
///
/// A batch stays open, taking the jobs that arrive, for as long as the syncer is still making
/// the previous commit durable: committing earlier would not make anything durable sooner, and
/// a larger commit writes fewer WAL pages per job. It commits once the syncer is free (which
/// sends a `Wake` down the queue when it gets there), or at `BATCH_JOBS_MAX` jobs.
fn write_loop(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Box<dyn ErasedJob>>,
    syncs: std::sync::mpsc::Sender<ToSync>,
    durability: &Durability,
    crash: CrashSwitch,
    database: String,
    stats: Arc<crate::tx::CommitStats>,
) {
    let mut sql = SqlCache::default();
    let mut last_commit: u64 = 0;
    while let Some(first) = queue.blocking_recv() {
        if first.is_wake() {
            continue;
        }
        if let Some(reason) = durability.failure() {
            first.fail(sync_failed(&database, &reason));
            continue;
        }
        let began = std::time::Instant::now();
        let mut batch = match Batch::begin(&mut conn, &mut sql, &database) {
            Ok(batch) => batch,
            Err(error) => {
                first.fail(error);
                continue;
            }
        };
        let mut next = Some(first);
        let mut jobs = 0;
        let rolled_back = loop {
            if let Some(job) = next.take()
                && !job.is_wake()
            {
                jobs += 1;
                if !batch.run(job) {
                    break true;
                }
            }
            if jobs >= BATCH_JOBS_MAX {
                break false;
            }
            match queue.try_recv() {
                Ok(job) => {
                    next = Some(job);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => break false,
            }
            let syncer_free = durability.durable.load(Ordering::SeqCst) >= last_commit;
            if syncer_free || durability.failure().is_some() {
                break false;
            }
            match queue.blocking_recv() {
                Some(job) => next = Some(job),
                None => break false,
            }
        };
        stats.record(jobs);
        if rolled_back {
            continue;
        }
        let number = last_commit + 1;
        let Some((crash_ticket, delivers)) = batch.commit(durability, &crash) else {
            continue;
        };
        last_commit = number;
        let committed = ToSync::Committed {
            number,
            crash_ticket,
            delivers,
            began,
        };
        if let Err(std::sync::mpsc::SendError(ToSync::Committed { delivers, .. })) =
            syncs.send(committed)
        {
            for deliver in delivers {
                deliver(Err(DbError::Closed(database.clone())));
            }
        }
    }
}

/// The writer's open transaction and the answers waiting for it.
struct Batch<'c> {
    conn: &'c mut Connection,
    sql: &'c mut SqlCache,
    database: &'c str,
    delivers: Vec<Deliver>,
}

impl<'c> Batch<'c> {
    fn failed(database: &str, reason: String) -> DbError {
        DbError::Commit {
            database: database.to_owned(),
            reason,
        }
    }

    fn begin(
        conn: &'c mut Connection,
        sql: &'c mut SqlCache,
        database: &'c str,
    ) -> Result<Self, DbError> {
        plain(conn, "BEGIN IMMEDIATE").map_err(|e| {
            Self::failed(database, format!("cannot begin a write transaction: {e}"))
        })?;
        Ok(Batch {
            conn,
            sql,
            database,
            delivers: Vec::new(),
        })
    }

    /// Runs a job in the transaction. No savepoint per job: jobs check before they write, so a
    /// job that fails has written nothing (savepoints made SQLite copy every page a job touched
    /// into a statement journal, a tenth of the writer's time). Should a job fail after writing
    /// anyway, its writes must not commit: the transaction is rolled back, every job in it
    /// fails, and this returns false.
    fn run(&mut self, job: Box<dyn ErasedJob>) -> bool {
        let changes_before = self.conn.total_changes();
        let early = job.early();
        let (ok, deliver) = {
            let mut tx = SqliteTx {
                conn: &mut *self.conn,
                sql: &mut *self.sql,
                database: self.database,
            };
            job.run(&mut tx)
        };
        let wrote = self.conn.total_changes() != changes_before;
        if !ok && wrote {
            let _ = plain(self.conn, "ROLLBACK");
            let reason = "the write transaction was rolled back because a job in it failed after writing; nothing in it took effect";
            deliver(Err(Self::failed(self.database, reason.to_owned())));
            for deliver in self.delivers.drain(..) {
                deliver(Err(Self::failed(self.database, reason.to_owned())));
            }
            return false;
        }
        if early && ok {
            // See Database::write_early: its answer need not wait for the fsync.
            deliver(Ok(()));
        } else {
            self.delivers.push(deliver);
        }
        true
    }

    /// Commits without waiting for the disk. Returns the commit's crash-switch ticket and the
    /// answers that wait for it to be durable; `None` if no commit was attempted. A failed
    /// commit's answers are delivered here, and the syncer must still see the attempt for
    /// `durable` to pass its number.
    fn commit(self, durability: &Durability, crash: &CrashSwitch) -> Option<(u32, Vec<Deliver>)> {
        let Batch {
            conn,
            database,
            delivers,
            ..
        } = self;
        if let Some(reason) = durability.failure() {
            let _ = plain(conn, "ROLLBACK");
            for deliver in delivers {
                deliver(Err(sync_failed(database, &reason)));
            }
            return None;
        }
        let crash_ticket = crash.before_commit();
        if let Err(e) = plain(conn, "COMMIT") {
            let _ = plain(conn, "ROLLBACK");
            let error = Self::failed(database, e.to_string());
            for deliver in delivers {
                deliver(Err(error.clone()));
            }
            return Some((0, Vec::new()));
        }
        Some((crash_ticket, delivers))
    }
}

/// The syncer thread: makes commits durable in the order they were made, one `fdatasync` for
/// every commit that arrived since the last one, then answers their callers and the reads
/// that waited for them.
fn sync_loop(
    wal: std::fs::File,
    mut sync: SyncWal,
    queue: std::sync::mpsc::Receiver<ToSync>,
    wake: mpsc::WeakSender<Box<dyn ErasedJob>>,
    durability: Arc<Durability>,
    crash: CrashSwitch,
    database: String,
) {
    let mut reads: Vec<Deliver> = Vec::new();
    let mut committed: Vec<(u32, Vec<Deliver>, std::time::Instant)> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut newest = 0;
        let mut take = |message: ToSync| match message {
            ToSync::Committed {
                number,
                crash_ticket,
                delivers,
                began,
            } => {
                newest = newest.max(number);
                committed.push((crash_ticket, delivers, began));
            }
            ToSync::Read(deliver) => reads.push(deliver),
        };
        take(first);
        while let Ok(message) = queue.try_recv() {
            take(message);
        }
        // A sync that fails leaves the WAL's state on disk unknown: a later sync that succeeds
        // would not bring back pages the kernel dropped, so this never retries.
        let synced = match durability.failure() {
            Some(reason) => Err(reason),
            None => sync(&wal).map_err(|e| {
                let reason = format!("fdatasync of the write-ahead log failed: {e}");
                durability.fail(reason.clone());
                reason
            }),
        };
        match synced {
            Ok(()) => {
                durability.durable.fetch_max(newest, Ordering::SeqCst);
                for (ticket, delivers, began) in committed.drain(..) {
                    crash.after_commit(ticket);
                    durability.stats.durable(began);
                    for deliver in delivers {
                        deliver(Ok(()));
                    }
                }
                for deliver in reads.drain(..) {
                    deliver(Ok(()));
                }
            }
            Err(reason) => {
                let delivers = committed.drain(..).flat_map(|(_, delivers, _)| delivers);
                for deliver in delivers.chain(reads.drain(..)) {
                    deliver(Err(sync_failed(&database, &reason)));
                }
            }
        }
        // The writer may be keeping a batch open until now. A full queue needs no wake: the
        // writer is busy with it.
        if let Some(writes) = wake.upgrade() {
            let _ = writes.try_send(Box::new(Wake));
        }
    }
}

/// Runs a statement that takes no arguments, through the statement cache.
fn plain(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.raw_execute().map(|_| ())
}

/// A reader thread: runs read jobs, each in its own read transaction (one snapshot).
fn read_loop(
    mut conn: Connection,
    queue: Arc<Mutex<mpsc::Receiver<Box<dyn ErasedJob>>>>,
    syncs: std::sync::mpsc::Sender<ToSync>,
    database: String,
) {
    let mut sql = SqlCache::default();
    loop {
        let job = {
            let mut queue = match queue.lock() {
                Ok(queue) => queue,
                Err(poisoned) => poisoned.into_inner(),
            };
            queue.blocking_recv()
        };
        let Some(job) = job else { return };
        if let Err(e) = plain(&conn, "BEGIN") {
            job.fail(DbError::Statement {
                database: database.clone(),
                reason: format!("cannot begin a read transaction: {e}"),
            });
            continue;
        }
        let (_, deliver) = {
            let mut tx = SqliteTx {
                conn: &mut conn,
                sql: &mut sql,
                database: &database,
            };
            job.run(&mut tx)
        };
        let _ = plain(&conn, "COMMIT");
        // What the read saw may include commits not yet durable; its answer waits for a sync,
        // so nothing it tells can be lost by a crash.
        if let Err(std::sync::mpsc::SendError(ToSync::Read(deliver))) =
            syncs.send(ToSync::Read(deliver))
        {
            deliver(Err(DbError::Closed(database.clone())));
        }
    }
}

/// The checkpointer thread: restarts a WAL grown past `WAL_BYTES_RESTART`, until the database
/// is dropped.
fn checkpoint_loop(conn: Connection, ticks: std::sync::mpsc::Receiver<()>, wal: PathBuf) {
    loop {
        match ticks.recv_timeout(Duration::from_millis(CHECKPOINT_INTERVAL_MS)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_BYTES_RESTART) {
            // A checkpoint that cannot run now (busy) runs at the next tick; it is never
            // needed for durability, only to keep the WAL short.
            let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
        }
    }
}

/// `$N` placeholders rewritten as SQLite's `?N`, once per statement text. Statements are
/// `'static` text, so the text's address identifies it: a lookup hashes one word rather than
/// the whole text (hashing the text showed in the writer's profile).
#[derive(Default)]
struct SqlCache {
    translated: HashMap<(usize, usize), Box<str>, BuildHasherDefault<AddressHasher>>,
}

impl SqlCache {
    fn get(&mut self, sql: &'static str) -> &str {
        self.translated
            .entry((sql.as_ptr() as usize, sql.len()))
            .or_insert_with(|| translate_placeholders(sql).into_boxed_str())
    }
}

/// Hashes a statement's address and length: a multiply of each, enough to spread aligned
/// addresses over the table.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Rewrites `$1` as `?1` outside string literals.
fn translate_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '$' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            _ => out.push(c),
        }
    }
    out
}

/// A transaction on the writer's or a reader's connection.
pub struct SqliteTx<'c> {
    conn: &'c mut Connection,
    sql: &'c mut SqlCache,
    database: &'c str,
}

impl SqliteTx<'_> {
    fn error(&self, e: rusqlite::Error) -> DbError {
        DbError::Statement {
            database: self.database.to_owned(),
            reason: e.to_string(),
        }
    }

    fn prepared(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<rusqlite::CachedStatement<'_>, DbError> {
        let text = self.sql.get(sql);
        let mut statement = match self.conn.prepare_cached(text) {
            Ok(statement) => statement,
            Err(e) => {
                return Err(DbError::Statement {
                    database: self.database.to_owned(),
                    reason: format!("{e} in: {sql}"),
                });
            }
        };
        assert_eq!(
            statement.parameter_count(),
            args.len(),
            "statement takes {} arguments but was given {}: {sql}",
            statement.parameter_count(),
            args.len()
        );
        for (index, arg) in args.iter().enumerate() {
            let bound = match *arg {
                Arg::Int(v) => statement.raw_bind_parameter(index + 1, v),
                Arg::Text(v) => statement.raw_bind_parameter(index + 1, v),
                Arg::Blob(v) => statement.raw_bind_parameter(index + 1, v),
                Arg::OptInt(v) => statement.raw_bind_parameter(index + 1, v),
                Arg::OptText(v) => statement.raw_bind_parameter(index + 1, v),
                Arg::TextList(_) | Arg::IntList(_) | Arg::OptTextList(_) => {
                    return Err(DbError::Statement {
                        database: self.database.to_owned(),
                        reason: format!("SQLite takes no list argument ({})", index + 1),
                    });
                }
            };
            if let Err(e) = bound {
                return Err(DbError::Statement {
                    database: self.database.to_owned(),
                    reason: format!("cannot bind argument {}: {e}", index + 1),
                });
            }
        }
        Ok(statement)
    }

    fn execute_now(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, DbError> {
        let mut statement = self.prepared(sql, args)?;
        let changed = statement.raw_execute();
        drop(statement);
        changed.map(|n| n as u64).map_err(|e| self.error(e))
    }

    fn fetch_now(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
        limit: usize,
    ) -> Result<Vec<Row>, DbError> {
        let mut statement = self.prepared(sql, args)?;
        let columns = statement.column_count();
        let mut rows = statement.raw_query();
        let mut out = Vec::new();
        let result = loop {
            if out.len() == limit {
                break Ok(());
            }
            match rows.next() {
                Ok(Some(row)) => match row_values(row, columns) {
                    Ok(values) => out.push(Row(values)),
                    Err(e) => break Err(e),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(rows);
        drop(statement);
        result.map(|()| out).map_err(|e| self.error(e))
    }
}

fn row_values(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Vec<Value>> {
    let mut values = Vec::with_capacity(columns);
    for index in 0..columns {
        values.push(match row.get_ref(index)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
            ValueRef::Blob(v) => Value::Blob(v.to_vec()),
            // The schema stores no floating point; a computed one is truncated.
            ValueRef::Real(v) => Value::Int(v as i64),
        });
    }
    Ok(values)
}

impl Tx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(std::future::ready(self.execute_now(sql, args)))
    }

    fn fetch_optional<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Option<Row>, DbError>> {
        let rows = self.fetch_now(sql, args, 1);
        Box::pin(std::future::ready(rows.map(|rows| rows.into_iter().next())))
    }

    fn fetch_all<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, DbError>> {
        Box::pin(std::future::ready(self.fetch_now(sql, args, usize::MAX)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A scratch directory for one test, removed when dropped.
    pub(crate) struct Scratch(pub(crate) PathBuf);

    impl Scratch {
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("wasaga-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the scratch directory");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Copies the database and its WAL as they are on disk while open: what a crash leaves.
    fn crash_image(from: &Path, to: &Path) {
        std::fs::copy(from, to).expect("copy the database file");
        std::fs::copy(wal_path(from), wal_path(to)).expect("copy the WAL");
    }

    fn wal_length(database: &Path) -> u64 {
        std::fs::metadata(wal_path(database))
            .expect("the WAL exists")
            .len()
    }

    pub(crate) fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count the rows")
    }

    #[test]
    fn committed_frames_before_the_preallocated_zeros_are_recovered() {
        let scratch = Scratch::new("wal-preallocated");
        let original = scratch.0.join("a.db");
        let (writer, _readers, _checkpointer) =
            open_connections(&original).expect("open the database");
        let page_size: i64 = writer
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .expect("read the page size");
        let preallocated = preallocated_wal_bytes(page_size);
        assert!(wal_length(&original) >= preallocated);
        writer
            .execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1), (2);")
            .expect("create and fill a table");
        writer
            .execute("INSERT INTO t VALUES (3)", [])
            .expect("insert a row");
        // The WAL holds the commits' frames, then zeros, and is no longer than preallocated:
        // the commits overwrote the zeros rather than growing the file.
        assert_eq!(wal_length(&original), preallocated);

        // Recovery from the crash image reads every committed frame and stops at the zeros.
        let image = scratch.0.join("b.db");
        crash_image(&original, &image);
        let (reopened, _readers, _checkpointer) =
            open_connections(&image).expect("open the database");
        assert_eq!(count(&reopened), 3);
        // Writing after recovery appends after the recovered frames, and survives a crash too.
        reopened
            .execute("INSERT INTO t VALUES (4)", [])
            .expect("insert a row");
        let again = scratch.0.join("c.db");
        crash_image(&image, &again);
        let (recovered, _readers, _checkpointer) =
            open_connections(&again).expect("open the database");
        assert_eq!(count(&recovered), 4);
    }

    /// A write that creates the table `t` if needed and inserts `n`.
    fn insert(n: i64) -> Work<(), DbError> {
        Box::new(move |tx| {
            Box::pin(async move {
                tx.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)", &[])
                    .await?;
                tx.execute("INSERT INTO t (n) VALUES ($1)", &[Arg::Int(n)])
                    .await?;
                Ok(())
            })
        })
    }

    fn count_rows() -> Work<i64, DbError> {
        Box::new(|tx| {
            Box::pin(async move {
                let row = tx.fetch_optional("SELECT count(*) FROM t", &[]).await?;
                row.expect("count returns a row").int(0)
            })
        })
    }

    /// A sync that waits to be let through, and says when it has been entered.
    fn gated_sync() -> (
        SyncWal,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (entered, entries) = std::sync::mpsc::channel();
        let (gate, passes) = std::sync::mpsc::channel::<()>();
        let sync: SyncWal = Box::new(move |wal| {
            let _ = entered.send(());
            passes
                .recv_timeout(Duration::from_secs(30))
                .expect("the test opens the gate");
            wal.sync_data()
        });
        (sync, entries, gate)
    }

    /// The gated syncer's side: waits until it has entered its next sync.
    struct Entries(Arc<Mutex<std::sync::mpsc::Receiver<()>>>);

    impl Entries {
        async fn next(&self) {
            let entries = self.0.clone();
            tokio::task::spawn_blocking(move || {
                entries
                    .lock()
                    .expect("one waiter at a time")
                    .recv_timeout(Duration::from_secs(30))
                    .expect("the syncer enters a sync")
            })
            .await
            .expect("the waiting thread finished");
        }
    }

    /// Long enough for an answer given too early to have reached its task.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn open_gated(
        scratch: &Scratch,
    ) -> (Arc<SqliteDatabase>, Entries, std::sync::mpsc::Sender<()>) {
        let (sync, entries, gate) = gated_sync();
        let db = SqliteDatabase::open_syncing_with(
            &scratch.0.join("a.db"),
            CrashSwitch::default(),
            sync,
        )
        .await
        .expect("open the database");
        (Arc::new(db), Entries(Arc::new(Mutex::new(entries))), gate)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_write_or_read_is_answered_before_a_wal_sync_after_it() {
        let scratch = Scratch::new("sync-gate");
        let (db, entries, gate) = open_gated(&scratch).await;

        let writing = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(1)).await }
        });
        // The syncer holds the commit in its sync: SQLite's COMMIT has returned, so the row is
        // visible, but it is not durable, and the write must not be answered.
        entries.next().await;
        let reading = tokio::spawn({
            let db = db.clone();
            async move { db.read(count_rows()).await }
        });
        settle().await;
        assert!(
            !writing.is_finished(),
            "a write was answered before the WAL's sync returned"
        );
        gate.send(()).expect("let the first sync through");
        writing
            .await
            .expect("the writing task finished")
            .expect("the write is answered once its sync returned");

        // The read saw the row while its commit was not yet durable: its answer waits for a
        // sync begun after it, not the one already under way when it ran.
        entries.next().await;
        settle().await;
        assert!(
            !reading.is_finished(),
            "a read was answered before a WAL sync begun after it returned"
        );
        gate.send(()).expect("let the second sync through");
        let rows = reading
            .await
            .expect("the reading task finished")
            .expect("the read is answered");
        assert_eq!(rows, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_arriving_during_a_sync_commit_together_after_it() {
        let scratch = Scratch::new("sync-batch");
        let (db, entries, gate) = open_gated(&scratch).await;
        let first = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(1)).await }
        });
        entries.next().await;
        let (commits_before, jobs_before) = db.stats().read();
        let mut later = Vec::new();
        for n in 2..=4 {
            later.push(tokio::spawn({
                let db = db.clone();
                async move { db.write(insert(n)).await }
            }));
        }
        settle().await;
        // The writer runs the three writes but keeps their transaction open: committing
        // before the syncer is free would make nothing durable sooner.
        gate.send(()).expect("let the first sync through");
        first
            .await
            .expect("the task finished")
            .expect("the first write is durable");
        entries.next().await;
        gate.send(()).expect("let the second sync through");
        for write in later {
            write
                .await
                .expect("the task finished")
                .expect("a later write is durable");
        }
        let (commits, jobs) = db.stats().read();
        assert_eq!(
            (commits - commits_before, jobs - jobs_before),
            (1, 3),
            "the writes that arrived during the sync committed as one batch"
        );
        // The read waits for a sync of its own.
        gate.send(()).expect("let the read's sync through");
        assert_eq!(db.read(count_rows()).await.expect("count the rows"), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_wal_sync_fails_its_writes_and_refuses_all_later_work() {
        let scratch = Scratch::new("sync-fails");
        let db = SqliteDatabase::open_syncing_with(
            &scratch.0.join("a.db"),
            CrashSwitch::default(),
            Box::new(|_| Err(std::io::Error::other("injected I/O error"))),
        )
        .await
        .expect("open the database");
        let unsynced = |error: DbError| match error {
            DbError::Unsynced { ref reason, .. } => {
                assert!(reason.contains("injected I/O error"), "{error}");
                assert!(error.to_string().contains("restart wasaga"), "{error}");
            }
            other => panic!("expected the sync's failure, got {other}"),
        };
        unsynced(db.write(insert(1)).await.expect_err("its sync failed"));
        unsynced(
            db.write(insert(2))
                .await
                .expect_err("nothing is written after it"),
        );
        unsynced(
            db.read(count_rows())
                .await
                .expect_err("nothing is read after it"),
        );
    }

    #[test]
    fn placeholders_become_sqlite_style_outside_literals() {
        assert_eq!(
            translate_placeholders("SELECT $1, '$2', $10 FROM t WHERE a = $2"),
            "SELECT ?1, '$2', ?10 FROM t WHERE a = ?2"
        );
    }
}
