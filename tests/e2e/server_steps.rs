//! The ledger's PostgreSQL server-side steps driven directly, for the tests that hold them to
//! `ledger::apply`'s outcomes: each call made a step of a run of its own, as the host makes a
//! saga's debit or credit on a PostgreSQL journal with a co-located ledger.

use wasaga_core::event::Event;
use wasaga_db::{Database, args};
use wasaga_journal::{Encoded, JournalError, write_all};
use wasaga_participants::colocated::{ServerStep, ledger_step_pg};
use wasaga_participants::ledger::{self, LedgerCall, Rejection};

/// Performs a debit or credit step the way a PostgreSQL journal with a co-located ledger does:
/// in the server-side function, for run `run_id` owned by `owner` (created with its first
/// step). For the test that holds it to `ledger::apply`'s outcomes; `None` if the call is not one
/// the server-side function takes.
pub async fn apply_on_server(
    db: &Database,
    run_id: &str,
    owner: &str,
    call: &LedgerCall,
) -> Result<Option<Result<String, Rejection>>, JournalError> {
    let Some(step) = server_step(db, run_id, owner, call).await? else {
        return Ok(None);
    };
    let (outcome, _) = db
        .write_one(move |tx| Box::pin(async move { ledger_step_pg(tx, &step).await }))
        .await?;
    Ok(Some(outcome.map_err(|failure| failure.reason().to_owned())))
}

/// As [`apply_on_server`] for many steps at once, each `(run, call)` for its own run, written
/// as one batch the way concurrent runs' steps are (`ledger_steps`). Every call must be one the
/// server-side function takes. Answers in the order given.
pub async fn apply_batch_on_server(
    db: &Database,
    owner: &str,
    calls: &[(String, LedgerCall)],
) -> Result<Vec<Result<Result<String, Rejection>, JournalError>>, JournalError> {
    let mut steps = Vec::with_capacity(calls.len());
    for (run_id, call) in calls {
        let step = server_step(db, run_id, owner, call).await?;
        steps.push(step.ok_or_else(|| JournalError::Corrupt {
            run_id: run_id.clone(),
            seq: 0,
            reason: format!("{} is not a step the server takes", call.op_id),
        })?);
    }
    let answers = write_all(db, steps).await;
    Ok(answers
        .into_iter()
        .map(|written| {
            written.map(|(outcome, _)| outcome.map_err(|failure| failure.reason().to_owned()))
        })
        .collect())
}

/// The server-side step for `call` in run `run_id`, at the run's position (created by the step
/// if the run does not exist yet).
async fn server_step(
    db: &Database,
    run_id: &str,
    owner: &str,
    call: &LedgerCall,
) -> Result<Option<ServerStep>, JournalError> {
    let Some((account, amount)) = ledger::debit_or_credit(&call.action, &call.payload) else {
        return Ok(None);
    };
    let run = run_id.to_owned();
    let position = db
        .write(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms)
                     VALUES ('parity', 'parity', $1, 0, 0) ON CONFLICT (hash) DO NOTHING",
                    args![&[][..]],
                )
                .await?;
                tx.fetch_optional("SELECT next_seq FROM runs WHERE run_id = $1", args![&run])
                    .await?
                    .map(|row| row.int(0))
                    .transpose()
            })
        })
        .await?;
    let started = Event::Started {
        workflow: "parity".to_owned(),
        module_hash: "parity".to_owned(),
        input: "{}".to_owned(),
        started_at_ms: 0,
        traceparent: None,
    };
    Ok(Some(ServerStep {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        next_seq: position.unwrap_or(2),
        started: position.is_none().then_some(started),
        lease_ms: 60_000,
        // An event journaled before the step, as a workflow's clock read is.
        before: Encoded::new(&[Event::Clock { call: 0, ms: 7 }]),
        call: 1,
        reply_bytes_max: 64 << 10,
        op_id: call.op_id.clone(),
        action: call.action.clone(),
        request: format!("{} {}", call.action, call.payload),
        account,
        amount,
        fencing_tokens: call.fencing_tokens.clone(),
    }))
}
