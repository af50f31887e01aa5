//! The durable journal: append-only events per run, the `runs` projection, the module store
//! and the registry of deployed workflow versions, in a wasaga database (SQLite or
//! PostgreSQL, see `db`).
//!
//! Appends are version-checked and fenced: `(run_id, seq)` is unique, the projection's
//! `next_seq` must match, and the run must still be owned by this journal's owner. A host owns
//! a run through a lease in its `runs` row (`owner`, `lease_expires_at_ms`); a host whose lease
//! expired (it was paused, say) and was taken over can no longer append to that run.

mod batch;

use batch::Append;
pub use batch::{Answer, Batched, Batcher, answered, write_all};
use serde::Serialize;
use std::sync::{Arc, OnceLock};
use wasaga_core::event::{Event, RunStatus};
use wasaga_db::{Database, DbError, Dialect, Row, Tx};

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Open(#[from] wasaga_db::OpenError),
    #[error("journal database error: {0}")]
    Database(#[from] DbError),
    #[error(
        "journal of run {run_id} already has an event at seq {seq}: another process appended to it"
    )]
    VersionConflict { run_id: String, seq: i64 },
    #[error(
        "run {run_id} is now owned by {owner} (this host's lease on it expired): this host stops executing it"
    )]
    NotOwner { run_id: String, owner: String },
    #[error("journal of run {run_id} is corrupt at seq {seq}: {reason}")]
    Corrupt {
        run_id: String,
        seq: i64,
        reason: String,
    },
    #[error("run {0} does not exist; `wasaga runs list` shows the known runs")]
    UnknownRun(String),
    /// A run started with its first write found its id taken.
    #[error("run {0} already exists")]
    RunExists(String),
    #[error("module {0} is not in the module store")]
    UnknownModule(String),
    #[error(
        "workflow '{0}' has never been deployed; deploy it with `wasaga deploy <file.wasm> --name {0}`"
    )]
    UnknownWorkflow(String),
    #[error(
        "workflow '{workflow}' has no version {version}; `wasaga versions {workflow}` lists them"
    )]
    UnknownVersion { workflow: String, version: i64 },
    #[error(
        "workflow '{workflow}' is at version {version}, its first: there is nothing to roll back to"
    )]
    NothingToRollBack { workflow: String, version: i64 },
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
    /// The host that executes (or last executed) the run.
    pub owner: Option<String>,
    /// The deployed version of the workflow the run's module is, if it was deployed.
    pub version: Option<i64>,
}

/// One deployed version of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deployment {
    pub workflow: String,
    pub version: i64,
    pub hash: String,
    pub deployed_at_ms: u64,
    /// Whether new runs of the workflow get this version.
    pub active: bool,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deployed {
    pub deployment: Deployment,
    /// False when the module was already a version of the workflow (it is re-activated).
    pub new_version: bool,
    /// The version that was active before, if any.
    pub previous: Option<i64>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub workflow: Option<String>,
    pub limit: u32,
}

/// `SELECT <the columns of RunRecord> FROM runs <rest>`, as one static string.
macro_rules! run_select {
    ($rest:literal) => {
        concat!(
            "SELECT r.run_id, r.workflow, r.module_hash, r.status, r.input, r.output, r.error, ",
            "r.created_at_ms, r.updated_at_ms, r.owner, d.version FROM runs r ",
            "LEFT JOIN deployments d ON d.workflow = r.workflow AND d.hash = r.module_hash ",
            $rest
        )
    };
}

/// The journal, as one host (its `owner`) sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Journal {
    db: Arc<Database>,
    owner: Arc<str>,
    run_lease_ms: u64,
    /// Batches of appends on PostgreSQL (`batch`), started by the first.
    appends: Arc<OnceLock<Batcher<Append>>>,
    /// Whether a step's outcome may be answered before its write is durable.
    early_answers: bool,
}

/// Milliseconds since the Unix epoch by the host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// The journal in `db`, for the host `owner`, whose leases on runs last `run_lease_ms`
    /// unless renewed.
    pub fn new(db: Arc<Database>, owner: String, run_lease_ms: u64) -> Self {
        Journal {
            db,
            owner: owner.into(),
            run_lease_ms,
            appends: Arc::default(),
            early_answers: true,
        }
    }

    /// This journal, answering steps only once durable unless `early` (see
    /// the host config's `early_answers`).
    pub fn with_early_answers(mut self, early: bool) -> Self {
        self.early_answers = early;
        self
    }

    /// Whether a step's outcome may be answered before its write is durable.
    pub fn early_answers(&self) -> bool {
        self.early_answers
    }

    /// The database the journal lives in.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The host this journal appends for.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn run_lease_ms(&self) -> u64 {
        self.run_lease_ms
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
            .write(move |tx| {
                Box::pin(async move {
                    put_module(tx, &hash, &name, &bytes).await?;
                    Ok::<_, JournalError>(())
                })
            })
            .await
    }

    /// The bytes of a stored module.
    pub async fn module_bytes(&self, hash: &str) -> Result<Vec<u8>, JournalError> {
        let hash = hash.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    tx.fetch_optional(
                        "SELECT bytes FROM modules WHERE hash = $1",
                        wasaga_db::args![&hash],
                    )
                    .await?
                    .map(|row| row.blob(0))
                    .transpose()?
                    .ok_or(JournalError::UnknownModule(hash))
                })
            })
            .await
    }

    /// Creates a run with its `started` event, owned by this host, or finds the existing run
    /// with that id (starting the same run id twice is idempotent). Returns whether it was
    /// created.
    pub async fn create_run(&self, run_id: &str, started: &Event) -> Result<bool, JournalError> {
        let run_id = run_id.to_owned();
        let started = started.clone();
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms);
        self.db
            .write(move |tx| {
                Box::pin(async move { create_run(tx, &run_id, &started, &owner, lease_ms).await })
            })
            .await
    }

    /// Appends `events` to a run at `next_seq` in one durable transaction; returns the next
    /// free seq. Fails with [`JournalError::NotOwner`] if another host has taken the run over.
    pub async fn append(
        &self,
        run_id: &str,
        next_seq: i64,
        events: Vec<Event>,
    ) -> Result<i64, JournalError> {
        let run_id = run_id.to_owned();
        let owner = self.owner.clone();
        let events = Encoded::new(&events);
        if self.db.dialect() == Dialect::Postgres && !events.is_empty() {
            // One statement, batched with other runs' appends (see `batch`).
            let append = Append {
                run_id,
                owner: owner.to_string(),
                next_seq,
                events,
            };
            return self
                .appends
                .get_or_init(|| Batcher::start(self.db.clone()))
                .write(append)
                .await;
        }
        self.db
            .write(move |tx| {
                Box::pin(async move { append_events(tx, &run_id, &owner, next_seq, &events).await })
            })
            .await
    }

    /// Creates the run with `started` (as [`Journal::create_run`]) and appends `events` after
    /// it, in one durable transaction: for a run whose caller waits for its end, so that its
    /// start costs no commit of its own. Fails with [`JournalError::RunExists`] if the id is
    /// taken, writing nothing.
    pub async fn create_and_append(
        &self,
        run_id: &str,
        started: Event,
        events: Vec<Event>,
    ) -> Result<i64, JournalError> {
        let run_id = run_id.to_owned();
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms);
        let mut encoded = Encoded::new(std::slice::from_ref(&started));
        for event in &events {
            encoded.push(event);
        }
        let reserved = first_next_seq(self.db.dialect(), encoded.len());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    if !insert_run(tx, &run_id, &started, &owner, lease_ms, reserved).await? {
                        return Err(JournalError::RunExists(run_id));
                    }
                    append_created(tx, &run_id, &owner, reserved, &encoded).await
                })
            })
            .await
    }

    /// Every event of a run, in order.
    pub async fn events(&self, run_id: &str) -> Result<Vec<StoredEvent>, JournalError> {
        let run_id = run_id.to_owned();
        self.db
            .read(move |tx| Box::pin(async move { events(tx, &run_id).await }))
            .await
    }

    /// One run's projection row.
    pub async fn run(&self, run_id: &str) -> Result<RunRecord, JournalError> {
        let run_id = run_id.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional(
                            run_select!("WHERE r.run_id = $1"),
                            wasaga_db::args![&run_id],
                        )
                        .await?
                        .ok_or_else(|| JournalError::UnknownRun(run_id.clone()))?;
                    run_record(&row)
                })
            })
            .await
    }

    /// A run's projection row and its events, from one snapshot.
    pub async fn run_with_events(
        &self,
        run_id: &str,
    ) -> Result<(RunRecord, Vec<StoredEvent>), JournalError> {
        let run_id = run_id.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional(
                            run_select!("WHERE r.run_id = $1"),
                            wasaga_db::args![&run_id],
                        )
                        .await?
                        .ok_or_else(|| JournalError::UnknownRun(run_id.clone()))?;
                    Ok((run_record(&row)?, events(tx, &run_id).await?))
                })
            })
            .await
    }

    /// Runs, newest first, filtered.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>, JournalError> {
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let status = filter.status.map(RunStatus::as_str);
                    let rows = tx
                        .fetch_all(
                            run_select!(
                                "WHERE ($1 IS NULL OR r.status = $1) AND ($2 IS NULL OR r.workflow = $2)
                                 ORDER BY r.created_at_ms DESC, r.run_id DESC LIMIT $3"
                            ),
                            wasaga_db::args![status, filter.workflow.as_deref(), i64::from(filter.limit)],
                        )
                        .await?;
                    rows.iter().map(run_record).collect()
                })
            })
            .await
    }

    /// Takes over unfinished runs (running or compensating) that no live host holds: those
    /// without an owner or whose lease has expired (this host's own included: a run whose
    /// lease it let lapse is one it stopped driving), or, with `takeover_all`, every one of
    /// them (for a process that knows every previous owner is dead). Returns their ids, oldest
    /// first, at most `limit`.
    pub async fn claim(&self, limit: u32, takeover_all: bool) -> Result<Vec<String>, JournalError> {
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms as i64);
        let (host_now, all) = (now_ms() as i64, i64::from(takeover_all));
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let sql = match tx.dialect() {
                        Dialect::Sqlite => {
                            "UPDATE runs SET owner = $1, lease_expires_at_ms = $2 + $3
                             WHERE run_id IN (
                                 SELECT run_id FROM runs
                                 WHERE status IN ('running', 'compensating')
                                   AND (owner IS NULL OR lease_expires_at_ms < $2 OR $4 = 1)
                                 ORDER BY created_at_ms, run_id LIMIT $5)
                             RETURNING run_id, created_at_ms"
                        }
                        Dialect::Postgres => {
                            "UPDATE runs SET owner = $1,
                                 lease_expires_at_ms = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3
                             WHERE run_id IN (
                                 SELECT run_id FROM runs
                                 WHERE status IN ('running', 'compensating')
                                   AND (owner IS NULL
                                        OR lease_expires_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
                                        OR $2 = 1)
                                 ORDER BY created_at_ms, run_id LIMIT $4
                                 FOR UPDATE SKIP LOCKED)
                             RETURNING run_id, created_at_ms"
                        }
                    };
                    let limit = i64::from(limit);
                    let rows = match tx.dialect() {
                        Dialect::Sqlite => {
                            tx.fetch_all(sql, wasaga_db::args![&*owner, host_now, lease_ms, all, limit])
                                .await?
                        }
                        Dialect::Postgres => {
                            tx.fetch_all(sql, wasaga_db::args![&*owner, all, lease_ms, limit])
                                .await?
                        }
                    };
                    let mut claimed = rows
                        .iter()
                        .map(|r| Ok((r.int(1)?, r.text(0)?)))
                        .collect::<Result<Vec<_>, DbError>>()?;
                    claimed.sort();
                    Ok::<_, JournalError>(claimed.into_iter().map(|(_, id)| id).collect())
                })
            })
            .await
    }

    /// Takes a stuck run for this host, so that `runs retry` can compensate it again. A stuck
    /// run holds no live lease (nothing executes it), unless another host is retrying it now.
    pub async fn claim_stuck(&self, run_id: &str) -> Result<bool, JournalError> {
        let (run_id, owner, lease_ms) = (
            run_id.to_owned(),
            self.owner.clone(),
            self.run_lease_ms as i64,
        );
        let host_now = now_ms() as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let sql = match tx.dialect() {
                        Dialect::Sqlite => {
                            "UPDATE runs SET owner = $1, lease_expires_at_ms = $2 + $3
                             WHERE run_id = $4 AND status = 'stuck'
                               AND (owner IS NULL OR owner = $1 OR lease_expires_at_ms < $2)"
                        }
                        Dialect::Postgres => {
                            "UPDATE runs SET owner = $1,
                                 lease_expires_at_ms = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3
                             WHERE run_id = $2 AND status = 'stuck'
                               AND (owner IS NULL OR owner = $1
                                    OR lease_expires_at_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))"
                        }
                    };
                    let changed = match tx.dialect() {
                        Dialect::Sqlite => {
                            tx.execute(sql, wasaga_db::args![&*owner, host_now, lease_ms, &run_id])
                                .await?
                        }
                        Dialect::Postgres => {
                            tx.execute(sql, wasaga_db::args![&*owner, &run_id, lease_ms]).await?
                        }
                    };
                    Ok::<_, JournalError>(changed == 1)
                })
            })
            .await
    }

    /// Extends this host's leases on `run_ids`; returns the ids of those it has lost: runs
    /// another host took over, or that this host gave up. A run with no row yet is not lost:
    /// its first write, which creates it, may still be on its way.
    ///
    /// On PostgreSQL a run whose row is locked right now (a write of it in flight, in a batch
    /// with other runs' writes) is skipped rather than waited for: waiting for many rows in one
    /// statement while a batch holds some of them and waits for others would be a deadlock.
    /// Its lease is extended next time; it lasts three renewal periods.
    pub async fn renew(&self, run_ids: &[String]) -> Result<Vec<String>, JournalError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(run_ids).expect("strings always serialize");
        let (owner, lease_ms) = (self.owner.clone(), self.run_lease_ms as i64);
        let host_now = now_ms() as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let lost = match tx.dialect() {
                        Dialect::Sqlite => {
                            tx.execute(
                                "UPDATE runs SET lease_expires_at_ms = $1 + $2
                                 WHERE owner = $3 AND run_id IN (SELECT value FROM json_each($4))",
                                wasaga_db::args![host_now, lease_ms, &*owner, &ids],
                            )
                            .await?;
                            tx.fetch_all(
                                "SELECT run_id FROM runs
                                 WHERE run_id IN (SELECT value FROM json_each($1))
                                   AND (owner IS NULL OR owner <> $2)",
                                wasaga_db::args![&ids, &*owner],
                            )
                            .await?
                        }
                        Dialect::Postgres => {
                            tx.execute(
                                "UPDATE runs SET lease_expires_at_ms =
                                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $1
                                 WHERE run_id IN (
                                     SELECT run_id FROM runs
                                     WHERE owner = $2
                                       AND run_id IN (SELECT json_array_elements_text(CAST($3 AS json)))
                                     FOR UPDATE SKIP LOCKED)",
                                wasaga_db::args![lease_ms, &*owner, &ids],
                            )
                            .await?;
                            tx.fetch_all(
                                "SELECT run_id FROM runs
                                 WHERE run_id IN (SELECT json_array_elements_text(CAST($1 AS json)))
                                   AND (owner IS NULL OR owner <> $2)",
                                wasaga_db::args![&ids, &*owner],
                            )
                            .await?
                        }
                    };
                    Ok::<_, JournalError>(
                        lost.iter()
                            .map(|r| r.text(0))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                })
            })
            .await
    }

    /// Gives up this host's leases on its unfinished runs, so another host (or this one's next
    /// start) resumes them at once rather than after the lease expires. For a clean shutdown.
    pub async fn release_leases(&self) -> Result<u64, JournalError> {
        let owner = self.owner.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    Ok::<_, JournalError>(
                        tx.execute(
                            "UPDATE runs SET owner = NULL, lease_expires_at_ms = 0
                             WHERE owner = $1 AND status IN ('running', 'compensating')",
                            wasaga_db::args![&*owner],
                        )
                        .await?,
                    )
                })
            })
            .await
    }

    /// Stores `bytes` (already validated) and makes it the version new runs of `workflow`
    /// get. A module that is already a version of the workflow is re-activated, not added.
    pub async fn deploy(
        &self,
        workflow: &str,
        hash: &str,
        bytes: &[u8],
    ) -> Result<Deployed, JournalError> {
        let (workflow, hash, bytes) = (workflow.to_owned(), hash.to_owned(), bytes.to_vec());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    put_module(tx, &hash, &workflow, &bytes).await?;
                    let previous = active_version(tx, &workflow).await?;
                    let existing = tx
                        .fetch_optional(
                            "SELECT version FROM deployments WHERE workflow = $1 AND hash = $2",
                            wasaga_db::args![&workflow, &hash],
                        )
                        .await?;
                    let (version, new_version) = match existing {
                        Some(row) => (row.int(0)?, false),
                        None => {
                            let next = tx
                                .fetch_optional(
                                    "SELECT COALESCE(MAX(version), 0) + 1 FROM deployments WHERE workflow = $1",
                                    wasaga_db::args![&workflow],
                                )
                                .await?
                                .map(|r| r.int(0))
                                .transpose()?
                                .unwrap_or(1);
                            tx.execute(
                                "INSERT INTO deployments (workflow, version, hash, deployed_at_ms)
                                 VALUES ($1, $2, $3, $4)",
                                wasaga_db::args![&workflow, next, &hash, now_ms() as i64],
                            )
                            .await?;
                            (next, true)
                        }
                    };
                    let deployment = activate(tx, &workflow, version).await?;
                    Ok::<_, JournalError>(Deployed {
                        deployment,
                        new_version,
                        previous,
                    })
                })
            })
            .await
    }

    /// Makes `version` (or, with `None`, the version before the active one) the version new
    /// runs of `workflow` get. Runs already started keep theirs.
    pub async fn activate(
        &self,
        workflow: &str,
        version: Option<i64>,
    ) -> Result<Deployment, JournalError> {
        let workflow = workflow.to_owned();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let active = active_version(tx, &workflow)
                        .await?
                        .ok_or_else(|| JournalError::UnknownWorkflow(workflow.clone()))?;
                    let target = match version {
                        Some(version) => version,
                        None => tx
                            .fetch_optional(
                                "SELECT MAX(version) FROM deployments WHERE workflow = $1 AND version < $2",
                                wasaga_db::args![&workflow, active],
                            )
                            .await?
                            .map(|r| r.opt_int(0))
                            .transpose()?
                            .flatten()
                            .ok_or_else(|| JournalError::NothingToRollBack {
                                workflow: workflow.clone(),
                                version: active,
                            })?,
                    };
                    activate(tx, &workflow, target).await
                })
            })
            .await
    }

    /// The version new runs of `workflow` get.
    pub async fn active(&self, workflow: &str) -> Result<Deployment, JournalError> {
        let workflow = workflow.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional(
                            "SELECT d.workflow, d.version, d.hash, d.deployed_at_ms
                             FROM workflows w JOIN deployments d
                               ON d.workflow = w.name AND d.version = w.active_version
                             WHERE w.name = $1",
                            wasaga_db::args![&workflow],
                        )
                        .await?
                        .ok_or_else(|| JournalError::UnknownWorkflow(workflow.clone()))?;
                    deployment(&row, true)
                })
            })
            .await
    }

    /// Every version of `workflow`, oldest first.
    pub async fn versions(&self, workflow: &str) -> Result<Vec<Deployment>, JournalError> {
        let workflow = workflow.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch_all(
                            "SELECT d.workflow, d.version, d.hash, d.deployed_at_ms,
                                    CASE WHEN w.active_version = d.version THEN 1 ELSE 0 END
                             FROM deployments d JOIN workflows w ON w.name = d.workflow
                             WHERE d.workflow = $1 ORDER BY d.version",
                            wasaga_db::args![&workflow],
                        )
                        .await?;
                    if rows.is_empty() {
                        return Err(JournalError::UnknownWorkflow(workflow));
                    }
                    rows.iter().map(|r| deployment(r, r.int(4)? == 1)).collect()
                })
            })
            .await
    }

    /// The active version of every deployed workflow, by name.
    pub async fn workflows(&self) -> Result<Vec<Deployment>, JournalError> {
        self.db
            .read(|tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch_all(
                            "SELECT d.workflow, d.version, d.hash, d.deployed_at_ms
                             FROM workflows w JOIN deployments d
                               ON d.workflow = w.name AND d.version = w.active_version
                             ORDER BY w.name",
                            &[],
                        )
                        .await?;
                    rows.iter().map(|r| deployment(r, true)).collect()
                })
            })
            .await
    }
}

async fn put_module(tx: &mut dyn Tx, hash: &str, name: &str, bytes: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (hash) DO NOTHING",
        wasaga_db::args![hash, name, bytes, bytes.len() as i64, now_ms() as i64],
    )
    .await
    .map(|_| ())
}

async fn active_version(tx: &mut dyn Tx, workflow: &str) -> Result<Option<i64>, DbError> {
    tx.fetch_optional(
        "SELECT active_version FROM workflows WHERE name = $1",
        wasaga_db::args![workflow],
    )
    .await?
    .map(|r| r.int(0))
    .transpose()
}

async fn activate(
    tx: &mut dyn Tx,
    workflow: &str,
    version: i64,
) -> Result<Deployment, JournalError> {
    let row = tx
        .fetch_optional(
            "SELECT workflow, version, hash, deployed_at_ms FROM deployments
             WHERE workflow = $1 AND version = $2",
            wasaga_db::args![workflow, version],
        )
        .await?
        .ok_or_else(|| JournalError::UnknownVersion {
            workflow: workflow.to_owned(),
            version,
        })?;
    tx.execute(
        "INSERT INTO workflows (name, active_version, activated_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version,
                                          activated_at_ms = excluded.activated_at_ms",
        wasaga_db::args![workflow, version, now_ms() as i64],
    )
    .await?;
    deployment(&row, true)
}

fn deployment(row: &Row, active: bool) -> Result<Deployment, JournalError> {
    Ok(Deployment {
        workflow: row.text(0)?,
        version: row.int(1)?,
        hash: row.text(2)?,
        deployed_at_ms: row.int(3)? as u64,
        active,
    })
}

/// Inserts a run and its `started` event inside `tx`, unless the run id exists. Returns whether
/// it was created.
pub async fn create_run(
    tx: &mut dyn Tx,
    run_id: &str,
    started: &Event,
    owner: &str,
    lease_ms: u64,
) -> Result<bool, JournalError> {
    let events = Encoded::new(std::slice::from_ref(started));
    let reserved = first_next_seq(tx.dialect(), events.len());
    if !insert_run(tx, run_id, started, owner, lease_ms, reserved).await? {
        return Ok(false);
    }
    append_created(tx, run_id, owner, reserved, &events).await?;
    Ok(true)
}

/// The `next_seq` to insert a run's row with when its first events, `len` of them from its
/// `started` event on, follow in the same transaction ([`append_created`]). On SQLite it is
/// where those events will end, so that writing them needs no update of the row; on
/// PostgreSQL it is 1, and the batched append (`batch::append_batch_pg`) fences and moves it.
pub fn first_next_seq(dialect: Dialect, len: usize) -> i64 {
    match dialect {
        Dialect::Sqlite => 1 + len as i64,
        Dialect::Postgres => 1,
    }
}

/// Inserts a run's row inside `tx`, unless the run id exists, owned by `owner`, at `next_seq`
/// (see [`first_next_seq`]); its events follow with [`append_created`]. Returns whether it was
/// created.
pub async fn insert_run(
    tx: &mut dyn Tx,
    run_id: &str,
    started: &Event,
    owner: &str,
    lease_ms: u64,
    next_seq: i64,
) -> Result<bool, JournalError> {
    let Event::Started {
        workflow,
        module_hash,
        input,
        ..
    } = started
    else {
        unreachable!("insert_run takes a started event");
    };
    let now = now_ms() as i64;
    let sql = match tx.dialect() {
        Dialect::Sqlite => {
            "INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms, updated_at_ms,
                               next_seq, owner, lease_expires_at_ms)
             VALUES ($1, $2, $3, 'running', $4, $5, $5, $8, $6, $5 + $7) ON CONFLICT (run_id) DO NOTHING"
        }
        Dialect::Postgres => {
            "INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms, updated_at_ms,
                               next_seq, owner, lease_expires_at_ms)
             VALUES ($1, $2, $3, 'running', $4, $5, $5, $8, $6,
                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $7)
             ON CONFLICT (run_id) DO NOTHING"
        }
    };
    let inserted = tx
        .execute(
            sql,
            wasaga_db::args![
                run_id,
                workflow,
                module_hash,
                input,
                now,
                owner,
                lease_ms as i64,
                next_seq
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Writes the first events of a run [`insert_run`] inserted in this transaction at `reserved`:
/// `events` starts with its `started` event. Returns the next free seq. Events that end
/// elsewhere than `reserved`, or that change the run's status, update the row as an append
/// does (fenced at `reserved`, which this transaction holds).
pub async fn append_created(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    reserved: i64,
    events: &Encoded,
) -> Result<i64, JournalError> {
    if tx.dialect() == Dialect::Postgres {
        return append_events(tx, run_id, owner, 1, events).await;
    }
    let now = now_ms() as i64;
    let after = insert_events(tx, run_id, 1, now, &events.rows).await?;
    if after != reserved || events.projection.is_some() {
        fence_and_project(tx, run_id, owner, reserved, after, now, events).await?;
    }
    Ok(after)
}

/// Events serialized for the journal, and what they change in the run's projection. Built by
/// the caller, so that the database's writer spends its time on SQL only.
#[derive(Debug, Default)]
pub struct Encoded {
    rows: Vec<(&'static str, String)>,
    /// The status, output and error a terminal (or compensating) event sets.
    projection: Option<(&'static str, Option<String>, Option<String>)>,
}

impl Encoded {
    pub fn new(events: &[Event]) -> Encoded {
        let mut encoded = Encoded {
            rows: Vec::with_capacity(events.len() + 1),
            projection: None,
        };
        for event in events {
            encoded.push(event);
        }
        encoded
    }

    /// Each event's kind and body text.
    pub fn rows(&self) -> &[(&'static str, String)] {
        &self.rows
    }

    pub fn push(&mut self, event: &Event) {
        let body = serde_json::to_string(event).expect("events always serialize");
        self.rows.push((event.kind(), body));
        match event {
            Event::Completed { output } => {
                self.projection = Some(("completed", Some(output.clone()), None))
            }
            Event::Compensating { cause } => {
                self.projection = Some(("compensating", None, Some(cause.clone())))
            }
            Event::Compensated { cause } => {
                self.projection = Some(("compensated", None, Some(cause.clone())))
            }
            Event::Stuck { reason } => {
                self.projection = Some(("stuck", None, Some(reason.clone())))
            }
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The status, output and error the events set on the run, if they change its status.
    pub fn projection(&self) -> Option<(&'static str, &Option<String>, &Option<String>)> {
        self.projection
            .as_ref()
            .map(|(status, output, error)| (*status, output, error))
    }
}

/// Appends `events` at `next_seq` inside a write transaction (which may also carry a
/// co-located participant's write), fenced by `owner`; returns the next free seq.
///
/// The fence is the last statement: the update of the run's row only matches if this host
/// still owns the run and `next_seq` is still its next position. A refusal therefore comes
/// after this job's writes, and must undo them: on PostgreSQL the job is its own transaction
/// and rolls back; on SQLite the writer rolls back the whole batch of a job that fails after
/// writing (see `db::sqlite`). Both leave nothing of a refused append. In PostgreSQL the update
/// locks the row, so a host taking the run over waits for this transaction and then sees it.
pub async fn append_events(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    next_seq: i64,
    events: &Encoded,
) -> Result<i64, JournalError> {
    let now = now_ms() as i64;
    let after = next_seq + events.len() as i64;
    if tx.dialect() == Dialect::Postgres {
        // One statement: the fenced update of the run, and its events only if it matched.
        let append = crate::batch::AppendRef {
            run_id,
            owner,
            next_seq,
            events,
        };
        if crate::batch::append_batch_pg(tx, &[append]).await? == [true] {
            return Ok(after);
        }
        return Err(refused(tx, run_id, owner, next_seq).await);
    }
    check_fence(tx, run_id, owner, next_seq).await?;
    let seq = insert_events(tx, run_id, next_seq, now, &events.rows).await?;
    fence_and_project(tx, run_id, owner, next_seq, after, now, events).await?;
    Ok(seq)
}

/// On SQLite, refuses before anything is written a job that would append to `run_id` at
/// `next_seq` without holding it there (`owner`): a job whose fence fails at its end would
/// have written first, and its batch, with every other job in it, answers already given
/// early among them, would have to be rolled back. The single writer makes the check hold
/// until the job's own fenced update. (PostgreSQL's appends are one fenced statement.)
pub async fn check_fence(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    next_seq: i64,
) -> Result<(), JournalError> {
    if tx.dialect() == Dialect::Postgres {
        return Ok(());
    }
    let held = tx
        .fetch_optional(
            "SELECT 1 FROM runs WHERE run_id = $1 AND next_seq = $2 AND owner = $3",
            wasaga_db::args![run_id, next_seq, owner],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(refused(tx, run_id, owner, next_seq).await),
    }
}

/// Inserts `rows` (kind and body) as a run's events from `seq` on, up to four to a
/// statement; returns the seq after the last. SQLite only (PostgreSQL's appends are one
/// statement of their own, `append_batch`).
async fn insert_events(
    tx: &mut dyn Tx,
    run_id: &str,
    mut seq: i64,
    now: i64,
    mut rows: &[(&'static str, String)],
) -> Result<i64, JournalError> {
    // A step journals its intent and outcome at once, a run's end its last step and its
    // outcome: most writes are two to four events, each one statement. OR FAIL: a conflict
    // ends the statement without undoing its earlier rows, so SQLite keeps no statement journal
    // (a copy of every page the statement touches) for it; a job that fails after writing has
    // its whole batch rolled back by the writer.
    while !rows.is_empty() {
        let (chunk, rest) = rows.split_at(rows.len().min(4));
        match chunk {
            [(k1, b1), (k2, b2), (k3, b3), (k4, b4)] => {
                tx.execute(
                    "INSERT OR FAIL INTO events (run_id, seq, at_ms, kind, body)
                     VALUES ($1, $2, $3, $4, $5), ($1, $2 + 1, $3, $6, $7),
                            ($1, $2 + 2, $3, $8, $9), ($1, $2 + 3, $3, $10, $11)",
                    wasaga_db::args![run_id, seq, now, *k1, b1, *k2, b2, *k3, b3, *k4, b4],
                )
                .await?
            }
            [(k1, b1), (k2, b2), (k3, b3)] => {
                tx.execute(
                    "INSERT OR FAIL INTO events (run_id, seq, at_ms, kind, body)
                     VALUES ($1, $2, $3, $4, $5), ($1, $2 + 1, $3, $6, $7),
                            ($1, $2 + 2, $3, $8, $9)",
                    wasaga_db::args![run_id, seq, now, *k1, b1, *k2, b2, *k3, b3],
                )
                .await?
            }
            [(k1, b1), (k2, b2)] => {
                tx.execute(
                    "INSERT OR FAIL INTO events (run_id, seq, at_ms, kind, body)
                     VALUES ($1, $2, $3, $4, $5), ($1, $2 + 1, $3, $6, $7)",
                    wasaga_db::args![run_id, seq, now, *k1, b1, *k2, b2],
                )
                .await?
            }
            [(k1, b1)] => {
                tx.execute(
                    "INSERT INTO events (run_id, seq, at_ms, kind, body) VALUES ($1, $2, $3, $4, $5)",
                    wasaga_db::args![run_id, seq, now, *k1, b1],
                )
                .await?
            }
            _ => unreachable!("chunks hold one to four events"),
        };
        seq += chunk.len() as i64;
        rows = rest;
    }
    Ok(seq)
}

/// The fence of a SQLite append: moves the run from `next_seq` to `after`, with the status a
/// terminal event sets, only if this host still owns it and it is still at `next_seq`.
async fn fence_and_project(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    next_seq: i64,
    after: i64,
    now: i64,
    events: &Encoded,
) -> Result<(), JournalError> {
    let updated = match &events.projection {
        Some((status, output, error)) => {
            // A run that has ended holds no lease: nothing executes it any more, and a stuck
            // run must be free for whichever host an operator retries it on.
            tx.execute(
                "UPDATE runs SET next_seq = $1, updated_at_ms = $2, status = $3, output = $4, error = $5,
                                 lease_expires_at_ms = CASE WHEN $3 = 'compensating'
                                                            THEN lease_expires_at_ms ELSE 0 END
                 WHERE run_id = $6 AND next_seq = $7 AND owner = $8",
                wasaga_db::args![
                    after,
                    now,
                    *status,
                    output.as_deref(),
                    error.as_deref(),
                    run_id,
                    next_seq,
                    owner
                ],
            )
            .await?
        }
        None => {
            tx.execute(
                "UPDATE runs SET next_seq = $1, updated_at_ms = $2
                 WHERE run_id = $3 AND next_seq = $4 AND owner = $5",
                wasaga_db::args![after, now, run_id, next_seq, owner],
            )
            .await?
        }
    };
    if updated != 1 {
        return Err(refused(tx, run_id, owner, next_seq).await);
    }
    Ok(())
}

/// Why a fenced append of `owner` at `next_seq` was refused: another owner, or another position.
pub async fn refused(tx: &mut dyn Tx, run_id: &str, owner: &str, next_seq: i64) -> JournalError {
    let row = match tx
        .fetch_optional(
            "SELECT next_seq, owner FROM runs WHERE run_id = $1",
            wasaga_db::args![run_id],
        )
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return JournalError::UnknownRun(run_id.to_owned()),
        Err(e) => return e.into(),
    };
    match row.opt_text(1) {
        Ok(Some(holder)) if holder != owner => JournalError::NotOwner {
            run_id: run_id.to_owned(),
            owner: holder,
        },
        Ok(None) => JournalError::NotOwner {
            run_id: run_id.to_owned(),
            owner: "nobody (this host gave the run up)".to_owned(),
        },
        Ok(Some(_)) => JournalError::VersionConflict {
            run_id: run_id.to_owned(),
            seq: next_seq,
        },
        Err(e) => e.into(),
    }
}

async fn events(tx: &mut dyn Tx, run_id: &str) -> Result<Vec<StoredEvent>, JournalError> {
    let rows = tx
        .fetch_all(
            "SELECT seq, at_ms, body FROM events WHERE run_id = $1 ORDER BY seq",
            wasaga_db::args![run_id],
        )
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let seq = row.int(0)?;
        if seq != index as i64 + 1 {
            return Err(JournalError::Corrupt {
                run_id: run_id.to_owned(),
                seq,
                reason: format!("expected seq {}", index + 1),
            });
        }
        let body = row.text(2)?;
        let event = serde_json::from_str(&body).map_err(|e| JournalError::Corrupt {
            run_id: run_id.to_owned(),
            seq,
            reason: e.to_string(),
        })?;
        events.push(StoredEvent {
            seq,
            at_ms: row.int(1)? as u64,
            event,
        });
    }
    if events.is_empty() {
        let exists = tx
            .fetch_optional(
                "SELECT 1 FROM runs WHERE run_id = $1",
                wasaga_db::args![run_id],
            )
            .await?;
        if exists.is_none() {
            return Err(JournalError::UnknownRun(run_id.to_owned()));
        }
    }
    Ok(events)
}

fn run_record(row: &Row) -> Result<RunRecord, JournalError> {
    let run_id = row.text(0)?;
    let status = row.text(3)?;
    let status = RunStatus::parse(&status).ok_or_else(|| JournalError::Corrupt {
        run_id: run_id.clone(),
        seq: 0,
        reason: format!("unknown status {status}"),
    })?;
    Ok(RunRecord {
        run_id,
        workflow: row.text(1)?,
        module_hash: row.text(2)?,
        status,
        input: row.text(4)?,
        output: row.opt_text(5)?,
        error: row.opt_text(6)?,
        created_at_ms: row.int(7)? as u64,
        updated_at_ms: row.int(8)? as u64,
        owner: row.opt_text(9)?,
        version: row.opt_int(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasaga_db::{Database, Location, PoolSizes};

    /// A job that appends to a run this host does not hold there is refused before it has
    /// written anything: the batch it is in (with answers given early in it) need not be
    /// rolled back.
    #[tokio::test]
    async fn an_append_without_the_fence_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("wasaga-fence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = Database::open(
            &Location::Sqlite(dir.join("journal.db")),
            PoolSizes::default(),
            wasaga_core::crash::CrashSwitch::default(),
        )
        .await
        .expect("open");
        let started = Event::Started {
            workflow: "w".into(),
            module_hash: "h".into(),
            input: "{}".into(),
            started_at_ms: 1,
        };
        let encoded = Encoded::new(std::slice::from_ref(&started));
        let reserved = first_next_seq(db.dialect(), encoded.len());
        let next: i64 = db
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES ('h', 'w', x'00', 1, 0)",
                        &[],
                    )
                    .await?;
                    assert!(insert_run(tx, "r", &started, "host-a", 60_000, reserved).await?);
                    append_created(tx, "r", "host-a", reserved, &encoded).await
                })
            })
            .await
            .expect("created");
        let log = Event::Log {
            call: None,
            message: "x".into(),
        };
        for (owner, seq, refusal) in [("host-b", next, "owner"), ("host-a", next + 1, "position")] {
            let events = Encoded::new(std::slice::from_ref(&log));
            let (refused, changed) = db
                .write(move |tx| {
                    Box::pin(async move {
                        let before = scalar(tx, "SELECT COUNT(*) FROM events").await?;
                        let refused = append_events(tx, "r", owner, seq, &events).await.is_err();
                        let after = scalar(tx, "SELECT COUNT(*) FROM events").await?;
                        Ok::<_, JournalError>((refused, after - before))
                    })
                })
                .await
                .expect("the job runs");
            assert!(refused, "a wrong {refusal} is refused");
            assert_eq!(
                changed, 0,
                "a refused append (wrong {refusal}) wrote nothing"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn scalar(tx: &mut dyn Tx, sql: &'static str) -> Result<i64, JournalError> {
        Ok(tx
            .fetch_optional(sql, &[])
            .await?
            .expect("one row")
            .int(0)?)
    }
}
