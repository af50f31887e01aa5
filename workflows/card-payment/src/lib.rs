//! A card payment through a card processor reached over HTTP (the `psp` participant): lock
//! the order, authorize the amount on the customer's card, capture it, and credit the merchant
//! in the ledger.
//!
//! Any failure compensates what was done, newest first: the merchant's credit is taken back,
//! the capture refunded, the authorization voided. Each call to the processor carries its
//! idempotency key, so a retry or a crash never authorizes, captures or refunds twice.

use guest_sdk::{Error, Saga};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payment {
    order_id: String,
    card: String,
    merchant: String,
    amount: u64,
}

#[derive(Deserialize)]
struct Authorized {
    authorization: String,
}

#[derive(Serialize)]
struct Receipt {
    order_id: String,
    amount: u64,
    authorization: String,
    merchant_balance: Value,
}

fn card_payment(saga: &mut Saga, payment: Payment) -> Result<Receipt, Error> {
    if payment.amount == 0 {
        return Err(Error::failed("amount must be positive"));
    }
    // One payment per order at a time; the processor sees the lock's fencing token.
    let _order = saga.lock(&format!("order/{}", payment.order_id), 30_000, 10_000)?;
    let authorized: Authorized = saga
        .step("authorize")
        .invoke(
            "psp",
            "authorize",
            &json!({ "card": payment.card, "amount": payment.amount, "order": payment.order_id }),
        )
        // The processor finds the authorization by the key this compensation undoes.
        .compensate_with("psp", "void", &json!({}))
        .run()?;
    saga.step("capture")
        .invoke(
            "psp",
            "capture",
            &json!({ "authorization": authorized.authorization, "amount": payment.amount }),
        )
        .compensate_with("psp", "refund", &json!({}))
        .run::<Value>()?;
    let credited: Value = saga
        .step("credit-merchant")
        .invoke(
            "ledger",
            "credit",
            &json!({ "account": payment.merchant, "amount": payment.amount }),
        )
        .compensate_with(
            "ledger",
            "debit",
            &json!({ "account": payment.merchant, "amount": payment.amount }),
        )
        .run()?;
    saga.log(&format!(
        "captured {} on {} for order {}",
        payment.amount, authorized.authorization, payment.order_id
    ));
    Ok(Receipt {
        order_id: payment.order_id,
        amount: payment.amount,
        authorization: authorized.authorization,
        merchant_balance: credited["balance"].clone(),
    })
}

guest_sdk::export_workflow!(
    card_payment,
    participants = ["psp", "ledger"],
    locks = ["order/"]
);
