//! The benchmark workload's saga (see `wasaga bench transfer`): debit A, credit B, then a
//! settle step that fails for good on every tenth transfer, which the host compensates. With
//! `locked`, it first locks both accounts in one global order (as the `transfer` example
//! does), holding them through its steps and any compensation.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    /// The transfer's index in the workload; settle fails iff `i % 10 == 0`.
    i: u64,
    from: String,
    to: String,
    amount: u64,
    #[serde(default)]
    locked: bool,
}

/// How long a lock lasts without renewal, and how long a transfer waits for one.
const LOCK_TTL_MS: u32 = 10_000;
const LOCK_WAIT_MS: u32 = 10_000;

fn bench_transfer(saga: &mut Saga, t: Transfer) -> Result<Value, Error> {
    let _locks = if t.locked {
        let (first, second) = if t.from < t.to {
            (&t.from, &t.to)
        } else {
            (&t.to, &t.from)
        };
        let first = saga.lock(&format!("account/{first}"), LOCK_TTL_MS, LOCK_WAIT_MS)?;
        let second = saga.lock(&format!("account/{second}"), LOCK_TTL_MS, LOCK_WAIT_MS)?;
        Some((first, second))
    } else {
        None
    };
    let from = json!({ "account": t.from, "amount": t.amount });
    let to = json!({ "account": t.to, "amount": t.amount });
    saga.step("debit")
        .invoke("ledger", "debit", &from)
        .compensate_with("ledger", "credit", &from)
        .run::<Value>()?;
    saga.step("credit")
        .invoke("ledger", "credit", &to)
        .compensate_with("ledger", "debit", &to)
        .run::<Value>()?;
    // settle: no participant call; refuses permanently on every tenth transfer.
    if t.i.is_multiple_of(10) {
        return Err(Error::failed("settle refused"));
    }
    Ok(json!({ "i": t.i }))
}

guest_sdk::export_workflow!(bench_transfer, participants = ["ledger"]);
