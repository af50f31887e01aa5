//! What a run's wasmtime store holds: the deny-everything WASI context, the memory limiter,
//! and the run's journal cursor (`RunLog`) plus what replay needs (`RunContext`).

use crate::shared::HostInner;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use wasaga_core::event::{CallFailure, CallSpec, Event};
use wasaga_journal::{Journal, JournalError};
use wasaga_locks::Lease;
use wasaga_participants::colocated::{self, RunAt};
use wasaga_participants::{ParticipantRequest, Route};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Called with every event once it is journaled (or buffered, for context events).
pub type Observer = Arc<dyn Fn(&str, &Event) + Send + Sync>;

/// An observer that ignores everything.
pub fn no_observer() -> Observer {
    Arc::new(|_, _| {})
}

/// The data of a run's store.
pub struct RunState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) run: RunContext,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past the run's cap and remembers that it did, so the resulting trap
/// can be reported as what it is.
pub(crate) struct MemoryLimiter {
    pub memory_bytes_max: usize,
    pub refused_bytes: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.refused_bytes = Some(desired);
            return Err(wasmtime::Error::msg(format!(
                "memory limit: growing to {desired} bytes exceeds memory_bytes_max = {}",
                self.memory_bytes_max
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Why execution stopped early, decided by the host rather than the module.
#[derive(Debug, Clone)]
pub(crate) enum Fatal {
    /// The run must be compensated for this reason.
    Failure(String),
    /// The host could not journal: the run stays unfinished and is resumed later.
    Interrupted(String),
    /// The run's first write found its id taken (a run started with that write).
    Exists,
    /// The run is not in the journal: its first write never became durable.
    NotStarted(String),
    /// Someone cancelled the run (who and why): it compensates.
    Cancelled(String),
    /// A replay that checks a module (`verifying`) reached the end of the journal at `call`:
    /// the module agreed with every journaled call before it.
    JournalEnd { call: u32 },
    /// The run waits: its wait is journaled (or buffered, to be committed now), the instance
    /// goes, and the run sleeps until `wake_at_ms` or what `check` names wakes it.
    Suspended {
        wake_at_ms: u64,
        waiting_for: String,
        check: wasaga_journal::WakeCheck,
    },
}

/// A journaled call found at a call index during replay.
#[derive(Debug, Clone)]
pub(crate) struct Replayed {
    pub first: Event,
    pub result: Option<Event>,
    /// For a two-phase commit: its decision, if one was journaled.
    pub decision: Option<Event>,
}

/// Groups a run's journal into replayable calls by call index.
pub(crate) fn replay_map(events: &[Event]) -> HashMap<u32, Replayed> {
    let mut calls = HashMap::new();
    for event in events {
        match event {
            Event::StepDone { call, .. }
            | Event::StepFailed { call, .. }
            | Event::TwoPhaseFinished { call, .. }
            | Event::WaitEnded { call, .. } => {
                if let Some(replayed) = calls.get_mut(call) {
                    let replayed: &mut Replayed = replayed;
                    replayed.result = Some(event.clone());
                }
            }
            Event::TwoPhaseDecided { call, .. } => {
                if let Some(replayed) = calls.get_mut(call) {
                    let replayed: &mut Replayed = replayed;
                    replayed.decision = Some(event.clone());
                }
            }
            other => {
                if let Some(call) = other.replayed_call() {
                    let earlier = calls.insert(
                        call,
                        Replayed {
                            first: other.clone(),
                            result: None,
                            decision: None,
                        },
                    );
                    // Call numbers are handed out once each, in order: a journal in which a
                    // call begins twice would replay one module call with another's answer.
                    assert!(
                        earlier.is_none(),
                        "the journal begins call {call} twice ({} and then {})",
                        earlier.map_or("", |e| e.first.kind()),
                        other.kind()
                    );
                }
            }
        }
    }
    calls
}

/// The module-facing state of a run: call numbering, replay, and the host's verdicts.
pub(crate) struct RunContext {
    pub host: Arc<HostInner>,
    pub log: RunLog,
    pub next_call: u32,
    pub replay: HashMap<u32, Replayed>,
    pub fatal: Option<Fatal>,
    pub step_names: HashSet<String>,
    /// The run's leases, renewed from the first acquisition until the run ends (through its
    /// compensation, which this execution hands them to).
    pub locks: RunLocks,
    /// Lock keys the module released while a compensable step it took under them could still
    /// have to be undone: the host keeps (and renews) them until the run ends.
    pub deferred: HashSet<String>,
    /// Leases taken again from the backend when a run resumed (new fencing tokens, journaled
    /// as `lock-reacquired`): replaying the module's `acquire` of such a key holds this one.
    pub reacquired: HashMap<String, Lease>,
    /// Every lease this execution held at some point (journaled or live): at the run's end
    /// all are given back to the backend, since a release the journal records may not have
    /// reached the backend before a crash.
    pub acquired: Vec<Lease>,
    /// What the run's workflow may use; `None` allows everything this host has.
    pub grant: Option<Arc<wasaga_core::limits::Grant>>,
    /// Tells the run to stop (lease lost, host shutting down).
    pub live: Arc<crate::shared::LiveRun>,
    /// `next_call` at the last epoch tick: unchanged means the module is computing.
    pub calls_at_tick: u32,
    /// Epoch ticks in a row without a host call.
    pub computing_ticks: u32,
    /// The compute slot the module holds while it computes (see `Host::modules_computing`).
    pub compute: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// Only checking a module against a journal: nothing is performed, held or written, and
    /// the execution stops where the journal ends (`Fatal::JournalEnd`).
    pub verifying: bool,
}

/// The leases a run holds and the task renewing them. It lives from the run's first
/// acquisition until the run ends: the execution hands it to completion or compensation, so
/// a run's locks outlive its compensation. Dropping it stops the renewal (the leases then
/// expire by their ttl unless released).
pub(crate) struct RunLocks {
    host: Arc<HostInner>,
    leases: Arc<std::sync::Mutex<Vec<Lease>>>,
    /// Started with the first lease: a run that takes no lock costs no task.
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl RunLocks {
    pub fn new(host: Arc<HostInner>) -> Self {
        RunLocks {
            host,
            leases: Arc::new(std::sync::Mutex::new(Vec::new())),
            renewal: None,
        }
    }

    /// Holds `lease`, in place of any earlier grant of its key (a re-acquisition by the same
    /// run replaces the grant in the backend too).
    pub fn hold(&mut self, lease: Lease) {
        {
            let mut leases = self.leases.lock().expect("lease list lock poisoned");
            leases.retain(|l| l.key != lease.key);
            leases.push(lease);
        }
        if self.renewal.is_none() {
            self.renewal = Some(tokio::spawn(crate::shared::renew(
                self.host.clone(),
                self.leases.clone(),
            )));
        }
    }

    /// Stops holding the lease on `key` and returns it, if the run holds one.
    pub fn unhold(&mut self, key: &str) -> Option<Lease> {
        let mut leases = self.leases.lock().expect("lease list lock poisoned");
        let index = leases.iter().position(|l| l.key == key)?;
        Some(leases.swap_remove(index))
    }

    /// The lease the run holds on `key`.
    pub fn get(&self, key: &str) -> Option<Lease> {
        let leases = self.leases.lock().expect("lease list lock poisoned");
        leases.iter().find(|l| l.key == key).cloned()
    }

    /// Every lease the run holds now.
    pub fn held(&self) -> Vec<Lease> {
        self.leases
            .lock()
            .expect("lease list lock poisoned")
            .clone()
    }

    /// `(key, token)` of the run's locks, which its participant calls carry.
    pub fn fencing_tokens(&self) -> Vec<(String, u64)> {
        self.leases
            .lock()
            .expect("lease list lock poisoned")
            .iter()
            .map(|l| (l.key.clone(), l.fencing_token))
            .collect()
    }
}

impl Drop for RunLocks {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

/// Whether the module's release of `key` at call `call` must wait for the run's end: some
/// step with a compensation was taken under that lock before it (a later failure of the run
/// would undo that step, and the undo must run under the same lock).
pub fn guards_compensation(journaled: &[Event], key: &str, call: u32) -> bool {
    journaled.iter().any(|e| match e {
        Event::StepIntent {
            call: c,
            compensation: Some(_),
            fencing_tokens,
            ..
        } => *c < call && fencing_tokens.iter().any(|(k, _)| k == key),
        _ => false,
    })
}

impl RunContext {
    /// Numbers the next import call and takes its journaled record, if replaying. Stops the
    /// module here, at a journal point, if the host lost the run or is shutting down.
    pub fn begin_call(&mut self) -> wasmtime::Result<(u32, Option<Replayed>)> {
        if let Some(reason) = self.host.stop_reason(&self.live) {
            self.fatal = Some(Fatal::Interrupted(reason.to_owned()));
            return Err(wasmtime::Error::msg(reason));
        }
        if let Some(reason) = self.live.cancellation() {
            return Err(self.cancelled(reason));
        }
        // A host call ends a stretch of computing: the slot goes back. Only a module that
        // computed through two ticks can hold one, so the usual call skips the lock.
        if self.computing_ticks >= 2 {
            self.compute
                .lock()
                .expect("compute slot lock poisoned")
                .take();
        }
        let call = self.next_call;
        self.next_call += 1;
        let replayed = self.replay.remove(&call);
        if self.verifying && replayed.is_none() {
            return Err(self.journal_end(call));
        }
        Ok((call, replayed))
    }

    /// Stops a checking replay at `call`, where the journal ends (or holds a call whose
    /// outcome it never learned, which a live run would now perform).
    pub fn journal_end(&mut self, call: u32) -> wasmtime::Error {
        self.fatal = Some(Fatal::JournalEnd { call });
        wasmtime::Error::msg(format!("the journal ends at call {call}"))
    }

    /// Refuses a participant the run's workflow is not granted.
    pub fn check_granted(&self, participant: &str) -> Result<(), String> {
        match &self.grant {
            Some(grant) if !grant.allows_participant(participant) => Err(format!(
                "workflow is not granted participant '{participant}' (granted: {}); grant it in the config's [workflows.<name>] participants",
                grant.participants_shown()
            )),
            _ => Ok(()),
        }
    }

    /// Checks that a step may call `call` under the run's grant.
    pub fn check_granted_action(&self, call: &CallSpec) -> Result<(), String> {
        match &self.grant {
            Some(grant) if !grant.allows_action(&call.participant, &call.action) => {
                let (participant, action) = (&call.participant, &call.action);
                Err(format!(
                    "workflow is not granted {participant}.{action} (granted: {}); grant it in the config's [workflows.<name>] participants, as '{participant}' or '{participant}.{action}'",
                    grant.participants_shown()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Records that the module's call differs from the journal and returns the trap to raise.
    pub fn diverged(&mut self, call: u32, journaled: &Event, made: String) -> wasmtime::Error {
        let journaled = describe(journaled);
        let alike = if journaled == made {
            " (the same call with other arguments: payload, compensation, ttl or branches)"
        } else {
            ""
        };
        let message = format!(
            "nondeterministic: at call {call} the journal has {journaled} but the module made {made}{alike}"
        );
        self.fatal = Some(Fatal::Failure(message.clone()));
        wasmtime::Error::msg(message)
    }

    /// Stops the module because the host cannot go on right now.
    pub fn interrupted(&mut self, error: JournalError) -> wasmtime::Error {
        let message = error.to_string();
        self.fatal = Some(match error {
            JournalError::RunExists(_) => Fatal::Exists,
            JournalError::UnknownRun(_) => Fatal::NotStarted(message.clone()),
            _ => Fatal::Interrupted(message.clone()),
        });
        wasmtime::Error::msg(message)
    }

    /// Stops the module because the run was cancelled.
    pub fn cancelled(&mut self, reason: String) -> wasmtime::Error {
        let message = format!("cancelled {reason}");
        self.fatal = Some(Fatal::Cancelled(reason));
        wasmtime::Error::msg(message)
    }

    /// Stops the module here because the run waits: the executor journals the wait, drops
    /// the instance and puts the run to sleep.
    pub fn suspend(
        &mut self,
        wake_at_ms: u64,
        wait: &wasaga_core::event::Wait,
        check: wasaga_journal::WakeCheck,
    ) -> wasmtime::Error {
        self.fatal = Some(Fatal::Suspended {
            wake_at_ms,
            waiting_for: wait.waiting_for(),
            check,
        });
        wasmtime::Error::msg("the run waits")
    }

    /// Stops the module for exceeding a limit.
    pub fn limit(&mut self, message: String) -> wasmtime::Error {
        self.fatal = Some(Fatal::Failure(format!("limit exceeded: {message}")));
        wasmtime::Error::msg(message)
    }

    /// Ends the run if a string the module handed the host (`what`, `len` bytes) is over its
    /// bound `max`: before anything of it is journaled or sent anywhere.
    pub fn check_size(
        &mut self,
        what: &str,
        len: usize,
        max: usize,
        limit: &str,
    ) -> wasmtime::Result<()> {
        if len > max {
            return Err(self.limit(format!("{what} of {len} bytes is over {limit} = {max}")));
        }
        Ok(())
    }

    /// [`RunContext::check_size`] for a participant's name and a key read or written there.
    pub fn check_key_size(&mut self, participant: &str, key: &str) -> wasmtime::Result<()> {
        // The bounds only: no copy of the whole `Limits` on every call.
        let (name_max, key_max) = (
            self.host.limits.name_bytes_max,
            self.host.limits.key_bytes_max,
        );
        self.check_size(
            "a participant name",
            participant.len(),
            name_max,
            "name_bytes_max",
        )?;
        self.check_size("a key", key.len(), key_max, "key_bytes_max")
    }

    /// [`RunContext::check_size`] for each part of a participant call.
    pub fn check_call_size(&mut self, call: &wasaga_core::event::CallSpec) -> wasmtime::Result<()> {
        let (name_max, payload_max) = (
            self.host.limits.name_bytes_max,
            self.host.limits.payload_bytes_max,
        );
        self.check_size(
            "a participant name",
            call.participant.len(),
            name_max,
            "name_bytes_max",
        )?;
        self.check_size(
            "an action name",
            call.action.len(),
            name_max,
            "name_bytes_max",
        )?;
        self.check_size(
            "a call's payload",
            call.payload.len(),
            payload_max,
            "payload_bytes_max",
        )
    }

    /// Refuses a live call that would take the journal past its cap. Events still buffered
    /// (clock, random, log, read) count: they are journaled with the next write.
    pub fn check_journal_room(&mut self, events: u32) -> wasmtime::Result<()> {
        let max = self.host.limits.journal_events_max;
        let journaled = self.log.next_seq as u64 - 1 + self.log.pending.len() as u64;
        if journaled + u64::from(events) > u64::from(max) {
            return Err(self.limit(format!(
                "the run's journal would exceed journal_events_max = {max}"
            )));
        }
        Ok(())
    }

    /// Adds a lease the run now holds.
    pub fn hold(&mut self, lease: Lease) {
        self.deferred.remove(&lease.key);
        self.acquired.push(lease.clone());
        self.locks.hold(lease);
    }

    /// Fencing tokens of the locks the run holds.
    pub fn fencing_tokens(&self) -> Vec<(String, u64)> {
        self.locks.fencing_tokens()
    }
}

/// A short human description of a journaled call, for nondeterminism reports.
fn describe(event: &Event) -> String {
    match event {
        Event::StepIntent { name, action, .. } => {
            format!("step '{name}' ({}.{})", action.participant, action.action)
        }
        Event::Clock { .. } => "a clock read".to_owned(),
        Event::Random { .. } => "a random number".to_owned(),
        Event::Log { message, .. } => format!("log {message:?}"),
        Event::LockAcquired { key, .. } | Event::LockFailed { key, .. } => {
            format!("lock acquire '{key}'")
        }
        Event::LockReleased { key, .. } => format!("lock release '{key}'"),
        Event::WaitStarted { wait, .. } => match wait {
            wasaga_core::event::Wait::Timer => "a sleep".to_owned(),
            wasaga_core::event::Wait::Signal { name } => format!("a wait for signal '{name}'"),
            wasaga_core::event::Wait::Child { run_id } => format!("a wait for child {run_id}"),
        },
        Event::ChildStarted { workflow, .. } => format!("a start of child '{workflow}'"),
        Event::TwoPhaseStarted { calls, .. } => format!("commit-all of {} calls", calls.len()),
        other => other.kind().to_owned(),
    }
}

/// A run's write cursor on the journal: the next seq, events buffered until the next commit,
/// and the observer to tell.
pub(crate) struct RunLog {
    pub journal: Journal,
    pub run_id: String,
    pub next_seq: i64,
    /// Context events (clock, random, log) wait here and commit with the next durable write:
    /// nothing outside the run has seen them before then, so losing them in a crash is
    /// harmless, and it saves an fsync each.
    pub pending: Vec<Event>,
    /// The `started` event of a run that is not in the journal yet: it is created by the
    /// run's first durable write (see `Host::start_and_drive`).
    pub unstarted: Option<Event>,
    /// Every event of the run that is durable in the journal, in order: what the journal
    /// would return, without reading it back (compensation works from it).
    pub journaled: Vec<Event>,
    pub observer: Observer,
    /// Told once the run exists: when the first write of a run started with it is durable.
    pub created: Option<tokio::sync::oneshot::Sender<()>>,
    /// Why an attempt at the run's first write failed with a database error, if one did: its
    /// answer may have been lost after the database committed it.
    first_write_failed: Option<String>,
}

impl RunLog {
    /// The cursor of a run whose durable events are `events`.
    pub fn new(journal: Journal, run_id: &str, events: Vec<Event>, observer: Observer) -> Self {
        RunLog {
            journal,
            run_id: run_id.to_owned(),
            next_seq: events.len() as i64 + 1,
            pending: Vec::new(),
            unstarted: None,
            journaled: events,
            observer,
            created: None,
            first_write_failed: None,
        }
    }

    /// `error`, for a write of this run. A run whose first write failed with a database
    /// error and which now "exists" is this run, its first write having landed with its
    /// answer lost: that is not a clash with another run (whose starter would be told to use
    /// another id, and pay twice) but a write whose outcome is not known here.
    fn mine(&mut self, error: JournalError) -> JournalError {
        match error {
            JournalError::Database(e) if self.unstarted.is_some() => {
                self.first_write_failed = Some(e.to_string());
                JournalError::Database(e)
            }
            JournalError::RunExists(run_id) => match &self.first_write_failed {
                Some(first) => JournalError::Database(wasaga_db::DbError::Statement {
                    database: "the journal".to_owned(),
                    reason: format!(
                        "an attempt at the first write of run {run_id} failed ({first}), and the run now exists: that write landed though its answer was lost"
                    ),
                }),
                None => JournalError::RunExists(run_id),
            },
            other => other,
        }
    }

    /// The cursor of a run started with its first write: `started` is journaled with it.
    pub fn unstarted(journal: Journal, run_id: &str, started: Event, observer: Observer) -> Self {
        RunLog {
            unstarted: Some(started.clone()),
            ..RunLog::new(journal, run_id, vec![started], observer)
        }
    }

    /// Records what a commit made durable: the buffered events, then `events`, in order.
    fn recorded(&mut self, next_seq: i64, events: impl IntoIterator<Item = Event>) {
        assert!(
            next_seq >= self.next_seq,
            "run {}: a write moved its journal position back, from {} to {next_seq}",
            self.run_id,
            self.next_seq
        );
        self.next_seq = next_seq;
        if let Some(started) = self.unstarted.take() {
            // The run exists from this write on.
            (self.observer)(&self.run_id, &started);
        }
        if let Some(created) = self.created.take() {
            let _ = created.send(());
        }
        self.journaled.append(&mut self.pending);
        for event in events {
            (self.observer)(&self.run_id, &event);
            self.journaled.push(event);
        }
    }

    /// Buffers a context event until the next commit.
    pub fn buffer(&mut self, event: Event) {
        (self.observer)(&self.run_id, &event);
        self.pending.push(event);
    }

    /// Durably appends the buffered events and then `events` (creating the run first if it
    /// does not exist yet, even with nothing to append).
    pub async fn commit(&mut self, events: Vec<Event>) -> Result<(), JournalError> {
        if events.is_empty() && self.pending.is_empty() && self.unstarted.is_none() {
            return Ok(());
        }
        let mut all = self.pending.clone();
        all.extend(events.iter().cloned());
        let written = match &self.unstarted {
            Some(started) => {
                self.journal
                    .create_and_append(&self.run_id, started.clone(), all)
                    .await
            }
            None => self.journal.append(&self.run_id, self.next_seq, all).await,
        };
        let next_seq = written.map_err(|e| self.mine(e))?;
        self.recorded(next_seq, events);
        Ok(())
    }

    /// Performs `request` on its participant, journaling `before` durably first and
    /// `after(outcome)` once the outcome is known. A co-located ledger commits `before`, its
    /// write and `after` in one transaction. Transient failures (and, with
    /// [`Refusals::Retried`], refusals) are retried with backoff up to `attempts` times.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &mut self,
        host: &HostInner,
        route: Route,
        request: &ParticipantRequest,
        before: Vec<Event>,
        after: After,
        attempts: u32,
        refusals: Refusals,
    ) -> Result<Result<String, CallFailure>, JournalError> {
        self.call_on(
            host, route, request, before, after, attempts, refusals, None,
        )
        .await
    }

    /// [`RunLog::call`]; with `on_server`, each attempt of a co-located ledger call is the
    /// server-side step (see [`RunLog::call_step`]).
    #[allow(clippy::too_many_arguments)]
    async fn call_on(
        &mut self,
        host: &HostInner,
        route: Route,
        request: &ParticipantRequest,
        before: Vec<Event>,
        after: After,
        attempts: u32,
        refusals: Refusals,
        on_server: Option<OnServer>,
    ) -> Result<Result<String, CallFailure>, JournalError> {
        let began = std::time::Instant::now();
        let outcome = self
            .attempts(
                host, route, request, before, after, attempts, refusals, on_server,
            )
            .await?;
        host.metrics.called(
            &request.call.participant,
            &request.call.action,
            request.undoes.is_some(),
            began,
            &outcome,
        );
        Ok(outcome)
    }

    /// The attempts of [`RunLog::call_on`], with backoff between them.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &mut self,
        host: &HostInner,
        route: Route,
        request: &ParticipantRequest,
        before: Vec<Event>,
        after: After,
        attempts: u32,
        refusals: Refusals,
        on_server: Option<OnServer>,
    ) -> Result<Result<String, CallFailure>, JournalError> {
        let attempts = attempts.max(1);
        let mut backoff_ms = host.limits.retry_backoff_ms_min;
        let mut before = before;
        if route == Route::Separate && !before.is_empty() {
            // A participant with its own durability is called only once what precedes the
            // call (its intent) is durable.
            self.commit(std::mem::take(&mut before)).await?;
        }
        // Why the last attempt at a co-located write failed before its outcome was known.
        let mut last = String::new();
        for attempt in 1..=attempts {
            // `Ok(outcome)` once the participant answered; `Err(reason)` when a co-located
            // write failed (and wrote nothing), worth trying again.
            let attempted = match (route, &on_server) {
                (Route::LedgerInJournal, Some(step)) => {
                    self.ledger_on_server(
                        host,
                        request,
                        &before,
                        &after,
                        step.call,
                        &step.account,
                        step.amount,
                    )
                    .await?
                }
                (Route::LedgerInJournal, None) => {
                    self.ledger_in_journal(request.ledger_call(), &before, &after)
                        .await?
                }
                (Route::Separate, _) => Ok(host.participants.call(request).await),
            };
            match attempted {
                Ok(outcome) => {
                    let retry = match &outcome {
                        Err(CallFailure::Rejected(_)) => refusals == Refusals::Retried,
                        Err(_) => true,
                        Ok(_) => false,
                    };
                    if !retry || attempt == attempts {
                        // A co-located write journaled the outcome with the call.
                        if route == Route::Separate
                            && let Some(event) = after(&outcome)
                        {
                            self.commit(vec![event]).await?;
                        }
                        return Ok(outcome);
                    }
                    last = outcome.err().map(|e| e.to_string()).unwrap_or_default();
                }
                Err(database) => last = database,
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(host.limits.retry_backoff_ms_max);
            }
        }
        // Only a co-located write gets here: every attempt failed before its outcome.
        let failure = CallFailure::Unavailable(format!("ledger: {last}"));
        let mut events = before;
        events.extend(after(&Err(failure.clone())));
        self.commit(events).await?;
        Ok(Err(failure))
    }

    /// [`RunLog::call`] for a saga step numbered `call`. On PostgreSQL, a debit or credit of the
    /// ledger in the journal's database takes one round trip, done by the server-side function
    /// `ledger_step`; everything else goes through [`RunLog::call`].
    #[allow(clippy::too_many_arguments)]
    pub async fn call_step(
        &mut self,
        host: &HostInner,
        route: Route,
        request: &ParticipantRequest,
        before: Vec<Event>,
        after: After,
        call: u32,
        attempts: u32,
    ) -> Result<Result<String, CallFailure>, JournalError> {
        let colocated_on_postgres = route == Route::LedgerInJournal
            && request.undoes.is_none()
            && self.journal.database().dialect() == wasaga_db::Dialect::Postgres;
        let on_server = colocated_on_postgres
            .then(|| {
                wasaga_participants::ledger::debit_or_credit(
                    &request.call.action,
                    &request.call.payload,
                )
            })
            .flatten()
            .map(|(account, amount)| OnServer {
                call,
                account,
                amount,
            });
        self.call_on(
            host,
            route,
            request,
            before,
            after,
            attempts,
            Refusals::Final,
            on_server,
        )
        .await
    }

    /// One attempt of a step on the server (see [`RunLog::call_step`]): the inner `Err` is a
    /// database failure worth retrying; the outer one a journal conflict that is not.
    #[allow(clippy::too_many_arguments)]
    async fn ledger_on_server(
        &mut self,
        host: &HostInner,
        request: &ParticipantRequest,
        before: &[Event],
        after: &After,
        call: u32,
        account: &str,
        amount: i64,
    ) -> Result<Result<Result<String, CallFailure>, String>, JournalError> {
        let mut first = self.pending.clone();
        first.extend(before.iter().cloned());
        let step = wasaga_participants::colocated::ServerStep {
            run_id: self.run_id.clone(),
            owner: self.journal.owner().to_owned(),
            next_seq: self.next_seq,
            started: self.unstarted.clone(),
            lease_ms: self.journal.run_lease_ms(),
            before: wasaga_journal::Encoded::new(&first),
            call,
            reply_bytes_max: host.limits.payload_bytes_max,
            op_id: request.op_id.clone(),
            action: request.call.action.clone(),
            request: format!("{} {}", request.call.action, request.call.payload),
            account: account.to_owned(),
            amount,
            fencing_tokens: request.fencing_tokens.clone(),
        };
        let written = host.participants.server_steps().write(step).await;
        let (outcome, next_seq) = match written.map_err(|e| self.mine(e)) {
            Ok(written) => written,
            Err(JournalError::Database(e)) => return Ok(Err(e.to_string())),
            Err(other) => return Err(other),
        };
        // The server journaled the same outcome event `after` makes here.
        let last = after(&outcome);
        self.recorded(next_seq, before.iter().cloned().chain(last));
        Ok(Ok(outcome))
    }

    /// One attempt of a co-located ledger call: the inner `Err` is a database failure worth
    /// retrying; the outer one a journal conflict that is not.
    async fn ledger_in_journal(
        &mut self,
        call: wasaga_participants::ledger::LedgerCall,
        before: &[Event],
        after: &After,
    ) -> Result<Result<Result<String, CallFailure>, String>, JournalError> {
        let database = self.journal.database().clone();
        let at = RunAt {
            run_id: self.run_id.clone(),
            owner: self.journal.owner().to_owned(),
            next_seq: self.next_seq,
            unstarted: self.unstarted.clone(),
            lease_ms: self.journal.run_lease_ms(),
        };
        // A run's first write starts with its `started` event.
        let mut encoded = wasaga_journal::Encoded::new(at.unstarted.as_slice());
        for event in self.pending.iter().chain(before) {
            encoded.push(event);
        }
        // The outcome feeds only this run's module: it need not wait for the batch's fsync.
        // Unless this write creates a run whose starter waits to be told it exists: that is
        // told outside the host, so it waits for the write to be durable.
        let durable =
            !self.journal.early_answers() || (at.unstarted.is_some() && self.created.is_some());
        let after = after.clone();
        let work = wasaga_db::work(move |tx| {
            Box::pin(
                async move { colocated::in_one_transaction(tx, &at, &call, encoded, &after).await },
            )
        });
        let written = if durable {
            database.write(work).await
        } else {
            database.write_early(work).await
        };
        let (outcome, last, next_seq) = match written.map_err(|e| self.mine(e)) {
            Ok(written) => written,
            Err(JournalError::Database(e)) => return Ok(Err(e.to_string())),
            Err(other) => return Err(other),
        };
        self.recorded(next_seq, before.iter().cloned().chain(last));
        Ok(Ok(outcome))
    }
}

/// What a participant's refusal means for a call's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusals {
    /// A refusal is the call's outcome: a step's action, a prepare, a check of an unknown
    /// outcome.
    Final,
    /// A refusal is retried like a transient failure, up to the attempts given: a
    /// compensation or a phase-two decision, which must succeed once its cause is fixed.
    Retried,
}

/// A debit or credit step done by the server-side function: its call number, account and
/// amount.
struct OnServer {
    call: u32,
    account: String,
    amount: i64,
}

pub use wasaga_participants::colocated::After;
