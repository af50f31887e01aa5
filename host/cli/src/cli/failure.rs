//! How a command fails: the exit code and the message.

use wasaga_core::event::RunStatus;
use wasaga_runtime::HostError;

pub const EXIT_FAILURE: u8 = 1;

pub const EXIT_USAGE: u8 = 2;

pub const EXIT_COMPENSATED: u8 = 3;

pub const EXIT_STUCK: u8 = 4;
/// The run waits (a sleep, a signal, a child): `wasaga serve` takes it up when it is due.
pub const EXIT_WAITING: u8 = 5;
/// `verify` found a recorded run that does not replay on the module.
pub const EXIT_DIVERGED: u8 = 6;

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: EXIT_FAILURE,
            error,
        }
    }
}

pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: error.into(),
    }
}

pub(crate) fn host_failure(error: HostError) -> Failure {
    let code = match error {
        HostError::Module(_)
        | HostError::Input(_)
        | HostError::NotGranted(_)
        | HostError::Rejected { .. }
        | HostError::Journal(wasaga_journal::JournalError::UnknownRun(_)) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    };
    Failure {
        code,
        error: error.into(),
    }
}

pub(crate) fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Completed => 0,
        RunStatus::Compensated => EXIT_COMPENSATED,
        RunStatus::Stuck => EXIT_STUCK,
        RunStatus::Running | RunStatus::Compensating => EXIT_FAILURE,
    }
}
