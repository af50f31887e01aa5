//! Participants a workflow can call, and how a call reaches them: the built-in ledger, either
//! in the journal's database (so its writes commit with the journal entry) or in a database of
//! its own, and beside it every [`Participant`]: `postgres-xa` databases and `http` services.

pub mod branch;
pub mod colocated;
pub mod http;
pub mod ledger;
pub mod outbox;
mod participant;
pub mod xa;

pub use participant::{Participant, ParticipantRequest};

use colocated::ServerSteps;
use std::sync::Arc;
use wasaga_core::event::{CallFailure, CallSpec};
use wasaga_db::Database;

/// The idempotency keys of the operations the host performs for runs. Each names one
/// operation only (run ids are letters, digits and `-_.:/`, never `#` or `%`):
///
/// | operation | key |
/// |---|---|
/// | step `S` of run `R` | `R/enc(S)` |
/// | its compensation | `R/enc(S)#undo` |
/// | `write-if`, call `N` | `R#write-N` |
/// | `commit-all`, call `N` (the transaction id) | `R#2pc-N`, its branches `R#2pc-N/bK` |
///
/// `enc` escapes `%`, `/` and `#` in a step name, so the last `/` before any `#` ends the run
/// id, and what follows `#` says which kind of operation it is: run `a/b` step `c` is
/// `a/b/c`, run `a` step `b/c` is `a/b%2Fc`, and no step can be named like a compensation.
pub mod op_key {
    /// The key of step `step` of run `run_id`.
    pub fn step(run_id: &str, step: &str) -> String {
        let mut key = String::with_capacity(run_id.len() + step.len() + 1);
        key.push_str(run_id);
        key.push('/');
        for c in step.chars() {
            match c {
                '%' => key.push_str("%25"),
                '/' => key.push_str("%2F"),
                '#' => key.push_str("%23"),
                c => key.push(c),
            }
        }
        key
    }

    /// The key of the compensation of the operation keyed `step_key`.
    pub fn undo(step_key: &str) -> String {
        format!("{step_key}#undo")
    }

    /// The key of the `write-if` at call `call` of run `run_id`.
    pub fn write(run_id: &str, call: u32) -> String {
        format!("{run_id}#write-{call}")
    }

    /// The id of the two-phase transaction of the `commit-all` at call `call`.
    pub fn transaction(run_id: &str, call: u32) -> String {
        format!("{run_id}#2pc-{call}")
    }

    /// The run and call a transaction id names, if it is one of the host's.
    pub fn of_transaction(xid: &str) -> Option<(&str, u32)> {
        let (run_id, call) = xid.rsplit_once("#2pc-")?;
        Some((run_id, call.parse().ok()?))
    }
}

/// The participants configured in this host.
#[derive(Debug)]
pub struct Participants {
    ledger_db: Arc<Database>,
    ledger_shares_journal: bool,
    /// Batches of server-side steps, when the ledger shares a PostgreSQL journal.
    server_steps: ServerSteps,
    /// The participants beside the ledger (`postgres-xa` databases, `http` services).
    others: Vec<Arc<dyn Participant>>,
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The ledger in the journal's database: the caller commits the ledger write together
    /// with the journal entry.
    LedgerInJournal,
    /// A participant with its own durability.
    Separate,
}

impl Participants {
    pub fn new(
        ledger_db: Arc<Database>,
        ledger_shares_journal: bool,
        others: Vec<Arc<dyn Participant>>,
    ) -> Self {
        Participants {
            server_steps: ServerSteps::new(ledger_db.clone()),
            ledger_db,
            ledger_shares_journal,
            others,
        }
    }

    /// The batches of server-side steps on a PostgreSQL journal that shares the ledger.
    pub fn server_steps(&self) -> &ServerSteps {
        &self.server_steps
    }

    /// The participants beside the ledger.
    pub fn others(&self) -> &[Arc<dyn Participant>] {
        &self.others
    }

    fn named(&self, name: &str) -> Option<&Arc<dyn Participant>> {
        self.others.iter().find(|p| p.name() == name)
    }

    /// The ledger reached over HTTP, when this host has no ledger database of its own.
    fn remote_ledger(&self) -> Option<&Arc<dyn Participant>> {
        self.named("ledger")
    }

    fn names(&self) -> String {
        std::iter::once("ledger")
            .chain(
                self.others
                    .iter()
                    .map(|p| p.name())
                    .filter(|n| *n != "ledger"),
            )
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks that this host has a participant called `name`.
    pub fn exists(&self, name: &str) -> Result<(), String> {
        if name == "ledger" || self.named(name).is_some() {
            Ok(())
        } else {
            Err(format!(
                "the module asks for participant '{name}', which this host does not have (it has: {})",
                self.names()
            ))
        }
    }

    /// Checks that `call` names a known participant and action; the error is the rejection.
    pub fn route(&self, call: &CallSpec) -> Result<Route, String> {
        match call.participant.as_str() {
            "ledger" => {
                if !ledger::ACTIONS.contains(&call.action.as_str()) {
                    return Err(format!(
                        "the ledger has no action '{}'; it has: {}",
                        call.action,
                        ledger::ACTIONS.join(", ")
                    ));
                }
                Ok(
                    if self.ledger_shares_journal && self.remote_ledger().is_none() {
                        Route::LedgerInJournal
                    } else {
                        Route::Separate
                    },
                )
            }
            other => match self.named(other) {
                Some(p) => p.check_step(&call.action).map(|()| Route::Separate),
                None => Err(format!(
                    "unknown participant '{other}'; this host has: {}",
                    self.names()
                )),
            },
        }
    }

    /// Where the two-phase commit actions of `participant` go, if it can prepare.
    pub fn route_two_phase(&self, participant: &str) -> Result<Route, String> {
        match participant {
            "ledger" if self.ledger_shares_journal && self.remote_ledger().is_none() => {
                Ok(Route::LedgerInJournal)
            }
            "ledger" => Ok(Route::Separate),
            other if self.named(other).is_some_and(|p| p.prepares()) => Ok(Route::Separate),
            other => Err(format!(
                "participant '{other}' cannot prepare; these can: {}",
                self.names()
            )),
        }
    }

    /// Checks that `participant` keeps versioned values (for `read` / `write-if`).
    pub fn route_versioned(&self, participant: &str) -> Result<(), String> {
        match participant {
            "ledger" if self.remote_ledger().is_some() => Err(
                "read and write-if need the ledger in a database; this host reaches it over HTTP"
                    .to_owned(),
            ),
            "ledger" => Ok(()),
            other => Err(format!(
                "participant '{other}' has no versioned values; this host has: ledger"
            )),
        }
    }

    /// Reads a versioned value: its JSON text and version. The read goes through the writer,
    /// so it sees every write acknowledged before it.
    pub async fn read(&self, key: &str) -> Result<(String, u64), CallFailure> {
        let key = key.to_owned();
        let row = self
            .ledger_db
            .write(move |tx| Box::pin(async move { ledger::read_register(tx, &key).await }))
            .await
            .map_err(|e: wasaga_db::DbError| CallFailure::Unavailable(format!("ledger: {e}")))?;
        Ok(row.map_or(("null".to_owned(), 0), |(value, version)| {
            (value, version as u64)
        }))
    }

    /// Performs a call on a participant with its own durability ([`Route::Separate`]).
    pub async fn call(&self, request: &ParticipantRequest) -> Result<String, CallFailure> {
        if let Some(other) = self.named(&request.call.participant) {
            return other.call(request).await;
        }
        let call = request.ledger_call();
        let outcome = self
            .ledger_db
            .write(move |tx| Box::pin(async move { ledger::apply(tx, &call).await }))
            .await
            .map_err(|e: wasaga_db::DbError| CallFailure::Unknown(format!("ledger: {e}")))?;
        outcome.map_err(CallFailure::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::op_key;
    use std::collections::HashMap;

    /// Every string of up to `len` characters from `alphabet`.
    fn strings(alphabet: &[char], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            let next: Vec<String> = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    /// No two operations share a key: over every run id and step name of up to three
    /// characters drawn from the characters that build keys, each key names one operation.
    #[test]
    fn keys_are_unambiguous() {
        let runs: Vec<String> = strings(&['a', '/', '.', '-'], 3)
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect();
        let steps: Vec<String> = strings(&['a', '/', '.', '#', '%', 'u'], 3)
            .into_iter()
            .filter(|s| !s.is_empty())
            .chain(["undo", "write-1", "2pc-1", "x#undo", "b0"].map(str::to_owned))
            .collect();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut add = |key: String, what: String| {
            if let Some(other) = seen.insert(key.clone(), what.clone()) {
                panic!("{what} and {other} share the key {key}");
            }
        };
        for run in &runs {
            for step in &steps {
                let key = op_key::step(run, step);
                add(op_key::undo(&key), format!("undo of {run:?} step {step:?}"));
                add(key, format!("{run:?} step {step:?}"));
            }
            for call in [0, 1, 12] {
                add(op_key::write(run, call), format!("{run:?} write {call}"));
                let xid = op_key::transaction(run, call);
                assert_eq!(op_key::of_transaction(&xid), Some((run.as_str(), call)));
                for branch in 0..2 {
                    add(
                        format!("{xid}/b{branch}"),
                        format!("{run:?} 2pc {call} branch {branch}"),
                    );
                }
                add(xid, format!("{run:?} 2pc {call}"));
            }
        }
        // The cases the old `run/step` keys confused.
        assert_ne!(op_key::step("a/b", "c"), op_key::step("a", "b/c"));
        assert_ne!(
            op_key::step("r", "x.undo"),
            op_key::undo(&op_key::step("r", "x"))
        );
        assert_ne!(op_key::step("r", "write-3"), op_key::write("r", 3));
        // The benchmark's keys read as WORKLOAD.md writes them.
        assert_eq!(op_key::step("bench-42/17", "debit"), "bench-42/17/debit");
    }
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use std::sync::Mutex;
    use wasaga_core::BoxFuture;
    use wasaga_db::{Location, PoolSizes};
    use wasaga_testkit::{Scratch, rt};

    /// A participant that answers every call with what it was asked, and remembers it.
    #[derive(Debug)]
    struct Echo {
        name: &'static str,
        actions: &'static [&'static str],
        prepares: bool,
        asked: Mutex<Vec<String>>,
    }

    impl Participant for Echo {
        fn name(&self) -> &str {
            self.name
        }
        fn check_step(&self, action: &str) -> Result<(), String> {
            match self.actions {
                [] => Err(format!(
                    "participant '{}' takes part only in two-phase commits (saga.commit_all)",
                    self.name
                )),
                actions if actions.contains(&action) => Ok(()),
                actions => Err(format!(
                    "participant '{}' has no action '{action}'; it has: {}",
                    self.name,
                    actions.join(", ")
                )),
            }
        }
        fn prepares(&self) -> bool {
            self.prepares
        }
        fn call<'a>(
            &'a self,
            request: &'a ParticipantRequest,
        ) -> BoxFuture<'a, Result<String, CallFailure>> {
            let asked = format!("{} {}", request.call.action, request.call.payload);
            self.asked.lock().expect("lock").push(asked.clone());
            Box::pin(async move { Ok(asked) })
        }
    }

    fn spec(participant: &str, action: &str) -> CallSpec {
        CallSpec {
            participant: participant.to_owned(),
            action: action.to_owned(),
            payload: "{}".to_owned(),
        }
    }

    /// A kind of participant is added by implementing `Participant`: the router routes to it
    /// by what it declares it can do, and refuses the rest with what it can do.
    #[test]
    fn calls_reach_a_participant_by_what_it_declares() {
        rt().block_on(async {
            let scratch = Scratch::new("router");
            let db = Database::open(
                &Location::Sqlite(scratch.db.clone()),
                PoolSizes::default(),
                Default::default(),
            )
            .await
            .expect("open");
            let service = Arc::new(Echo {
                name: "payments-api",
                actions: &["charge", "refund"],
                prepares: false,
                asked: Mutex::new(Vec::new()),
            });
            let bank = Arc::new(Echo {
                name: "bank",
                actions: &[],
                prepares: true,
                asked: Mutex::new(Vec::new()),
            });
            let others: Vec<Arc<dyn Participant>> = vec![service.clone(), bank.clone()];
            let participants = Participants::new(Arc::new(db), true, others);

            assert_eq!(
                participants.route(&spec("payments-api", "charge")),
                Ok(Route::Separate)
            );
            assert_eq!(
                participants.route(&spec("payments-api", "capture")),
                Err(
                    "participant 'payments-api' has no action 'capture'; it has: charge, refund"
                        .to_owned()
                )
            );
            assert_eq!(
                participants.route(&spec("bank", "debit")),
                Err(
                    "participant 'bank' takes part only in two-phase commits (saga.commit_all)"
                        .to_owned()
                )
            );
            assert_eq!(
                participants.route(&spec("nobody", "charge")),
                Err(
                    "unknown participant 'nobody'; this host has: ledger, payments-api, bank"
                        .to_owned()
                )
            );
            assert_eq!(
                participants.route(&spec("ledger", "debit")),
                Ok(Route::LedgerInJournal)
            );
            assert_eq!(participants.route_two_phase("bank"), Ok(Route::Separate));
            assert!(participants.route_two_phase("payments-api").is_err());
            assert!(participants.exists("bank").is_ok() && participants.exists("nobody").is_err());

            let request = ParticipantRequest {
                run_id: "run-1".to_owned(),
                op_id: "run-1/charge".to_owned(),
                undoes: None,
                fencing_tokens: Vec::new(),
                call: CallSpec {
                    payload: r#"{"amount":5}"#.to_owned(),
                    ..spec("payments-api", "charge")
                },
                traceparent: None,
            };
            assert_eq!(
                participants.call(&request).await,
                Ok(r#"charge {"amount":5}"#.to_owned())
            );
            assert_eq!(
                *service.asked.lock().expect("lock"),
                [r#"charge {"amount":5}"#]
            );
            assert!(bank.asked.lock().expect("lock").is_empty());
        });
    }
}
