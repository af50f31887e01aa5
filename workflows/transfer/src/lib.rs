//! Moves `amount` from one ledger account to another as a two-step saga.
//!
//! `debit` fails cleanly on insufficient funds (nothing to compensate); if `credit` fails, the
//! host credits the debited amount back.

use guest_sdk::{Error, Saga};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a lock lasts without renewal (the host renews it while the run is alive).
const LOCK_TTL_MS: u32 = 10_000;
/// How long to wait for a lock before the step fails and the run compensates.
const LOCK_WAIT_MS: u32 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    from: String,
    to: String,
    amount: u64,
}

#[derive(Serialize)]
struct Entry<'a> {
    account: &'a str,
    amount: u64,
}

#[derive(Serialize)]
struct Receipt {
    from: String,
    to: String,
    amount: u64,
    from_balance: Value,
    to_balance: Value,
}

fn transfer(saga: &mut Saga, t: Transfer) -> Result<Receipt, Error> {
    if t.amount == 0 {
        return Err(Error::failed("amount must be positive"));
    }
    if t.from == t.to {
        return Err(Error::failed("from and to must be different accounts"));
    }
    // Both accounts are locked, always in the same global order, so two transfers between
    // the same accounts in opposite directions can never deadlock.
    let (first, second) = if t.from < t.to {
        (&t.from, &t.to)
    } else {
        (&t.to, &t.from)
    };
    let _first = saga.lock(&format!("account/{first}"), LOCK_TTL_MS, LOCK_WAIT_MS)?;
    let _second = saga.lock(&format!("account/{second}"), LOCK_TTL_MS, LOCK_WAIT_MS)?;
    let from = Entry {
        account: &t.from,
        amount: t.amount,
    };
    let to = Entry {
        account: &t.to,
        amount: t.amount,
    };
    let debited: Value = saga
        .step("debit")
        .invoke("ledger", "debit", &from)
        .compensate_with("ledger", "credit", &from)
        .run()?;
    let credited: Value = saga
        .step("credit")
        .invoke("ledger", "credit", &to)
        .compensate_with("ledger", "debit", &to)
        .run()?;
    Ok(Receipt {
        from_balance: debited["balance"].clone(),
        to_balance: credited["balance"].clone(),
        from: t.from,
        to: t.to,
        amount: t.amount,
    })
}

guest_sdk::export_workflow!(transfer, participants = ["ledger"], locks = ["account/"]);
