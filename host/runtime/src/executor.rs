//! The executor: starts runs, executes (or replays) their module, and drives each run to one of
//! its ends, completed, compensated or stuck. Compensation is performed by the host from the
//! journal, newest step first, without the module.
//!
//! A host executes only runs it owns: ones it started, or took over once their previous
//! owner's lease expired. While it drives a run it renews its lease; if it ever loses the
//! lease (it was paused for longer than the lease, say) its next journal write is refused and
//! it stops executing that run, which the new owner resumes by replay.

use crate::config::HostConfig;
use crate::engine::{Loaded, ModuleError, WorkflowEngine, module_hash};
use crate::shared::{HostInner, LiveRun};
use crate::store::{
    Fatal, MemoryLimiter, Observer, Refusals, RunContext, RunLocks, RunLog, RunState, replay_map,
};
use rand::SeedableRng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tracing::Instrument;
use wasaga_core::clock::now_ms;
use wasaga_core::crash::CrashSwitch;
use wasaga_core::event::{CallFailure, Event, RunStatus};
use wasaga_core::limits::{Grant, Limits};
use wasaga_core::steps::{Step, StepOutcome, Steps};
use wasaga_db::Database;
use wasaga_journal::{Deployed, Journal, JournalError, RunRecord, Takeover, Waiting, WakeCheck};
use wasaga_locks::{Lease, LockService};
use wasaga_participants::branch::Decided;
use wasaga_participants::{Participant, ParticipantRequest, Participants, Route};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Unfinished runs one [`Host::resume_unfinished`] takes over and drives, one after the other;
/// any more are left for the next resume (or another host's claim loop).
pub const RESUMED_AT_ONCE_MAX: u32 = 10_000;

/// Why the host could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Open(#[from] wasaga_db::OpenError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    #[error("invalid input: {0}")]
    Input(String),
    /// A deploy that the grants in the config do not allow.
    #[error("{0}")]
    NotGranted(String),
    /// A run started with its first write (`Host::start_and_drive`) found its id taken.
    #[error("run {0} already exists")]
    RunExists(String),
    /// The module returned an error before it made any durable call (it refused its input):
    /// nothing was journaled, the run does not exist, and its id may be used again.
    #[error(
        "workflow '{workflow}' refused its input: {reason}; nothing was started, fix the input and start it again (the run id is still free)"
    )]
    Rejected { workflow: String, reason: String },
    /// A run started with its first write could not make that write: it does not exist and
    /// nothing it did took effect; starting it again is safe.
    #[error(
        "run {run_id} was not started: {reason}; nothing took effect, start it again with the same run id once the cause is fixed"
    )]
    NotStarted { run_id: String, reason: String },
    /// The run could not go on (its journal could not be written); it is left unfinished and
    /// the next `wasaga resume` (or `run`) finishes it.
    #[error(
        "run {run_id} is unfinished: {reason}; it resumes with `wasaga resume` once the cause is fixed"
    )]
    Interrupted { run_id: String, reason: String },
}

/// What a caller may add to a new run beside its workflow and input.
#[derive(Debug, Default)]
pub struct NewRun {
    /// Told once the run exists (its first write is durable).
    pub created: Option<tokio::sync::oneshot::Sender<()>>,
    /// The W3C `traceparent` of the request that starts it (kept in its `started` event; an
    /// ill-formed one is dropped).
    pub traceparent: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub output: Option<String>,
    pub error: Option<String>,
    /// Set when the run has not ended but waits (durably, holding no instance): what for and
    /// until when. A host that claims it when it is due drives it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

impl From<RunRecord> for RunOutcome {
    fn from(record: RunRecord) -> Self {
        RunOutcome {
            run_id: record.run_id,
            status: record.status,
            output: record.output,
            error: record.error,
            waiting: record.waiting,
        }
    }
}

/// What [`Host::resume_unfinished`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Resumed {
    /// The runs it drove to their ends.
    pub ended: Vec<RunOutcome>,
    /// The runs that are still unfinished, and why each could not go on.
    pub unfinished: Vec<(String, String)>,
}

/// A wasaga host: engine, journal, participants and locks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Host {
    inner: Arc<HostInner>,
    /// Kept beside what runs share: a run's store holds [`HostInner`], never the engine.
    engine: Arc<WorkflowEngine>,
}

/// What one execution of a run's module starts from.
struct Execution {
    /// The journaled calls to answer, by call number.
    replay: HashMap<u32, crate::store::Replayed>,
    started_at_ms: u64,
    grant: Option<Arc<Grant>>,
    live: Arc<LiveRun>,
    /// The leases a resumed run took back before replaying, by key.
    reacquired: HashMap<String, Lease>,
}

/// Removes a run from the live set when its driving ends, however it ends.
struct LiveGuard {
    inner: Arc<HostInner>,
    run_id: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.inner
            .live
            .lock()
            .expect("live run map lock poisoned")
            .remove(&self.run_id);
    }
}

impl Host {
    /// Opens the journal (and the ledger's database, if separate), builds the engine, and
    /// starts renewing the leases of the runs this host drives.
    pub async fn open(config: &HostConfig) -> Result<Host, HostError> {
        let crash = CrashSwitch::new(config.crash_at);
        let journal_db =
            Arc::new(Database::open(&config.journal, config.pools, crash.clone()).await?);
        let (ledger_db, shares) = match &config.ledger {
            _ if config.ledger_http.is_some() => (journal_db.clone(), false),
            Some(location) if location != &config.journal => (
                Arc::new(Database::open(location, config.pools, crash).await?),
                false,
            ),
            _ => (journal_db.clone(), true),
        };
        let engine = WorkflowEngine::new(&config.limits, &config.cache_dir)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let mut others: Vec<Arc<dyn Participant>> = Vec::new();
        for (name, url) in &config.xa {
            let participant =
                wasaga_participants::xa::PostgresXa::new(name, url).map_err(HostError::Input)?;
            others.push(Arc::new(participant));
        }
        for service in config.http.iter().chain(&config.ledger_http) {
            let participant = wasaga_participants::http::HttpParticipant::new(service.clone())
                .map_err(HostError::Input)?;
            others.push(Arc::new(participant));
        }
        let locks = wasaga_locks::connect(&config.locks, &journal_db)
            .await
            .map_err(|e| HostError::Input(e.to_string()))?;
        // The owner names this process, not just the host: a host that restarts under the same
        // id must not mistake the leases of its previous, dead process for its own.
        let owner = format!(
            "{}/{}-{:04x}",
            config.host_id,
            std::process::id(),
            rand::random::<u16>()
        );
        let inner = Arc::new(HostInner {
            journal: Journal::new(journal_db.clone(), owner, config.limits.run_lease_ms)
                .with_early_answers(config.early_answers),
            participants: Participants::new(ledger_db.clone(), shares, others),
            ledger_db,
            locks,
            limits: config.limits.clone(),
            grants: config.grants.clone(),
            executions: tokio::sync::Semaphore::new(
                config.limits.concurrent_runs_max.max(1) as usize
            ),
            live: Mutex::new(HashMap::new()),
            instances: std::sync::atomic::AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stop_signal: tokio::sync::watch::channel(false).0,
            lock_owner_prefix: journal_name(&config.journal),
            compute_slots: Arc::new(tokio::sync::Semaphore::new(compute_slots_max())),
            metrics: crate::metrics::RunMetrics::default(),
            trace_runs: config.trace_runs,
            deploying: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(renew_run_leases(Arc::downgrade(&inner)));
        Ok(Host {
            inner,
            engine: Arc::new(engine),
        })
    }

    /// The wasm engine (for checks of modules).
    pub(crate) fn engine(&self) -> &Arc<WorkflowEngine> {
        &self.engine
    }

    /// One of the host's execution slots, held while a module instance lives.
    pub(crate) async fn execution_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.inner
            .executions
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Held through a checked deploy (see `HostInner::deploying`).
    pub(crate) async fn deploying(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.deploying.lock().await
    }

    /// What `workflow` is granted, if the host has grants.
    pub(crate) fn grant_of(&self, workflow: &str) -> Option<Arc<Grant>> {
        self.inner.grant(workflow)
    }

    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The database the ledger lives in.
    pub fn ledger_db(&self) -> &Arc<Database> {
        &self.inner.ledger_db
    }

    /// The host's lock service (its runs wait in line for each key).
    pub fn locks(&self) -> &dyn LockService {
        self.inner.locks.as_ref()
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Runs this host is driving right now.
    pub fn live_runs(&self) -> usize {
        self.inner
            .live
            .lock()
            .expect("live run map lock poisoned")
            .len()
    }

    /// Whether this host is driving `run_id` right now.
    pub fn is_live(&self, run_id: &str) -> bool {
        self.inner
            .live
            .lock()
            .expect("live run map lock poisoned")
            .contains_key(run_id)
    }

    /// Makes every run this host drives stop at its next journal point (shutdown). Runs
    /// stopped this way stay unfinished and resume on the next start.
    pub fn stop_runs(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        self.inner.stop_signal.send_replace(true);
    }

    /// How many modules are computing right now (running through a whole epoch tick without a
    /// host call); at most [`compute_slots_max`].
    pub fn modules_computing(&self) -> usize {
        compute_slots_max() - self.inner.compute_slots.available_permits()
    }

    /// How many modules this host is compiling right now (on blocking threads).
    pub fn modules_compiling(&self) -> usize {
        self.engine.compiling()
    }

    /// Whether [`Host::stop_runs`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Validates a module and stores it by content hash; returns the hash.
    pub async fn add_module(&self, name: &str, bytes: &[u8]) -> Result<String, HostError> {
        let hash = self.compile(bytes.to_vec()).await?.0;
        self.inner.journal.put_module(&hash, name, bytes).await?;
        Ok(hash)
    }

    /// Validates a module as a version of `workflow` (it loads, exports the workflow world,
    /// and asks only for what the workflow's grant allows), stores it and makes it the version
    /// new runs of `workflow` get. Runs already started keep the version they started on.
    pub async fn deploy(&self, workflow: &str, bytes: &[u8]) -> Result<Deployed, HostError> {
        let hash = self.check_module(workflow, bytes).await?;
        Ok(self.inner.journal.deploy(workflow, &hash, bytes).await?)
    }

    /// Validates a module as [`Host::deploy`] does and stores it by content hash, without
    /// making it a deployed version; returns the hash. For running a module file directly.
    pub async fn check_deployable(
        &self,
        workflow: &str,
        bytes: &[u8],
    ) -> Result<String, HostError> {
        let hash = self.check_module(workflow, bytes).await?;
        self.inner
            .journal
            .put_module(&hash, workflow, bytes)
            .await?;
        Ok(hash)
    }

    pub(crate) async fn check_module(
        &self,
        workflow: &str,
        bytes: &[u8],
    ) -> Result<String, HostError> {
        check_workflow_name(workflow)?;
        let (hash, manifest) = self.compile(bytes.to_vec()).await?;
        self.check_grants(workflow, &manifest)?;
        Ok(hash)
    }

    /// Validates (compiles and links) a module on a blocking thread, so that compiling, which
    /// takes tens of milliseconds of CPU, never stalls the runs and requests on the async
    /// workers; returns its hash and manifest.
    async fn compile(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(String, Option<crate::engine::Manifest>), HostError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let hash = engine.validate(&bytes)?;
            Ok((hash, crate::engine::manifest(&bytes)?))
        })
        .await
        .map_err(|e| HostError::Engine(format!("module compilation failed: {e}")))?
    }

    /// Refuses a module whose declared needs the workflow's grant does not cover.
    fn check_grants(
        &self,
        workflow: &str,
        manifest: &Option<crate::engine::Manifest>,
    ) -> Result<(), HostError> {
        let Some(grants) = &self.inner.grants else {
            return Ok(());
        };
        let Some(grant) = grants.workflows.get(workflow) else {
            return Err(HostError::NotGranted(format!(
                "workflow '{workflow}' has no grant in the config: add a [workflows.{workflow}] section listing the participants and lock prefixes it may use"
            )));
        };
        let Some(manifest) = manifest else {
            return Err(HostError::NotGranted(format!(
                "the module does not declare what it uses, so its grant cannot be checked: build it with guest-sdk's export_workflow!({}, participants = [...], locks = [...])",
                workflow.replace('-', "_")
            )));
        };
        for participant in &manifest.participants {
            if !grant.allows_some_of(participant) {
                return Err(HostError::NotGranted(format!(
                    "workflow '{workflow}' asks for participant '{participant}', which its grant does not include (granted: {}); add it to [workflows.{workflow}] participants",
                    list_or_none(&grant.participants)
                )));
            }
            self.inner
                .participants
                .exists(participant)
                .map_err(HostError::NotGranted)?;
        }
        for prefix in &manifest.lock_prefixes {
            if !grant.allows_lock(prefix) {
                return Err(HostError::NotGranted(format!(
                    "workflow '{workflow}' asks for locks under '{prefix}', which its grant does not include (granted prefixes: {}); add it to [workflows.{workflow}] lock_prefixes",
                    list_or_none(&grant.lock_prefixes)
                )));
            }
        }
        Ok(())
    }

    /// Starts a run of the stored module `module_hash` on `input` (JSON), owned by this host.
    /// Starting an existing run id again returns that run without starting anything. Returns
    /// the run id and whether it was created now.
    pub async fn start(
        &self,
        run_id: Option<String>,
        workflow: &str,
        module_hash: &str,
        input: &str,
    ) -> Result<(String, bool), HostError> {
        let (run_id, started) = self.new_run(run_id, workflow, module_hash, input, None)?;
        let created = self.inner.journal.create_run(&run_id, &started).await?;
        if created {
            self.inner.metrics.journaled(workflow, &started);
        }
        Ok((run_id, created))
    }

    /// Checks a new run's input and id; returns the id and its `started` event.
    fn new_run(
        &self,
        run_id: Option<String>,
        workflow: &str,
        module_hash: &str,
        input: &str,
        traceparent: Option<String>,
    ) -> Result<(String, Event), HostError> {
        if let Some(grants) = &self.inner.grants
            && !grants.workflows.contains_key(workflow)
        {
            return Err(HostError::NotGranted(format!(
                "workflow '{workflow}' has no grant in the config, so it may not run: add a [workflows.{workflow}] section listing the participants and lock prefixes it may use"
            )));
        }
        let max = self.inner.limits.payload_bytes_max;
        if input.len() > max {
            return Err(HostError::Input(format!(
                "input is {} bytes, over payload_bytes_max = {max}",
                input.len()
            )));
        }
        serde_json::from_str::<serde_json::Value>(input)
            .map_err(|e| HostError::Input(format!("input is not valid JSON: {e}")))?;
        let run_id = match run_id {
            Some(id) => {
                check_run_id(&id)?;
                id
            }
            None => new_run_id(),
        };
        let started = Event::Started {
            workflow: workflow.to_owned(),
            module_hash: module_hash.to_owned(),
            input: input.to_owned(),
            started_at_ms: now_ms(),
            traceparent: traceparent
                .filter(|t| crate::trace::is_traceparent(t))
                .or_else(|| self.inner.trace_runs.then(crate::trace::new_traceparent)),
        };
        Ok((run_id, started))
    }

    /// Starts a run of the active version of the deployed workflow `workflow`.
    pub async fn start_deployed(
        &self,
        run_id: Option<String>,
        workflow: &str,
        input: &str,
    ) -> Result<(String, bool), HostError> {
        let active = self.inner.journal.active(workflow).await?;
        self.start(run_id, workflow, &active.hash, input).await
    }

    /// Registers `run_id` as driven by this host until the guard drops, unless it is driven
    /// here already (`None`).
    fn go_live_alone(&self, run_id: &str) -> Option<(Arc<LiveRun>, LiveGuard)> {
        let live = Arc::new(LiveRun::default());
        {
            let mut runs = self.inner.live.lock().expect("live run map lock poisoned");
            if runs.contains_key(run_id) {
                return None;
            }
            runs.insert(run_id.to_owned(), live.clone());
        }
        let guard = LiveGuard {
            inner: self.inner.clone(),
            run_id: run_id.to_owned(),
        };
        Some((live, guard))
    }

    /// Registers `run_id` as driven by this host until the guard drops.
    fn go_live(&self, run_id: &str) -> (Arc<LiveRun>, LiveGuard) {
        let live = Arc::new(LiveRun::default());
        self.inner
            .live
            .lock()
            .expect("live run map lock poisoned")
            .insert(run_id.to_owned(), live.clone());
        let guard = LiveGuard {
            inner: self.inner.clone(),
            run_id: run_id.to_owned(),
        };
        (live, guard)
    }

    /// Drives a run this host owns to its end (or to an interruption the next resume picks
    /// up).
    pub async fn drive(&self, run_id: &str, observer: Observer) -> Result<RunOutcome, HostError> {
        let (live, _guard) = self.go_live(run_id);
        let journal = &self.inner.journal;
        let (record, events) = journal.run_with_events(run_id).await?;
        if record.status.is_terminal() {
            return Ok(record.into());
        }
        let events: Vec<Event> = events.into_iter().map(|e| e.event).collect();
        let span = match events.first() {
            Some(started) => crate::trace::run_span(run_id, started, record.version),
            None => tracing::Span::none(),
        };
        let observer = self.counted(&record.workflow, observer);
        let outcome = self
            .drive_from(record, events, observer, &live)
            .instrument(span.clone())
            .await;
        traced_end(&span, &outcome);
        outcome
    }

    /// Drives the unfinished run `record` on from its journal `events`.
    async fn drive_from(
        &self,
        record: RunRecord,
        events: Vec<Event>,
        observer: Observer,
        live: &Arc<LiveRun>,
    ) -> Result<RunOutcome, HostError> {
        let (journal, run_id) = (&self.inner.journal, record.run_id.as_str());
        let log = RunLog::new(journal.clone(), run_id, events.clone(), observer);
        if record.status == RunStatus::Compensating {
            return self.compensate(log, None, live, None).await;
        }
        // A cancelled run that is not executing (it waited, or its host died) compensates
        // from its journal, without its module.
        if let Some(reason) = record.cancel_reason {
            return self
                .compensate(log, Some(format!("cancelled {reason}")), live, None)
                .await;
        }
        self.execute_run(log, &record.workflow, &events, live).await
    }

    /// Starts a run and drives it to its end, for a caller that waits for the outcome. The
    /// run's `started` event is journaled together with its first durable write rather than
    /// by a commit of its own: until then nothing outside this call knows the run, so a host
    /// that dies before it leaves nothing behind (the caller, having no answer, starts it
    /// again). A run id that already exists is driven (or reported) as it is, like
    /// [`Host::start`] does. Fails with [`HostError::NotStarted`] if the run could not be
    /// started.
    pub async fn start_and_drive(
        &self,
        run_id: Option<String>,
        workflow: &str,
        module_hash: &str,
        input: &str,
        observer: Observer,
    ) -> Result<RunOutcome, HostError> {
        let outcome = self
            .start_first_write(
                run_id,
                workflow,
                module_hash,
                input,
                observer.clone(),
                NewRun::default(),
            )
            .await;
        match outcome {
            Err(HostError::RunExists(run_id)) => self.drive(&run_id, observer).await,
            other => other,
        }
    }

    /// [`Host::start_and_drive`], telling `new.created` once the run exists (its first write
    /// is durable), and failing with [`HostError::RunExists`] if the id is taken rather than
    /// driving that run.
    pub async fn start_first_write(
        &self,
        run_id: Option<String>,
        workflow: &str,
        module_hash: &str,
        input: &str,
        observer: Observer,
        new: NewRun,
    ) -> Result<RunOutcome, HostError> {
        let (run_id, started) =
            self.new_run(run_id, workflow, module_hash, input, new.traceparent)?;
        let span = crate::trace::run_span(&run_id, &started, None);
        let driven = async {
            let (live, _guard) = self.go_live(&run_id);
            let mut log = RunLog::unstarted(
                self.inner.journal.clone(),
                &run_id,
                started.clone(),
                self.counted(workflow, observer),
            );
            log.created = new.created;
            match self.execute_run(log, workflow, &[started], &live).await {
                Err(HostError::NotStarted { run_id, reason }) => {
                    Err(self.whether_started(run_id, reason).await)
                }
                other => other,
            }
        };
        let outcome = driven.instrument(span.clone()).await;
        traced_end(&span, &outcome);
        outcome
    }

    /// `observer`, and this host's metrics counting what the runs of `workflow` journal.
    fn counted(&self, workflow: &str, observer: Observer) -> Observer {
        let (inner, workflow) = (Arc::downgrade(&self.inner), workflow.to_owned());
        Arc::new(move |run_id: &str, event: &Event| {
            if let Some(inner) = inner.upgrade() {
                inner.metrics.journaled(&workflow, event);
            }
            observer(run_id, event);
        })
    }

    /// Registers this host's metrics into `registry`: its runs, the journal (commits, leases),
    /// the ledger's database if it is another, and the locks.
    pub fn register_metrics(&self, registry: &mut wasaga_core::metrics::Registry) {
        self.inner.metrics.register(registry);
        self.inner
            .journal
            .register_metrics(registry.sub_registry_with_label((
                std::borrow::Cow::Borrowed("database"),
                std::borrow::Cow::Borrowed("journal"),
            )));
        if !Arc::ptr_eq(&self.inner.ledger_db, self.inner.journal.database()) {
            self.inner
                .ledger_db
                .register_metrics(registry.sub_registry_with_label((
                    std::borrow::Cow::Borrowed("database"),
                    std::borrow::Cow::Borrowed("ledger"),
                )));
        }
        self.inner.locks.register_metrics(registry);
    }

    /// The error for a run whose first write failed with `reason`: a write whose answer was
    /// lost (the connection dropped after the database committed it) may have landed, so the
    /// journal is asked before the caller is told that nothing took effect. A caller who
    /// starts a run "not started" again with a new run id would otherwise pay twice.
    async fn whether_started(&self, run_id: String, reason: String) -> HostError {
        match self.inner.journal.run(&run_id).await {
            Err(JournalError::UnknownRun(_)) => HostError::NotStarted { run_id, reason },
            Ok(_) => HostError::Interrupted {
                run_id,
                reason: format!("{reason} (its first write did land: the run exists)"),
            },
            Err(e) => HostError::Interrupted {
                run_id,
                reason: format!(
                    "{reason}; whether its first write landed cannot be read now ({e}); look the run up by its id before starting it again, and start it again only with the same run id"
                ),
            },
        }
    }

    /// Checks what [`Host::start`] would check of a new run (its workflow's grant, the input's
    /// size and syntax, the run id) without writing anything.
    pub fn check_new_run(
        &self,
        run_id: Option<&str>,
        workflow: &str,
        input: &str,
    ) -> Result<(), HostError> {
        self.new_run(run_id.map(str::to_owned), workflow, "", input, None)
            .map(|_| ())
    }

    /// Executes (or replays) a run's module from its journal `events` and drives the run to
    /// its end.
    async fn execute_run(
        &self,
        log: RunLog,
        workflow: &str,
        events: &[Event],
        live: &Arc<LiveRun>,
    ) -> Result<RunOutcome, HostError> {
        let run_id = log.run_id.clone();
        let run_id = run_id.as_str();
        let mut log = log;

        let (
            Some(Event::Started {
                input,
                started_at_ms,
                ..
            }),
            Some(hash),
        ) = (events.first(), wasaga_core::event::current_module(events))
        else {
            return Err(JournalError::Corrupt {
                run_id: run_id.to_owned(),
                seq: 1,
                reason: "the first event is not `started`".to_owned(),
            }
            .into());
        };
        let loaded = match self.load(hash).await {
            Ok(loaded) => loaded,
            Err(HostError::Journal(e @ JournalError::Database(_))) => {
                return Err(stalled(&log, e.to_string()));
            }
            Err(e) => {
                return self
                    .compensate(
                        log,
                        Some(format!("module can no longer be loaded: {e}")),
                        live,
                        None,
                    )
                    .await;
            }
        };
        // A resumed run takes the locks its journal holds back before replaying, so that
        // what it does next (going on, or compensating) runs under them again.
        let reacquired = if events.len() > 1 {
            let locks = self.reacquire(&mut log, live).await?;
            locks
                .held()
                .into_iter()
                .map(|lease| (lease.key.clone(), lease))
                .collect()
        } else {
            HashMap::new()
        };
        let replay = replay_map(events);
        let replayed_calls = replay.len();
        let grant = self.inner.grant(workflow);
        let (result, mut context, stdio, refused_bytes) = self
            .execute(
                &loaded,
                &mut log,
                input,
                Execution {
                    replay,
                    started_at_ms: *started_at_ms,
                    grant,
                    live: live.clone(),
                    reacquired,
                },
            )
            .await;
        // Captured stdout/stderr is journaled once, at the end of the execution that produced
        // it, so a replay never duplicates it.
        if !stdio.is_empty() {
            context.log.buffer(Event::Log {
                call: None,
                message: stdio.clone(),
            });
        }
        let mut log = context.log;
        let cause = match (context.fatal.take(), result) {
            (Some(Fatal::Exists), _) => {
                self.release_locks(&context.acquired).await;
                return Err(HostError::RunExists(run_id.to_owned()));
            }
            (Some(Fatal::Interrupted(reason)), _) => {
                return Err(stalled(&log, reason));
            }
            (Some(Fatal::NotStarted(reason)), _) => {
                self.release_locks(&context.acquired).await;
                return Err(HostError::NotStarted {
                    run_id: run_id.to_owned(),
                    reason,
                });
            }
            (Some(Fatal::Failure(cause)), _) => cause,
            (Some(Fatal::Cancelled(reason)), _) => format!("cancelled {reason}"),
            (Some(Fatal::JournalEnd { call }), _) => {
                unreachable!("only a checking replay stops at the journal's end (call {call})")
            }
            (
                Some(Fatal::Suspended {
                    wake_at_ms,
                    waiting_for,
                    check,
                }),
                _,
            ) => {
                let mut acquired = std::mem::take(&mut context.acquired);
                acquired.extend(context.locks.held());
                drop(context.locks);
                return self
                    .suspend(log, wake_at_ms, waiting_for, check, &acquired)
                    .await;
            }
            (None, Ok(Ok(output))) => {
                let max = self.inner.limits.payload_bytes_max;
                if !context.replay.is_empty() {
                    format!(
                        "nondeterministic: the journal has {} calls the module did not make on replay ({} were journaled)",
                        context.replay.len(),
                        replayed_calls
                    )
                } else if output.len() > max {
                    format!(
                        "limit exceeded: output of {} bytes is over payload_bytes_max = {max}",
                        output.len()
                    )
                } else {
                    // Replay matched every journaled call, so the leases this execution holds
                    // and held are exactly those the journal records: no need to read it again.
                    // Deferred releases included: the journal shows them given back now.
                    let held: Vec<Lease> = context.locks.held();
                    let mut acquired = context.acquired.clone();
                    acquired.extend(context.locks.held());
                    match self.complete(&mut log, output, &held, &acquired).await {
                        // Cancelled while it finished: it compensates, under its locks still.
                        Err(Completion::Cancelled(reason)) => format!("cancelled {reason}"),
                        Ok(outcome) => return Ok(outcome),
                        Err(Completion::Stop(e)) => return Err(e),
                    }
                }
            }
            // Nothing the run did is durable yet (it is created by its first write): an error
            // now is the module refusing its input, and leaves nothing behind.
            (None, Ok(Err(message))) if log.unstarted.is_some() => {
                drop(context.locks);
                self.release_locks(&context.acquired).await;
                return Err(HostError::Rejected {
                    workflow: workflow.to_owned(),
                    reason: message,
                });
            }
            (None, Ok(Err(message))) => format!("workflow failed: {message}"),
            (None, Err(trap)) => self.classify_trap(&trap, &stdio, refused_bytes),
        };
        // Make sure what the module did is durable before compensating it.
        if let Err(e) = log.commit(Vec::new()).await {
            return Err(journal_stalled(&log, e));
        }
        // The run's locks go on being held and renewed through its compensation.
        self.compensate(log, Some(cause), live, Some(context.locks))
            .await
    }

    pub async fn replay_only(&self, run_id: &str) -> Result<(Duration, Duration, u32), HostError> {
        let events: Vec<Event> = self
            .inner
            .journal
            .events(run_id)
            .await?
            .into_iter()
            .map(|e| e.event)
            .collect();
        let Some(Event::Started {
            module_hash,
            input,
            started_at_ms,
            ..
        }) = events.first()
        else {
            return Err(HostError::Input(format!(
                "run {run_id} has no started event"
            )));
        };
        let loaded = self.load(module_hash).await?;
        let replay = replay_map(&events);
        let calls = replay.len() as u32;
        let mut log = RunLog::new(
            self.inner.journal.clone(),
            run_id,
            events.clone(),
            crate::store::no_observer(),
        );
        let _slot = self
            .inner
            .executions
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let began = std::time::Instant::now();
        let (mut store, _, _) = self.new_store(
            &mut log,
            replay,
            *started_at_ms,
            None,
            Arc::new(LiveRun::default()),
            HashMap::new(),
        );
        let workflow = loaded
            .instantiate_async(&mut store)
            .await
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let instantiated = began.elapsed();
        let result = workflow.call_run(&mut store, input).await;
        let total = began.elapsed();
        match result {
            Ok(Ok(_)) | Ok(Err(_)) if store.data().run.fatal.is_none() => {
                Ok((instantiated, total - instantiated, calls))
            }
            _ => Err(HostError::Engine(format!(
                "replay of {run_id} did not follow its journal"
            ))),
        }
    }

    /// Resolves the `postgres-xa` transactions left prepared by runs that have ended (a host
    /// died between a run's decision and its branches' end, say): committed where the journal
    /// holds a commit decision, rolled back otherwise. A run still unfinished is left alone:
    /// its owner, live or the one that takes it over, may still be preparing its branches and
    /// resolves them itself when it drives the run (only the owner of a run resolves its
    /// prepared transactions). Ids of runs this journal does not know are another journal's.
    /// Returns how many transactions it resolved, and why it could not look at or resolve
    /// some (a participant that is down: they wait for the next sweep, which loses nothing).
    pub async fn sweep_in_doubt(&self) -> Result<(usize, Vec<String>), HostError> {
        let mut resolved = 0;
        let mut skipped = Vec::new();
        for participant in self.inner.participants.others() {
            let xids = match participant.in_doubt().await {
                Ok(xids) => xids,
                Err(e) => {
                    skipped.push(format!(
                        "participant {}: cannot list its prepared transactions ({e}); those of ended runs are resolved at the next start",
                        participant.name()
                    ));
                    continue;
                }
            };
            for xid in xids {
                let Some((run_id, call)) = wasaga_participants::op_key::of_transaction(&xid) else {
                    continue;
                };
                let (record, events) = match self.inner.journal.run_with_events(run_id).await {
                    Ok(found) => found,
                    Err(JournalError::UnknownRun(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                if !record.status.is_terminal() {
                    continue;
                }
                let commit = events.iter().any(|e| {
                    matches!(e.event, Event::TwoPhaseDecided { call: c, commit: true, .. } if c == call)
                });
                let action = if commit {
                    "commit-prepared"
                } else {
                    "abort-prepared"
                };
                let decided = Decided {
                    xid: xid.clone(),
                    branches: None,
                };
                let request = ParticipantRequest {
                    run_id: run_id.to_owned(),
                    // The key the run's own decision uses: a service that already finished
                    // it answers as before.
                    op_id: format!(
                        "{xid}/{}/{}",
                        participant.name(),
                        if commit { "commit" } else { "abort" }
                    ),
                    undoes: None,
                    fencing_tokens: Vec::new(),
                    call: wasaga_core::event::CallSpec {
                        participant: participant.name().to_owned(),
                        action: action.to_owned(),
                        payload: serde_json::to_string(&decided)
                            .expect("a decision always serializes"),
                    },
                    traceparent: None,
                };
                match participant.call(&request).await {
                    Ok(_) => resolved += 1,
                    Err(e) => skipped.push(format!(
                        "participant {}: cannot finish transaction {xid} ({e}); it is resolved at the next start",
                        participant.name()
                    )),
                }
            }
        }
        Ok((resolved, skipped))
    }

    /// Takes a `stuck` run up again once an operator has fixed what made its compensation
    /// fail: compensation resumes where it stopped (compensations already done are not
    /// repeated) and the run ends `compensated`, or `stuck` again with the new reason.
    pub async fn retry_stuck(
        &self,
        run_id: &str,
        observer: Observer,
    ) -> Result<RunOutcome, HostError> {
        let record = self.inner.journal.run(run_id).await?;
        if record.status != RunStatus::Stuck {
            return Err(HostError::Input(format!(
                "run {run_id} is {}, not stuck; only stuck runs can be retried",
                record.status
            )));
        }
        // Two retries of one run on this host: the second is told so, not let in (the claim
        // below cannot tell them apart: both are this host).
        let Some((live, _guard)) = self.go_live_alone(run_id) else {
            return Err(HostError::Input(format!(
                "run {run_id} is being retried on this host right now"
            )));
        };
        if !self.inner.journal.claim_stuck(run_id).await? {
            let now = self.inner.journal.run(run_id).await?;
            return Err(HostError::Input(match now.status {
                RunStatus::Stuck => format!(
                    "run {run_id} is being retried by another host ({}) right now; if that host has stopped, retry it again once its lease lapses (within {} ms)",
                    now.owner.as_deref().unwrap_or("unknown"),
                    self.inner.limits.run_lease_ms
                ),
                status => format!("run {run_id} is {status} now: another retry took it up"),
            }));
        }
        let events: Vec<Event> = self
            .inner
            .journal
            .events(run_id)
            .await?
            .into_iter()
            .map(|e| e.event)
            .collect();
        let cause = last_cause(&events);
        let span = match events.first() {
            Some(started) => crate::trace::run_span(run_id, started, record.version),
            None => tracing::Span::none(),
        };
        let observer = self.counted(&record.workflow, observer);
        let log = RunLog::new(self.inner.journal.clone(), run_id, events, observer);
        let outcome = self
            .compensate(log, Some(cause), &live, None)
            .instrument(span.clone())
            .await;
        traced_end(&span, &outcome);
        outcome
    }

    /// Takes over the unfinished runs no live host holds (or, with [`Takeover::Every`], every
    /// unfinished run: for a process that knows every earlier one is dead), at most
    /// [`RESUMED_AT_ONCE_MAX`], and drives them to
    /// their ends, one after the other. A run that cannot go on now (its lock is taken, a
    /// database is away) stays unfinished and is reported in [`Resumed::unfinished`]; the
    /// others are still driven.
    pub async fn resume_unfinished(
        &self,
        observer: Observer,
        takeover: Takeover,
    ) -> Result<Resumed, HostError> {
        self.resume_unfinished_showing(observer, takeover, &|_, _| {})
            .await
    }

    /// [`Host::resume_unfinished`], telling `progress(done, claimed)` before the first run
    /// and after each one (for a progress bar).
    pub async fn resume_unfinished_showing(
        &self,
        observer: Observer,
        takeover: Takeover,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Resumed, HostError> {
        let mut resumed = Resumed::default();
        let claimed = self
            .inner
            .journal
            .claim(RESUMED_AT_ONCE_MAX, takeover)
            .await?;
        let total = claimed.len();
        progress(0, total);
        for (done, run_id) in claimed.into_iter().enumerate() {
            match self.drive(&run_id, observer.clone()).await {
                Ok(outcome) => resumed.ended.push(outcome),
                Err(e) => resumed.unfinished.push((run_id, e.to_string())),
            }
            progress(done + 1, total);
        }
        Ok(resumed)
    }

    /// Claims up to `limit` unfinished runs that no live host holds, for this host to drive.
    pub async fn claim(&self, limit: u32) -> Result<Vec<String>, HostError> {
        Ok(self.inner.journal.claim(limit, Takeover::Expired).await?)
    }

    /// Gives up this host's leases on unfinished runs (after [`Host::stop_runs`] and once
    /// its runs have stopped), so they resume at once elsewhere or on the next start.
    pub async fn release_runs(&self) -> Result<u64, HostError> {
        Ok(self.inner.journal.release_leases().await?)
    }

    async fn load(&self, hash: &str) -> Result<Loaded, HostError> {
        if let Some(loaded) = self.engine.cached(hash) {
            return Ok(loaded);
        }
        let bytes = self.inner.journal.module_bytes(hash).await?;
        let engine = self.engine.clone();
        let hash = hash.to_owned();
        // Compiling a module the cache lacks is CPU work: off the async workers.
        tokio::task::spawn_blocking(move || engine.load(&hash, &bytes))
            .await
            .map_err(|e| HostError::Engine(format!("module compilation failed: {e}")))?
            .map_err(HostError::from)
    }

    async fn execute(
        &self,
        loaded: &Loaded,
        log: &mut RunLog,
        input: &str,
        run: Execution,
    ) -> (
        wasmtime::Result<Result<String, String>>,
        RunContext,
        String,
        Option<usize>,
    ) {
        let _slot = self
            .inner
            .executions
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let (mut store, stdout, stderr) = self.new_store(
            log,
            run.replay,
            run.started_at_ms,
            run.grant,
            run.live,
            run.reacquired,
        );
        self.inner.instances.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let workflow = loaded.instantiate_async(&mut store).await?;
            workflow.call_run(&mut store, input).await
        }
        .await;
        let state = store.into_data();
        self.inner.instances.fetch_sub(1, Ordering::Relaxed);
        // A module that ended while computing gives its compute slot back now, not once its
        // compensation (which may retry for a while) is over.
        state
            .run
            .compute
            .lock()
            .expect("compute slot lock poisoned")
            .take();
        let mut stdio = String::from_utf8_lossy(&stdout.contents()).into_owned();
        stdio.push_str(&String::from_utf8_lossy(&stderr.contents()));
        (
            result,
            state.run,
            stdio.trim_end().to_owned(),
            state.limiter.refused_bytes,
        )
    }

    /// A store for one execution of a run: deny-everything WASI with frozen clocks and seeded
    /// randomness, the memory limiter, the epoch deadline, and the run's context (taking over
    /// `log`'s cursor).
    pub(crate) fn new_store(
        &self,
        log: &mut RunLog,
        replay: std::collections::HashMap<u32, crate::store::Replayed>,
        started_at_ms: u64,
        grant: Option<Arc<Grant>>,
        live: Arc<LiveRun>,
        reacquired: HashMap<String, Lease>,
    ) -> (Store<RunState>, MemoryOutputPipe, MemoryOutputPipe) {
        let limits = &self.inner.limits;
        let stdout = MemoryOutputPipe::new(limits.payload_bytes_max);
        let stderr = MemoryOutputPipe::new(limits.payload_bytes_max);
        // WASI's own clocks and randomness are frozen and seeded from the journal's run data,
        // so a module reading them behaves identically on replay. Journaled time and
        // randomness come through the `context` interface.
        let seed = seed_of(&log.run_id);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenClock {
                since_epoch: Duration::from_millis(started_at_ms),
            })
            .monotonic_clock(FrozenClock {
                since_epoch: Duration::ZERO,
            })
            .secure_random(rand::rngs::StdRng::seed_from_u64(seed))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(seed ^ 1))
            .insecure_random_seed(u128::from(seed))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let placeholder = RunLog::new(
            log.journal.clone(),
            &log.run_id,
            Vec::new(),
            log.observer.clone(),
        );
        let context = RunContext {
            host: self.inner.clone(),
            log: std::mem::replace(log, placeholder),
            next_call: 0,
            replay,
            fatal: None,
            step_names: HashSet::new(),
            locks: RunLocks::new(self.inner.clone()),
            deferred: HashSet::new(),
            reacquired,
            acquired: Vec::new(),
            grant,
            live,
            calls_at_tick: 0,
            computing_ticks: 0,
            compute: Arc::new(std::sync::Mutex::new(None)),
            verifying: false,
        };
        let state = RunState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                memory_bytes_max: limits.memory_bytes_max,
                refused_bytes: None,
            },
            run: context,
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|state| &mut state.limiter);
        // Every epoch tick the module yields to the runtime, so a module that computes (or
        // spins) never holds an async worker for longer than a tick: other runs, lease and
        // lock renewals and HTTP requests go on. Once its wall-clock deadline has passed, the
        // tick traps instead.
        let deadline =
            std::time::Instant::now() + Duration::from_millis(limits.run_duration_ms_max);
        store.set_epoch_deadline(1);
        // A module that made no host call for two ticks running is computing: it goes on
        // only with one of the host's few compute slots, and for one tick at a time (the slots
        // pass round the computing modules in turn, and go back at a host call), so spinning
        // modules queue for the slots instead of sharing the workers with everything else.
        // One tick of computing is free: a module that works in host calls never waits.
        store.epoch_deadline_callback(move |mut ctx| {
            if std::time::Instant::now() >= deadline {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            let run = &mut ctx.data_mut().run;
            // A cancelled run stops computing at once.
            if let Some(reason) = run.live.cancellation() {
                run.fatal = Some(Fatal::Cancelled(reason));
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            if run.next_call != run.calls_at_tick {
                run.calls_at_tick = run.next_call;
                run.computing_ticks = 0;
                return Ok(wasmtime::UpdateDeadline::Yield(1));
            }
            run.computing_ticks += 1;
            if run.computing_ticks < 2 {
                return Ok(wasmtime::UpdateDeadline::Yield(1));
            }
            let slot = run.compute.clone();
            // The slot this module used for the last tick goes to the next in line.
            slot.lock().expect("compute slot lock poisoned").take();
            let slots = run.host.compute_slots.clone();
            let until = tokio::time::Instant::from_std(deadline);
            Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    if let Ok(Ok(permit)) =
                        tokio::time::timeout_at(until, slots.acquire_owned()).await
                    {
                        *slot.lock().expect("compute slot lock poisoned") = Some(permit);
                    }
                }),
            ))
        });
        (store, stdout, stderr)
    }

    fn classify_trap(
        &self,
        trap: &wasmtime::Error,
        stdio: &str,
        refused_bytes: Option<usize>,
    ) -> String {
        let limits = &self.inner.limits;
        if let Some(bytes) = refused_bytes {
            return format!(
                "memory limit exceeded: the module tried to grow its memory to {bytes} bytes, over memory_bytes_max = {}",
                limits.memory_bytes_max
            );
        }
        if let Some(wasmtime::Trap::Interrupt) = trap.downcast_ref::<wasmtime::Trap>() {
            return format!(
                "deadline exceeded: the module ran longer than run_duration_ms_max = {} ms",
                limits.run_duration_ms_max
            );
        }
        if let Some((_, panic)) = stdio.split_once("panicked at ") {
            let mut lines = panic.lines();
            let location = lines.next().unwrap_or_default().trim_end_matches(':');
            let message = lines.next().unwrap_or_default();
            return format!("module panicked at {location}: {message}");
        }
        let trap = format!("{trap:#}");
        format!(
            "module trapped: {}",
            trap.lines().next().unwrap_or("unknown trap")
        )
    }

    /// Journals the run's completion and gives its locks back; `Cancelled` if someone
    /// cancelled the run before (the journal refuses to complete it, and nothing was written).
    async fn complete(
        &self,
        log: &mut RunLog,
        output: String,
        held: &[Lease],
        acquired: &[Lease],
    ) -> Result<RunOutcome, Completion> {
        let run_id = log.run_id.clone();
        let mut events = release_events(held);
        events.push(Event::Completed {
            output: output.clone(),
        });
        if let Err(e) = log.commit(events).await {
            if let JournalError::Cancelled { reason, .. } = e {
                return Err(Completion::Cancelled(reason));
            }
            if let JournalError::RunExists(_) = e {
                self.release_locks(acquired).await;
            }
            return Err(Completion::Stop(journal_stalled(log, e)));
        }
        self.release_locks(acquired).await;
        Ok(RunOutcome {
            run_id,
            status: RunStatus::Completed,
            output: Some(output),
            error: None,
            waiting: None,
        })
    }

    /// Compensates a run from its journal: every completed step (and every step whose outcome
    /// is unknown and turns out to have applied) is undone, newest first, by the host.
    /// `cause` is given when the run starts compensating now; `None` continues a
    /// compensation that was under way.
    async fn compensate(
        &self,
        mut log: RunLog,
        cause: Option<String>,
        live: &LiveRun,
        locks: Option<RunLocks>,
    ) -> Result<RunOutcome, HostError> {
        let run_id = log.run_id.clone();
        let interrupted = |e: JournalError| HostError::Interrupted {
            run_id: run_id.clone(),
            reason: e.to_string(),
        };
        if let Some(cause) = cause
            && let Err(e) = log.commit(vec![Event::Compensating { cause }]).await
        {
            return Err(journal_stalled(&log, e));
        }
        // Compensation runs under the run's locks: the execution's own, still renewed, or,
        // for a run taken up again, the same keys taken back from the backend first.
        let locks = match locks {
            Some(locks) => locks,
            None => self.reacquire(&mut log, live).await?,
        };
        // Transactions left in doubt end first: decided ones are finished, undecided ones
        // aborted (presumed abort), so that no reserve stays held for a compensated run.
        // The log holds every durable event of the run: no need to read the journal back.
        let events: Vec<Event> = log.journaled.clone();
        for (call, xid, calls, known) in in_doubt(&events) {
            let _ended = crate::two_phase::drive(&self.inner, &mut log, call, &xid, &calls, known)
                .await
                .map_err(|reason| HostError::Interrupted {
                    run_id: run_id.clone(),
                    reason,
                })?;
        }
        let cause = last_cause(&events);
        // What compensation cannot undo is named in the run's outcome, never passed over:
        // committed transactions (a commit is final) and steps without a compensation.
        let mut not_undone = committed_transactions(&log.journaled);
        for step in Steps::of(&events).into_vec().into_iter().rev() {
            if step.compensated {
                continue;
            }
            if let Some(reason) = self.inner.stop_reason(live) {
                return Err(HostError::Interrupted {
                    run_id: run_id.clone(),
                    reason: reason.to_owned(),
                });
            }
            let op_id = wasaga_participants::op_key::step(&run_id, &step.name);
            let (name, action) = (&step.name, &step.action);
            let mut outcome = step.outcome;
            if outcome == StepOutcome::Unknown {
                if step.compensation.is_none() {
                    // Nothing could undo it, so learning its outcome now would only risk
                    // applying it: leave it, and say so in the run's outcome.
                    not_undone.push(format!(
                        "step '{name}' ({}.{}) may have applied (its outcome is unknown) and has no compensation",
                        action.participant, action.action
                    ));
                    continue;
                }
                outcome = self.resolve_unknown(&mut log, &step, &op_id).await?;
            }
            if outcome == StepOutcome::Failed {
                continue;
            }
            let Some(compensation) = step.compensation.clone() else {
                not_undone.push(format!(
                    "step '{name}' ({}.{}) applied and has no compensation",
                    action.participant, action.action
                ));
                continue;
            };
            if let Err(reason) = self
                .undo(&mut log, &step, compensation, op_id, &locks)
                .await?
            {
                return self.stuck(log, reason).await;
            }
        }
        let cause = if not_undone.is_empty() {
            cause
        } else {
            format!("{cause}; not undone: {}", not_undone.join("; "))
        };
        let owner = self.inner.lock_owner(&run_id);
        let (mut events, mut leases) = held_leases(&owner, &log.journaled);
        events.push(Event::Compensated {
            cause: cause.clone(),
        });
        log.commit(events).await.map_err(interrupted)?;
        leases.extend(locks.held());
        drop(locks);
        self.release_locks(&leases).await;
        Ok(RunOutcome {
            run_id,
            status: RunStatus::Compensated,
            output: None,
            error: Some(cause),
            waiting: None,
        })
    }

    /// Learns whether a step whose outcome is unknown applied, by calling its action again
    /// under the same idempotency key: the participant answers what the first call did. A
    /// step whose participant cannot be reached now stays unknown (its undo then fences it).
    async fn resolve_unknown(
        &self,
        log: &mut RunLog,
        step: &Step,
        op_id: &str,
    ) -> Result<StepOutcome, HostError> {
        let Ok(route) = self.inner.participants.route(&step.action) else {
            return Ok(StepOutcome::Unknown);
        };
        let span = crate::trace::call_span(
            crate::trace::CallKind::Resolve,
            &step.name,
            &step.action,
            step.call,
        );
        let request = ParticipantRequest {
            run_id: log.run_id.clone(),
            op_id: op_id.to_owned(),
            undoes: None,
            fencing_tokens: step.fencing_tokens.clone(),
            call: step.action.clone(),
            traceparent: span.in_scope(|| crate::trace::current_traceparent(log.journaled.first())),
        };
        let call = step.call;
        let after: crate::store::After = Arc::new(move |o: &Result<String, CallFailure>| {
            Some(Event::StepResolved {
                call,
                outcome: o.clone(),
            })
        });
        let retries = self.inner.limits.step_retries_max;
        let resolved = self
            .compensation_call(log, route, &request, after, retries, Refusals::Final)
            .instrument(span.clone())
            .await?;
        crate::trace::call_ended(&span, &resolved);
        Ok(match resolved {
            Ok(_) => StepOutcome::Done,
            Err(CallFailure::Unknown(_)) => StepOutcome::Unknown,
            Err(_) => StepOutcome::Failed,
        })
    }

    /// A participant call compensation makes, with nothing journaled before it; a journal
    /// write that fails stops the run here, to be resumed.
    async fn compensation_call(
        &self,
        log: &mut RunLog,
        route: Route,
        request: &ParticipantRequest,
        after: crate::store::After,
        retries: u32,
        refusals: Refusals,
    ) -> Result<Result<String, CallFailure>, HostError> {
        let run_id = log.run_id.clone();
        log.call(
            &self.inner,
            route,
            request,
            Vec::new(),
            after,
            retries,
            refusals,
        )
        .await
        .map_err(interrupted(run_id))
    }

    /// Undoes a step that applied (or may have) with `compensation`, carrying the fencing
    /// tokens of the locks the compensation runs under. `Ok(Err(reason))` when the undo
    /// cannot run or keeps being refused: the run is then parked as stuck.
    async fn undo(
        &self,
        log: &mut RunLog,
        step: &Step,
        compensation: wasaga_core::event::CallSpec,
        op_id: String,
        locks: &RunLocks,
    ) -> Result<Result<(), String>, HostError> {
        let name = &step.name;
        let route = match self.inner.participants.route(&compensation) {
            Ok(route) => route,
            Err(reason) => {
                return Ok(Err(format!(
                    "compensation of step '{name}' cannot run: {reason}"
                )));
            }
        };
        let span = crate::trace::call_span(
            crate::trace::CallKind::Compensation,
            name,
            &compensation,
            step.call,
        );
        let request = ParticipantRequest {
            run_id: log.run_id.clone(),
            op_id: wasaga_participants::op_key::undo(&op_id),
            // An unknown outcome that could not be resolved is undone with tombstone
            // semantics: the participant undoes it if it applied and fences it otherwise.
            undoes: Some(op_id),
            fencing_tokens: locks.fencing_tokens(),
            traceparent: span.in_scope(|| crate::trace::current_traceparent(log.journaled.first())),
            call: compensation,
        };
        let call = step.call;
        let after: crate::store::After = Arc::new(move |o: &Result<String, CallFailure>| match o {
            Ok(output) => Some(Event::CompensationDone {
                call,
                output: output.clone(),
            }),
            Err(_) => None,
        });
        let retries = self.inner.limits.compensation_retries_max;
        let result = self
            .compensation_call(log, route, &request, after, retries, Refusals::Retried)
            .instrument(span.clone())
            .await?;
        crate::trace::call_ended(&span, &result);
        Ok(result.map(|_| ()).map_err(|failure| {
            format!("compensation of step '{name}' failed {retries} times, last: {failure}")
        }))
    }

    async fn stuck(&self, mut log: RunLog, reason: String) -> Result<RunOutcome, HostError> {
        let run_id = log.run_id.clone();
        log.commit(vec![Event::Stuck {
            reason: reason.clone(),
        }])
        .await
        .map_err(|e| HostError::Interrupted {
            run_id: run_id.clone(),
            reason: e.to_string(),
        })?;
        // A stuck run keeps its locks: whatever they protect is in an unknown state until an
        // operator resolves it.
        Ok(RunOutcome {
            run_id,
            status: RunStatus::Stuck,
            output: None,
            error: Some(reason),
            waiting: None,
        })
    }

    /// Takes back, for a run resumed from its journal, every lock the journal says it holds
    /// (including those whose release was deferred to the run's end), each with a new fencing
    /// token that is journaled (`lock-reacquired`) before the run goes on. A lock another run
    /// holds now is waited for up to `lock_wait_ms_max`; if it stays taken the run is left
    /// unfinished, to be taken up again later, rather than go on without it.
    async fn reacquire(&self, log: &mut RunLog, live: &LiveRun) -> Result<RunLocks, HostError> {
        let mut locks = RunLocks::new(self.inner.clone());
        let wanted = journal_holds(&log.journaled);
        if wanted.is_empty() {
            return Ok(locks);
        }
        let owner = self.inner.lock_owner(&log.run_id);
        let wait_ms = self.inner.limits.lock_wait_ms_max;
        let mut events = Vec::new();
        for (key, ttl_ms) in wanted {
            let acquired = tokio::select! {
                acquired = self.inner.locks.acquire(&key, &owner, ttl_ms, wait_ms) => acquired,
                () = self.inner.stopped() => {
                    return Err(stalled(log, "the host is shutting down".to_owned()));
                }
                () = live.lost() => {
                    return Err(stalled(log, "another host took the run over".to_owned()));
                }
            };
            match acquired {
                Ok(lease) => {
                    events.push(Event::LockReacquired {
                        key: lease.key.clone(),
                        ttl_ms,
                        fencing_token: lease.fencing_token,
                        expires_at_ms: lease.expires_at_ms,
                    });
                    locks.hold(lease);
                }
                Err(e) => {
                    let held = locks.held();
                    drop(locks);
                    self.release_locks(&held).await;
                    return Err(stalled(
                        log,
                        format!("it must hold lock '{key}' again before it goes on: {e}"),
                    ));
                }
            }
        }
        if let Err(e) = log.commit(events).await {
            let held = locks.held();
            drop(locks);
            self.release_locks(&held).await;
            return Err(journal_stalled(log, e));
        }
        Ok(locks)
    }

    /// Puts a run whose module began a wait to sleep: its buffered events (the wait among
    /// them) become durable, its leases go back to the backend without a journal entry (as
    /// after a crash: the journal still holds them, and the run takes them back when it
    /// resumes), and it gives up its lease on the run until it is due.
    async fn suspend(
        &self,
        mut log: RunLog,
        wake_at_ms: u64,
        waiting_for: String,
        check: WakeCheck,
        leases: &[Lease],
    ) -> Result<RunOutcome, HostError> {
        if let Err(e) = log.commit(Vec::new()).await {
            self.release_locks(leases).await;
            return Err(journal_stalled(&log, e));
        }
        self.release_locks(leases).await;
        let journal = &self.inner.journal;
        let sleeping = journal
            .suspend(
                &log.run_id,
                log.next_seq,
                wake_at_ms,
                waiting_for.clone(),
                check,
            )
            .await
            .map_err(|e| stalled(&log, e.to_string()))?;
        Ok(RunOutcome {
            run_id: log.run_id.clone(),
            status: RunStatus::Running,
            output: None,
            error: None,
            waiting: Some(Waiting {
                waiting_for,
                wake_at_ms: if sleeping { wake_at_ms } else { 0 },
            }),
        })
    }

    /// Asks `run_id` (and its unfinished children) to stop and compensate: a run executing
    /// here stops at once, one executing elsewhere when that host next renews its lease, a
    /// waiting one is woken for it. `by` and `reason` end up in the run's outcome.
    pub async fn cancel(
        &self,
        run_id: &str,
        by: &str,
        reason: &str,
    ) -> Result<wasaga_journal::Cancelled, HostError> {
        // Shown to operators in terminals and the console: bounded, and no control characters
        // (a newline or an escape sequence could forge lines of `runs show`).
        // Bidirectional overrides and isolates too: they make a reason read as another.
        let hidden = |c: char| {
            c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        };
        for (what, text, max) in [("by", by, 128), ("reason", reason, 1_024)] {
            if text.len() > max || text.chars().any(hidden) {
                return Err(HostError::Input(format!(
                    "a cancellation's {what} must be at most {max} bytes without control or bidirectional-override characters"
                )));
            }
        }
        let text = if reason.is_empty() {
            format!("by {by}")
        } else {
            format!("by {by}: {reason}")
        };
        let cancelled = self.inner.journal.cancel(run_id, &text).await?;
        if let wasaga_journal::Cancelled::Requested { children } = &cancelled {
            let live = self.inner.live.lock().expect("live run map lock poisoned");
            for id in std::iter::once(run_id).chain(children.iter().map(String::as_str)) {
                if let Some(run) = live.get(id) {
                    run.cancel(&text);
                }
            }
        }
        Ok(cancelled)
    }

    /// Keeps a signal for `run_id` (see [`Journal::signal`]), refusing a payload that is not
    /// JSON or over `payload_bytes_max`, and a name over `name_bytes_max`.
    pub async fn signal(
        &self,
        run_id: &str,
        name: &str,
        signal_id: Option<&str>,
        payload: &str,
        sent_by: &str,
    ) -> Result<wasaga_journal::Signalled, HostError> {
        let limits = &self.inner.limits;
        if name.is_empty() || name.len() > limits.name_bytes_max {
            return Err(HostError::Input(format!(
                "a signal name must be 1 to {} bytes",
                limits.name_bytes_max
            )));
        }
        if payload.len() > limits.payload_bytes_max {
            return Err(HostError::Input(format!(
                "the signal's payload is {} bytes, over payload_bytes_max = {}",
                payload.len(),
                limits.payload_bytes_max
            )));
        }
        serde_json::from_str::<serde_json::Value>(payload).map_err(|e| {
            HostError::Input(format!("the signal's payload is not valid JSON: {e}"))
        })?;
        let signal_id = match signal_id {
            Some(id) if id.is_empty() || id.len() > limits.key_bytes_max => {
                return Err(HostError::Input(format!(
                    "a signal_id must be 1 to {} bytes",
                    limits.key_bytes_max
                )));
            }
            Some(id) => id.to_owned(),
            None => format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
        };
        Ok(self
            .inner
            .journal
            .signal(
                run_id,
                name,
                &signal_id,
                payload,
                sent_by,
                limits.signals_per_run_max,
            )
            .await?)
    }

    /// Module instances alive in this host now. A waiting run holds none.
    pub fn live_instances(&self) -> usize {
        self.inner.instances.load(Ordering::Relaxed)
    }

    async fn release_locks(&self, leases: &[Lease]) {
        for lease in leases {
            // A failed release only delays the next holder until the lease expires.
            let _ = self.inner.locks.release(lease).await;
        }
    }
}

/// The error for a run that cannot go on now: resumable later once it is in the journal, not
/// started at all before that.
/// Why a run's completion was not journaled.
enum Completion {
    /// Someone cancelled the run first: it compensates.
    Cancelled(String),
    /// The run stops here (its journal cannot be written now); it resumes later.
    Stop(HostError),
}

/// Records on `span` how a drive of its run ended.
fn traced_end(span: &tracing::Span, outcome: &Result<RunOutcome, HostError>) {
    crate::trace::ended(
        span,
        match outcome {
            Ok(o) => Ok(crate::trace::Ended {
                status: o.status,
                waiting: o.waiting.is_some(),
                error: o.error.as_deref(),
            }),
            Err(e) => Err(e.to_string()),
        },
    );
}

fn stalled(log: &RunLog, reason: String) -> HostError {
    if log.unstarted.is_some() {
        HostError::NotStarted {
            run_id: log.run_id.clone(),
            reason,
        }
    } else {
        HostError::Interrupted {
            run_id: log.run_id.clone(),
            reason,
        }
    }
}

fn journal_stalled(log: &RunLog, error: JournalError) -> HostError {
    match error {
        JournalError::RunExists(run_id) => HostError::RunExists(run_id),
        // The run is not in the journal at all: a run started with its first write whose batch
        // never became durable. Nothing of it took effect.
        JournalError::UnknownRun(run_id) => HostError::NotStarted {
            run_id,
            reason: "its first write never became durable".to_owned(),
        },
        error => stalled(log, error.to_string()),
    }
}

/// Extends this host's leases on the runs it drives, every third of the lease; a run whose
/// lease turns out to be gone (another host took it over) is told to stop. Ends with the host.
async fn renew_run_leases(host: Weak<HostInner>) {
    let period_ms = match host.upgrade() {
        Some(host) => (host.limits.run_lease_ms / 3).max(10),
        None => return,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(period_ms)).await;
        let Some(host) = host.upgrade() else { return };
        let live: Vec<(String, Arc<LiveRun>)> = host
            .live
            .lock()
            .expect("live run map lock poisoned")
            .iter()
            .map(|(id, live)| (id.clone(), live.clone()))
            .collect();
        if live.is_empty() {
            continue;
        }
        let ids: Vec<String> = live.iter().map(|(id, _)| id.clone()).collect();
        // A renewal that fails (the database is briefly away) is retried next period; the
        // lease is three periods long.
        if let Ok(lost) = host.journal.renew(&ids).await {
            let lost: HashSet<&str> = lost.iter().map(String::as_str).collect();
            for (id, run) in &live {
                if lost.contains(id.as_str()) {
                    run.lose();
                }
            }
        }
        // A cancellation asked for on another host reaches this host's run here.
        if let Ok(cancelled) = host.journal.cancellations(&ids).await {
            for (id, reason) in cancelled {
                if let Some((_, run)) = live.iter().find(|(i, _)| *i == id) {
                    run.cancel(&reason);
                }
            }
        }
    }
}

/// The `lock-released` events for the leases the run still holds by its journal, and every
/// lease it ever acquired: all of them are given back to the backend (a release only frees a
/// grant that is still the run's own), because a release the journal records may not have
/// reached the backend before a crash.
fn held_leases(owner: &str, events: &[Event]) -> (Vec<Event>, Vec<Lease>) {
    let mut acquired: Vec<Lease> = Vec::new();
    let mut released: Vec<(String, u64)> = Vec::new();
    for event in events {
        match event {
            Event::LockAcquired {
                key,
                fencing_token,
                ttl_ms,
                expires_at_ms,
                ..
            }
            | Event::LockReacquired {
                key,
                fencing_token,
                ttl_ms,
                expires_at_ms,
            } => acquired.push(Lease {
                key: key.clone(),
                owner: owner.to_owned(),
                fencing_token: *fencing_token,
                ttl_ms: *ttl_ms,
                expires_at_ms: *expires_at_ms,
            }),
            // A module's release that waited for the run's end is given back (and journaled)
            // at the end.
            Event::LockReleased {
                call: Some(call),
                key,
                ..
            } if crate::store::guards_compensation(events, key, *call) => {}
            Event::LockReleased {
                key, fencing_token, ..
            } => released.push((key.clone(), *fencing_token)),
            _ => {}
        }
    }
    let held: Vec<Lease> = acquired
        .iter()
        .filter(|l| {
            !released
                .iter()
                .any(|(k, t)| *k == l.key && *t == l.fencing_token)
        })
        .cloned()
        .collect();
    (release_events(&held), acquired)
}

/// The journal's name in lock owners: its file (absolute), or its database and schema.
fn journal_name(journal: &wasaga_db::Location) -> String {
    let name = match journal {
        wasaga_db::Location::Sqlite(path) => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        other => other.describe(),
    };
    name.replace('|', "%7C")
}

/// How many modules may compute (run a whole epoch tick without a host call) at once: one
/// core in two, at least one.
pub fn compute_slots_max() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The lock keys (with their ttl) a run holds by its journal: acquired, and not released, or
/// released by the module while a compensable step taken under the lock may still need undoing
/// (such a release waits for the run's end, see [`crate::store::guards_compensation`]).
fn journal_holds(events: &[Event]) -> Vec<(String, u32)> {
    let mut held: Vec<(String, u32)> = Vec::new();
    for event in events {
        match event {
            Event::LockAcquired { key, ttl_ms, .. } | Event::LockReacquired { key, ttl_ms, .. } => {
                held.retain(|(k, _)| k != key);
                held.push((key.clone(), *ttl_ms));
            }
            Event::LockReleased {
                call: Some(call),
                key,
                ..
            } if !crate::store::guards_compensation(events, key, *call) => {
                held.retain(|(k, _)| k != key);
            }
            Event::LockReleased {
                call: None, key, ..
            } => held.retain(|(k, _)| k != key),
            _ => {}
        }
    }
    held
}

/// `lock-released` events for leases the host gives back at the run's end.
fn release_events(held: &[Lease]) -> Vec<Event> {
    held.iter()
        .map(|l| Event::LockReleased {
            call: None,
            key: l.key.clone(),
            fencing_token: l.fencing_token,
        })
        .collect()
}

/// Why the run is compensating, as its latest `compensating` event says.
fn last_cause(events: &[Event]) -> String {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Compensating { cause } => Some(cause.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "compensating".to_owned())
}

/// The run's `commit-all` transactions that committed, described for its outcome: a commit is
/// final, so compensation does not undo them.
fn committed_transactions(events: &[Event]) -> Vec<String> {
    let mut started: HashMap<u32, Vec<String>> = HashMap::new();
    let mut committed = Vec::new();
    for event in events {
        match event {
            Event::TwoPhaseStarted { call, calls, .. } => {
                let mut participants: Vec<String> =
                    calls.iter().map(|c| c.participant.clone()).collect();
                participants.dedup();
                started.insert(*call, participants);
            }
            Event::TwoPhaseFinished {
                call,
                outcome: Ok(_),
            } => committed.push(format!(
                "commit-all at call {call} ({}) committed, and a commit is final",
                started.get(call).map(|p| p.join(", ")).unwrap_or_default()
            )),
            _ => {}
        }
    }
    committed
}

/// Two-phase transactions the journal shows started but not finished.
fn in_doubt(
    events: &[Event],
) -> Vec<(
    u32,
    String,
    Vec<wasaga_core::event::CallSpec>,
    crate::two_phase::Known,
)> {
    let mut open = Vec::new();
    for event in events {
        match event {
            Event::TwoPhaseStarted { call, xid, calls } => open.push((
                *call,
                xid.clone(),
                calls.clone(),
                crate::two_phase::Known::Undecided,
            )),
            Event::TwoPhaseDecided {
                call,
                commit,
                reason,
            } => {
                if let Some(entry) = open.iter_mut().find(|e| e.0 == *call) {
                    entry.3 = crate::two_phase::Known::Decided {
                        commit: *commit,
                        reason: reason.clone(),
                    };
                }
            }
            Event::TwoPhaseFinished { call, .. } => open.retain(|e| e.0 != *call),
            _ => {}
        }
    }
    open
}

/// What stops a run whose journal write failed: it is left unfinished, and resumes later.
fn interrupted(run_id: String) -> impl FnOnce(JournalError) -> HostError {
    move |e| HostError::Interrupted {
        run_id,
        reason: e.to_string(),
    }
}

/// A WASI clock that stands still, so reading it is deterministic.
struct FrozenClock {
    since_epoch: Duration,
}

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.since_epoch
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.since_epoch.as_nanos() as u64
    }
}

fn seed_of(run_id: &str) -> u64 {
    let hash = module_hash(run_id.as_bytes());
    u64::from_str_radix(&hash[..16], 16).expect("a sha256 hex digest starts with 16 hex digits")
}

/// A new, time-ordered, unique run id.
pub fn new_run_id() -> String {
    format!("r-{:012x}-{:08x}", now_ms(), rand::random::<u32>())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Workflow names appear in URLs, config section names and file names.
fn check_workflow_name(name: &str) -> Result<(), HostError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(HostError::Input(format!(
            "workflow name '{name}' must be 1 to 64 lowercase letters, digits, '-' or '_'"
        )))
    }
}

/// A run id a client may choose: `~` is kept for child runs (`journal::child_run_id`), and
/// `.` and `..` would be read as path steps in a URL.
fn check_run_id(id: &str) -> Result<(), HostError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(HostError::Input(format!(
            "run id '{id}' must be 1 to 128 characters of letters, digits, '-', '_', '.', ':' or '/' (and not . or ..)"
        )))
    }
}
