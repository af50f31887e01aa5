//! Host implementations of the WIT interfaces a workflow imports, one file per interface.
//! Every call is numbered, journaled, and on replay answered from the journal.

mod context;
mod lock;
mod participant;
mod wait;

use crate::bindings::wasaga::workflow::types;
use crate::store::RunState;
use wasaga_core::event::{CallFailure, CallSpec};

impl types::Host for RunState {}

impl From<types::Call> for CallSpec {
    fn from(call: types::Call) -> Self {
        CallSpec {
            participant: call.participant,
            action: call.action,
            payload: call.payload,
        }
    }
}

impl From<CallFailure> for types::CallError {
    fn from(failure: CallFailure) -> Self {
        match failure {
            CallFailure::Rejected(m) => types::CallError::Rejected(m),
            CallFailure::Unavailable(m) => types::CallError::Unavailable(m),
            CallFailure::Unknown(m) => types::CallError::Unknown(m),
        }
    }
}
