//! A card payment with a 3-D Secure challenge: the amount is held on the card's account, the
//! run waits (durably, holding no instance) for the customer's answer, the `3ds` signal, for
//! at most ten minutes, and captures the hold to the merchant on success. A declined or
//! missing answer fails the run, and the host voids the hold: the money goes back.
//!
//! The hold itself expires (seven days by default): a run that is never answered and never
//! times out (a host gone for good) still gives the money back, by the host's expiry sweep.

use guest_sdk::{Error, Saga};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// How long the customer has to answer the challenge.
const CHALLENGE_TIMEOUT_MS: u64 = 10 * 60 * 1_000;
/// How long the authorization hold lasts at most.
const HOLD_TTL_MS: u64 = 7 * 24 * 3_600 * 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payment {
    payment_id: String,
    card_account: String,
    merchant: String,
    amount: u64,
    /// Shorter challenge timeouts, for trying it out.
    #[serde(default)]
    challenge_timeout_ms: Option<u64>,
    /// A shorter hold, for trying out its expiry.
    #[serde(default)]
    hold_ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ThreeDs {
    ok: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
struct Receipt {
    payment_id: String,
    captured: u64,
    merchant: String,
}

fn card_payment_3ds(saga: &mut Saga, p: Payment) -> Result<Receipt, Error> {
    if p.amount == 0 {
        return Err(Error::failed("amount must be positive"));
    }
    let hold = serde_json::json!({
        "hold_id": p.payment_id, "account": p.card_account, "amount": p.amount,
        "ttl_ms": p.hold_ttl_ms.unwrap_or(HOLD_TTL_MS),
    });
    saga.step("authorize")
        .invoke("ledger", "hold", &hold)
        .compensate_with(
            "ledger",
            "void",
            &serde_json::json!({ "hold_id": p.payment_id }),
        )
        .run::<Value>()?;
    saga.log("authorized; waiting for the customer's 3-D Secure answer");
    let timeout = p.challenge_timeout_ms.unwrap_or(CHALLENGE_TIMEOUT_MS);
    match saga.wait_for::<ThreeDs>("3ds", Duration::from_millis(timeout))? {
        Some(ThreeDs { ok: true, .. }) => {}
        Some(ThreeDs { reason, .. }) => {
            return Err(Error::failed(format!(
                "3-D Secure declined: {}",
                reason.unwrap_or_else(|| "no reason given".to_owned())
            )));
        }
        None => {
            return Err(Error::failed(format!(
                "3-D Secure not answered within {} s",
                timeout / 1_000
            )));
        }
    }
    let capture = serde_json::json!({
        "hold_id": p.payment_id, "to": p.merchant, "amount": p.amount,
    });
    saga.step("capture")
        .invoke("ledger", "capture", &capture)
        .run::<Value>()?;
    Ok(Receipt {
        payment_id: p.payment_id,
        captured: p.amount,
        merchant: p.merchant,
    })
}

guest_sdk::export_workflow!(card_payment_3ds, participants = ["ledger"]);
