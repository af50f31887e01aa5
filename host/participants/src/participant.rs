//! What a participant other than the built-in ledger provides, so that a new kind (an HTTP
//! service, another database) is one more implementation, not an edit of the router. The
//! ledger stays built in: only it can share the journal's transactions.

use wasaga_core::BoxFuture;
use wasaga_core::event::CallFailure;

/// A participant with its own durability, called by name.
pub trait Participant: Send + Sync + std::fmt::Debug {
    /// The name workflows call it by and grants name.
    fn name(&self) -> &str;

    /// The actions a saga step may call on it; none if it takes part only in two-phase
    /// commits.
    fn step_actions(&self) -> &[&str] {
        &[]
    }

    /// Whether it can prepare branches of a two-phase commit (`prepare`, `commit-prepared`,
    /// `abort-prepared`, with [`crate::branch`]'s payloads).
    fn prepares(&self) -> bool {
        false
    }

    /// Performs `action` with `payload`: a step's action or compensation, or a two-phase
    /// action. The reply is JSON text; a refusal is [`CallFailure::Rejected`], a call whose
    /// outcome is not known [`CallFailure::Unknown`].
    fn call<'a>(
        &'a self,
        action: &'a str,
        payload: &'a str,
    ) -> BoxFuture<'a, Result<String, CallFailure>>;

    /// The two-phase transactions it holds prepared, for the host's in-doubt sweep.
    fn in_doubt(&self) -> BoxFuture<'_, Result<Vec<String>, CallFailure>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
