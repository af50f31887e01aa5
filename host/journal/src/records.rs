//! What the journal gives back: a run's events and its record, deployments, and the filters
//! runs are listed by.

use crate::error::JournalError;
use serde::Serialize;
use wasaga_core::event::{Event, RunStatus};
use wasaga_db::{Row, Tx};

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
    /// Set while the run waits (it has no owner then): what for, and when its timer is due
    /// (0 once something woke it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The run that started this one as its child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// Who asked for the run to be cancelled, and why, once someone did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// When the run was pruned (its journal deleted, its id kept taken), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_at_ms: Option<u64>,
}

/// What a waiting run waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// `timer`, `signal:<name>` or `child:<run id>`.
    pub waiting_for: String,
    /// When a host may take it up again (its timer; 0: woken, due now).
    pub wake_at_ms: u64,
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

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    /// Only runs that wait now (a waiting run's status is `running`).
    pub waiting_only: bool,
    pub workflow: Option<String>,
    /// Only runs created at or after this time.
    pub since_ms: Option<u64>,
    /// Only runs created before this time.
    pub until_ms: Option<u64>,
    /// The page after this run: runs older than `(created_at_ms, run_id)`.
    pub before: Option<(u64, String)>,
    pub limit: u32,
}

impl RunFilter {
    /// Sets the status to list by its name: a run status, or `waiting` (running runs that
    /// wait now). `None` for any other name.
    pub fn with_status(mut self, name: &str) -> Option<Self> {
        if name == "waiting" {
            self.status = Some(RunStatus::Running);
            self.waiting_only = true;
        } else {
            self.status = Some(RunStatus::parse(name)?);
        }
        Some(self)
    }
}

/// The statuses runs are listed by, for messages.
pub const STATUS_NAMES: &str = "running, waiting, compensating, completed, compensated or stuck";

/// How many runs there are of each status (completed and compensated ones over at most
/// `COUNTED_RUNS_MAX` of the newest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    /// Unfinished runs that are not compensating, those that wait included.
    pub running: u64,
    /// Of `running`, the runs that wait (timer, signal or child).
    pub waiting: u64,
    pub compensating: u64,
    pub completed: u64,
    pub compensated: u64,
    pub stuck: u64,
    /// Whether there were more completed and compensated runs than were counted.
    pub capped: bool,
}

/// The newest runs counted by [`crate::Journal::run_counts`]: a console refreshing every few
/// seconds must not scan a journal of millions of runs.
pub const COUNTED_RUNS_MAX: u32 = 100_000;

/// Every event of `run_id`, in order.
pub(crate) async fn events(
    tx: &mut dyn Tx,
    run_id: &str,
) -> Result<Vec<StoredEvent>, JournalError> {
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

pub(crate) fn run_record(row: &Row) -> Result<RunRecord, JournalError> {
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
        waiting: match row.opt_int(11)? {
            Some(wake_at_ms) => Some(Waiting {
                waiting_for: row.opt_text(12)?.unwrap_or_default(),
                wake_at_ms: wake_at_ms.max(0) as u64,
            }),
            None => None,
        },
        parent_run_id: row.opt_text(13)?,
        cancel_reason: row.opt_text(14)?,
        pruned_at_ms: row.opt_int(15)?.map(|ms| ms.max(0) as u64),
    })
}
