//! Try-confirm-cancel on the ledger. Try: hold the customer's funds (the hold's cancel, a
//! void, is journaled with it). Then the order is accepted or declined; confirm captures the
//! held amount (partially, if the order shipped partly) and releases the rest; a decline, or
//! any failure, makes the host cancel: void the hold.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    order_id: String,
    customer: String,
    merchant: String,
    amount: u64,
    /// What the merchant confirms; 0 declines the order.
    confirmed_amount: u64,
}

fn tcc_order(saga: &mut Saga, order: Order) -> Result<Value, Error> {
    let hold_id = format!("tcc/{}", order.order_id);
    saga.step("try")
        .invoke(
            "ledger",
            "hold",
            &json!({ "hold_id": hold_id, "account": order.customer, "amount": order.amount }),
        )
        .compensate_with("ledger", "void", &json!({ "hold_id": hold_id }))
        .run::<Value>()?;
    if order.confirmed_amount == 0 {
        return Err(Error::failed(format!(
            "order {} declined by the merchant",
            order.order_id
        )));
    }
    if order.confirmed_amount > order.amount {
        return Err(Error::failed("confirmed amount exceeds the held amount"));
    }
    let captured: Value = saga
        .step("confirm")
        .invoke(
            "ledger",
            "capture",
            &json!({ "hold_id": hold_id, "to": order.merchant, "amount": order.confirmed_amount }),
        )
        .compensate_with(
            "ledger",
            "transfer",
            &json!({ "from": order.merchant, "to": order.customer, "amount": order.confirmed_amount }),
        )
        .run()?;
    Ok(
        json!({ "order_id": order.order_id, "captured": captured["captured"], "released": captured["released"] }),
    )
}

guest_sdk::export_workflow!(tcc_order, participants = ["ledger"]);
