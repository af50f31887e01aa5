//! The durable journal: append-only events per run, the `runs` projection and the module
//! store, in a wasaga SQLite database (WAL, `synchronous=FULL`).
//!
//! Appends are version-checked: `(run_id, seq)` is unique and the projection's `next_seq`
//! must match, so two writers can never both append at one position of a run.

use crate::db::Database;
use crate::event::{Event, RunStatus};
use serde::Serialize;
use sqlx::{Row, SqliteConnection};
use std::sync::Arc;

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Open(#[from] crate::db::OpenError),
    #[error("journal database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "journal of run {run_id} already has an event at seq {seq}: another process appended to it"
    )]
    VersionConflict { run_id: String, seq: i64 },
    #[error("journal of run {run_id} is corrupt at seq {seq}: {reason}")]
    Corrupt {
        run_id: String,
        seq: i64,
        reason: String,
    },
    #[error("run {0} does not exist; `wasaga runs list` shows the known runs")]
    UnknownRun(String),
    #[error("module {0} is not in the module store")]
    UnknownModule(String),
}

/// One stored event with its position and time.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// A row of the `runs` projection.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow: String,
    pub module_hash: String,
    pub status: RunStatus,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A stored module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleRecord {
    pub hash: String,
    pub name: String,
    pub size_bytes: u64,
    pub deployed_at_ms: u64,
}

/// `SELECT <the columns of RunRecord> FROM runs <rest>`, as one static string.
macro_rules! run_select {
    ($rest:literal) => {
        concat!(
            "SELECT run_id, workflow, module_hash, status, input, output, error, ",
            "created_at_ms, updated_at_ms FROM runs ",
            $rest
        )
    };
}

/// The journal. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Journal {
    db: Arc<Database>,
}

/// Milliseconds since the Unix epoch by the host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    pub fn new(db: Arc<Database>) -> Self {
        Journal { db }
    }

    /// The database the journal lives in.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Stores a module's bytes under its content hash (idempotent).
    pub async fn put_module(
        &self,
        hash: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), JournalError> {
        let (hash, name, bytes) = (hash.to_owned(), name.to_owned(), bytes.to_vec());
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES (?, ?, ?, ?, ?)
                         ON CONFLICT (hash) DO NOTHING",
                    )
                    .bind(&hash)
                    .bind(&name)
                    .bind(&bytes)
                    .bind(bytes.len() as i64)
                    .bind(now_ms() as i64)
                    .execute(conn)
                    .await?;
                    Ok::<_, JournalError>(())
                })
            })
            .await
    }

    /// The bytes of a stored module.
    pub async fn module_bytes(&self, hash: &str) -> Result<Vec<u8>, JournalError> {
        sqlx::query_scalar("SELECT bytes FROM modules WHERE hash = ?")
            .bind(hash)
            .fetch_optional(self.db.readers())
            .await?
            .ok_or_else(|| JournalError::UnknownModule(hash.to_owned()))
    }

    /// Creates a run with its `started` event, or returns the existing run with that id
    /// (starting the same run id twice is idempotent). Returns whether it was created.
    pub async fn create_run(&self, run_id: &str, started: &Event) -> Result<bool, JournalError> {
        let Event::Started {
            workflow,
            module_hash,
            input,
            ..
        } = started
        else {
            unreachable!("create_run takes a started event");
        };
        let (run_id, workflow, module_hash, input) = (
            run_id.to_owned(),
            workflow.clone(),
            module_hash.clone(),
            input.clone(),
        );
        let body = serde_json::to_string(started).expect("events always serialize");
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_ms() as i64;
                    let inserted = sqlx::query(
                        "INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms, updated_at_ms, next_seq)
                         VALUES (?, ?, ?, 'running', ?, ?, ?, 2) ON CONFLICT (run_id) DO NOTHING",
                    )
                    .bind(&run_id)
                    .bind(&workflow)
                    .bind(&module_hash)
                    .bind(&input)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if inserted == 1 {
                        sqlx::query(
                            "INSERT INTO events (run_id, seq, at_ms, kind, body) VALUES (?, 1, ?, 'started', ?)",
                        )
                        .bind(&run_id)
                        .bind(now)
                        .bind(&body)
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok::<_, JournalError>(inserted == 1)
                })
            })
            .await
    }

    /// Appends `events` to a run at `next_seq` in one durable transaction; returns the next
    /// free seq.
    pub async fn append(
        &self,
        run_id: &str,
        next_seq: i64,
        events: Vec<Event>,
    ) -> Result<i64, JournalError> {
        let run_id = run_id.to_owned();
        self.db
            .write(move |conn| {
                Box::pin(async move { append_events(conn, &run_id, next_seq, &events).await })
            })
            .await
    }
}

/// Appends `events` at `next_seq` on a connection inside a write transaction (which may also
/// carry a co-located participant's write); returns the next free seq.
pub(crate) async fn append_events(
    tx: &mut SqliteConnection,
    run_id: &str,
    next_seq: i64,
    events: &[Event],
) -> Result<i64, JournalError> {
    let now = now_ms() as i64;
    let mut seq = next_seq;
    let mut projection: Option<(&'static str, Option<&str>, Option<&str>)> = None;
    for event in events {
        let body = serde_json::to_string(event).expect("events always serialize");
        let inserted = sqlx::query(
            "INSERT INTO events (run_id, seq, at_ms, kind, body) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (run_id, seq) DO NOTHING",
        )
        .bind(run_id)
        .bind(seq)
        .bind(now)
        .bind(event.kind())
        .bind(&body)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted != 1 {
            return Err(JournalError::VersionConflict {
                run_id: run_id.to_owned(),
                seq,
            });
        }
        seq += 1;
        match event {
            Event::Completed { output } => projection = Some(("completed", Some(output), None)),
            Event::Compensating { cause } => projection = Some(("compensating", None, Some(cause))),
            Event::Compensated { cause } => projection = Some(("compensated", None, Some(cause))),
            Event::Stuck { reason } => projection = Some(("stuck", None, Some(reason))),
            _ => {}
        }
    }
    let updated = match projection {
        Some((status, output, error)) => sqlx::query(
            "UPDATE runs SET next_seq = ?, updated_at_ms = ?, status = ?, output = ?, error = ?
                 WHERE run_id = ? AND next_seq = ?",
        )
        .bind(seq)
        .bind(now)
        .bind(status)
        .bind(output)
        .bind(error)
        .bind(run_id)
        .bind(next_seq)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        None => sqlx::query(
            "UPDATE runs SET next_seq = ?, updated_at_ms = ? WHERE run_id = ? AND next_seq = ?",
        )
        .bind(seq)
        .bind(now)
        .bind(run_id)
        .bind(next_seq)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
    };
    if updated != 1 {
        return Err(JournalError::VersionConflict {
            run_id: run_id.to_owned(),
            seq: next_seq,
        });
    }
    Ok(seq)
}

impl Journal {
    /// Every event of a run, in order.
    pub async fn events(&self, run_id: &str) -> Result<Vec<StoredEvent>, JournalError> {
        let rows = sqlx::query("SELECT seq, at_ms, body FROM events WHERE run_id = ? ORDER BY seq")
            .bind(run_id)
            .fetch_all(self.db.readers())
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let seq: i64 = row.get(0);
            let body: String = row.get(2);
            if seq != index as i64 + 1 {
                return Err(JournalError::Corrupt {
                    run_id: run_id.to_owned(),
                    seq,
                    reason: format!("expected seq {}", index + 1),
                });
            }
            let event = serde_json::from_str(&body).map_err(|e| JournalError::Corrupt {
                run_id: run_id.to_owned(),
                seq,
                reason: e.to_string(),
            })?;
            events.push(StoredEvent {
                seq,
                at_ms: row.get::<i64, _>(1) as u64,
                event,
            });
        }
        Ok(events)
    }

    /// One run's projection row.
    pub async fn run(&self, run_id: &str) -> Result<RunRecord, JournalError> {
        let row = sqlx::query(run_select!("WHERE run_id = ?"))
            .bind(run_id)
            .fetch_optional(self.db.readers())
            .await?
            .ok_or_else(|| JournalError::UnknownRun(run_id.to_owned()))?;
        run_record(&row)
    }

    /// Runs, newest first, optionally only those with `status`, at most `limit`.
    pub async fn runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, JournalError> {
        let rows = match status {
            Some(status) => {
                sqlx::query(run_select!(
                    "WHERE status = ? ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
                ))
                .bind(status.as_str())
                .bind(limit)
                .fetch_all(self.db.readers())
                .await?
            }
            None => {
                sqlx::query(run_select!(
                    "ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
                ))
                .bind(limit)
                .fetch_all(self.db.readers())
                .await?
            }
        };
        rows.iter().map(run_record).collect()
    }

    /// Ids of runs that have not reached a terminal state, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<String>, JournalError> {
        Ok(sqlx::query_scalar(
            "SELECT run_id FROM runs WHERE status IN ('running', 'compensating')
             ORDER BY created_at_ms, run_id",
        )
        .fetch_all(self.db.readers())
        .await?)
    }
}

fn run_record(row: &sqlx::sqlite::SqliteRow) -> Result<RunRecord, JournalError> {
    let run_id: String = row.get(0);
    let status: String = row.get(3);
    let status = RunStatus::parse(&status).ok_or_else(|| JournalError::Corrupt {
        run_id: run_id.clone(),
        seq: 0,
        reason: format!("unknown status {status}"),
    })?;
    Ok(RunRecord {
        run_id,
        workflow: row.get(1),
        module_hash: row.get(2),
        status,
        input: row.get(4),
        output: row.get(5),
        error: row.get(6),
        created_at_ms: row.get::<i64, _>(7) as u64,
        updated_at_ms: row.get::<i64, _>(8) as u64,
    })
}
