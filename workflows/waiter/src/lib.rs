//! A workflow made of durable waits, for the tests and `wasaga bench waits`: an optional
//! debit, then each wait of `waits` in turn, then an optional credit.

use guest_sdk::{Error, Saga};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// Debit this account by `amount` first (undone by a credit).
    #[serde(default)]
    debit: Option<String>,
    /// Credit this account by `amount` at the end.
    #[serde(default)]
    credit: Option<String>,
    #[serde(default)]
    amount: u64,
    #[serde(default)]
    waits: Vec<WaitFor>,
    /// Take this lock before waiting (and keep it: a run may not wait holding a lock).
    #[serde(default)]
    lock: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum WaitFor {
    Sleep {
        ms: u64,
    },
    SleepUntil {
        at_ms: u64,
    },
    Signal {
        name: String,
        timeout_ms: u64,
    },
    /// Fails the run unless the signal arrives with `{"ok": true}`.
    Approval {
        name: String,
        timeout_ms: u64,
    },
    Child {
        workflow: String,
        input: Value,
    },
    /// Computes for a while without a host call.
    Spin {
        iterations: u64,
    },
}

#[derive(Serialize)]
struct Entry<'a> {
    account: &'a str,
    amount: u64,
}

fn waiter(saga: &mut Saga, input: Input) -> Result<Vec<Value>, Error> {
    if let Some(account) = &input.debit {
        let entry = Entry {
            account,
            amount: input.amount,
        };
        saga.step("debit")
            .invoke("ledger", "debit", &entry)
            .compensate_with("ledger", "credit", &entry)
            .run::<Value>()?;
    }
    let _lock = match &input.lock {
        Some(key) => Some(saga.lock(key, 10_000, 1_000)?),
        None => None,
    };
    let mut seen = Vec::new();
    for wait in input.waits {
        seen.push(match wait {
            WaitFor::Sleep { ms } => {
                saga.sleep(Duration::from_millis(ms));
                Value::from(saga.now_ms())
            }
            WaitFor::SleepUntil { at_ms } => {
                saga.sleep_until(at_ms);
                Value::from(saga.now_ms())
            }
            WaitFor::Signal { name, timeout_ms } => saga
                .wait_for::<Value>(&name, Duration::from_millis(timeout_ms))?
                .unwrap_or(Value::from("timed out")),
            WaitFor::Approval { name, timeout_ms } => {
                match saga.wait_for::<Value>(&name, Duration::from_millis(timeout_ms))? {
                    Some(answer) if answer["ok"] == Value::Bool(true) => answer,
                    Some(answer) => return Err(Error::failed(format!("declined: {answer}"))),
                    None => return Err(Error::failed(format!("no '{name}' signal in time"))),
                }
            }
            WaitFor::Child { workflow, input } => saga.child::<_, Value>(&workflow, &input)?,
            WaitFor::Spin { iterations } => {
                let mut x = 0u64;
                for i in 0..iterations {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                Value::from(x % 2)
            }
        });
    }
    if let Some(account) = &input.credit {
        let entry = Entry {
            account,
            amount: input.amount,
        };
        saga.step("credit")
            .invoke("ledger", "credit", &entry)
            .compensate_with("ledger", "debit", &entry)
            .run::<Value>()?;
    }
    Ok(seen)
}

guest_sdk::export_workflow!(waiter, participants = ["ledger"], locks = ["acct/"]);
