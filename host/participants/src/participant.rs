//! What a participant other than the built-in ledger provides, so that a new kind (an HTTP
//! service, another database) is one more implementation, not an edit of the router. The
//! ledger stays built in: only it can share the journal's transactions.

use crate::ledger::LedgerCall;
use wasaga_core::BoxFuture;
use wasaga_core::event::{CallFailure, CallSpec};

/// One call as delivered to a participant.
#[derive(Debug, Clone)]
pub struct ParticipantRequest {
    /// The run the call is made for.
    pub run_id: String,
    /// The operation's idempotency key ([`crate::op_key`]).
    pub op_id: String,
    /// For a compensation: the key of the action it undoes.
    pub undoes: Option<String>,
    /// Fencing tokens of the locks the run holds, `(key, token)`.
    pub fencing_tokens: Vec<(String, u64)>,
    pub call: CallSpec,
    /// The W3C `traceparent` of the span the call is made in, for participants that pass
    /// trace context on (an `http` participant sends it as the `traceparent` header).
    pub traceparent: Option<String>,
}

impl ParticipantRequest {
    pub fn ledger_call(&self) -> LedgerCall {
        LedgerCall {
            op_id: self.op_id.clone(),
            undoes: self.undoes.clone(),
            action: self.call.action.clone(),
            payload: self.call.payload.clone(),
            fencing_tokens: self.fencing_tokens.clone(),
        }
    }
}

/// A participant with its own durability, called by name.
pub trait Participant: Send + Sync + std::fmt::Debug {
    /// The name workflows call it by and grants name.
    fn name(&self) -> &str;

    /// Whether a saga step may call `action` on it; the error, why not (it becomes the step's
    /// rejection). By default none may: the participant takes part only in two-phase commits.
    fn check_step(&self, action: &str) -> Result<(), String> {
        let _ = action;
        Err(format!(
            "participant '{}' takes part only in two-phase commits (saga.commit_all)",
            self.name()
        ))
    }

    /// Whether it can prepare branches of a two-phase commit (`prepare`, `commit-prepared`,
    /// `abort-prepared`, with [`crate::branch`]'s payloads).
    fn prepares(&self) -> bool {
        false
    }

    /// Performs `request`: a step's action or compensation, or a two-phase action
    /// (`prepare`, `commit-prepared`, `abort-prepared`). The reply is JSON text; a refusal is
    /// [`CallFailure::Rejected`], a call whose outcome is not known [`CallFailure::Unknown`].
    fn call<'a>(
        &'a self,
        request: &'a ParticipantRequest,
    ) -> BoxFuture<'a, Result<String, CallFailure>>;

    /// The two-phase transactions it holds prepared, for the host's in-doubt sweep.
    fn in_doubt(&self) -> BoxFuture<'_, Result<Vec<String>, CallFailure>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
