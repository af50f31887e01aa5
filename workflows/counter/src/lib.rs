//! Guarded read-modify-write: takes a lock, reads a register, writes it back plus one, and
//! releases the lock, `increments` times. Only mutual exclusion (and fencing) keeps
//! concurrent counters from losing updates. `pause_spins` burns CPU between the read and the
//! write, so a test can stop the process there while its lease runs out.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    key: String,
    increments: u32,
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u32,
    #[serde(default = "default_wait_ms")]
    wait_ms: u32,
    #[serde(default)]
    pause_spins: u64,
}

fn default_ttl_ms() -> u32 {
    10_000
}

fn default_wait_ms() -> u32 {
    30_000
}

fn counter(saga: &mut Saga, input: Input) -> Result<Value, Error> {
    let mut last = 0;
    for k in 0..input.increments {
        let lock = saga.lock(&input.key, input.ttl_ms, input.wait_ms)?;
        let read: Value = saga
            .step(&format!("read-{k}"))
            .invoke("ledger", "read", &json!({ "key": input.key }))
            .run()?;
        let value = read["value"].as_i64().unwrap_or(0);
        let mut spin: u64 = 0;
        while spin < input.pause_spins {
            spin = std::hint::black_box(spin + 1);
        }
        saga.step(&format!("write-{k}"))
            .invoke(
                "ledger",
                "write",
                &json!({ "key": input.key, "value": value + 1 }),
            )
            .run::<Value>()?;
        lock.release()?;
        last = value + 1;
    }
    Ok(json!({ "last": last }))
}

guest_sdk::export_workflow!(counter, participants = ["ledger"], locks = [""]);
