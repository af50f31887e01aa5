//! Participants a workflow can call, and how a call reaches them. Today: the built-in ledger,
//! either in the journal's database (so its writes commit with the journal entry) or in a
//! database of its own.

use crate::db::Database;
use crate::event::{CallFailure, CallSpec};
use crate::ledger::{self, LedgerCall};
use std::sync::Arc;

/// One call as delivered to a participant.
#[derive(Debug, Clone)]
pub struct ParticipantRequest {
    /// `run-id/step` for an action, `run-id/step.undo` for its compensation.
    pub op_id: String,
    /// For a compensation: the key of the action it undoes.
    pub undoes: Option<String>,
    /// Fencing tokens of the locks the run holds, `(key, token)`.
    pub fencing_tokens: Vec<(String, u64)>,
    pub call: CallSpec,
}

impl ParticipantRequest {
    pub(crate) fn ledger_call(&self) -> LedgerCall {
        LedgerCall {
            op_id: self.op_id.clone(),
            undoes: self.undoes.clone(),
            action: self.call.action.clone(),
            payload: self.call.payload.clone(),
            fencing_tokens: self.fencing_tokens.clone(),
        }
    }
}

/// The participants configured in this host.
#[derive(Debug)]
pub struct Participants {
    ledger_db: Arc<Database>,
    ledger_shares_journal: bool,
    /// `postgres-xa` participants by name.
    xa: Vec<Arc<crate::xa::PostgresXa>>,
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
        xa: Vec<Arc<crate::xa::PostgresXa>>,
    ) -> Self {
        Participants {
            ledger_db,
            ledger_shares_journal,
            xa,
        }
    }

    /// The `postgres-xa` participants.
    pub fn xa(&self) -> &[Arc<crate::xa::PostgresXa>] {
        &self.xa
    }

    fn xa_named(&self, name: &str) -> Option<&Arc<crate::xa::PostgresXa>> {
        self.xa.iter().find(|p| p.name() == name)
    }

    fn names(&self) -> String {
        std::iter::once("ledger")
            .chain(self.xa.iter().map(|p| p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks that this host has a participant called `name`.
    pub fn exists(&self, name: &str) -> Result<(), String> {
        if name == "ledger" || self.xa_named(name).is_some() {
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
                Ok(if self.ledger_shares_journal {
                    Route::LedgerInJournal
                } else {
                    Route::Separate
                })
            }
            other if self.xa_named(other).is_some() => Err(format!(
                "participant '{other}' takes part only in two-phase commits (saga.commit_all)"
            )),
            other => Err(format!(
                "unknown participant '{other}'; this host has: {}",
                self.names()
            )),
        }
    }

    /// Where the two-phase commit actions of `participant` go, if it can prepare.
    pub fn route_two_phase(&self, participant: &str) -> Result<Route, String> {
        match participant {
            "ledger" if self.ledger_shares_journal => Ok(Route::LedgerInJournal),
            "ledger" => Ok(Route::Separate),
            other if self.xa_named(other).is_some() => Ok(Route::Separate),
            other => Err(format!(
                "participant '{other}' cannot prepare; these can: {}",
                self.names()
            )),
        }
    }

    /// Checks that `participant` keeps versioned values (for `read` / `write-if`).
    pub fn route_versioned(&self, participant: &str) -> Result<(), String> {
        match participant {
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
            .map_err(|e: crate::db::DbError| CallFailure::Unavailable(format!("ledger: {e}")))?;
        Ok(row.map_or(("null".to_owned(), 0), |(value, version)| {
            (value, version as u64)
        }))
    }

    /// Performs a call on a participant with its own durability ([`Route::Separate`]).
    pub async fn call(&self, request: &ParticipantRequest) -> Result<String, CallFailure> {
        if let Some(xa) = self.xa_named(&request.call.participant) {
            return xa.call(&request.call.action, &request.call.payload).await;
        }
        let call = request.ledger_call();
        let outcome = self
            .ledger_db
            .write(move |tx| Box::pin(async move { ledger::apply(tx, &call).await }))
            .await
            .map_err(|e: crate::db::DbError| CallFailure::Unknown(format!("ledger: {e}")))?;
        outcome.map_err(CallFailure::Rejected)
    }
}
