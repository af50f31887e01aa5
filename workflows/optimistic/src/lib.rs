//! Optimistic concurrency: increments a versioned value `increments` times with
//! read-modify-write, no lock; a write that lost to a concurrent one is retried from a fresh
//! read (at most `attempts_max` times per increment).

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    key: String,
    increments: u32,
    #[serde(default = "default_attempts")]
    attempts_max: u32,
}

fn default_attempts() -> u32 {
    100
}

fn optimistic(saga: &mut Saga, input: Input) -> Result<Value, Error> {
    let mut last = 0;
    for _ in 0..input.increments {
        last = saga.update(
            "ledger",
            &input.key,
            input.attempts_max,
            |value: Option<i64>| value.unwrap_or(0) + 1,
        )?;
    }
    Ok(json!({ "last": last }))
}

guest_sdk::export_workflow!(optimistic, participants = ["ledger"]);
