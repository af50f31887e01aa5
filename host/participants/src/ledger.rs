//! The built-in `ledger` participant: accounts whose balance never goes below zero, holds
//! (reserve, capture, void), orders and transaction records, every operation idempotent by its
//! key.
//!
//! Operations run inside a transaction the caller provides, so that when the ledger lives in
//! the journal's database the ledger write and the step's journal entry commit together. The
//! SQL is portable: the same rules run on SQLite and on PostgreSQL.
//!
//! Compensations carry the key of the operation they undo. If that operation never applied,
//! the undo records a tombstone for it instead (so it can never apply later) and succeeds
//! without moving money: compensating what never happened must not create money.

use crate::branch::{Decided, Prepare};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wasaga_core::clock::now_ms;
use wasaga_db::args;
use wasaga_db::{Database, DbError, Dialect, Tx};

/// The actions a workflow may call on the ledger.
pub const ACTIONS: &[&str] = &[
    "debit",
    "credit",
    "transfer",
    "balance",
    "hold",
    "capture",
    "void",
    "order-create",
    "order-cancel",
    "record",
    "read",
    "write",
];

/// Actions the host uses for two-phase commit; not callable as steps.
pub const TWO_PHASE_ACTIONS: &[&str] = &["prepare", "commit-prepared", "abort-prepared"];

/// A request to the ledger, as the host sends it.
#[derive(Debug, Clone)]
pub struct LedgerCall {
    /// Idempotency key (`participants::op_key`): `run-id/step` for actions, `run-id/step#undo`
    /// for compensations.
    pub op_id: String,
    /// For a compensation: the key of the operation it undoes.
    pub undoes: Option<String>,
    pub action: String,
    pub payload: String,
    /// `(lock key, fencing token)` of the locks the caller holds; an older token than the
    /// newest seen for a key is refused.
    pub fencing_tokens: Vec<(String, u64)>,
}

/// A business refusal: permanent, recorded, returned again for the same key.
pub type Rejection = String;

/// One account's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub account: String,
    pub balance: i64,
    pub held: i64,
}

/// Why opening an account failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("account '{0}' already exists")]
    Exists(String),
    #[error(
        "account name must be 1 to 64 characters of letters, digits, '-', '_', '.', ':' or '/'"
    )]
    BadName,
    #[error("opening balance must be between 0 and {}", AMOUNT_MAX)]
    BadBalance,
    #[error("ledger database error: {0}")]
    Database(#[from] DbError),
}

/// The largest amount one operation may move, far below overflow of the balance column.
pub const AMOUNT_MAX: i64 = 1 << 50;
/// The largest balance a credit may leave: sums of balances stay far from overflow.
const BALANCE_MAX: i64 = i64::MAX / 2;

/// Opens `account` with `balance` (minor units) in its own durable transaction.
pub async fn open(db: &Database, account: &str, balance: i64) -> Result<Account, OpenError> {
    let account = account.to_owned();
    db.write(move |tx| Box::pin(async move { open_account(tx, &account, balance).await }))
        .await
}

/// Every account, by name, from one snapshot.
pub async fn list(db: &Database) -> Result<Vec<Account>, DbError> {
    db.read(|tx| Box::pin(async move { accounts(tx).await }))
        .await
}

/// Opens `account` with `balance` (minor units) inside `tx`.
pub async fn open_account(
    tx: &mut dyn Tx,
    account: &str,
    balance: i64,
) -> Result<Account, OpenError> {
    let valid_name = !account.is_empty()
        && account.len() <= 64
        && account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if !valid_name {
        return Err(OpenError::BadName);
    }
    if !(0..=AMOUNT_MAX).contains(&balance) {
        return Err(OpenError::BadBalance);
    }
    let now = now_ms() as i64;
    let inserted = tx
        .execute(
            "INSERT INTO ledger_accounts (account, balance, held, opened_at_ms) VALUES ($1, $2, 0, $3)
             ON CONFLICT (account) DO NOTHING",
            args![account, balance, now],
        )
        .await?;
    if inserted == 0 {
        return Err(OpenError::Exists(account.to_owned()));
    }
    // Keys the ledger makes itself start with `#`, which no run id (and so no key of a
    // run's operation, `participants::op_key`) ever starts with: run `open` step `alice` is
    // `open/alice`, opening account `alice` is `#open/alice`.
    let op_id = format!("#open/{account}");
    tx.execute(
        "INSERT INTO ledger_entries (op_id, account, delta) VALUES ($1, $2, $3)",
        args![&op_id, account, balance],
    )
    .await?;
    tx.execute(
        "INSERT INTO ledger_ops (op_id, action, request, status, reply, at_ms)
         VALUES ($1, 'open', $2, 'applied', '{}', $3)",
        args![&op_id, &balance.to_string(), now],
    )
    .await?;
    Ok(Account {
        account: account.to_owned(),
        balance,
        held: 0,
    })
}

/// Accounts a page of [`accounts_page`] holds at most.
pub const ACCOUNTS_PAGE_MAX: u32 = 1_000;

/// Up to `limit` accounts (at most `ACCOUNTS_PAGE_MAX`) whose names start with `prefix`, by
/// name, after `after`: a page of a ledger too large to list at once.
pub async fn accounts_page(
    db: &Database,
    prefix: Option<String>,
    after: Option<String>,
    limit: u32,
) -> Result<Vec<Account>, DbError> {
    let limit = i64::from(limit.clamp(1, ACCOUNTS_PAGE_MAX));
    db.read(move |tx| {
        Box::pin(async move {
            // Compared as text, not matched as a pattern: `%` and `_` in a prefix mean
            // themselves.
            let rows = tx
                .fetch_all(
                    "SELECT account, balance, held FROM ledger_accounts
                     WHERE ($1 IS NULL OR substr(account, 1, length($1)) = $1)
                     AND ($2 IS NULL OR account > $2)
                     ORDER BY account LIMIT $3",
                    wasaga_db::args![prefix.as_deref(), after.as_deref(), limit],
                )
                .await?;
            rows.iter().map(account_of).collect()
        })
    })
    .await
}

fn account_of(row: &wasaga_db::Row) -> Result<Account, DbError> {
    Ok(Account {
        account: row.text(0)?,
        balance: row.int(1)?,
        held: row.int(2)?,
    })
}

/// Every account, by name.
pub async fn accounts(tx: &mut dyn Tx) -> Result<Vec<Account>, DbError> {
    let rows = tx
        .fetch_all(
            "SELECT account, balance, held FROM ledger_accounts ORDER BY account",
            &[],
        )
        .await?;
    rows.iter().map(account_of).collect()
}

/// Performs `call` inside `tx`. The outer `Result` is a database failure (nothing was
/// recorded; the caller rolls back); the inner one is the business outcome, which is recorded
/// under the call's key.
/// The two-phase transactions with branches still prepared here (for `GET /prepared` of the
/// ledger served over HTTP, and so for another host's in-doubt sweep).
pub async fn prepared_xids(tx: &mut dyn Tx) -> Result<Vec<String>, DbError> {
    let rows = tx
        .fetch_all(
            "SELECT DISTINCT xid FROM ledger_prepared WHERE state = 'prepared' ORDER BY xid",
            args![],
        )
        .await?;
    rows.iter().map(|row| row.text(0)).collect()
}

pub async fn apply(
    tx: &mut dyn Tx,
    call: &LedgerCall,
) -> Result<Result<String, Rejection>, DbError> {
    let request = format!("{} {}", call.action, call.payload);
    let previous = tx
        .fetch_optional(
            "SELECT status, request, reply FROM ledger_ops WHERE op_id = $1",
            args![&call.op_id],
        )
        .await?;
    if let Some(row) = previous {
        let status = row.text(0)?;
        let first_request = row.text(1)?;
        let reply = row.text(2)?;
        if first_request != request && status != "tombstone" {
            return Ok(Err(format!(
                "idempotency key {} was already used for a different request ({first_request})",
                call.op_id
            )));
        }
        return Ok(match status.as_str() {
            "applied" => Ok(reply),
            "rejected" => Err(reply),
            _ => Err(format!(
                "operation {} was compensated before it ran; it can never apply",
                call.op_id
            )),
        });
    }

    if let Some(undone) = &call.undoes {
        let status = tx
            .fetch_optional(
                "SELECT status FROM ledger_ops WHERE op_id = $1",
                args![undone],
            )
            .await?
            .map(|r| r.text(0))
            .transpose()?;
        if status.as_deref() != Some("applied") {
            if status.is_none() {
                tx.execute(
                    "INSERT INTO ledger_ops (op_id, action, request, status, reply, at_ms)
                     VALUES ($1, 'tombstone', '', 'tombstone', '', $2)",
                    args![undone, now_ms() as i64],
                )
                .await?;
            }
            let reply = json!({ "undone": false, "reason": format!("{undone} never applied") });
            record(tx, call, &request, Ok(reply.to_string())).await?;
            return Ok(Ok(reply.to_string()));
        }
    }

    if let Err(stale) = fence(tx, &call.fencing_tokens).await? {
        record(tx, call, &request, Err(stale.clone())).await?;
        return Ok(Err(stale));
    }
    let outcome = perform_whole(tx, call)
        .await?
        .map(|reply| reply.to_string());
    // A refused compensation is not recorded: it must stay retryable (by the host's backoff or
    // an operator) once the refusal's cause, such as a spent balance, is fixed.
    if outcome.is_ok() || call.undoes.is_none() {
        record(tx, call, &request, outcome.clone()).await?;
    }
    Ok(outcome)
}

/// The account and amount of a well-formed debit or credit, for the PostgreSQL server-side step
/// (`colocated::ServerStep`). `None` for any other call, or a malformed one.
pub fn debit_or_credit(action: &str, payload: &str) -> Option<(String, i64)> {
    if action != "debit" && action != "credit" {
        return None;
    }
    let entry: Entry = serde_json::from_str(payload).ok()?;
    check_amount(entry.amount).ok()?;
    Some((entry.account, entry.amount))
}

/// Refuses a call whose fencing token for some lock is older than the newest one seen, and
/// remembers the newest token per lock otherwise.
async fn fence(
    tx: &mut dyn Tx,
    tokens: &[(String, u64)],
) -> Result<Result<(), Rejection>, DbError> {
    for (key, token) in tokens {
        let newest = tx
            .fetch_optional("SELECT token FROM ledger_fences WHERE key = $1", args![key])
            .await?
            .map(|r| r.int(0))
            .transpose()?;
        if let Some(newest) = newest.filter(|newest| *newest > *token as i64) {
            return Ok(Err(format!(
                "stale fencing token {token} for lock '{key}': the ledger has already seen token {newest}, so the lock has passed to another holder"
            )));
        }
    }
    for (key, token) in tokens {
        tx.execute(
            "INSERT INTO ledger_fences (key, token) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET token = CASE
                 WHEN ledger_fences.token > excluded.token THEN ledger_fences.token
                 ELSE excluded.token END",
            args![key, *token as i64],
        )
        .await?;
    }
    Ok(Ok(()))
}

async fn record(
    tx: &mut dyn Tx,
    call: &LedgerCall,
    request: &str,
    outcome: Result<String, Rejection>,
) -> Result<(), DbError> {
    let (status, reply) = match outcome {
        Ok(reply) => ("applied", reply),
        Err(reason) => ("rejected", reason),
    };
    tx.execute(
        "INSERT INTO ledger_ops (op_id, action, request, status, reply, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        args![&call.op_id, &call.action, request, status, &reply, now_ms() as i64],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    account: String,
    amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRef {
    account: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    hold_id: String,
    account: String,
    amount: i64,
    /// The hold expires this long after it is first applied: it can then no longer be
    /// captured, and the host voids it ([`void_expired`]). Absent: it never expires.
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Capture {
    hold_id: String,
    to: String,
    amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRef {
    hold_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderCreate {
    order_id: String,
    customer: String,
    merchant: String,
    amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRef {
    order_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRead {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterWrite {
    key: String,
    value: Value,
    /// Refuse the write unless the register is at this version (optimistic concurrency).
    expected_version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    reference: String,
    order_id: String,
    amount: i64,
}

fn parse<T: DeserializeOwned>(call: &LedgerCall) -> Result<T, Rejection> {
    serde_json::from_str(&call.payload)
        .map_err(|e| format!("invalid payload for ledger.{}: {e}", call.action))
}

fn check_amount(amount: i64) -> Result<(), Rejection> {
    if amount <= 0 || amount > AMOUNT_MAX {
        return Err(format!(
            "amount {amount} must be between 1 and {AMOUNT_MAX}"
        ));
    }
    Ok(())
}

type Outcome = Result<Result<Value, Rejection>, DbError>;

/// Turns a validation failure into a recorded rejection.
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(rejection) => return Ok(Err(rejection)),
        }
    };
}

/// Performs `call` so that a refused action writes nothing: an action that may refuse after
/// writing (a transfer whose second account is missing, a capture whose credit would
/// overflow) runs inside a savepoint that is rolled back when it refuses. A debit, a credit or
/// a read writes only once nothing can refuse it any more, so the hot path takes no savepoint
/// (on SQLite one makes the statement keep a journal of every page it touches).
async fn perform_whole(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    if matches!(
        call.action.as_str(),
        "debit" | "credit" | "balance" | "read"
    ) {
        return perform(tx, call).await;
    }
    tx.execute("SAVEPOINT ledger_action", args![]).await?;
    let outcome = perform(tx, call).await?;
    if outcome.is_err() {
        tx.execute("ROLLBACK TO SAVEPOINT ledger_action", args![])
            .await?;
    }
    tx.execute("RELEASE SAVEPOINT ledger_action", args![])
        .await?;
    Ok(outcome)
}

/// Performs one of [`ACTIONS`]: its payload parsed and checked, then the action.
async fn perform(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    match call.action.as_str() {
        "debit" => {
            let e: Entry = check!(parse(call));
            check!(check_amount(e.amount));
            debit(tx, &call.op_id, &e.account, e.amount).await
        }
        "credit" => {
            let e: Entry = check!(parse(call));
            check!(check_amount(e.amount));
            credit(tx, &call.op_id, &e.account, e.amount).await
        }
        "transfer" => transfer(tx, call).await,
        "balance" => {
            let a: AccountRef = check!(parse(call));
            let account = check!(account(tx, &a.account).await?);
            Ok(Ok(json!(account)))
        }
        "hold" => {
            let h: Hold = check!(parse(call));
            check!(check_amount(h.amount));
            hold(tx, &call.op_id, h).await
        }
        "capture" => {
            let c: Capture = check!(parse(call));
            check!(check_amount(c.amount));
            capture(tx, &call.op_id, c).await
        }
        "void" => {
            let v: HoldRef = check!(parse(call));
            void(tx, &call.op_id, &v.hold_id).await
        }
        "order-create" => order_create(tx, call).await,
        "order-cancel" => order_cancel(tx, call).await,
        "record" => record_payment(tx, call).await,
        "prepare" => {
            let p: Prepare = check!(parse(call));
            check!(check_amount(p.amount));
            prepare(tx, &call.op_id, p).await
        }
        "commit-prepared" => {
            let d: Decided = check!(parse(call));
            finish_prepared(tx, &call.op_id, &d.xid, true).await
        }
        "abort-prepared" => {
            let d: Decided = check!(parse(call));
            finish_prepared(tx, &call.op_id, &d.xid, false).await
        }
        "read" => register_read(tx, call).await,
        "write" => register_write(tx, call).await,
        other => Ok(Err(format!(
            "the ledger has no action '{other}'; it has: {}",
            ACTIONS.join(", ")
        ))),
    }
}

/// A debit of one account and a credit of another, as one action.
async fn transfer(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    let t: Transfer = check!(parse(call));
    check!(check_amount(t.amount));
    if t.from == t.to {
        return Ok(Err("transfer needs two different accounts".to_owned()));
    }
    let from = check!(debit(tx, &call.op_id, &t.from, t.amount).await?);
    let to = check!(credit(tx, &call.op_id, &t.to, t.amount).await?);
    Ok(Ok(json!({
        "from": t.from, "to": t.to, "amount": t.amount,
        "from_balance": from["balance"], "to_balance": to["balance"],
    })))
}

/// Creates a payment order between a customer and a merchant, once per order id.
async fn order_create(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    let o: OrderCreate = check!(parse(call));
    check!(check_amount(o.amount));
    check!(account(tx, &o.customer).await?);
    check!(account(tx, &o.merchant).await?);
    let inserted = tx
        .execute(
            "INSERT INTO ledger_orders (order_id, customer, merchant, amount, status)
             VALUES ($1, $2, $3, $4, 'created') ON CONFLICT (order_id) DO NOTHING",
            args![&o.order_id, &o.customer, &o.merchant, o.amount],
        )
        .await?;
    if inserted == 0 {
        return Ok(Err(format!("order {} already exists", o.order_id)));
    }
    Ok(Ok(json!({ "order_id": o.order_id, "status": "created" })))
}

/// Cancels an order (the compensation of `order-create`).
async fn order_cancel(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    let o: OrderRef = check!(parse(call));
    tx.execute(
        "UPDATE ledger_orders SET status = 'cancelled' WHERE order_id = $1",
        args![&o.order_id],
    )
    .await?;
    Ok(Ok(json!({ "order_id": o.order_id, "status": "cancelled" })))
}

/// Records the payment of an order under its reference; a reference paid before is refused as a duplicate payment.
async fn record_payment(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    let r: Record = check!(parse(call));
    check!(check_amount(r.amount));
    let order = tx
        .fetch_optional(
            "SELECT customer, amount, status FROM ledger_orders WHERE order_id = $1",
            args![&r.order_id],
        )
        .await?;
    let Some(order) = order else {
        return Ok(Err(format!("order {} does not exist", r.order_id)));
    };
    let customer = order.text(0)?;
    let status = order.text(2)?;
    if status != "created" {
        return Ok(Err(format!(
            "order {} is {status}, not payable",
            r.order_id
        )));
    }
    if order.int(1)? != r.amount {
        return Ok(Err(format!(
            "amount {} does not match order {}",
            r.amount, r.order_id
        )));
    }
    let existing = tx
        .fetch_optional(
            "SELECT order_id FROM ledger_records WHERE reference = $1",
            args![&r.reference],
        )
        .await?;
    if let Some(other) = existing {
        return Ok(Err(format!(
            "reference {} is already recorded for order {}: duplicate payment",
            r.reference,
            other.text(0)?
        )));
    }
    tx.execute(
        "INSERT INTO ledger_records (reference, order_id, amount, at_ms) VALUES ($1, $2, $3, $4)",
        args![&r.reference, &r.order_id, r.amount, now_ms() as i64],
    )
    .await?;
    tx.execute(
        "UPDATE ledger_orders SET status = 'paid' WHERE order_id = $1",
        args![&r.order_id],
    )
    .await?;
    let customer = check!(account(tx, &customer).await?);
    Ok(Ok(json!({
        "reference": r.reference, "order_id": r.order_id,
        "customer_balance": customer.balance,
    })))
}

/// A versioned register's value and version (`null` and 0 if never written).
async fn register_read(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    let r: RegisterRead = check!(parse(call));
    let (value, version) = match read_register(tx, &r.key).await? {
        Some((text, version)) => (serde_json::from_str(&text).unwrap_or(Value::Null), version),
        None => (Value::Null, 0),
    };
    Ok(Ok(
        json!({ "key": r.key, "value": value, "version": version }),
    ))
}

/// Writes a versioned register, refused if `expected_version` is given and not the current one.
async fn register_write(tx: &mut dyn Tx, call: &LedgerCall) -> Outcome {
    let w: RegisterWrite = check!(parse(call));
    let version = read_register(tx, &w.key).await?.map_or(0, |(_, v)| v);
    if let Some(expected) = w.expected_version.filter(|e| *e != version) {
        return Ok(Err(format!(
            "version conflict: register '{}' is at version {version}, not {expected}",
            w.key
        )));
    }
    tx.execute(
        "INSERT INTO ledger_registers (key, value, version) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
        args![&w.key, &w.value.to_string(), version + 1],
    )
    .await?;
    Ok(Ok(
        json!({ "key": w.key, "value": w.value, "version": version + 1 }),
    ))
}

/// The longest a hold may last.
const HOLD_TTL_MS_MAX: u64 = 365 * 24 * 3_600 * 1_000;

/// Expired holds voided by one call of [`void_expired`] at most.
pub const EXPIRED_HOLDS_PER_SWEEP_MAX: i64 = 256;

/// Operation records one pruning statement deletes at most.
const PRUNED_OPS_PER_BATCH: i64 = 1_000;

/// Deletes the records of operations made before `cutoff_ms` that applied or were refused:
/// their idempotency keys are forgotten (a repeat of one would apply again), so this is for
/// operations far older than any run that could repeat them. Tombstones stay (they keep a
/// late action from applying), and so do the entries, the balances' audit trail. Returns how
/// many records went.
pub async fn prune_ops(db: &Database, cutoff_ms: u64) -> Result<u64, DbError> {
    let mut pruned = 0;
    loop {
        let deleted = db
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "DELETE FROM ledger_ops WHERE op_id IN (
                             SELECT op_id FROM ledger_ops
                             WHERE at_ms < $1 AND status IN ('applied', 'rejected') LIMIT $2)",
                        wasaga_db::args![cutoff_ms as i64, PRUNED_OPS_PER_BATCH],
                    )
                    .await
                })
            })
            .await?;
        pruned += deleted;
        if deleted < PRUNED_OPS_PER_BATCH as u64 {
            return Ok(pruned);
        }
    }
}

/// Voids holds whose expiry has passed (at most `EXPIRED_HOLDS_PER_SWEEP_MAX`), each as an
/// operation of its own keyed `#expired/<hold id>` (see `open_account` for the `#`), and
/// returns how many it voided. A capture
/// racing with it finds the hold voided (or the void finds it captured); either way the held
/// amount moves once.
pub async fn void_expired(db: &Database) -> Result<usize, DbError> {
    let due: Vec<String> = db
        .read(|tx| {
            Box::pin(async move {
                let rows = tx
                    .fetch_all(
                        "SELECT hold_id FROM ledger_holds
                         WHERE state = 'held' AND expires_at_ms IS NOT NULL AND expires_at_ms <= $1
                         ORDER BY expires_at_ms LIMIT $2",
                        args![now_ms() as i64, EXPIRED_HOLDS_PER_SWEEP_MAX],
                    )
                    .await?;
                rows.iter().map(|r| r.text(0)).collect()
            })
        })
        .await?;
    let mut voided = 0;
    for hold_id in due {
        let call = LedgerCall {
            op_id: format!("#expired/{hold_id}"),
            undoes: None,
            action: "void".to_owned(),
            payload: json!({ "hold_id": hold_id }).to_string(),
            fencing_tokens: Vec::new(),
        };
        let outcome = db
            .write(move |tx| Box::pin(async move { apply(tx, &call).await }))
            .await?;
        if outcome.is_ok() {
            voided += 1;
        }
    }
    Ok(voided)
}

/// A versioned register's JSON text and version, if it was ever written.
pub async fn read_register(tx: &mut dyn Tx, key: &str) -> Result<Option<(String, i64)>, DbError> {
    tx.fetch_optional(
        "SELECT value, version FROM ledger_registers WHERE key = $1",
        args![key],
    )
    .await?
    .map(|row| Ok((row.text(0)?, row.int(1)?)))
    .transpose()
}

/// Phase one: reserves a debit branch's amount (balance -> held) or records a credit
/// branch, unless the transaction was already aborted.
async fn prepare(tx: &mut dyn Tx, op_id: &str, p: Prepare) -> Outcome {
    let fenced = tx
        .fetch_optional(
            "SELECT state FROM ledger_prepared WHERE xid = $1 AND state = 'aborted' LIMIT 1",
            args![&p.xid],
        )
        .await?;
    if fenced.is_some() {
        return Ok(Err(format!(
            "transaction {} was aborted; it can never prepare",
            p.xid
        )));
    }
    let delta = match p.action.as_str() {
        "debit" => {
            check!(debit(tx, op_id, &p.account, p.amount).await?);
            tx.execute(
                "UPDATE ledger_accounts SET held = held + $1 WHERE account = $2",
                args![p.amount, &p.account],
            )
            .await?;
            -p.amount
        }
        "credit" => {
            check!(account(tx, &p.account).await?);
            p.amount
        }
        other => {
            return Ok(Err(format!(
                "the ledger can prepare debit and credit, not '{other}'"
            )));
        }
    };
    tx.execute(
        "INSERT INTO ledger_prepared (xid, branch, account, delta, state) VALUES ($1, $2, $3, $4, 'prepared')",
        args![&p.xid, p.branch, &p.account, delta],
    )
    .await?;
    Ok(Ok(
        json!({ "xid": p.xid, "branch": p.branch, "prepared": true }),
    ))
}

/// Phase two: posts (commit) or releases (abort) every prepared branch of `xid`. An abort
/// with nothing prepared leaves a fence so that a late prepare is refused (presumed abort).
async fn finish_prepared(tx: &mut dyn Tx, op_id: &str, xid: &str, commit: bool) -> Outcome {
    let rows = tx
        .fetch_all(
            "SELECT branch, account, delta FROM ledger_prepared
             WHERE xid = $1 AND state = 'prepared' ORDER BY branch",
            args![xid],
        )
        .await?;
    let mut branches = Vec::with_capacity(rows.len());
    for row in &rows {
        branches.push((row.int(0)?, row.text(1)?, row.int(2)?));
    }
    for (branch, account, delta) in &branches {
        match (commit, *delta < 0) {
            // A committed debit leaves the reserve; the balance already dropped at prepare.
            (true, true) => {
                tx.execute(
                    "UPDATE ledger_accounts SET held = held + $1 WHERE account = $2",
                    args![*delta, account],
                )
                .await?;
            }
            (true, false) => {
                // The account was checked at prepare; a credit that fails now (an overflow)
                // must not leave the other branches posted: fail the whole job instead.
                if let Err(reason) =
                    credit(tx, &format!("{op_id}/{branch}"), account, *delta).await?
                {
                    return Err(DbError::Statement {
                        database: "ledger".to_owned(),
                        reason: format!("commit of {xid} branch {branch}: {reason}"),
                    });
                }
            }
            // An aborted debit returns its reserve to the balance.
            (false, true) => {
                tx.execute(
                    "UPDATE ledger_accounts SET held = held + $1, balance = balance - $1 WHERE account = $2",
                    args![*delta, account],
                )
                .await?;
                entry(tx, &format!("{op_id}/{branch}"), account, -delta).await?;
            }
            (false, false) => {}
        }
    }
    let state = if commit { "committed" } else { "aborted" };
    tx.execute(
        "UPDATE ledger_prepared SET state = $1 WHERE xid = $2 AND state = 'prepared'",
        args![state, xid],
    )
    .await?;
    if !commit && branches.is_empty() {
        tx.execute(
            "INSERT INTO ledger_prepared (xid, branch, account, delta, state) VALUES ($1, -1, '', 0, 'aborted')
             ON CONFLICT (xid, branch) DO NOTHING",
            args![xid],
        )
        .await?;
    }
    Ok(Ok(
        json!({ "xid": xid, "state": state, "branches": branches.len() }),
    ))
}

async fn account(tx: &mut dyn Tx, name: &str) -> Result<Result<Account, Rejection>, DbError> {
    let row = tx
        .fetch_optional(
            "SELECT balance, held FROM ledger_accounts WHERE account = $1",
            args![name],
        )
        .await?;
    Ok(match row {
        Some(r) => {
            let (balance, held) = (r.int(0)?, r.int(1)?);
            // The tables' CHECKs refuse a write that takes either below zero; a row read so
            // is a database that lost them, and nothing may be moved on it.
            assert!(
                balance >= 0 && held >= 0,
                "account '{name}' reads balance {balance}, held {held}: the ledger is corrupt"
            );
            Ok(Account {
                account: name.to_owned(),
                balance,
                held,
            })
        }
        None => Err(format!("unknown account '{name}'")),
    })
}

async fn entry(tx: &mut dyn Tx, op_id: &str, account: &str, delta: i64) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO ledger_entries (op_id, account, delta) VALUES ($1, $2, $3)
         ON CONFLICT (op_id, account) DO UPDATE SET delta = ledger_entries.delta + excluded.delta",
        args![op_id, account, delta],
    )
    .await?;
    Ok(())
}

/// Adds `delta` to `account`'s balance if the sum stays between zero and `BALANCE_MAX`; the new
/// balance, or `None` if it would not (or there is no such account).
async fn add_to_balance(
    tx: &mut dyn Tx,
    account: &str,
    delta: i64,
) -> Result<Option<i64>, DbError> {
    if tx.dialect() == Dialect::Postgres {
        return tx
            .fetch_optional(
                "UPDATE ledger_accounts SET balance = balance + $1
                 WHERE account = $2 AND balance + $1 BETWEEN 0 AND $3
                 RETURNING balance",
                args![delta, account, BALANCE_MAX],
            )
            .await?
            .map(|row| row.int(0))
            .transpose();
    }
    // SQLite runs RETURNING as a trigger: the statement buffers its rows in a temporary table
    // and keeps a statement journal, which together cost more than a second statement.
    let changed = tx
        .execute(
            "UPDATE ledger_accounts SET balance = balance + $1
             WHERE account = $2 AND balance + $1 BETWEEN 0 AND $3",
            args![delta, account, BALANCE_MAX],
        )
        .await?;
    if changed == 0 {
        return Ok(None);
    }
    tx.fetch_optional(
        "SELECT balance FROM ledger_accounts WHERE account = $1",
        args![account],
    )
    .await?
    .map(|row| row.int(0))
    .transpose()
}

async fn debit(tx: &mut dyn Tx, op_id: &str, account: &str, amount: i64) -> Outcome {
    let Some(balance) = add_to_balance(tx, account, -amount).await? else {
        let current = check!(self::account(tx, account).await?);
        return Ok(Err(format!(
            "insufficient funds in '{account}': balance {} is less than {amount}",
            current.balance
        )));
    };
    entry(tx, op_id, account, -amount).await?;
    Ok(Ok(json!({ "account": account, "balance": balance })))
}

async fn credit(tx: &mut dyn Tx, op_id: &str, account: &str, amount: i64) -> Outcome {
    let Some(balance) = add_to_balance(tx, account, amount).await? else {
        check!(self::account(tx, account).await?);
        return Ok(Err(format!(
            "credit to '{account}' would overflow its balance"
        )));
    };
    entry(tx, op_id, account, amount).await?;
    Ok(Ok(json!({ "account": account, "balance": balance })))
}

async fn hold(tx: &mut dyn Tx, op_id: &str, h: Hold) -> Outcome {
    let state = tx
        .fetch_optional(
            "SELECT state FROM ledger_holds WHERE hold_id = $1",
            args![&h.hold_id],
        )
        .await?;
    if let Some(state) = state {
        return Ok(Err(format!(
            "hold {} already exists ({}); a voided hold id can never be reused",
            h.hold_id,
            state.text(0)?
        )));
    }
    let expires_at_ms = match h.ttl_ms {
        Some(0) => return Ok(Err("a hold's ttl_ms must be positive".to_owned())),
        Some(ttl) if ttl > HOLD_TTL_MS_MAX => {
            return Ok(Err(format!(
                "a hold's ttl_ms is at most {HOLD_TTL_MS_MAX} (a year)"
            )));
        }
        Some(ttl) => Some((now_ms() + ttl) as i64),
        None => None,
    };
    let debited = check!(debit(tx, op_id, &h.account, h.amount).await?);
    tx.execute(
        "UPDATE ledger_accounts SET held = held + $1 WHERE account = $2",
        args![h.amount, &h.account],
    )
    .await?;
    tx.execute(
        "INSERT INTO ledger_holds (hold_id, account, amount, state, expires_at_ms) VALUES ($1, $2, $3, 'held', $4)",
        args![&h.hold_id, &h.account, h.amount, expires_at_ms],
    )
    .await?;
    Ok(Ok(json!({
        "hold_id": h.hold_id, "account": h.account, "amount": h.amount,
        "available": debited["balance"], "expires_at_ms": expires_at_ms,
    })))
}

async fn capture(tx: &mut dyn Tx, op_id: &str, c: Capture) -> Outcome {
    let row = tx
        .fetch_optional(
            "SELECT account, amount, state, expires_at_ms FROM ledger_holds WHERE hold_id = $1",
            args![&c.hold_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(format!("hold {} does not exist", c.hold_id)));
    };
    let holder = row.text(0)?;
    let held = row.int(1)?;
    let state = row.text(2)?;
    let expires_at_ms = row.opt_int(3)?;
    if state != "held" {
        return Ok(Err(format!(
            "hold {} is {state}, not capturable",
            c.hold_id
        )));
    }
    if let Some(at) = expires_at_ms
        && at <= now_ms() as i64
    {
        return Ok(Err(format!(
            "hold {} expired at {at} ms; it is voided, not capturable",
            c.hold_id
        )));
    }
    if c.amount > held {
        return Ok(Err(format!(
            "capture of {} exceeds hold {} of {held}",
            c.amount, c.hold_id
        )));
    }
    check!(account(tx, &c.to).await?);
    // The hold's state changes first, and only from `held`: of a capture and a void (the
    // host's, of an expired hold) racing on PostgreSQL, the second finds it changed.
    let claimed = tx
        .execute(
            "UPDATE ledger_holds SET state = 'captured', captured = $1 WHERE hold_id = $2 AND state = 'held'",
            args![c.amount, &c.hold_id],
        )
        .await?;
    if claimed == 0 {
        return Ok(Err(format!(
            "hold {} was ended meanwhile, not capturable",
            c.hold_id
        )));
    }
    let released = held - c.amount;
    tx.execute(
        "UPDATE ledger_accounts SET held = held - $1, balance = balance + $2 WHERE account = $3",
        args![held, released, &holder],
    )
    .await?;
    if released > 0 {
        entry(tx, op_id, &holder, released).await?;
    }
    let to = check!(credit(tx, op_id, &c.to, c.amount).await?);
    Ok(Ok(json!({
        "hold_id": c.hold_id, "captured": c.amount, "released": released,
        "to": c.to, "to_balance": to["balance"],
    })))
}

async fn void(tx: &mut dyn Tx, op_id: &str, hold_id: &str) -> Outcome {
    let row = tx
        .fetch_optional(
            "SELECT account, amount, state FROM ledger_holds WHERE hold_id = $1",
            args![hold_id],
        )
        .await?;
    let Some(row) = row else {
        // Void before hold: fence the id so the hold, if it arrives late, is refused.
        tx.execute(
            "INSERT INTO ledger_holds (hold_id, account, amount, state) VALUES ($1, '', 0, 'voided')",
            args![hold_id],
        )
        .await?;
        return Ok(Ok(
            json!({ "hold_id": hold_id, "voided": 0, "note": "no such hold; fenced" }),
        ));
    };
    let holder = row.text(0)?;
    let amount = row.int(1)?;
    let state = row.text(2)?;
    // Only from `held`, and before the money moves (see `capture`).
    let claimed = if state == "held" {
        tx.execute(
            "UPDATE ledger_holds SET state = 'voided' WHERE hold_id = $1 AND state = 'held'",
            args![hold_id],
        )
        .await?
    } else {
        0
    };
    if claimed == 0 {
        return Ok(Ok(
            json!({ "hold_id": hold_id, "voided": 0, "state": state }),
        ));
    }
    tx.execute(
        "UPDATE ledger_accounts SET held = held - $1, balance = balance + $1 WHERE account = $2",
        args![amount, &holder],
    )
    .await?;
    entry(tx, op_id, &holder, amount).await?;
    Ok(Ok(json!({ "hold_id": hold_id, "voided": amount })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasaga_core::crash::CrashSwitch;

    async fn ledger(name: &str) -> (Database, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("wasaga-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = Database::open(
            &wasaga_db::Location::Sqlite(dir.join("ledger.db")),
            wasaga_db::PoolSizes::default(),
            CrashSwitch::default(),
        )
        .await
        .expect("open");
        open(&db, "alice", 100).await.expect("open alice");
        open(&db, "bob", 0).await.expect("open bob");
        (db, dir)
    }

    async fn call(
        db: &Database,
        op_id: &str,
        undoes: Option<&str>,
        action: &str,
        payload: Value,
    ) -> Result<String, Rejection> {
        let call = LedgerCall {
            op_id: op_id.to_owned(),
            undoes: undoes.map(str::to_owned),
            action: action.to_owned(),
            payload: payload.to_string(),
            fencing_tokens: Vec::new(),
        };
        db.write(move |tx| Box::pin(async move { apply(tx, &call).await }))
            .await
            .expect("database")
    }

    async fn balances(db: &Database) -> Vec<(String, i64, i64)> {
        list(db)
            .await
            .expect("accounts")
            .into_iter()
            .map(|a| (a.account, a.balance, a.held))
            .collect()
    }

    fn owned(rows: &[(&str, i64, i64)]) -> Vec<(String, i64, i64)> {
        rows.iter()
            .map(|(a, b, h)| ((*a).to_owned(), *b, *h))
            .collect()
    }

    /// Every account's `(balance, held)` and the sum of its entries, for the audit checks.
    async fn audit(db: &Database) -> Vec<(String, i64, i64, i64)> {
        db.read(|tx| {
            Box::pin(async move {
                let rows = tx
                    .fetch_all(
                        "SELECT a.account, a.balance, a.held,
                                (SELECT COALESCE(SUM(delta), 0) FROM ledger_entries e WHERE e.account = a.account)
                         FROM ledger_accounts a ORDER BY a.account",
                        args![],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.text(0)?, r.int(1)?, r.int(2)?, r.int(3)?)))
                    .collect::<Result<Vec<_>, DbError>>()
            })
        })
        .await
        .expect("audit")
    }

    #[tokio::test]
    async fn a_refused_action_writes_nothing() {
        let (db, dir) = ledger("refused-writes-nothing").await;
        open(&db, "rich", 0).await.expect("open rich");
        db.write(|tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE ledger_accounts SET balance = $1 WHERE account = 'rich'",
                    args![BALANCE_MAX],
                )
                .await
            })
        })
        .await
        .expect("rich");
        call(
            &db,
            "r/hold",
            None,
            "hold",
            json!({ "hold_id": "h1", "account": "alice", "amount": 40 }),
        )
        .await
        .expect("hold");
        let before = audit(&db).await;
        // Each is refused by a check that comes after the action's first write.
        let cases = [
            (
                "transfer",
                json!({ "from": "alice", "to": "nobody", "amount": 10 }),
            ),
            (
                "transfer",
                json!({ "from": "alice", "to": "rich", "amount": 10 }),
            ),
            (
                "capture",
                json!({ "hold_id": "h1", "to": "rich", "amount": 30 }),
            ),
            (
                "hold",
                json!({ "hold_id": "h2", "account": "alice", "amount": 1000 }),
            ),
        ];
        for (i, (action, payload)) in cases.into_iter().enumerate() {
            let refused = call(&db, &format!("r/case-{i}"), None, action, payload.clone()).await;
            assert!(refused.is_err(), "{action} {payload} must be refused");
            assert_eq!(
                audit(&db).await,
                before,
                "refused {action} {payload} changed the ledger"
            );
        }
        // The hold a refused capture touched is still whole and capturable.
        call(
            &db,
            "r/capture",
            None,
            "capture",
            json!({ "hold_id": "h1", "to": "bob", "amount": 40 }),
        )
        .await
        .expect("capture");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_expired_hold_cannot_be_captured_and_the_sweep_voids_it_once() {
        let (db, dir) = ledger("hold-expiry").await;
        call(
            &db,
            "r/hold",
            None,
            "hold",
            json!({ "hold_id": "h1", "account": "alice", "amount": 40, "ttl_ms": 30 }),
        )
        .await
        .expect("hold");
        call(
            &db,
            "r/hold2",
            None,
            "hold",
            json!({ "hold_id": "h2", "account": "alice", "amount": 10, "ttl_ms": 60_000 }),
        )
        .await
        .expect("a hold that lasts");
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 50, 50), ("bob", 0, 0)])
        );
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let late = call(
            &db,
            "r/capture",
            None,
            "capture",
            json!({ "hold_id": "h1", "to": "bob", "amount": 40 }),
        )
        .await;
        assert!(late.expect_err("expired").contains("expired"));
        assert_eq!(
            void_expired(&db).await.expect("sweep"),
            1,
            "only h1 expired"
        );
        assert_eq!(void_expired(&db).await.expect("sweep"), 0, "and only once");
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 90, 10), ("bob", 0, 0)])
        );
        call(
            &db,
            "r/capture2",
            None,
            "capture",
            json!({ "hold_id": "h2", "to": "bob", "amount": 10 }),
        )
        .await
        .expect("the lasting hold is captured");
        for refused in [json!({ "ttl_ms": 0 }), json!({ "ttl_ms": u64::MAX })] {
            let mut hold = json!({ "hold_id": "h3", "account": "alice", "amount": 1 });
            hold["ttl_ms"] = refused["ttl_ms"].clone();
            assert!(call(&db, "r/h3", None, "hold", hold).await.is_err());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A seeded random walk of ledger actions, refused or not, over a few accounts: after
    /// each one, `balance + held` summed over accounts changed only by an applied debit or
    /// credit, a refused action changed nothing at all, no balance or hold is negative, and
    /// every balance equals the sum of its entries. A failure prints its seed and step.
    #[tokio::test]
    async fn any_sequence_of_actions_conserves_money() {
        use rand::{RngExt, SeedableRng};
        let (db, dir) = ledger("random-walk").await;
        open(&db, "carol", 500).await.expect("open carol");
        let accounts = ["alice", "bob", "carol", "nobody"];
        let total = |rows: &[(String, i64, i64, i64)]| -> i64 {
            rows.iter()
                .map(|(_, balance, held, _)| balance + held)
                .sum()
        };
        let mut expected = total(&audit(&db).await);
        for seed in 0..4u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for i in 0..150 {
                let pick =
                    |rng: &mut rand::rngs::StdRng| accounts[rng.random_range(0..accounts.len())];
                let amount: i64 = match rng.random_range(0..10) {
                    0 => 0,
                    1 => -5,
                    2 => BALANCE_MAX,
                    _ => rng.random_range(1..200),
                };
                let hold_id = format!("h{}", rng.random_range(0..6));
                let (action, payload) = match rng.random_range(0..6) {
                    0 => (
                        "debit",
                        json!({ "account": pick(&mut rng), "amount": amount }),
                    ),
                    1 => (
                        "credit",
                        json!({ "account": pick(&mut rng), "amount": amount }),
                    ),
                    2 => (
                        "transfer",
                        json!({ "from": pick(&mut rng), "to": pick(&mut rng), "amount": amount }),
                    ),
                    3 if rng.random_range(0..2) == 0 => (
                        "hold",
                        json!({ "hold_id": format!("{seed}/{hold_id}"), "account": pick(&mut rng), "amount": amount }),
                    ),
                    // A hold that expires within a few steps, which the sweep below voids.
                    3 => (
                        "hold",
                        json!({ "hold_id": format!("{seed}/{hold_id}"), "account": pick(&mut rng), "amount": amount, "ttl_ms": rng.random_range(1..4) }),
                    ),
                    4 => (
                        "capture",
                        json!({ "hold_id": format!("{seed}/{hold_id}"), "to": pick(&mut rng), "amount": amount }),
                    ),
                    _ => ("void", json!({ "hold_id": format!("{seed}/{hold_id}") })),
                };
                if i % 7 == 0 {
                    // The host's sweep of expired holds moves money only between balance and
                    // held: the total stays.
                    let before = total(&audit(&db).await);
                    void_expired(&db).await.expect("void expired holds");
                    assert_eq!(
                        total(&audit(&db).await),
                        before,
                        "seed {seed} step {i}: the sweep"
                    );
                }
                let before = audit(&db).await;
                let outcome = call(
                    &db,
                    &format!("walk/{seed}/{i}"),
                    None,
                    action,
                    payload.clone(),
                )
                .await;
                let rows = audit(&db).await;
                // Money enters or leaves the ledger only by an applied debit or credit; a
                // transfer, hold, capture or void only moves it; a refusal changes nothing.
                match (&outcome, action) {
                    (Err(_), _) => assert_eq!(
                        rows, before,
                        "seed {seed} step {i}: refused {action} {payload} wrote something"
                    ),
                    (Ok(_), "debit") => expected -= payload["amount"].as_i64().expect("amount"),
                    (Ok(_), "credit") => expected += payload["amount"].as_i64().expect("amount"),
                    (Ok(_), _) => {}
                }
                assert_eq!(
                    total(&rows),
                    expected,
                    "seed {seed} step {i}: {action} {payload} -> {outcome:?} changed the total: {rows:?}"
                );
                for (account, balance, held, entries) in &rows {
                    assert!(
                        *balance >= 0 && *held >= 0,
                        "seed {seed} step {i}: {account} went negative: {rows:?}"
                    );
                    assert_eq!(
                        balance, entries,
                        "seed {seed} step {i}: {account}'s balance is not the sum of its entries"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_repeated_key_applies_once_and_returns_the_first_outcome() {
        let (db, dir) = ledger("repeat").await;
        let debit = json!({ "account": "alice", "amount": 30 });
        let first = call(&db, "r/debit", None, "debit", debit.clone()).await;
        let second = call(&db, "r/debit", None, "debit", debit).await;
        assert_eq!(first, second);
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 70, 0), ("bob", 0, 0)])
        );
        let reused = call(
            &db,
            "r/debit",
            None,
            "debit",
            json!({ "account": "alice", "amount": 1 }),
        )
        .await;
        assert!(
            reused
                .expect_err("must be refused")
                .contains("already used for a different request")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_refusal_is_recorded_and_returned_again() {
        let (db, dir) = ledger("refusal").await;
        let debit = json!({ "account": "bob", "amount": 5 });
        let refused = call(&db, "r/debit", None, "debit", debit.clone()).await;
        assert!(
            refused
                .clone()
                .expect_err("must be refused")
                .contains("insufficient funds")
        );
        call(
            &db,
            "r/fund",
            None,
            "credit",
            json!({ "account": "bob", "amount": 50 }),
        )
        .await
        .expect("credit");
        // Money arrived, but the same key still answers with its first outcome.
        assert_eq!(call(&db, "r/debit", None, "debit", debit).await, refused);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn undoing_what_never_applied_moves_nothing_and_fences_the_original() {
        let (db, dir) = ledger("tombstone").await;
        let debit = json!({ "account": "alice", "amount": 40 });
        let undo = json!({ "account": "alice", "amount": 40 });
        let undone = call(&db, "r/debit.undo", Some("r/debit"), "credit", undo)
            .await
            .expect("undo");
        assert!(undone.contains("never applied"), "{undone}");
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 100, 0), ("bob", 0, 0)])
        );
        let late = call(&db, "r/debit", None, "debit", debit).await;
        assert!(
            late.expect_err("must be refused")
                .contains("can never apply")
        );
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 100, 0), ("bob", 0, 0)])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn undoing_what_applied_reverses_it_once() {
        let (db, dir) = ledger("undo").await;
        let entry = json!({ "account": "alice", "amount": 40 });
        call(&db, "r/debit", None, "debit", entry.clone())
            .await
            .expect("debit");
        for _ in 0..2 {
            call(
                &db,
                "r/debit.undo",
                Some("r/debit"),
                "credit",
                entry.clone(),
            )
            .await
            .expect("undo");
        }
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 100, 0), ("bob", 0, 0)])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_refused_compensation_stays_retryable() {
        let (db, dir) = ledger("retryable").await;
        let entry = json!({ "account": "bob", "amount": 10 });
        call(&db, "r/credit", None, "credit", entry.clone())
            .await
            .expect("credit");
        call(&db, "x/spend", None, "debit", entry.clone())
            .await
            .expect("spend");
        let refused = call(
            &db,
            "r/credit.undo",
            Some("r/credit"),
            "debit",
            entry.clone(),
        )
        .await;
        assert!(
            refused
                .expect_err("must be refused")
                .contains("insufficient funds")
        );
        call(&db, "x/refill", None, "credit", entry.clone())
            .await
            .expect("refill");
        call(&db, "r/credit.undo", Some("r/credit"), "debit", entry)
            .await
            .expect("retry succeeds");
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 100, 0), ("bob", 0, 0)])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn holds_capture_partially_and_void_before_hold_fences_the_hold() {
        let (db, dir) = ledger("holds").await;
        let hold = json!({ "hold_id": "h1", "account": "alice", "amount": 60 });
        call(&db, "r/hold", None, "hold", hold).await.expect("hold");
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 40, 60), ("bob", 0, 0)])
        );
        let captured = call(
            &db,
            "r/capture",
            None,
            "capture",
            json!({ "hold_id": "h1", "to": "bob", "amount": 25 }),
        )
        .await
        .expect("capture");
        assert!(captured.contains("\"released\":35"), "{captured}");
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 75, 0), ("bob", 25, 0)])
        );

        // A void that arrives before its hold succeeds and makes the late hold fail.
        call(&db, "s/void", None, "void", json!({ "hold_id": "h2" }))
            .await
            .expect("empty void");
        let late = call(
            &db,
            "s/hold",
            None,
            "hold",
            json!({ "hold_id": "h2", "account": "alice", "amount": 5 }),
        )
        .await;
        assert!(
            late.expect_err("must be refused")
                .contains("already exists (voided)")
        );
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 75, 0), ("bob", 25, 0)])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_stale_fencing_token_is_refused_and_a_newer_one_accepted() {
        let (db, dir) = ledger("fencing").await;
        let fenced = |op: &str, token: u64, value: i64| {
            let call = LedgerCall {
                op_id: op.to_owned(),
                undoes: None,
                action: "write".to_owned(),
                payload: json!({ "key": "counter", "value": value }).to_string(),
                fencing_tokens: vec![("counter".to_owned(), token)],
            };
            db.write(move |tx| Box::pin(async move { apply(tx, &call).await }))
        };
        fenced("a/1", 5, 1)
            .await
            .expect("db")
            .expect("token 5 is the newest");
        fenced("b/1", 6, 2)
            .await
            .expect("db")
            .expect("token 6 is newer");
        let stale = fenced("a/2", 5, 99)
            .await
            .expect("db")
            .expect_err("token 5 is stale now");
        assert!(
            stale.contains("stale fencing token 5") && stale.contains("token 6"),
            "{stale}"
        );
        let read = call(&db, "c/read", None, "read", json!({ "key": "counter" }))
            .await
            .expect("read");
        assert!(
            read.contains("\"value\":2") && read.contains("\"version\":2"),
            "{read}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_write_with_an_old_expected_version_is_refused() {
        let (db, dir) = ledger("versions").await;
        call(
            &db,
            "w/1",
            None,
            "write",
            json!({ "key": "k", "value": 1, "expected_version": 0 }),
        )
        .await
        .expect("first write");
        let conflict = call(
            &db,
            "w/2",
            None,
            "write",
            json!({ "key": "k", "value": 7, "expected_version": 0 }),
        )
        .await
        .expect_err("version moved on");
        assert!(
            conflict.starts_with("version conflict") && conflict.contains("at version 1, not 0"),
            "{conflict}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_the_reason() {
        let (db, dir) = ledger("bad").await;
        let cases = [
            (
                "debit",
                json!({ "account": "alice" }),
                "missing field `amount`",
            ),
            (
                "debit",
                json!({ "account": "alice", "amount": 0 }),
                "must be between 1",
            ),
            (
                "debit",
                json!({ "account": "carol", "amount": 1 }),
                "unknown account 'carol'",
            ),
            (
                "transfer",
                json!({ "from": "alice", "to": "alice", "amount": 1 }),
                "two different accounts",
            ),
            ("teleport", json!({}), "no action 'teleport'"),
        ];
        for (i, (action, payload, expected)) in cases.into_iter().enumerate() {
            let refused = call(&db, &format!("r/{i}"), None, action, payload).await;
            let reason = refused.expect_err("must be refused");
            assert!(reason.contains(expected), "{action}: {reason}");
        }
        assert_eq!(
            balances(&db).await,
            owned(&[("alice", 100, 0), ("bob", 0, 0)])
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
