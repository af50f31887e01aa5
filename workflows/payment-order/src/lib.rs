//! A card-style payment order: create the order, hold the customer's funds, capture them to
//! the merchant, record the transaction under its unique reference.
//!
//! Any failure compensates what was done, newest first: the capture is refunded, the hold is
//! voided and the order is cancelled, all by the host from the journal.

use guest_sdk::{Error, Saga};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    order_id: String,
    customer: String,
    merchant: String,
    amount: u64,
    /// The payment's unique transaction reference; a reference can be recorded once.
    reference: String,
}

#[derive(Serialize)]
struct Receipt {
    order_id: String,
    reference: String,
    amount: u64,
    customer_balance: Value,
    merchant_balance: Value,
}

fn payment_order(saga: &mut Saga, order: Order) -> Result<Receipt, Error> {
    if order.amount == 0 {
        return Err(Error::failed("amount must be positive"));
    }
    // Lock both parties' accounts in one global order: no two orders can deadlock.
    let (first, second) = if order.customer < order.merchant {
        (&order.customer, &order.merchant)
    } else {
        (&order.merchant, &order.customer)
    };
    let _first = saga.lock(&format!("account/{first}"), 10_000, 10_000)?;
    let _second = saga.lock(&format!("account/{second}"), 10_000, 10_000)?;
    let hold_id = format!("order/{}", order.order_id);
    saga.step("create-order")
        .invoke(
            "ledger",
            "order-create",
            &json!({
                "order_id": order.order_id,
                "customer": order.customer,
                "merchant": order.merchant,
                "amount": order.amount,
            }),
        )
        .compensate_with(
            "ledger",
            "order-cancel",
            &json!({ "order_id": order.order_id }),
        )
        .run::<Value>()?;
    saga.step("hold")
        .invoke(
            "ledger",
            "hold",
            &json!({ "hold_id": hold_id, "account": order.customer, "amount": order.amount }),
        )
        .compensate_with("ledger", "void", &json!({ "hold_id": hold_id }))
        .run::<Value>()?;
    let captured: Value = saga
        .step("capture")
        .invoke(
            "ledger",
            "capture",
            &json!({ "hold_id": hold_id, "to": order.merchant, "amount": order.amount }),
        )
        .compensate_with(
            "ledger",
            "transfer",
            &json!({ "from": order.merchant, "to": order.customer, "amount": order.amount }),
        )
        .run()?;
    let recorded: Value = saga
        .step("record")
        .invoke(
            "ledger",
            "record",
            &json!({
                "reference": order.reference,
                "order_id": order.order_id,
                "amount": order.amount,
            }),
        )
        .run()?;
    saga.log(&format!(
        "recorded {} for order {}",
        order.reference, order.order_id
    ));
    Ok(Receipt {
        order_id: order.order_id,
        reference: order.reference,
        amount: order.amount,
        customer_balance: recorded["customer_balance"].clone(),
        merchant_balance: captured["to_balance"].clone(),
    })
}

guest_sdk::export_workflow!(
    payment_order,
    participants = ["ledger"],
    locks = ["account/"]
);
