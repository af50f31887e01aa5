// The body of the `payout` workflow, shared by its three versions, which differ in `VERSION`,
// `RECEIPT` and `PAY_FIRST`. Included, not a module: each version is its own crate.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payout {
    payout_id: String,
    from: String,
    to: String,
    amount: u64,
    /// How long to wait for the bank's confirmation (default a day).
    #[serde(default)]
    confirm_within_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Confirmation {
    ok: bool,
}

fn payout(saga: &mut Saga, p: Payout) -> Result<Value, Error> {
    let from = json!({ "account": p.from, "amount": p.amount });
    let to = json!({ "account": p.to, "amount": p.amount });
    saga.step("reserve")
        .invoke("ledger", "debit", &from)
        .compensate_with("ledger", "credit", &from)
        .run::<Value>()?;
    let pay = |saga: &mut Saga| {
        saga.step("pay")
            .invoke("ledger", "credit", &to)
            .compensate_with("ledger", "debit", &to)
            .run::<Value>()
    };
    if PAY_FIRST {
        pay(saga)?;
    }
    let within = Duration::from_millis(p.confirm_within_ms.unwrap_or(86_400_000));
    match saga.wait_for::<Confirmation>("bank", within)? {
        Some(Confirmation { ok: true }) => {}
        Some(_) => return Err(Error::failed("the bank refused the payout")),
        None => return Err(Error::failed("the bank did not confirm the payout in time")),
    }
    if !PAY_FIRST {
        pay(saga)?;
    }
    if RECEIPT {
        saga.log(&format!("payout {} paid by version {VERSION}", p.payout_id));
    }
    Ok(json!({ "payout_id": p.payout_id, "version": VERSION }))
}

guest_sdk::export_workflow!(payout, participants = ["ledger"]);
