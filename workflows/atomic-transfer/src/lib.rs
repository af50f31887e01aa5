//! Moves money between two accounts with two-phase commit instead of a saga: both branches
//! (debit and credit) are prepared, then committed together or aborted together. There is
//! never a moment where the debit is visible without the credit.

use guest_sdk::{Branch, Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    from: String,
    to: String,
    amount: u64,
}

fn atomic_transfer(saga: &mut Saga, t: Transfer) -> Result<Value, Error> {
    let branches = [
        Branch::new(
            "ledger",
            "debit",
            &json!({ "account": t.from, "amount": t.amount }),
        )?,
        Branch::new(
            "ledger",
            "credit",
            &json!({ "account": t.to, "amount": t.amount }),
        )?,
    ];
    let committed = saga.commit_all(&branches)?;
    Ok(json!({ "from": t.from, "to": t.to, "amount": t.amount, "branches": committed.len() }))
}

guest_sdk::export_workflow!(atomic_transfer, participants = ["ledger"]);
