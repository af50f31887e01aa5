//! The API workflow authors write against: a [`Saga`] context with typed, journaled steps,
//! locks with fencing tokens, and a deterministic clock and random source.
//!
//! A workflow is one function from a JSON-deserialisable input to a JSON-serialisable output:
//!
//! ```text
//! use guest_sdk::{Error, Saga};
//!
//! fn transfer(saga: &mut Saga, t: Transfer) -> Result<Receipt, Error> {
//!     saga.step("debit")
//!         .invoke("ledger", "debit", &Entry { account: t.from, amount: t.amount })
//!         .compensate_with("ledger", "credit", &Entry { account: t.from, amount: t.amount })
//!         .run::<serde_json::Value>()?;
//!     // ...
//! }
//! guest_sdk::export_workflow!(transfer);
//! ```
//!
//! Every step is journaled by the host *before* it runs. When the function returns an error,
//! panics, or the host has to stop it, the host performs the compensations of the completed
//! steps in reverse order by itself: no code in the module is needed to roll back.
#![deny(missing_docs)]

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "workflow",
        pub_export_macro: true,
        default_bindings_module: "guest_sdk::bindings",
        export_macro_name: "export",
    });
}

use bindings::wasaga::workflow::{context, lock, participant, types, wait};

/// The workflow's view of its run: steps, locks, clock, randomness and log.
///
/// Everything that could differ between the first execution and a replay goes through this
/// value, so the host can journal it and replay it exactly.
#[derive(Debug)]
pub struct Saga {
    _private: (),
}

impl Saga {
    /// Starts describing a saga step named `name`. Names must be unique within a run: the host
    /// derives the step's idempotency key from the run id and the name.
    pub fn step(&mut self, name: &str) -> Step<'_> {
        Step {
            _saga: self,
            name: name.to_owned(),
            action: None,
            compensation: None,
        }
    }

    /// Takes the lock on `key`, held for `ttl_ms` and renewed by the host while the run lives,
    /// waiting at most `wait_ms` for it. The host releases it when the run ends, whatever
    /// happens; dropping the [`Lock`] releases it earlier.
    pub fn lock(&mut self, key: &str, ttl_ms: u32, wait_ms: u32) -> Result<Lock, Error> {
        lock::acquire(key, ttl_ms, wait_ms)
            .map(|lease| Lock { lease: Some(lease) })
            .map_err(|reason| Error::Lock {
                key: key.to_owned(),
                reason,
            })
    }

    /// Two-phase commit: prepares every branch on its participant, then commits all of them or
    /// none. The host journals the decision before committing, so a crash at any point ends
    /// with every branch committed or every branch aborted. A refused prepare aborts all and
    /// returns [`Error::Transaction`] naming the branch and the refusal.
    pub fn commit_all(&mut self, branches: &[Branch]) -> Result<Vec<String>, Error> {
        let calls: Vec<types::Call> = branches.iter().map(|b| b.call.clone()).collect();
        participant::commit_all(&calls).map_err(|e| Error::Transaction { error: e.into() })
    }

    /// Reads the versioned value `key` of `participant` (`None` if never written).
    pub fn read<T: DeserializeOwned>(
        &mut self,
        participant: &str,
        key: &str,
    ) -> Result<Versioned<T>, Error> {
        let (value, version) =
            participant::read(participant, key).map_err(|e| Error::Versioned {
                key: key.to_owned(),
                error: e.into(),
            })?;
        let value = serde_json::from_str::<Option<T>>(&value).map_err(|e| {
            Error::Invalid(format!("value of '{key}' ({value}) does not decode: {e}"))
        })?;
        Ok(Versioned { value, version })
    }

    /// Writes `value` to `key` only if it is still at `expected_version`; returns the new
    /// version. A concurrent write makes it fail with [`Error::Conflict`].
    pub fn write_if<T: Serialize>(
        &mut self,
        participant: &str,
        key: &str,
        expected_version: u64,
        value: &T,
    ) -> Result<u64, Error> {
        let value = serde_json::to_string(value)
            .map_err(|e| Error::Invalid(format!("value for '{key}' does not encode: {e}")))?;
        participant::write_if(participant, key, expected_version, &value).map_err(|e| match e {
            types::CallError::Rejected(m) if m.starts_with("version conflict") => Error::Conflict {
                key: key.to_owned(),
                attempts: 1,
            },
            e => Error::Versioned {
                key: key.to_owned(),
                error: e.into(),
            },
        })
    }

    /// Optimistic read-modify-write: reads `key`, computes the new value with `change`, and
    /// writes it if nobody wrote in between; on a conflict it reads again and retries, at most
    /// `attempts_max` times in all. Returns the value written.
    pub fn update<T, F>(
        &mut self,
        participant: &str,
        key: &str,
        attempts_max: u32,
        mut change: F,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        for _ in 0..attempts_max.max(1) {
            let current = self.read::<T>(participant, key)?;
            let next = change(current.value);
            match self.write_if(participant, key, current.version, &next) {
                Ok(_) => return Ok(next),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            key: key.to_owned(),
            attempts: attempts_max.max(1),
        })
    }

    /// Milliseconds since the Unix epoch, journaled: a replay sees the first value.
    pub fn now_ms(&mut self) -> u64 {
        context::now_ms()
    }

    /// A random number, journaled: a replay sees the first value.
    pub fn random(&mut self) -> u64 {
        context::random_u64()
    }

    /// Appends `message` to the run's log (shown by `wasaga runs show`).
    pub fn log(&mut self, message: &str) {
        context::log(message)
    }

    /// Sleeps durably for `duration`: the host journals the wait, drops the run's instance and
    /// resumes the run by replay once the time has passed, on whichever host claims it, across
    /// restarts. The run holds no memory while it sleeps.
    pub fn sleep(&mut self, duration: std::time::Duration) {
        wait::sleep(duration.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    /// Sleeps durably until `at_ms` (milliseconds since the Unix epoch, the host's clock).
    pub fn sleep_until(&mut self, at_ms: u64) {
        wait::sleep_until(at_ms)
    }

    /// Waits durably for the external signal `name` for at most `timeout`, and decodes its
    /// JSON payload: `Ok(None)` on timeout. A signal sent before the wait is delivered at once;
    /// each signal is delivered once.
    pub fn wait_for<T: DeserializeOwned>(
        &mut self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<T>, Error> {
        let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        match wait::signal(name, timeout_ms) {
            None => Ok(None),
            Some(payload) => serde_json::from_str(&payload).map(Some).map_err(|e| {
                Error::Invalid(format!(
                    "signal '{name}' payload ({payload}) does not decode: {e}"
                ))
            }),
        }
    }

    /// Runs the deployed workflow `workflow` as a child on `input` and waits for its end: its
    /// output, or [`Error::Child`] if it was compensated.
    pub fn child<T: Serialize, R: DeserializeOwned>(
        &mut self,
        workflow: &str,
        input: &T,
    ) -> Result<R, Error> {
        let child = self.start_child(workflow, input)?;
        child.join(self)
    }

    /// Starts the deployed workflow `workflow` as a child run on `input`, without waiting: the
    /// child runs on its own (its own journal, its own compensation) while this run goes on.
    /// Its run id derives from this run's id, so a replay finds the same child.
    pub fn start_child<T: Serialize>(&mut self, workflow: &str, input: &T) -> Result<Child, Error> {
        let input = serde_json::to_string(input).map_err(|e| {
            Error::Invalid(format!("input for child '{workflow}' does not encode: {e}"))
        })?;
        wait::start_child(workflow, &input)
            .map(|run_id| Child { run_id })
            .map_err(|reason| Error::Child {
                workflow: workflow.to_owned(),
                reason,
            })
    }
}

/// A child run started with [`Saga::start_child`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    run_id: String,
}

impl Child {
    /// The child's run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Waits durably for the child to end: its output, decoded, or [`Error::Child`] with the
    /// reason it was compensated.
    pub fn join<R: DeserializeOwned>(self, _saga: &mut Saga) -> Result<R, Error> {
        match wait::await_child(&self.run_id) {
            Ok(output) => serde_json::from_str(&output).map_err(|e| {
                Error::Invalid(format!(
                    "output of child {} ({output}) does not decode: {e}",
                    self.run_id
                ))
            }),
            Err(reason) => Err(Error::Child {
                workflow: self.run_id,
                reason,
            }),
        }
    }
}

/// A saga step being described; finish it with [`Step::run`].
#[derive(Debug)]
#[must_use = "a step does nothing until `.run()` is called"]
pub struct Step<'a> {
    _saga: &'a mut Saga,
    name: String,
    action: Option<Result<types::Call, Error>>,
    compensation: Option<Result<types::Call, Error>>,
}

impl Step<'_> {
    /// The participant call that performs the step.
    pub fn invoke<T: Serialize>(mut self, participant: &str, action: &str, payload: &T) -> Self {
        self.action = Some(make_call(&self.name, participant, action, payload));
        self
    }

    /// The participant call that undoes the step. The host journals it before performing the
    /// step and performs it, if the run fails later, without the module's help.
    pub fn compensate_with<T: Serialize>(
        mut self,
        participant: &str,
        action: &str,
        payload: &T,
    ) -> Self {
        self.compensation = Some(make_call(&self.name, participant, action, payload));
        self
    }

    /// Performs the step and decodes the participant's JSON reply into `R`.
    pub fn run<R: DeserializeOwned>(self) -> Result<R, Error> {
        let name = self.name;
        let action = match self.action {
            Some(action) => action?,
            None => {
                return Err(Error::Invalid(format!(
                    "step '{name}' has no action: call .invoke(...)"
                )));
            }
        };
        let compensation = self.compensation.transpose()?;
        match participant::step(&name, &action, compensation.as_ref()) {
            Ok(reply) => serde_json::from_str(&reply).map_err(|e| {
                Error::Invalid(format!("step '{name}': reply {reply} does not decode: {e}"))
            }),
            Err(error) => Err(Error::Step {
                step: name,
                error: error.into(),
            }),
        }
    }
}

fn make_call<T: Serialize>(
    step: &str,
    participant: &str,
    action: &str,
    payload: &T,
) -> Result<types::Call, Error> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| Error::Invalid(format!("step '{step}': payload does not encode: {e}")))?;
    Ok(types::Call {
        participant: participant.to_owned(),
        action: action.to_owned(),
        payload,
    })
}

/// One branch of a [`Saga::commit_all`] transaction.
#[derive(Debug, Clone)]
pub struct Branch {
    call: types::Call,
}

impl Branch {
    /// A branch calling `action` on `participant` with a JSON `payload`.
    pub fn new<T: Serialize>(participant: &str, action: &str, payload: &T) -> Result<Self, Error> {
        Ok(Branch {
            call: make_call("commit-all", participant, action, payload)?,
        })
    }
}

/// A value read with its version, for a later [`Saga::write_if`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value, `None` if it was never written.
    pub value: Option<T>,
    /// Its version, 0 if it was never written.
    pub version: u64,
}

/// A held lock. Dropping it releases the lock; the host releases it anyway when the run ends.
#[derive(Debug)]
pub struct Lock {
    lease: Option<lock::Lease>,
}

impl Lock {
    /// The fencing token of this lease: participants refuse calls carrying an older one.
    pub fn fencing_token(&self) -> u64 {
        self.lease.as_ref().map_or(0, |lease| lease.fencing_token)
    }

    /// Releases the lock now.
    pub fn release(mut self) -> Result<(), Error> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), Error> {
        match self.lease.take() {
            Some(lease) => lock::release(&lease).map_err(|reason| Error::Lock {
                key: lease.key.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // A failed release is harmless here: the host releases every lock at the end of the run.
        let _ = self.release_inner();
    }
}

/// Why a step's participant call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// Refused for good (insufficient funds, unknown account, ...).
    Rejected(String),
    /// Not reachable; nothing was applied.
    Unavailable(String),
    /// The outcome could not be learned even after the host's retries.
    Unknown(String),
}

impl From<types::CallError> for StepError {
    fn from(error: types::CallError) -> Self {
        match error {
            types::CallError::Rejected(m) => StepError::Rejected(m),
            types::CallError::Unavailable(m) => StepError::Unavailable(m),
            types::CallError::Unknown(m) => StepError::Unknown(m),
        }
    }
}

/// Why a workflow failed. Returning it from the workflow makes the host compensate the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A step's participant call failed.
    Step {
        /// The step's name.
        step: String,
        /// How it failed.
        error: StepError,
    },
    /// A lock could not be taken or released.
    Lock {
        /// The lock key.
        key: String,
        /// The host's reason.
        reason: String,
    },
    /// A two-phase commit was aborted on every branch.
    Transaction {
        /// Why (for a refused prepare: the branch and the participant's reason).
        error: StepError,
    },
    /// A versioned read or write failed.
    Versioned {
        /// The value's key.
        key: String,
        /// How it failed.
        error: StepError,
    },
    /// A version-checked write lost to a concurrent writer (`attempts` times).
    Conflict {
        /// The value's key.
        key: String,
        /// How many writes were tried.
        attempts: u32,
    },
    /// Input, payload or reply that does not fit the expected shape.
    Invalid(String),
    /// A business rule of the workflow itself refused to go on.
    Failed(String),
    /// A child run could not start, or was compensated.
    Child {
        /// The child's workflow (when it could not start) or run id (when it ended).
        workflow: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A workflow-level failure with `message` as its reason.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Step {
                step,
                error: StepError::Rejected(m),
            } => {
                write!(f, "step '{step}' rejected: {m}")
            }
            Error::Step {
                step,
                error: StepError::Unavailable(m),
            } => {
                write!(f, "step '{step}' unavailable: {m}")
            }
            Error::Step {
                step,
                error: StepError::Unknown(m),
            } => {
                write!(f, "step '{step}' outcome unknown: {m}")
            }
            Error::Lock { key, reason } => write!(f, "lock '{key}': {reason}"),
            Error::Versioned { key, error } => write!(f, "versioned value '{key}': {error:?}"),
            Error::Transaction {
                error: StepError::Rejected(m),
            } => write!(f, "transaction aborted: {m}"),
            Error::Transaction { error } => write!(f, "transaction aborted: {error:?}"),
            Error::Conflict { key, attempts } => {
                write!(
                    f,
                    "value '{key}' kept changing: {attempts} version-checked writes lost"
                )
            }
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::Child { workflow, reason } => write!(f, "child {workflow}: {reason}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Runs `workflow` on a JSON `input`: what the [`export_workflow!`] macro expands to.
#[doc(hidden)]
pub fn run_json<I, O>(
    input: String,
    workflow: impl FnOnce(&mut Saga, I) -> Result<O, Error>,
) -> Result<String, String>
where
    I: DeserializeOwned,
    O: Serialize,
{
    let input: I = serde_json::from_str(&input).map_err(|e| format!("invalid input: {e}"))?;
    let mut saga = Saga { _private: () };
    let output = workflow(&mut saga, input).map_err(|e| e.to_string())?;
    serde_json::to_string(&output).map_err(|e| format!("output does not encode: {e}"))
}

/// The bytes of a `wasaga:manifest` section: what [`export_workflow!`] writes.
#[doc(hidden)]
pub const fn manifest_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    assert!(
        bytes.len() == N,
        "the manifest's length is its text's length"
    );
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Exports a workflow function `fn(&mut Saga, Input) -> Result<Output, Error>` as the module's
/// `run`. `Input` must implement `serde::Deserialize`, `Output` `serde::Serialize`.
///
/// Declare what the workflow uses, so that a host can check it against the workflow's grant
/// when the module is deployed (a host with grants refuses modules that declare nothing):
///
/// ```text
/// guest_sdk::export_workflow!(transfer, participants = ["ledger"], locks = ["account/"]);
/// ```
///
/// `locks` lists prefixes of the lock keys the workflow takes (`""` for any key).
#[macro_export]
macro_rules! export_workflow {
    ($workflow:path) => {
        $crate::export_workflow!(@run $workflow);
    };
    ($workflow:path, participants = [$($participant:literal),* $(,)?] $(, locks = [$($lock:literal),* $(,)?])? $(,)?) => {
        $crate::export_workflow!(@run $workflow);

        #[doc(hidden)]
        const __WASAGA_MANIFEST_TEXT: &str = concat!(
            "wasaga-manifest 1\n",
            $("participant ", $participant, "\n",)*
            $($("lock ", $lock, "\n",)*)?
        );

        // A custom section of the module: the host reads it when the module is deployed.
        #[doc(hidden)]
        #[allow(unsafe_code)]
        #[used]
        #[unsafe(link_section = "wasaga:manifest")]
        static __WASAGA_MANIFEST: [u8; __WASAGA_MANIFEST_TEXT.len()] =
            $crate::manifest_bytes(__WASAGA_MANIFEST_TEXT);
    };
    (@run $workflow:path) => {
        #[doc(hidden)]
        struct __WasagaWorkflow;

        impl $crate::bindings::Guest for __WasagaWorkflow {
            fn run(input: ::std::string::String) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                $crate::run_json(input, $workflow)
            }
        }

        $crate::bindings::export!(__WasagaWorkflow with_types_in $crate::bindings);
    };
}
