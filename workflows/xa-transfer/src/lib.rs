//! Moves money between accounts in two PostgreSQL databases (two `postgres-xa` participants)
//! by two-phase commit: `PREPARE TRANSACTION` on both, the decision journaled, then
//! `COMMIT PREPARED` on both, or `ROLLBACK PREPARED` on both.

use guest_sdk::{Branch, Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    /// The participant holding `from` (a `--xa` name).
    from_bank: String,
    from: String,
    to_bank: String,
    to: String,
    amount: u64,
}

fn xa_transfer(saga: &mut Saga, t: Transfer) -> Result<Value, Error> {
    let branches = [
        Branch::new(
            &t.from_bank,
            "debit",
            &json!({ "account": t.from, "amount": t.amount }),
        )?,
        Branch::new(
            &t.to_bank,
            "credit",
            &json!({ "account": t.to, "amount": t.amount }),
        )?,
    ];
    saga.commit_all(&branches)?;
    Ok(
        json!({ "from": format!("{}/{}", t.from_bank, t.from), "to": format!("{}/{}", t.to_bank, t.to), "amount": t.amount }),
    )
}

guest_sdk::export_workflow!(xa_transfer, participants = ["bank-a", "bank-b"]);
