//! The journal as one host sees it: runs created and appended to, read back and listed.

use crate::append::{
    AppendRef, append_batch_pg, append_created, append_events, create_run, first_next_seq,
    insert_run,
};
use crate::batch::{Answer, Batched, Batcher};
use crate::encoded::Encoded;
use crate::error::JournalError;
use crate::records::{
    COUNTED_RUNS_MAX, RunCounts, RunFilter, RunRecord, StoredEvent, events, run_record,
};
use std::sync::{Arc, OnceLock};
use wasaga_core::BoxFuture;
use wasaga_core::event::{Event, RunStatus};
use wasaga_db::{Database, Dialect, Tx};

/// `SELECT <the columns of RunRecord> FROM runs <rest>`, as one static string.
macro_rules! run_select {
    ($rest:literal) => {
        concat!(
            "SELECT r.run_id, r.workflow, r.module_hash, r.status, r.input, r.output, r.error, ",
            "r.created_at_ms, r.updated_at_ms, r.owner, d.version, r.wake_at_ms, r.waiting_for, ",
            "r.parent_run_id, r.cancel_reason, r.pruned_at_ms FROM runs r ",
            "LEFT JOIN deployments d ON d.workflow = r.workflow AND d.hash = r.module_hash ",
            $rest
        )
    };
}

/// The journal, as one host (its `owner`) sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Journal {
    pub(crate) db: Arc<Database>,
    pub(crate) owner: Arc<str>,
    pub(crate) run_lease_ms: u64,
    /// Batches of appends on PostgreSQL (`batch`), started by the first.
    pub(crate) appends: Arc<OnceLock<Batcher<Append>>>,
    /// Whether a step's outcome may be answered before its write is durable.
    pub(crate) early_answers: bool,
    /// Counts of what happened to this host's leases on runs.
    pub(crate) leases: Arc<LeaseCounts>,
}

/// What happened to a host's leases on runs: `wasaga_run_*_total`.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounts {
    /// Leases renewed, one per run per renewal.
    pub renewed: wasaga_core::metrics::Counter,
    /// Renewals that found the run owned by another host (or by none).
    pub lost: wasaga_core::metrics::Counter,
    /// Runs this host took up: leases that lapsed, waits that came due, and at a SQLite
    /// host's start every unfinished run.
    pub claimed: wasaga_core::metrics::Counter,
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
            leases: Arc::default(),
        }
    }

    /// Registers the journal's metrics into `registry`: its database's commits, and this
    /// host's leases on runs.
    pub fn register_metrics(&self, registry: &mut wasaga_core::metrics::Registry) {
        self.db.register_metrics(registry);
        registry.register(
            "run_lease_renewals",
            "Leases on runs this host renewed (one per run per renewal)",
            self.leases.renewed.clone(),
        );
        registry.register(
            "run_leases_lost",
            "Renewals that found the run owned by another host: it was taken over",
            self.leases.lost.clone(),
        );
        registry.register(
            "run_claims",
            "Runs this host took up: leases that lapsed, waits that came due, unfinished runs at start",
            self.leases.claimed.clone(),
        );
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
                    let waiting = filter.waiting_only.then_some(1_i64);
                    let (before_ms, before_id) = match &filter.before {
                        Some((ms, id)) => (Some(*ms as i64), Some(id.as_str())),
                        None => (None, None),
                    };
                    let rows = tx
                        .fetch_all(
                            run_select!(
                                "WHERE ($1 IS NULL OR r.status = $1) AND ($2 IS NULL OR r.workflow = $2)
                                 AND ($3 IS NULL OR r.wake_at_ms IS NOT NULL) AND r.pruned_at_ms IS NULL
                                 AND ($4 IS NULL OR r.created_at_ms >= $4) AND ($5 IS NULL OR r.created_at_ms < $5)
                                 AND ($6 IS NULL OR r.created_at_ms < $6 OR (r.created_at_ms = $6 AND r.run_id < $7))
                                 ORDER BY r.created_at_ms DESC, r.run_id DESC LIMIT $8"
                            ),
                            wasaga_db::args![
                                status,
                                filter.workflow.as_deref(),
                                waiting,
                                filter.since_ms.map(|ms| ms as i64),
                                filter.until_ms.map(|ms| ms as i64),
                                before_ms,
                                before_id,
                                i64::from(filter.limit)
                            ],
                        )
                        .await?;
                    rows.iter().map(run_record).collect()
                })
            })
            .await
    }

    /// How many runs are stuck (waiting for an operator), from their index of their own.
    pub async fn stuck_count(&self) -> Result<u64, JournalError> {
        self.db
            .read(|tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional("SELECT COUNT(*) FROM runs WHERE status = 'stuck'", &[])
                        .await?;
                    Ok(row.map(|r| r.int(0)).transpose()?.unwrap_or(0) as u64)
                })
            })
            .await
    }

    /// How many runs of `workflow` (all if `None`) created in `[since_ms, until_ms)` there are
    /// of each status: exactly for the unfinished and stuck ones (their indexes hold only
    /// them), over the newest `COUNTED_RUNS_MAX` for completed and compensated ones.
    pub async fn run_counts(
        &self,
        workflow: Option<String>,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
    ) -> Result<RunCounts, JournalError> {
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let (workflow, since, until) = (
                        workflow.as_deref(),
                        since_ms.map(|ms| ms as i64),
                        until_ms.map(|ms| ms as i64),
                    );
                    let open = tx
                        .fetch_all(
                            "SELECT status, CASE WHEN wake_at_ms IS NULL THEN 0 ELSE 1 END, COUNT(*) FROM runs
                             WHERE status IN ('running', 'compensating', 'stuck')
                               AND ($1 IS NULL OR workflow = $1)
                               AND ($2 IS NULL OR created_at_ms >= $2) AND ($3 IS NULL OR created_at_ms < $3)
                             GROUP BY status, CASE WHEN wake_at_ms IS NULL THEN 0 ELSE 1 END",
                            wasaga_db::args![workflow, since, until],
                        )
                        .await?;
                    let ended = tx
                        .fetch_all(
                            "SELECT status, COUNT(*) FROM (
                                 SELECT status FROM runs
                                 WHERE status IN ('completed', 'compensated') AND pruned_at_ms IS NULL
                                   AND ($1 IS NULL OR workflow = $1)
                                   AND ($2 IS NULL OR created_at_ms >= $2) AND ($3 IS NULL OR created_at_ms < $3)
                                 ORDER BY created_at_ms DESC, run_id DESC LIMIT $4) newest
                             GROUP BY status",
                            wasaga_db::args![workflow, since, until, i64::from(COUNTED_RUNS_MAX) + 1],
                        )
                        .await?;
                    let unknown = |status: &str| JournalError::Corrupt {
                        run_id: String::new(),
                        seq: 0,
                        reason: format!("unknown status {status}"),
                    };
                    let mut counts = RunCounts::default();
                    for row in &open {
                        let status = row.text(0)?;
                        let (waiting, count) = (row.int(1)? == 1, row.int(2)? as u64);
                        match RunStatus::parse(&status) {
                            Some(RunStatus::Running) => {
                                counts.running += count;
                                if waiting {
                                    counts.waiting += count;
                                }
                            }
                            Some(RunStatus::Compensating) => counts.compensating += count,
                            Some(RunStatus::Stuck) => counts.stuck += count,
                            _ => return Err(unknown(&status)),
                        }
                    }
                    let mut ended_counted = 0;
                    for row in &ended {
                        let status = row.text(0)?;
                        let count = row.int(1)? as u64;
                        ended_counted += count;
                        match RunStatus::parse(&status) {
                            Some(RunStatus::Completed) => counts.completed += count,
                            Some(RunStatus::Compensated) => counts.compensated += count,
                            _ => return Err(unknown(&status)),
                        }
                    }
                    // One run over the bound was read to tell whether there were more.
                    if ended_counted > u64::from(COUNTED_RUNS_MAX) {
                        counts.capped = true;
                        counts.completed = counts.completed.min(u64::from(COUNTED_RUNS_MAX));
                    }
                    Ok(counts)
                })
            })
            .await
    }
}

/// Events to append to a run at `next_seq`, fenced by `owner`.
pub struct Append {
    pub run_id: String,
    pub owner: String,
    pub next_seq: i64,
    pub events: Encoded,
}

impl Batched for Append {
    /// The run's next position.
    type Value = i64;

    fn lock_key(&self) -> &str {
        &self.run_id
    }

    fn fence(&self) -> (&str, &str, i64) {
        (&self.run_id, &self.owner, self.next_seq)
    }

    fn write_alone<'t>(
        tx: &'t mut dyn Tx,
        a: &'t Append,
    ) -> BoxFuture<'t, Result<i64, JournalError>> {
        Box::pin(append_events(
            tx, &a.run_id, &a.owner, a.next_seq, &a.events,
        ))
    }

    fn write_batch<'t>(
        tx: &'t mut dyn Tx,
        appends: &'t [Append],
    ) -> BoxFuture<'t, Result<Vec<Option<Answer<Append>>>, JournalError>> {
        Box::pin(async move {
            let borrowed: Vec<AppendRef<'_>> = appends.iter().map(Append::borrowed).collect();
            let appended = append_batch_pg(tx, &borrowed).await?;
            Ok(appends
                .iter()
                .zip(appended)
                .map(|(a, appended)| appended.then(|| Ok(a.next_seq + a.events.len() as i64)))
                .collect())
        })
    }
}

impl Append {
    fn borrowed(&self) -> AppendRef<'_> {
        AppendRef {
            run_id: &self.run_id,
            owner: &self.owner,
            next_seq: self.next_seq,
            events: &self.events,
        }
    }
}
