// The body of the `gated` workflow, shared by its two versions (`gated` and `gated-v2`),
// which differ only in `VERSION`. Included, not a module: each version is its own crate.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Gated {
    /// A lock to pass through first: the run waits while someone else holds it.
    gate: Option<String>,
    from: String,
    to: String,
    amount: u64,
}

fn gated(saga: &mut Saga, input: Gated) -> Result<Value, Error> {
    if let Some(gate) = &input.gate {
        let lock = saga.lock(gate, 60_000, 30_000)?;
        lock.release()?;
    }
    let from = json!({ "account": input.from, "amount": input.amount });
    let to = json!({ "account": input.to, "amount": input.amount });
    saga.step("debit")
        .invoke("ledger", "debit", &from)
        .compensate_with("ledger", "credit", &from)
        .run::<Value>()?;
    saga.step("credit")
        .invoke("ledger", "credit", &to)
        .compensate_with("ledger", "debit", &to)
        .run::<Value>()?;
    Ok(json!({ "version": VERSION }))
}

guest_sdk::export_workflow!(gated, participants = ["ledger"], locks = ["gate/"]);
