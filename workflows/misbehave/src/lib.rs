//! A deliberately badly behaved workflow for the host's sandbox tests: it moves money with two
//! steps, then panics, loops forever, allocates without bound, or branches on a journaled
//! random number, sends an oversized payload or logs without end, hands the host a huge name,
//! key or commit, as its input asks; or it calls what the host must refuse.

use guest_sdk::{Error, Saga};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    mode: String,
    from: String,
    to: String,
    amount: u64,
}

fn misbehave(saga: &mut Saga, input: Input) -> Result<Value, Error> {
    // Calls the host must refuse before anything reaches a participant.
    match input.mode.as_str() {
        "unknown-participant" => {
            return saga.step("pay").invoke("bank", "pay", &json!({})).run();
        }
        "unknown-action" => {
            return saga
                .step("pay")
                .invoke("ledger", "teleport", &json!({}))
                .run();
        }
        _ => {}
    }
    let from = json!({ "account": input.from, "amount": input.amount });
    let to = json!({ "account": input.to, "amount": input.amount });
    saga.step("debit")
        .invoke("ledger", "debit", &from)
        .compensate_with("ledger", "credit", &from)
        .run::<Value>()?;
    if input.mode == "branch" {
        // Which step comes next depends on a journaled random number: a replay that saw a
        // different number would take the other branch, which the host must detect.
        let step = if saga.random().is_multiple_of(2) {
            "credit-even"
        } else {
            "credit-odd"
        };
        saga.step(step)
            .invoke("ledger", "credit", &to)
            .compensate_with("ledger", "debit", &to)
            .run::<Value>()?;
        return Ok(json!({ "branch": step }));
    }
    let credited: Value = saga
        .step("credit")
        .invoke("ledger", "credit", &to)
        .compensate_with("ledger", "debit", &to)
        .run()?;
    if input.mode == "drain" {
        // Pays out everything the credited account has, with no compensation, then fails:
        // the host's undo of `credit` can then never succeed, and the run must end stuck.
        let balance = credited["balance"].as_u64().unwrap_or(0);
        saga.step("payout")
            .invoke(
                "ledger",
                "transfer",
                &json!({ "from": input.to, "to": input.from, "amount": balance }),
            )
            .run::<Value>()?;
        return Err(Error::failed("drained the credited account"));
    }
    saga.log(&format!("misbehaving: {}", input.mode));
    match input.mode.as_str() {
        "ok" => Ok(json!({ "mode": "ok" })),
        "big" => {
            let memo = "x".repeat(1 << 20);
            saga.step("annotate")
                .invoke(
                    "ledger",
                    "balance",
                    &json!({ "account": input.from, "memo": memo }),
                )
                .run()
        }
        "chatty" => {
            for i in 0..1_000 {
                saga.log(&format!("chatter {i}"));
            }
            Ok(json!({ "mode": "chatty" }))
        }
        "long-name" => saga
            .step(&"n".repeat(1 << 20))
            .invoke("ledger", "balance", &json!({ "account": input.from }))
            .run(),
        "long-participant" => saga
            .step("annotate")
            .invoke(&"p".repeat(1 << 20), "balance", &json!({}))
            .run(),
        "long-key" => {
            let _lock = saga.lock(&"k".repeat(1 << 20), 1_000, 0)?;
            Ok(json!({ "mode": "long-key" }))
        }
        "many-branches" => {
            let branch = guest_sdk::Branch::new(
                "ledger",
                "credit",
                &json!({ "account": input.to, "amount": 1 }),
            )?;
            let branches = vec![branch; 10_000];
            saga.commit_all(&branches)?;
            Ok(json!({ "mode": "many-branches" }))
        }
        "sleep" => {
            // A real sleep would hold the run past its deadline; the host makes it return.
            let before = saga.now_ms();
            std::thread::sleep(std::time::Duration::from_secs(20));
            let slept_ms = saga.now_ms() - before;
            Ok(json!({ "mode": "sleep", "slept_ms": slept_ms }))
        }
        "irreversible" => {
            // A step without a compensation and a committed transaction, then a failure:
            // the host undoes the two steps and must say what it could not undo.
            saga.step("note")
                .invoke("ledger", "balance", &json!({ "account": input.from }))
                .run::<Value>()?;
            let branches = [
                guest_sdk::Branch::new(
                    "ledger",
                    "debit",
                    &json!({ "account": input.from, "amount": 1 }),
                )?,
                guest_sdk::Branch::new(
                    "ledger",
                    "credit",
                    &json!({ "account": input.to, "amount": 1 }),
                )?,
            ];
            saga.commit_all(&branches)?;
            Err(Error::failed("fails after a commit"))
        }
        "panic" => panic!("deliberate panic after two steps"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        other => Err(Error::failed(format!("unknown mode '{other}'"))),
    }
}

guest_sdk::export_workflow!(misbehave, participants = ["ledger"]);
