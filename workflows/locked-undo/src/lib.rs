//! For the tests of locks through compensation: takes `account/<account>`, debits the account
//! under it, then fails, so the host must undo the debit while the run still holds the lock.
//! The undo credits `undo_to` (normally the same account): a test names an account that does
//! not exist yet to keep the compensation failing, and the run stuck, for as long as it likes.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    account: String,
    undo_to: String,
    amount: u64,
}

fn locked_undo(saga: &mut Saga, input: Input) -> Result<Value, Error> {
    let _lock = saga.lock(&format!("account/{}", input.account), 10_000, 10_000)?;
    saga.step("debit")
        .invoke(
            "ledger",
            "debit",
            &json!({ "account": input.account, "amount": input.amount }),
        )
        .compensate_with(
            "ledger",
            "credit",
            &json!({ "account": input.undo_to, "amount": input.amount }),
        )
        .run::<Value>()?;
    // Returning drops the lock, which asks the host to release it: the host must keep it
    // until the debit is undone.
    Err(Error::failed("fails after its debit, on purpose"))
}

guest_sdk::export_workflow!(locked_undo, participants = ["ledger"], locks = ["account/"]);
