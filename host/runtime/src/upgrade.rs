//! Checking a new version of a workflow against the histories it would meet, before it goes
//! live: each recorded journal is replayed on the new module with nothing performed, held or
//! written (the store is `verifying`), and the replay must make every journaled call, in order,
//! with the same arguments. A deploy that diverges is refused unless forced. Unfinished runs
//! that agree, and that nobody executes now (they wait), can then be moved to the new version,
//! which their journals record; the others stay on the module they started with.

use crate::engine::Loaded;
use crate::executor::{Host, HostError};
use crate::shared::LiveRun;
use crate::store::{Fatal, RunLog, no_observer, replay_map};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use wasaga_core::event::{Event, RunStatus, current_module};
use wasaga_journal::{Deployed, RunFilter, Upgraded};

/// Unfinished runs one check replays at most; past it the report says it was capped.
pub const CHECKED_IN_FLIGHT_MAX: u32 = 10_000;
/// Completed runs a deploy replays unless told otherwise: the newest of the workflow.
pub const CHECKED_COMPLETED_DEFAULT: u32 = 100;
/// Completed runs one check replays at most.
pub const CHECKED_COMPLETED_MAX: u32 = 10_000;

/// How a journal replayed on a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "replay", rename_all = "kebab-case")]
pub enum Replay {
    /// Every journaled call was made again, alike; `more`: the module goes on past the
    /// journal's end (an unfinished run waiting there, or a completed run the new version
    /// would take further).
    Agrees { calls: u32, more: bool },
    /// The module did not follow the journal: at `call` (when known), with why.
    Diverges { call: Option<u32>, reason: String },
}

/// One run's journal, checked.
#[derive(Debug, Clone, Serialize)]
pub struct RunCheck {
    pub run_id: String,
    /// `completed`, or `running` / `waiting` for a run in flight.
    pub status: String,
    /// The module the run executes now.
    pub module_hash: String,
    #[serde(flatten)]
    pub replay: Replay,
    /// The position of the run's journal when it was checked.
    #[serde(skip)]
    pub next_seq: i64,
}

impl RunCheck {
    fn in_flight(&self) -> bool {
        self.status != RunStatus::Completed.as_str()
    }
}

/// What a check of a module against recorded journals found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub workflow: String,
    pub module_hash: String,
    pub checked: Vec<RunCheck>,
    /// Whether there were more unfinished runs than were checked.
    pub in_flight_capped: bool,
    /// Exported runs not checked: of another workflow (by their record or their `started`
    /// event), or compensated or compensating (they do not execute their module again).
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl VerifyReport {
    pub fn diverged(&self) -> impl Iterator<Item = &RunCheck> {
        self.checked
            .iter()
            .filter(|c| matches!(c.replay, Replay::Diverges { .. }))
    }

    /// Whether every checked run agrees (a capped check agrees only as far as it went).
    pub fn agrees(&self) -> bool {
        self.diverged().next().is_none()
    }

    /// One line naming the first divergences, for messages.
    pub fn summary(&self) -> String {
        self.summary_of(&self.diverged().collect::<Vec<_>>())
    }

    /// One line naming the first of `diverged`, for messages.
    fn summary_of(&self, diverged: &[&RunCheck]) -> String {
        let count = diverged.len();
        let diverged: Vec<String> = diverged
            .iter()
            .take(3)
            .map(|c| match &c.replay {
                Replay::Diverges { reason, .. } => format!("run {}: {reason}", c.run_id),
                Replay::Agrees { .. } => unreachable!("filtered to divergences"),
            })
            .collect();
        format!(
            "{count} of {} recorded runs diverge on module {}: {}{}",
            self.checked.len(),
            &self.module_hash[..self.module_hash.len().min(12)],
            diverged.join("; "),
            if count > 3 { "; ..." } else { "" }
        )
    }
}

/// How a deploy checks the module and what it does with runs in flight.
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    /// The newest completed runs of the workflow to replay (every unfinished one is).
    pub completed: u32,
    /// Deploy even if some journal diverges.
    pub force: bool,
    /// Move the unfinished runs that agree (and wait now) to the new version.
    pub upgrade_in_flight: bool,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            completed: CHECKED_COMPLETED_DEFAULT,
            force: false,
            upgrade_in_flight: false,
        }
    }
}

/// What a checked deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    /// The deployment, unless the check refused it.
    pub deployed: Option<Deployed>,
    /// Why the deploy was refused, if it was.
    pub refused: Option<String>,
    pub verified: VerifyReport,
    /// Unfinished runs moved to the new version.
    pub upgraded: Vec<String>,
    /// Unfinished runs left on their module, with why.
    pub pinned: Vec<Pinned>,
}

impl DeployReport {
    /// The report as the API answers it: the deployment's fields (as a plain deploy answers),
    /// then what the check found and what became of the runs in flight.
    pub fn to_json(&self) -> serde_json::Value {
        let mut answer = match &self.deployed {
            Some(deployed) => serde_json::to_value(deployed).expect("a deployment serializes"),
            None => serde_json::json!({ "error": self.refused }),
        };
        let fields = answer
            .as_object_mut()
            .expect("a deployment is a JSON object");
        fields.insert(
            "verified".to_owned(),
            serde_json::to_value(&self.verified).expect("a report serializes"),
        );
        fields.insert("upgraded".to_owned(), serde_json::json!(self.upgraded));
        fields.insert(
            "pinned".to_owned(),
            serde_json::to_value(&self.pinned).expect("a report serializes"),
        );
        answer
    }
}

/// An unfinished run that stays on its module.
#[derive(Debug, Clone, Serialize)]
pub struct Pinned {
    pub run_id: String,
    pub module_hash: String,
    pub reason: String,
}

/// A run's journal as `wasaga runs export` writes it (one JSON object per line): the run's
/// record and its events; only what a check needs is read back.
#[derive(Debug, Clone, Deserialize)]
pub struct ExportedRun {
    pub run: ExportedRecord,
    pub events: Vec<Event>,
}

/// The part of an exported run's record a check reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ExportedRecord {
    pub run_id: String,
    pub workflow: String,
    pub status: RunStatus,
    #[serde(default)]
    pub waiting: Option<serde_json::Value>,
}

impl Host {
    /// Checks `bytes` as a new version of `workflow` against its journals in this journal:
    /// every unfinished run (up to `CHECKED_IN_FLIGHT_MAX`) and the newest `completed`
    /// completed ones. Nothing is deployed or written.
    pub async fn verify(
        &self,
        workflow: &str,
        bytes: &[u8],
        completed: u32,
    ) -> Result<VerifyReport, HostError> {
        let (hash, loaded) = self.loadable(workflow, bytes).await?;
        self.verify_loaded(workflow, &hash, &loaded, completed)
            .await
    }

    /// Checks `bytes` as a version of `workflow` against exported journals (`runs export`)
    /// of that workflow; runs of other workflows are skipped.
    pub async fn verify_exported(
        &self,
        workflow: &str,
        bytes: &[u8],
        runs: Vec<ExportedRun>,
    ) -> Result<VerifyReport, HostError> {
        let (hash, loaded) = self.loadable(workflow, bytes).await?;
        let (mut checked, mut skipped) = (Vec::new(), 0);
        // A run exported twice (an export a crash interrupted, then done again) counts once.
        let mut seen = std::collections::HashSet::new();
        for exported in runs {
            if let Some(wrong) = malformed(&exported) {
                return Err(HostError::Input(format!(
                    "run {} in the export is not a journal wasaga wrote: {wrong}; export it again with `wasaga runs export`",
                    exported.run.run_id
                )));
            }
            if !seen.insert(exported.run.run_id.clone()) {
                continue;
            }
            if exported.run.workflow != workflow || !checkable(exported.run.status) {
                skipped += 1;
                continue;
            }
            let status = status_name(exported.run.status, exported.run.waiting.is_some());
            checked.push(
                self.check_run(
                    workflow,
                    &loaded,
                    exported.run.run_id,
                    status,
                    exported.events,
                )
                .await,
            );
        }
        Ok(VerifyReport {
            workflow: workflow.to_owned(),
            module_hash: hash,
            checked,
            in_flight_capped: false,
            skipped,
        })
    }

    /// Deploys `bytes` as the new version of `workflow` once its journals replay on it (see
    /// [`Host::verify`]); refuses it (deploying nothing) if one diverges, unless
    /// `options.force`; then, with `options.upgrade_in_flight`, moves the unfinished runs that
    /// agree and wait now to it.
    pub async fn deploy_checked(
        &self,
        workflow: &str,
        bytes: &[u8],
        options: DeployOptions,
    ) -> Result<DeployReport, HostError> {
        let _one_at_a_time = self.deploying().await;
        let (hash, loaded) = self.loadable(workflow, bytes).await?;
        let verified = self
            .verify_loaded(workflow, &hash, &loaded, options.completed)
            .await?;
        // The new version is held to what the version it replaces recorded (and to runs of
        // modules never deployed). Runs of other deployed versions that diverge, such as those
        // of a version deployed with --force and rolled back, are reported and stay on their
        // own version: they would not bar every later deploy until they end.
        let versions = match self.journal().versions(workflow).await {
            Ok(versions) => versions,
            Err(wasaga_journal::JournalError::UnknownWorkflow(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let superseded: std::collections::HashSet<String> = versions
            .into_iter()
            .filter(|v| !v.active)
            .map(|v| v.hash)
            .collect();
        let barring: Vec<&RunCheck> = verified
            .diverged()
            .filter(|c| !superseded.contains(&c.module_hash))
            .collect();
        let refused = if !barring.is_empty() {
            Some(verified.summary_of(&barring))
        } else if verified.in_flight_capped {
            Some(format!(
                "more than {CHECKED_IN_FLIGHT_MAX} runs of {workflow} are in flight and only the newest were replayed"
            ))
        } else {
            None
        };
        if let Some(refused) = refused.filter(|_| !options.force) {
            return Ok(DeployReport {
                deployed: None,
                refused: Some(format!(
                    "{refused}; the previous version keeps serving (deploy with --force to deploy anyway)"
                )),
                verified,
                upgraded: Vec::new(),
                pinned: Vec::new(),
            });
        }
        let deployed = self.deploy(workflow, bytes).await?;
        let version = Some(deployed.deployment.version);
        let (mut upgraded, mut pinned) = (Vec::new(), Vec::new());
        for check in verified.checked.iter().filter(|c| c.in_flight()) {
            if check.module_hash == hash {
                continue;
            }
            let pin = |reason: String| Pinned {
                run_id: check.run_id.clone(),
                module_hash: check.module_hash.clone(),
                reason,
            };
            match (&check.replay, options.upgrade_in_flight) {
                (_, false) => {
                    pinned.push(pin("in-flight runs were not asked to upgrade".to_owned()))
                }
                (Replay::Diverges { reason, .. }, true) => pinned.push(pin(reason.clone())),
                (Replay::Agrees { .. }, true) => {
                    let moved = self
                        .journal()
                        .upgrade_run(
                            &check.run_id,
                            &check.module_hash,
                            &hash,
                            version,
                            check.next_seq,
                        )
                        .await?;
                    match moved {
                        Upgraded::Moved => upgraded.push(check.run_id.clone()),
                        Upgraded::Busy => pinned.push(pin(
                            "it executes on a host now, or moved on since it was checked; deploy again with --upgrade-in-flight when it waits".to_owned(),
                        )),
                    }
                }
            }
        }
        Ok(DeployReport {
            deployed: Some(deployed),
            refused: None,
            verified,
            upgraded,
            pinned,
        })
    }

    /// Validates `bytes` as `workflow`'s module (as a deploy does) and compiles it.
    async fn loadable(&self, workflow: &str, bytes: &[u8]) -> Result<(String, Loaded), HostError> {
        let hash = self.check_module(workflow, bytes).await?;
        let engine = self.engine().clone();
        let (key, bytes) = (hash.clone(), bytes.to_vec());
        let loaded = tokio::task::spawn_blocking(move || engine.load(&key, &bytes))
            .await
            .map_err(|e| HostError::Engine(format!("module compilation failed: {e}")))??;
        Ok((hash, loaded))
    }

    async fn verify_loaded(
        &self,
        workflow: &str,
        hash: &str,
        loaded: &Loaded,
        completed: u32,
    ) -> Result<VerifyReport, HostError> {
        let journal = self.journal();
        let in_flight = journal
            .runs(RunFilter {
                status: Some(RunStatus::Running),
                workflow: Some(workflow.to_owned()),
                limit: CHECKED_IN_FLIGHT_MAX + 1,
                ..RunFilter::default()
            })
            .await?;
        let in_flight_capped = in_flight.len() > CHECKED_IN_FLIGHT_MAX as usize;
        let done = journal
            .runs(RunFilter {
                status: Some(RunStatus::Completed),
                workflow: Some(workflow.to_owned()),
                limit: completed.min(CHECKED_COMPLETED_MAX),
                ..RunFilter::default()
            })
            .await?;
        let mut checked = Vec::new();
        for record in in_flight
            .into_iter()
            .take(CHECKED_IN_FLIGHT_MAX as usize)
            .chain(done)
        {
            let (record, events) = match journal.run_with_events(&record.run_id).await {
                Ok(found) => found,
                // Pruned or gone since it was listed.
                Err(wasaga_journal::JournalError::UnknownRun(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if !checkable(record.status) {
                continue;
            }
            let next_seq = events.last().map_or(1, |e| e.seq + 1);
            let status = status_name(record.status, record.waiting.is_some());
            let events = events.into_iter().map(|e| e.event).collect();
            let mut check = self
                .check_run(workflow, loaded, record.run_id, status, events)
                .await;
            check.next_seq = next_seq;
            checked.push(check);
        }
        Ok(VerifyReport {
            workflow: workflow.to_owned(),
            module_hash: hash.to_owned(),
            checked,
            in_flight_capped,
            skipped: 0,
        })
    }

    /// Replays one run's journal on `loaded`.
    async fn check_run(
        &self,
        workflow: &str,
        loaded: &Loaded,
        run_id: String,
        status: &str,
        events: Vec<Event>,
    ) -> RunCheck {
        let module_hash = current_module(&events).unwrap_or_default().to_owned();
        let replay = self.replay_check(workflow, loaded, &run_id, &events).await;
        RunCheck {
            run_id,
            status: status.to_owned(),
            module_hash,
            replay,
            next_seq: 0,
        }
    }

    /// Replays `events` on `loaded` without performing anything; how it went.
    async fn replay_check(
        &self,
        workflow: &str,
        loaded: &Loaded,
        run_id: &str,
        events: &[Event],
    ) -> Replay {
        let Some(Event::Started {
            input,
            started_at_ms,
            ..
        }) = events.first()
        else {
            return Replay::Diverges {
                call: None,
                reason: "the journal does not begin with `started`".to_owned(),
            };
        };
        let completed = events.iter().any(|e| matches!(e, Event::Completed { .. }));
        let failed_with = events.iter().find_map(|e| match e {
            Event::Compensating { cause } => Some(cause.clone()),
            _ => None,
        });
        let replay = replay_map(events);
        let calls = replay.len() as u32;
        let mut log = RunLog::new(
            self.journal().clone(),
            run_id,
            events.to_vec(),
            no_observer(),
        );
        let _slot = self.execution_slot().await;
        let (mut store, _, _) = self.new_store(
            &mut log,
            replay,
            *started_at_ms,
            self.grant_of(workflow),
            Arc::new(LiveRun::default()),
            HashMap::new(),
        );
        store.data_mut().run.verifying = true;
        let result = match loaded.instantiate_async(&mut store).await {
            Ok(instance) => instance.call_run(&mut store, input).await,
            Err(e) => {
                return Replay::Diverges {
                    call: None,
                    reason: format!("the module cannot be instantiated: {e:#}"),
                };
            }
        };
        let context = &mut store.data_mut().run;
        let at = context.next_call.checked_sub(1);
        match (context.fatal.take(), result) {
            (Some(Fatal::JournalEnd { call }), _) => Replay::Agrees {
                calls: call,
                more: true,
            },
            (Some(Fatal::Failure(reason)), _) => Replay::Diverges { call: at, reason },
            (Some(other), _) => Replay::Diverges {
                call: at,
                reason: format!("the replay stopped: {other:?}"),
            },
            (None, Ok(Ok(_))) if !context.replay.is_empty() => Replay::Diverges {
                call: at,
                reason: format!(
                    "the module returned with {} of the {calls} journaled calls not made",
                    context.replay.len()
                ),
            },
            (None, Ok(Ok(_))) if failed_with.is_some() && !completed => Replay::Diverges {
                call: None,
                reason: format!(
                    "the module returned ok where the run failed ({})",
                    failed_with.unwrap_or_default()
                ),
            },
            (None, Ok(Ok(_))) => Replay::Agrees { calls, more: false },
            (None, Ok(Err(message))) if completed => Replay::Diverges {
                call: at,
                reason: format!("the module failed ({message}) where the run completed"),
            },
            (None, Ok(Err(_))) if !context.replay.is_empty() => Replay::Diverges {
                call: at,
                reason: "the module failed before the journal's end".to_owned(),
            },
            (None, Ok(Err(_))) => Replay::Agrees { calls, more: false },
            (None, Err(trap)) => Replay::Diverges {
                call: at,
                reason: format!("the module trapped: {trap:#}"),
            },
        }
    }
}

/// Only runs that execute their module again are checked: unfinished ones that are not
/// compensating (compensation works from the journal alone), and completed ones.
fn checkable(status: RunStatus) -> bool {
    matches!(status, RunStatus::Running | RunStatus::Completed)
}

fn status_name(status: RunStatus, waiting: bool) -> &'static str {
    match (status, waiting) {
        (RunStatus::Running, true) => "waiting",
        (status, _) => status.as_str(),
    }
}

/// What makes an exported run's journal one the host never writes, if anything: it must begin
/// with its `started` event, of the run's own workflow, and begin each call once.
fn malformed(exported: &ExportedRun) -> Option<String> {
    match exported.events.first() {
        Some(Event::Started { workflow, .. }) if *workflow == exported.run.workflow => {}
        Some(Event::Started { workflow, .. }) => {
            return Some(format!(
                "it started workflow {workflow} but is listed as {}",
                exported.run.workflow
            ));
        }
        Some(other) => return Some(format!("it begins with {}, not started", other.kind())),
        None => return Some("it has no events".to_owned()),
    }
    let mut begun = std::collections::HashSet::new();
    for event in &exported.events[1..] {
        if matches!(event, Event::Started { .. }) {
            return Some("it starts twice".to_owned());
        }
        if let Some(call) = event.replayed_call()
            && !begun.insert(call)
        {
            return Some(format!("it begins call {call} twice"));
        }
    }
    None
}
