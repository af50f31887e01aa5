//! The ledger in the journal's own database: a step's ledger operation, its idempotency record
//! and the run's events committed in one transaction, so that a crash leaves both or neither.
//! This is the one place the journal and the ledger meet: the journal knows nothing of money,
//! the ledger nothing of runs, and this module writes them together.
//!
//! Two ways, by dialect:
//!
//! - [`in_one_transaction`]: the run's fence (or its creation), [`ledger::apply`] and the append,
//!   as statements in one transaction (SQLite, and every ledger call that is not a plain debit
//!   or credit on PostgreSQL);
//! - [`ServerStep`]: on PostgreSQL a debit or credit is one call of the server-side function
//!   `ledger_step` (schema/postgres/0002), and concurrent runs' steps are written as one batch
//!   of `ledger_steps` ([`ServerSteps`], through the journal's group commit).

use crate::ledger::{self, LedgerCall};
use std::sync::{Arc, OnceLock};
use wasaga_core::BoxFuture;
use wasaga_core::clock::now_ms;
use wasaga_core::event::{CallFailure, Event};
use wasaga_db::{Arg, Database, Tx};
use wasaga_journal::{Answer, Batched, Batcher, Encoded, JournalError, answered, refused};

/// Where a co-located write puts the run's events: the position it is fenced at, or the run's
/// creation with its `started` event.
#[derive(Debug, Clone)]
pub struct RunAt {
    pub run_id: String,
    pub owner: String,
    pub next_seq: i64,
    /// The run's `started` event, when this write creates the run.
    pub unstarted: Option<Event>,
    pub lease_ms: u64,
}

/// Makes the journal event that records a call's outcome, if any.
pub type After = Arc<dyn Fn(&Result<String, CallFailure>) -> Option<Event> + Send + Sync>;

/// A co-located call's outcome, the event that recorded it, and the run's next position.
pub type Applied = (Result<String, CallFailure>, Option<Event>, i64);

/// Applies `call` to the ledger and appends `before` and the outcome's event (made by `after`)
/// to the run at `at`, in the transaction `tx`. The fence is checked (or the run created)
/// before the ledger writes, so a refused write leaves nothing.
pub async fn in_one_transaction(
    tx: &mut dyn Tx,
    at: &RunAt,
    call: &LedgerCall,
    before: Encoded,
    after: &After,
) -> Result<Applied, JournalError> {
    // Where the run's row is created, expecting the outcome's event after these.
    let reserved = wasaga_journal::first_next_seq(tx.dialect(), before.len() + 1);
    match &at.unstarted {
        Some(started) => {
            if !wasaga_journal::insert_run(
                tx,
                &at.run_id,
                started,
                &at.owner,
                at.lease_ms,
                reserved,
            )
            .await?
            {
                return Err(JournalError::RunExists(at.run_id.clone()));
            }
        }
        // Checked before the ledger writes: a refused job writes nothing.
        None => wasaga_journal::check_fence(tx, &at.run_id, &at.owner, at.next_seq).await?,
    }
    let outcome = ledger::apply(tx, call)
        .await?
        .map_err(CallFailure::Rejected);
    let mut events = before;
    let last = after(&outcome);
    if let Some(event) = &last {
        events.push(event);
    }
    let next_seq = if at.unstarted.is_some() {
        wasaga_journal::append_created(tx, &at.run_id, &at.owner, reserved, &events).await?
    } else {
        wasaga_journal::append_events(tx, &at.run_id, &at.owner, at.next_seq, &events).await?
    };
    Ok((outcome, last, next_seq))
}

/// The batches of server-side steps one host writes to a PostgreSQL journal, started by the
/// first step.
#[derive(Debug)]
pub struct ServerSteps {
    db: Arc<Database>,
    batcher: OnceLock<Batcher<ServerStep>>,
}

impl ServerSteps {
    pub fn new(db: Arc<Database>) -> Self {
        ServerSteps {
            db,
            batcher: OnceLock::new(),
        }
    }

    /// Writes `step` with [`ledger_step_pg`], in a batch with other runs' steps, and returns its
    /// outcome and the run's next position once it is durable.
    pub async fn write(&self, step: ServerStep) -> Written {
        self.batcher
            .get_or_init(|| Batcher::start(self.db.clone()))
            .write(step)
            .await
    }
}

/// A saga step that debits or credits the ledger in the journal's own PostgreSQL database,
/// done in one round trip by the server-side function `ledger_step` (schema/postgres/0002):
/// the run's fence (or its creation, with `started`), the ledger operation with its
/// idempotency record, the events before the outcome and the outcome event. Returns the
/// outcome and the run's next position. Fails with [`JournalError::RunExists`] if the run to
/// create exists, or as a refused append if this host does not hold the run; nothing is
/// written then.
pub async fn ledger_step_pg(
    tx: &mut dyn Tx,
    step: &ServerStep,
) -> Result<(Result<String, CallFailure>, i64), JournalError> {
    let (started, workflow, module_hash, input) = match &step.started {
        Some(Event::Started {
            workflow,
            module_hash,
            input,
            ..
        }) => (
            Some(
                serde_json::to_string(step.started.as_ref().expect("matched"))
                    .expect("events always serialize"),
            ),
            Some(workflow.as_str()),
            Some(module_hash.as_str()),
            Some(input.as_str()),
        ),
        _ => (None, None, None, None),
    };
    let (kinds, bodies): (Vec<String>, Vec<String>) = step
        .before
        .rows()
        .iter()
        .map(|(kind, body)| ((*kind).to_owned(), body.clone()))
        .unzip();
    let token_keys: Vec<String> = step.fencing_tokens.iter().map(|(k, _)| k.clone()).collect();
    let token_values: Vec<i64> = step.fencing_tokens.iter().map(|(_, t)| *t as i64).collect();
    let row = tx
        .fetch_optional(
            "SELECT status, outcome, next_seq FROM ledger_step(
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
            wasaga_db::args![
                &step.run_id,
                &step.owner,
                step.next_seq,
                started.as_deref(),
                workflow,
                module_hash,
                input,
                step.lease_ms as i64,
                wasaga_db::Arg::TextList(&kinds),
                wasaga_db::Arg::TextList(&bodies),
                i64::from(step.call),
                step.reply_bytes_max as i64,
                &step.op_id,
                &step.action,
                &step.request,
                &step.account,
                step.amount,
                wasaga_db::Arg::TextList(&token_keys),
                wasaga_db::Arg::IntList(&token_values),
                now_ms() as i64
            ],
        )
        .await?
        .ok_or_else(|| JournalError::Corrupt {
            run_id: step.run_id.clone(),
            seq: step.next_seq,
            reason: "ledger_step returned no row".to_owned(),
        })?;
    let status = row.text(0)?;
    let next_seq = row.int(2)?;
    match status.as_str() {
        "ok" => Ok((Ok(row.text(1)?), next_seq)),
        "rejected" => Ok((Err(CallFailure::Rejected(row.text(1)?)), next_seq)),
        "exists" => Err(JournalError::RunExists(step.run_id.clone())),
        _ => Err(refused(tx, &step.run_id, &step.owner, step.next_seq).await),
    }
}

/// Everything [`ledger_step_pg`] needs for one step.
#[derive(Debug)]
pub struct ServerStep {
    pub run_id: String,
    pub owner: String,
    pub next_seq: i64,
    /// The run's `started` event, when the step's write creates the run.
    pub started: Option<Event>,
    pub lease_ms: u64,
    /// Events journaled before the outcome (buffered ones, the intent).
    pub before: Encoded,
    pub call: u32,
    pub reply_bytes_max: usize,
    pub op_id: String,
    /// `debit` or `credit`.
    pub action: String,
    /// `"<action> <payload>"`, as the ledger compares a repeated key's request.
    pub request: String,
    pub account: String,
    pub amount: i64,
    pub fencing_tokens: Vec<(String, u64)>,
}

/// A step's write: its outcome and the run's next position.
pub type Written = Answer<ServerStep>;

impl Batched for ServerStep {
    type Value = (Result<String, CallFailure>, i64);

    fn lock_key(&self) -> &str {
        &self.account
    }

    fn fence(&self) -> (&str, &str, i64) {
        (&self.run_id, &self.owner, self.next_seq)
    }

    fn write_alone<'t>(
        tx: &'t mut dyn Tx,
        step: &'t ServerStep,
    ) -> BoxFuture<'t, Result<Self::Value, JournalError>> {
        Box::pin(ledger_step_pg(tx, step))
    }

    fn write_batch<'t>(
        tx: &'t mut dyn Tx,
        steps: &'t [ServerStep],
    ) -> BoxFuture<'t, Result<Vec<Option<Written>>, JournalError>> {
        Box::pin(ledger_steps_pg(tx, steps))
    }
}

/// Writes `steps` with one call of `ledger_steps` (see [`Batched::write_batch`]).
async fn ledger_steps_pg(
    tx: &mut dyn Tx,
    steps: &[ServerStep],
) -> Result<Vec<Option<Written>>, JournalError> {
    let mut a = StepColumns::default();
    for step in steps {
        a.push(step);
    }
    let rows = tx
        .fetch_all(
            "SELECT status, outcome, next_seq FROM ledger_steps(
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                 $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
            &[
                Arg::TextList(&a.run_ids),
                Arg::TextList(&a.owners),
                Arg::IntList(&a.next_seqs),
                Arg::TextList(&a.starteds),
                Arg::TextList(&a.workflows),
                Arg::TextList(&a.module_hashes),
                Arg::TextList(&a.inputs),
                Arg::IntList(&a.lease_ms),
                Arg::IntList(&a.event_counts),
                Arg::TextList(&a.kinds),
                Arg::TextList(&a.bodies),
                Arg::IntList(&a.calls),
                Arg::IntList(&a.reply_max),
                Arg::TextList(&a.op_ids),
                Arg::TextList(&a.actions),
                Arg::TextList(&a.requests),
                Arg::TextList(&a.accounts),
                Arg::IntList(&a.amounts),
                Arg::IntList(&a.token_counts),
                Arg::TextList(&a.token_keys),
                Arg::IntList(&a.token_values),
                Arg::Int(now_ms() as i64),
            ],
        )
        .await?;
    answered(rows.len(), steps.len())?;
    let mut answers = Vec::with_capacity(rows.len());
    for (step, row) in steps.iter().zip(rows) {
        let next_seq = row.int(2)?;
        answers.push(match row.text(0)?.as_str() {
            "ok" => Some(Ok((Ok(row.text(1)?), next_seq))),
            "rejected" => Some(Ok((Err(CallFailure::Rejected(row.text(1)?)), next_seq))),
            "exists" => Some(Err(JournalError::RunExists(step.run_id.clone()))),
            _ => None,
        });
    }
    Ok(answers)
}

/// The arguments of `ledger_steps`: one array per parameter.
#[derive(Default)]
struct StepColumns {
    run_ids: Vec<String>,
    owners: Vec<String>,
    next_seqs: Vec<i64>,
    starteds: Vec<String>,
    workflows: Vec<String>,
    module_hashes: Vec<String>,
    inputs: Vec<String>,
    lease_ms: Vec<i64>,
    event_counts: Vec<i64>,
    kinds: Vec<String>,
    bodies: Vec<String>,
    calls: Vec<i64>,
    reply_max: Vec<i64>,
    op_ids: Vec<String>,
    actions: Vec<String>,
    requests: Vec<String>,
    accounts: Vec<String>,
    amounts: Vec<i64>,
    token_counts: Vec<i64>,
    token_keys: Vec<String>,
    token_values: Vec<i64>,
}

impl StepColumns {
    fn push(&mut self, step: &ServerStep) {
        self.run_ids.push(step.run_id.clone());
        self.owners.push(step.owner.clone());
        self.next_seqs.push(step.next_seq);
        match &step.started {
            Some(
                started @ Event::Started {
                    workflow,
                    module_hash,
                    input,
                    ..
                },
            ) => {
                self.starteds
                    .push(serde_json::to_string(started).expect("events always serialize"));
                self.workflows.push(workflow.clone());
                self.module_hashes.push(module_hash.clone());
                self.inputs.push(input.clone());
            }
            _ => {
                // '' is read as "the run exists" by ledger_steps.
                self.starteds.push(String::new());
                self.workflows.push(String::new());
                self.module_hashes.push(String::new());
                self.inputs.push(String::new());
            }
        }
        self.lease_ms.push(step.lease_ms as i64);
        self.event_counts.push(step.before.rows().len() as i64);
        for (kind, body) in step.before.rows() {
            self.kinds.push((*kind).to_owned());
            self.bodies.push(body.clone());
        }
        self.calls.push(i64::from(step.call));
        self.reply_max.push(step.reply_bytes_max as i64);
        self.op_ids.push(step.op_id.clone());
        self.actions.push(step.action.clone());
        self.requests.push(step.request.clone());
        self.accounts.push(step.account.clone());
        self.amounts.push(step.amount);
        self.token_counts.push(step.fencing_tokens.len() as i64);
        for (key, token) in &step.fencing_tokens {
            self.token_keys.push(key.clone());
            self.token_values.push(*token as i64);
        }
    }
}
