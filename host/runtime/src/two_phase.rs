//! Two-phase commit over participants that can prepare (today: the ledger, one branch per
//! call). Phase one prepares every branch; the decision is journaled durably before any
//! branch is committed or aborted; phase two then commits or aborts everywhere. Presumed
//! abort: a transaction whose decision never reached the journal is aborted when the run is
//! resumed or compensated, and the participant fences it so a late prepare is refused.

use crate::shared::HostInner;
use crate::store::{After, Refusals, RunLog};
use serde_json::json;
use std::sync::Arc;
use wasaga_core::event::{CallFailure, CallSpec, Event};
use wasaga_participants::ParticipantRequest;
use wasaga_participants::branch::{Decided, Prepare};

/// Branches one transaction may have.
pub const BRANCHES_MAX: usize = 64;

/// Why a transaction could not be driven to its end now (the run stays unfinished).
pub(crate) type Stalled = String;

/// What the journal knew of a transaction when driving it resumes.
#[derive(Debug, Clone)]
pub(crate) enum Known {
    /// Nothing yet: prepare every branch, then decide.
    New,
    /// Started, maybe prepared, but no decision: abort (presumed abort).
    Undecided,
    /// Decided: finish phase two.
    Decided {
        commit: bool,
        reason: Option<String>,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    account: String,
    amount: i64,
}

/// Checks a transaction's calls before it starts; the error is its rejection.
pub(crate) fn check(host: &HostInner, calls: &[CallSpec]) -> Result<(), String> {
    if calls.is_empty() || calls.len() > BRANCHES_MAX {
        return Err(format!(
            "commit-all needs 1 to {BRANCHES_MAX} calls, not {}",
            calls.len()
        ));
    }
    for (branch, call) in calls.iter().enumerate() {
        host.participants.route_two_phase(&call.participant)?;
        if call.action != "debit" && call.action != "credit" {
            return Err(format!(
                "branch {branch}: {}.{} cannot be prepared; use debit or credit",
                call.participant, call.action
            ));
        }
        serde_json::from_str::<Entry>(&call.payload).map_err(|e| {
            format!(
                "branch {branch}: invalid payload for {}.{}: {e}",
                call.participant, call.action
            )
        })?;
    }
    Ok(())
}

/// Drives transaction `xid` (the run's call `call`) from `known` to its end, journaling the
/// decision and the end. Returns what `commit-all` returns to the module.
pub(crate) async fn drive(
    host: &HostInner,
    log: &mut RunLog,
    call: u32,
    xid: &str,
    calls: &[CallSpec],
    known: Known,
) -> Result<Result<Vec<String>, CallFailure>, Stalled> {
    let (commit, reason) = match known {
        Known::Decided { commit, reason } => (commit, reason),
        Known::Undecided => {
            let reason =
                "no decision was journaled before the host stopped: presumed abort".to_owned();
            decide(log, call, false, Some(reason.clone())).await?;
            (false, Some(reason))
        }
        Known::New => {
            let mut refusal = None;
            for (branch, spec) in calls.iter().enumerate() {
                if let Err(failure) = prepare(host, log, xid, branch, spec).await? {
                    refusal = Some(format!(
                        "branch {branch} ({}.{}) refused to prepare: {}",
                        spec.participant,
                        spec.action,
                        failure.reason()
                    ));
                    break;
                }
            }
            let commit = refusal.is_none();
            decide(log, call, commit, refusal.clone()).await?;
            (commit, refusal)
        }
    };
    let mut participants: Vec<&str> = calls.iter().map(|c| c.participant.as_str()).collect();
    participants.sort_unstable();
    participants.dedup();
    for participant in participants {
        let branches: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.participant == participant)
            .map(|(b, _)| b)
            .collect();
        finish(host, log, participant, xid, commit, &branches).await?;
    }
    let outcome = if commit {
        Ok((0..calls.len())
            .map(|b| json!({ "xid": xid, "branch": b, "committed": true }).to_string())
            .collect())
    } else {
        Err(CallFailure::Rejected(
            reason.unwrap_or_else(|| "aborted".to_owned()),
        ))
    };
    log.commit(vec![Event::TwoPhaseFinished {
        call,
        outcome: outcome.clone(),
    }])
    .await
    .map_err(|e| e.to_string())?;
    Ok(outcome)
}

async fn decide(
    log: &mut RunLog,
    call: u32,
    commit: bool,
    reason: Option<String>,
) -> Result<(), Stalled> {
    log.commit(vec![Event::TwoPhaseDecided {
        call,
        commit,
        reason,
    }])
    .await
    .map_err(|e| e.to_string())
}

/// Phase one for one branch; the inner error is the participant's refusal.
async fn prepare(
    host: &HostInner,
    log: &mut RunLog,
    xid: &str,
    branch: usize,
    spec: &CallSpec,
) -> Result<Result<String, CallFailure>, Stalled> {
    let route = host
        .participants
        .route_two_phase(&spec.participant)
        .map_err(|e| e.to_string())?;
    let entry: Entry = serde_json::from_str(&spec.payload).map_err(|e| e.to_string())?;
    let request = ParticipantRequest {
        run_id: log.run_id.clone(),
        op_id: format!("{xid}/b{branch}"),
        undoes: None,
        fencing_tokens: Vec::new(),
        call: CallSpec {
            participant: spec.participant.clone(),
            action: "prepare".to_owned(),
            payload: serde_json::to_string(&Prepare {
                xid: xid.to_owned(),
                branch: branch as i64,
                action: spec.action.clone(),
                account: entry.account,
                amount: entry.amount,
            })
            .expect("a prepare always serializes"),
        },
        traceparent: crate::trace::current_traceparent(log.journaled.first()),
    };
    let nothing: After = Arc::new(|_| None);
    log.call(
        host,
        route,
        &request,
        Vec::new(),
        nothing,
        host.limits.step_retries_max,
        Refusals::Final,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Phase two: commit or abort every branch, retried until it succeeds or the retry cap is hit
/// (then the run stays unfinished and the next resume finishes it).
async fn finish(
    host: &HostInner,
    log: &mut RunLog,
    participant: &str,
    xid: &str,
    commit: bool,
    branches: &[usize],
) -> Result<(), Stalled> {
    let route = host
        .participants
        .route_two_phase(participant)
        .map_err(|e| e.to_string())?;
    let (suffix, action) = if commit {
        ("commit", "commit-prepared")
    } else {
        ("abort", "abort-prepared")
    };
    let request = ParticipantRequest {
        run_id: log.run_id.clone(),
        op_id: format!("{xid}/{participant}/{suffix}"),
        undoes: None,
        fencing_tokens: Vec::new(),
        call: CallSpec {
            participant: participant.to_owned(),
            action: action.to_owned(),
            // The branches this participant must show committed for the commit to count.
            payload: serde_json::to_string(&Decided {
                xid: xid.to_owned(),
                branches: Some(branches.iter().map(|&b| b as i64).collect()),
            })
            .expect("a decision always serializes"),
        },
        traceparent: crate::trace::current_traceparent(log.journaled.first()),
    };
    let nothing: After = Arc::new(|_| None);
    match log
        .call(
            host,
            route,
            &request,
            Vec::new(),
            nothing,
            host.limits.compensation_retries_max,
            Refusals::Retried,
        )
        .await
        .map_err(|e| e.to_string())?
    {
        Ok(_) => Ok(()),
        Err(failure) => Err(format!(
            "transaction {xid} could not be {suffix}ed on {participant}: {failure}"
        )),
    }
}
