//! The journal's vocabulary: the events a run is made of, and the states a run can be in.
//!
//! Host-call events carry `call`, the index of the module's import call that produced them;
//! replay matches the module's calls against these indices.

use serde::{Deserialize, Serialize};

/// A participant call as journaled (the host-side copy of the WIT `call` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSpec {
    pub participant: String,
    pub action: String,
    pub payload: String,
}

/// How a participant call failed (the host-side copy of the WIT `call-error` variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "kebab-case")]
pub enum CallFailure {
    Rejected(String),
    Unavailable(String),
    Unknown(String),
}

impl CallFailure {
    /// Whether the participant may have applied the call (so it must be resolved or undone).
    pub fn may_have_applied(&self) -> bool {
        matches!(self, CallFailure::Unknown(_))
    }

    /// Whether retrying the same call can change the outcome.
    pub fn is_transient(&self) -> bool {
        !matches!(self, CallFailure::Rejected(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            CallFailure::Rejected(r) | CallFailure::Unavailable(r) | CallFailure::Unknown(r) => r,
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Rejected(r) => write!(f, "rejected: {r}"),
            CallFailure::Unavailable(r) => write!(f, "unavailable: {r}"),
            CallFailure::Unknown(r) => write!(f, "outcome unknown: {r}"),
        }
    }
}

/// One journal event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// The run exists: which module (pinned by hash) runs on which input.
    Started {
        workflow: String,
        module_hash: String,
        input: String,
        started_at_ms: u64,
        /// The W3C `traceparent` of the request that started the run: the run's spans, on
        /// whichever host drives it, belong to that trace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A step is about to run: its action and its compensation, durable before the action.
    StepIntent {
        call: u32,
        name: String,
        action: CallSpec,
        compensation: Option<CallSpec>,
        /// `(lock key, token)` of the run's locks when the step was taken: a repeat of the
        /// action (to learn an unknown outcome) carries the same tokens.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fencing_tokens: Vec<(String, u64)>,
    },
    /// The step's action succeeded with this reply.
    StepDone { call: u32, output: String },
    /// The step's action failed (after the host's retries for transient failures).
    StepFailed { call: u32, error: CallFailure },
    /// `participant.commit-all` began: transaction `xid` over these calls (its branches).
    TwoPhaseStarted {
        call: u32,
        xid: String,
        calls: Vec<CallSpec>,
    },
    /// The decision, durable before any branch is committed or aborted. No decision record
    /// means abort (presumed abort).
    TwoPhaseDecided {
        call: u32,
        commit: bool,
        reason: Option<String>,
    },
    /// Every branch was committed (the prepare replies) or aborted (the reason).
    TwoPhaseFinished {
        call: u32,
        outcome: Result<Vec<String>, CallFailure>,
    },
    /// `participant.read` returned this (value JSON and version).
    Read {
        call: u32,
        participant: String,
        key: String,
        outcome: Result<(String, u64), CallFailure>,
    },
    /// `participant.write-if` was performed with this outcome (the new version).
    WriteIf {
        call: u32,
        participant: String,
        key: String,
        expected_version: u64,
        value: String,
        outcome: Result<u64, CallFailure>,
    },
    /// `context.now-ms` returned this.
    Clock { call: u32, ms: u64 },
    /// `context.random-u64` returned this.
    Random { call: u32, value: u64 },
    /// `context.log` was called (also the module's captured stdout/stderr, with no call index).
    Log { call: Option<u32>, message: String },
    /// `lock.acquire` returned this lease.
    LockAcquired {
        call: u32,
        key: String,
        ttl_ms: u32,
        fencing_token: u64,
        expires_at_ms: u64,
        /// How long the run waited for the lock (0 in journals from before it was recorded).
        #[serde(default)]
        waited_ms: u64,
    },
    /// `lock.acquire` failed.
    LockFailed {
        call: u32,
        key: String,
        ttl_ms: u32,
        reason: String,
    },
    /// `lock.release` was called (`call` is None when the host released it at the run's end).
    LockReleased {
        call: Option<u32>,
        key: String,
        fencing_token: u64,
    },
    /// A resumed run took a lock its journal holds back from the backend before going on
    /// (replaying, or compensating): the lease and its new fencing token.
    LockReacquired {
        key: String,
        ttl_ms: u32,
        fencing_token: u64,
        expires_at_ms: u64,
    },
    /// A durable wait began (`wait.sleep`, `wait.signal`, `wait.await-child`): the host drops
    /// the run's instance until it ends, and the run resumes by replay. `due_ms` is when a
    /// timer ends it (a sleep's end, a wait's timeout), on the host's clock.
    WaitStarted {
        call: u32,
        wait: Wait,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_ms: Option<u64>,
    },
    /// The wait of `call` ended this way: what the module's call returns, on every replay.
    WaitEnded { call: u32, outcome: WaitOutcome },
    /// `wait.start-child` started (or found, on a repeat) the child run `run_id`.
    ChildStarted {
        call: u32,
        run_id: String,
        workflow: String,
        outcome: Result<(), String>,
    },
    /// An operator moved the unfinished run to another version of its workflow, once its
    /// journal had replayed cleanly on it: from here on it executes and replays `to`.
    ModuleUpgraded {
        from: String,
        to: String,
        /// The deployed version `to` is, if it is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<i64>,
    },
    /// The module returned `ok`: the run is applied.
    Completed { output: String },
    /// The run failed; the host now compensates the completed steps.
    Compensating { cause: String },
    /// An unknown-outcome step was repeated with its idempotency key to learn its outcome.
    StepResolved {
        call: u32,
        outcome: Result<String, CallFailure>,
    },
    /// A step's compensation succeeded.
    CompensationDone { call: u32, output: String },
    /// Every compensation is done: the run is fully undone.
    Compensated { cause: String },
    /// A compensation kept failing: the run needs an operator.
    Stuck { reason: String },
}

impl Event {
    /// The event's kind, as stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::StepIntent { .. } => "step-intent",
            Event::StepDone { .. } => "step-done",
            Event::StepFailed { .. } => "step-failed",
            Event::TwoPhaseStarted { .. } => "two-phase-started",
            Event::TwoPhaseDecided { .. } => "two-phase-decided",
            Event::TwoPhaseFinished { .. } => "two-phase-finished",
            Event::Read { .. } => "read",
            Event::WriteIf { .. } => "write-if",
            Event::Clock { .. } => "clock",
            Event::Random { .. } => "random",
            Event::Log { .. } => "log",
            Event::LockAcquired { .. } => "lock-acquired",
            Event::LockFailed { .. } => "lock-failed",
            Event::LockReleased { .. } => "lock-released",
            Event::LockReacquired { .. } => "lock-reacquired",
            Event::Completed { .. } => "completed",
            Event::Compensating { .. } => "compensating",
            Event::StepResolved { .. } => "step-resolved",
            Event::CompensationDone { .. } => "compensation-done",
            Event::Compensated { .. } => "compensated",
            Event::Stuck { .. } => "stuck",
            Event::WaitStarted { .. } => "wait-started",
            Event::WaitEnded { .. } => "wait-ended",
            Event::ChildStarted { .. } => "child-started",
            Event::ModuleUpgraded { .. } => "module-upgraded",
        }
    }

    /// The index of the module call this event answers, for events replay matches on.
    pub fn replayed_call(&self) -> Option<u32> {
        match self {
            Event::StepIntent { call, .. }
            | Event::TwoPhaseStarted { call, .. }
            | Event::Read { call, .. }
            | Event::WriteIf { call, .. }
            | Event::Clock { call, .. }
            | Event::Random { call, .. }
            | Event::LockAcquired { call, .. }
            | Event::LockFailed { call, .. }
            | Event::WaitStarted { call, .. }
            | Event::ChildStarted { call, .. } => Some(*call),
            Event::Log { call, .. } | Event::LockReleased { call, .. } => *call,
            _ => None,
        }
    }
}

/// The module a run with these events executes: the one it started with, or the last one an
/// upgrade moved it to.
pub fn current_module(events: &[Event]) -> Option<&str> {
    events.iter().rev().find_map(|event| match event {
        Event::ModuleUpgraded { to, .. } => Some(to.as_str()),
        Event::Started { module_hash, .. } => Some(module_hash.as_str()),
        _ => None,
    })
}

/// What a durable wait waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "kebab-case")]
pub enum Wait {
    /// Only the timer (`due_ms`).
    Timer,
    /// The external signal `name` (or the timeout, `due_ms`).
    Signal { name: String },
    /// The end of the child run `run_id`.
    Child { run_id: String },
}

impl Wait {
    /// What the run's row says it waits for (`runs.waiting_for`): a signal's arrival and a
    /// child's end wake only the run waiting for exactly that.
    pub fn waiting_for(&self) -> String {
        match self {
            Wait::Timer => "timer".to_owned(),
            Wait::Signal { name } => format!("signal:{name}"),
            Wait::Child { run_id } => format!("child:{run_id}"),
        }
    }
}

/// How a durable wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ended", rename_all = "kebab-case")]
pub enum WaitOutcome {
    /// The timer came due (a sleep's end) or passed (a signal's timeout); `at_ms` is when the
    /// host saw it.
    Due { at_ms: u64 },
    /// The signal arrived with this payload (JSON).
    Signal { signal_id: String, payload: String },
    /// The child ended: its output, or why it was compensated.
    Child { outcome: Result<String, String> },
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Compensating,
    Completed,
    Compensated,
    Stuck,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Compensated => "compensated",
            RunStatus::Stuck => "stuck",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "compensating" => RunStatus::Compensating,
            "completed" => RunStatus::Completed,
            "compensated" => RunStatus::Compensated,
            "stuck" => RunStatus::Stuck,
            _ => return None,
        })
    }

    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Compensated | RunStatus::Stuck
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
