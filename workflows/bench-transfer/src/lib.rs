//! The benchmark workload's saga (see `wasaga bench transfer`): debit A, credit B, then a
//! settle step that fails for good on every tenth transfer, which the host compensates.

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
}

fn bench_transfer(saga: &mut Saga, t: Transfer) -> Result<Value, Error> {
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
