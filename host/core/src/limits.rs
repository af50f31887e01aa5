//! What a run may use and what a workflow is granted: the bounds every run obeys (units in the
//! names) and the per-workflow allow-lists. Built and checked by the binary before anything runs.

use std::collections::BTreeMap;

/// Limits on what one run may use. Exceeding any ends the run with a named error and
/// compensates it. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one execution of a module may take, including replay.
    pub run_duration_ms_max: u64,
    /// Linear memory one module instance may grow to.
    pub memory_bytes_max: usize,
    /// Size of a run's input, its output, and each participant payload and reply.
    pub payload_bytes_max: usize,
    /// Events in one run's journal.
    pub journal_events_max: u32,
    /// Attempts for a step whose participant is unavailable or whose outcome is unknown.
    pub step_retries_max: u32,
    /// Attempts for one compensation before the run is parked as `stuck`.
    pub compensation_retries_max: u32,
    /// First backoff between retries; doubled each attempt up to `retry_backoff_ms_max`.
    pub retry_backoff_ms_min: u64,
    pub retry_backoff_ms_max: u64,
    /// Runs executing at once in one host (sizes the instance pool).
    pub concurrent_runs_max: u32,
    /// Time a run may wait for one lock.
    pub lock_wait_ms_max: u32,
    /// Longest lease a module may ask for.
    pub lock_ttl_ms_max: u32,
    /// How long a host's ownership of a run lasts unless renewed (it is renewed every third
    /// of this while the run executes). A host that dies loses its runs after this long, and
    /// another host resumes them.
    pub run_lease_ms: u64,
    /// A step's name, and a participant's or action's name in a call.
    pub name_bytes_max: usize,
    /// A lock key, or a key read from or written to a participant.
    pub key_bytes_max: usize,
    /// Calls in one `commit-all`.
    pub branches_max: usize,
    /// The longest durable wait (a sleep, a signal's timeout) a run may ask for.
    pub wait_ms_max: u64,
    /// Signals kept for one run (delivered or waiting to be); more are refused.
    pub signals_per_run_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            run_duration_ms_max: 30_000,
            memory_bytes_max: 64 << 20,
            payload_bytes_max: 64 << 10,
            journal_events_max: 10_000,
            step_retries_max: 5,
            compensation_retries_max: 8,
            retry_backoff_ms_min: 10,
            retry_backoff_ms_max: 1_000,
            concurrent_runs_max: 256,
            lock_wait_ms_max: 30_000,
            lock_ttl_ms_max: 300_000,
            run_lease_ms: 10_000,
            name_bytes_max: 128,
            key_bytes_max: 256,
            branches_max: 32,
            wait_ms_max: 400 * 24 * 3_600 * 1_000,
            signals_per_run_max: 1_000,
        }
    }
}

/// What one workflow may use. Everything else is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Participants its steps, reads and writes may call (`ledger`, a `postgres-xa` or `http`
    /// name), or single actions of one (`psp.authorize`: steps may call that action only).
    pub participants: Vec<String>,
    /// Prefixes of the lock keys it may take; an empty prefix allows every key.
    pub lock_prefixes: Vec<String>,
    /// Workflows it may start as child runs (each runs under its own grant).
    pub children: Vec<String>,
}

impl Grant {
    /// The granted participants and actions, for a message: `ledger, psp.authorize` or `none`.
    pub fn participants_shown(&self) -> String {
        if self.participants.is_empty() {
            "none".to_owned()
        } else {
            self.participants.join(", ")
        }
    }

    /// Whether everything of `participant` is granted.
    pub fn allows_participant(&self, participant: &str) -> bool {
        self.participants.iter().any(|p| p == participant)
    }

    /// Whether some of `participant` is granted: all of it, or one of its actions at least.
    pub fn allows_some_of(&self, participant: &str) -> bool {
        self.participants.iter().any(|p| {
            p == participant
                || p.split_once('.')
                    .is_some_and(|(granted, _)| granted == participant)
        })
    }

    /// Whether a step may call `action` on `participant`: all of it is granted, or that action.
    pub fn allows_action(&self, participant: &str, action: &str) -> bool {
        self.participants.iter().any(|p| {
            p == participant
                || p.split_once('.').is_some_and(|(granted, granted_action)| {
                    granted == participant && granted_action == action
                })
        })
    }

    pub fn allows_child(&self, workflow: &str) -> bool {
        self.children.iter().any(|c| c == workflow)
    }

    pub fn allows_lock(&self, key: &str) -> bool {
        self.lock_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }
}

/// Grants by workflow name; a workflow without one may use nothing (and is not deployed or
/// run). `None` in [`HostConfig::grants`] means there is no config file at all: every
/// configured participant and every lock key is allowed (a developer's local command line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub workflows: BTreeMap<String, Grant>,
}
