//! End-of-day settlement: one child run per merchant pays the merchant out of the clearing
//! account (the `transfer` workflow, each with its own journal and compensation), the batch
//! sleeps until the cut-off, then collects every payout and settles: the fees of the
//! merchants paid move from clearing to the fee account. A payout that failed is reported,
//! and its fee not taken.

use guest_sdk::{Error, Saga};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    batch_id: String,
    clearing: String,
    fees: String,
    /// Fee in basis points of each merchant's gross.
    fee_bps: u64,
    merchants: Vec<Merchant>,
    /// The cut-off, this long after the batch starts.
    cutoff_in_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Merchant {
    merchant: String,
    gross: u64,
}

#[derive(Serialize)]
struct Settled {
    batch_id: String,
    paid: Vec<String>,
    failed: Vec<(String, String)>,
    fees: u64,
}

#[derive(Serialize)]
struct Entry<'a> {
    account: &'a str,
    amount: u64,
}

fn settlement(saga: &mut Saga, b: Batch) -> Result<Settled, Error> {
    let cutoff = saga.now_ms().saturating_add(b.cutoff_in_ms);
    let mut payouts = Vec::new();
    for m in &b.merchants {
        let fee = m.gross * b.fee_bps / 10_000;
        let payout = json!({ "from": b.clearing, "to": m.merchant, "amount": m.gross - fee });
        payouts.push((m, fee, saga.start_child("transfer", &payout)?));
    }
    saga.log(&format!(
        "{} payouts started; sleeping until the cut-off",
        payouts.len()
    ));
    saga.sleep_until(cutoff);
    let (mut paid, mut failed, mut fees) = (Vec::new(), Vec::new(), 0);
    for (m, fee, child) in payouts {
        match child.join::<Value>(saga) {
            Ok(_) => {
                paid.push(m.merchant.clone());
                fees += fee;
            }
            Err(e) => failed.push((m.merchant.clone(), e.to_string())),
        }
    }
    if fees > 0 {
        let (from, to) = (
            Entry {
                account: &b.clearing,
                amount: fees,
            },
            Entry {
                account: &b.fees,
                amount: fees,
            },
        );
        saga.step("take-fees")
            .invoke("ledger", "debit", &from)
            .compensate_with("ledger", "credit", &from)
            .run::<Value>()?;
        saga.step("book-fees")
            .invoke("ledger", "credit", &to)
            .compensate_with("ledger", "debit", &to)
            .run::<Value>()?;
    }
    Ok(Settled {
        batch_id: b.batch_id,
        paid,
        failed,
        fees,
    })
}

guest_sdk::export_workflow!(settlement, participants = ["ledger"]);
