//! Acting on many runs at once, after an incident: every stuck run of a workflow taken up
//! again once the cause is fixed, every unfinished run cancelled. The runs are chosen by a
//! filter, a few are driven at once, and each one's outcome is reported.

use crate::executor::Host;
use serde::Serialize;
use wasaga_journal::RunFilter;

/// Past this many matching runs a bulk action needs the caller to confirm them (`--yes`, or
/// over HTTP `"confirm"` with the `selection` a dry run answered: the very runs, not only
/// their number).
pub const BULK_CONFIRM_OVER: usize = 10;
/// Runs one bulk action takes at most.
pub const BULK_RUNS_MAX: u32 = 10_000;
/// Runs a bulk retry drives at once.
const BULK_CONCURRENT: usize = 8;

/// What a bulk action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Retry stuck runs.
    Retry,
    /// Cancel unfinished runs.
    Cancel,
}

/// Which runs a bulk action takes.
#[derive(Debug, Clone, Default)]
pub struct BulkSelect {
    pub status: Option<String>,
    pub workflow: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

/// What became of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BulkOutcome {
    pub run_id: String,
    /// The run's status after the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the action failed for this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BulkSelect {
    /// The filter of the runs `action` takes: retries take stuck runs only, cancellations
    /// unfinished ones (`running`, the default, or `waiting`).
    pub fn filter(&self, action: BulkAction) -> Result<RunFilter, String> {
        let status = match (action, self.status.as_deref()) {
            (BulkAction::Retry, None | Some("stuck")) => "stuck",
            (BulkAction::Retry, Some(other)) => {
                return Err(format!(
                    "only stuck runs can be retried, not {other} ones: leave --status out or give stuck"
                ));
            }
            (BulkAction::Cancel, None | Some("running")) => "running",
            (BulkAction::Cancel, Some("waiting")) => "waiting",
            (BulkAction::Cancel, Some(other)) => {
                return Err(format!(
                    "only unfinished runs can be cancelled, not {other} ones: give --status running or waiting"
                ));
            }
        };
        if [self.since_ms, self.until_ms]
            .into_iter()
            .flatten()
            .any(|ms| ms > i64::MAX as u64)
        {
            return Err("since and until must be milliseconds since the epoch".to_owned());
        }
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms)
            && since >= until
        {
            return Err("--since must be before --until".to_owned());
        }
        RunFilter {
            workflow: self.workflow.clone(),
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            // One more, to tell whether there were more than the bound.
            limit: BULK_RUNS_MAX + 1,
            ..RunFilter::default()
        }
        .with_status(status)
        .ok_or_else(|| format!("unknown status {status}"))
    }
}

impl Host {
    /// The runs `select` matches for `action`, newest first, at most `BULK_RUNS_MAX`, and
    /// whether more matched.
    pub async fn bulk_matches(
        &self,
        action: BulkAction,
        select: &BulkSelect,
    ) -> Result<(Vec<String>, bool), crate::executor::HostError> {
        let filter = select
            .filter(action)
            .map_err(crate::executor::HostError::Input)?;
        let mut run_ids: Vec<String> = self
            .journal()
            .runs(filter)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        let capped = run_ids.len() > BULK_RUNS_MAX as usize;
        run_ids.truncate(BULK_RUNS_MAX as usize);
        Ok((run_ids, capped))
    }

    /// Takes each of `run_ids` up again (see [`Host::retry_stuck`]), a few at once.
    pub async fn retry_many(&self, run_ids: Vec<String>) -> Vec<BulkOutcome> {
        let mut outcomes = Vec::with_capacity(run_ids.len());
        for chunk in run_ids.chunks(BULK_CONCURRENT) {
            let mut retries = tokio::task::JoinSet::new();
            for run_id in chunk {
                let (host, run_id) = (self.clone(), run_id.clone());
                retries.spawn(async move {
                    let retried = host.retry_stuck(&run_id, crate::store::no_observer()).await;
                    match retried {
                        Ok(outcome) => BulkOutcome {
                            run_id,
                            status: Some(outcome.status.as_str().to_owned()),
                            error: outcome.error,
                        },
                        Err(e) => BulkOutcome {
                            run_id,
                            status: None,
                            error: Some(e.to_string()),
                        },
                    }
                });
            }
            while let Some(done) = retries.join_next().await {
                match done {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => outcomes.push(BulkOutcome {
                        run_id: String::new(),
                        status: None,
                        error: Some(format!("a retry failed: {e}")),
                    }),
                }
            }
        }
        outcomes
    }

    /// Cancels each of `run_ids` (see [`Host::cancel`]).
    pub async fn cancel_many(
        &self,
        run_ids: Vec<String>,
        by: &str,
        reason: &str,
    ) -> Vec<BulkOutcome> {
        let mut outcomes = Vec::with_capacity(run_ids.len());
        for run_id in run_ids {
            let outcome = match self.cancel(&run_id, by, reason).await {
                Ok(wasaga_journal::Cancelled::Requested { .. }) => BulkOutcome {
                    run_id,
                    status: Some("cancelled".to_owned()),
                    error: None,
                },
                Ok(wasaga_journal::Cancelled::AlreadyRequested(_)) => BulkOutcome {
                    run_id,
                    status: Some("cancelled before".to_owned()),
                    error: None,
                },
                Ok(wasaga_journal::Cancelled::Finished(status)) => BulkOutcome {
                    run_id,
                    status: Some(status.as_str().to_owned()),
                    error: Some(format!("it is {status}: nothing to cancel")),
                },
                Err(e) => BulkOutcome {
                    run_id,
                    status: None,
                    error: Some(e.to_string()),
                },
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// Names a set of runs: a caller confirms a bulk action with the selection its dry run
/// answered, and the action goes ahead only on the very same runs.
pub fn selection(run_ids: &[String]) -> String {
    use sha2::Digest;
    let mut sorted: Vec<&String> = run_ids.iter().collect();
    sorted.sort();
    let mut digest = sha2::Sha256::new();
    for id in sorted {
        digest.update(id.as_bytes());
        digest.update(b"\n");
    }
    digest
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a bulk action over `run_ids` may go ahead with the selection the caller
/// confirmed (`None`: none).
pub fn confirmed(run_ids: &[String], confirm: Option<&str>) -> bool {
    run_ids.len() <= BULK_CONFIRM_OVER || confirm == Some(selection(run_ids).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasaga_core::event::RunStatus;

    #[test]
    fn bulk_actions_take_only_the_runs_they_can_act_on() {
        let select = |status: Option<&str>| BulkSelect {
            status: status.map(str::to_owned),
            ..BulkSelect::default()
        };
        let retry = select(None).filter(BulkAction::Retry).expect("stuck");
        assert_eq!(retry.status, Some(RunStatus::Stuck));
        assert!(select(Some("completed")).filter(BulkAction::Retry).is_err());
        let waiting = select(Some("waiting"))
            .filter(BulkAction::Cancel)
            .expect("waiting");
        assert!(waiting.waiting_only);
        assert!(select(Some("stuck")).filter(BulkAction::Cancel).is_err());
        let backwards = BulkSelect {
            since_ms: Some(10),
            until_ms: Some(5),
            ..BulkSelect::default()
        };
        assert!(backwards.filter(BulkAction::Retry).is_err());
        let ids = |n: usize, from: usize| -> Vec<String> {
            (from..from + n).map(|i| format!("r-{i}")).collect()
        };
        assert!(confirmed(&ids(BULK_CONFIRM_OVER, 0), None));
        assert!(!confirmed(&ids(BULK_CONFIRM_OVER + 1, 0), None));
        let many = ids(100, 0);
        assert!(confirmed(&many, Some(&selection(&many))));
        // The same number of other runs is not what was confirmed.
        assert!(!confirmed(&ids(100, 1), Some(&selection(&many))));
        let mut shuffled = many.clone();
        shuffled.reverse();
        assert_eq!(
            selection(&shuffled),
            selection(&many),
            "order does not matter"
        );
    }
}
