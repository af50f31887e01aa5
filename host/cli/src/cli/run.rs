//! `wasaga run`, `resume` and `validate`: a run driven to its end on the command line, with its
//! steps printed as they happen.

use super::args::RunArgs;
use super::failure::{EXIT_FAILURE, Failure, exit_code, host_failure, usage};
use super::host::{
    lock_executor, open_showing_steps, resume_quietly, sweep, takeover, void_expired_holds,
};
use super::settings::Settings;
use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use wasaga_core::event::{Event, RunStatus};
use wasaga_core::steps::Steps;
use wasaga_runtime::store::{Observer, no_observer};
use wasaga_runtime::{HostError, RunOutcome};

pub(crate) async fn run(g: &Settings, args: &RunArgs) -> Result<u8, Failure> {
    // A path that does not exist but reads as a workflow name runs the deployed workflow.
    let deployed = !args.module.exists()
        && args
            .module
            .to_str()
            .is_some_and(|s| !s.contains('/') && !s.ends_with(".wasm"));
    let bytes = if deployed {
        None
    } else {
        Some(
            std::fs::read(&args.module)
                .with_context(|| format!("cannot read module {}", args.module.display()))
                .map_err(usage)?,
        )
    };
    let input = match args.input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {path}"))
            .map_err(usage)?,
        None => args.input.clone(),
    };
    // Refuse bad input before anything is written anywhere.
    if let Err(e) = serde_json::from_str::<Value>(&input) {
        return Err(usage(anyhow!("input is not valid JSON: {e}")));
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => {
            wasaga_server::workflow_name_of(&args.module).unwrap_or_else(|| "workflow".to_owned())
        }
    };
    let _lock = lock_executor(&g.host.journal, true)?;
    let host = open_showing_steps(g).await?;
    // Everything that can be checked is checked before anything is stored or resumed.
    host.check_new_run(args.run_id.as_deref(), &name, &input)
        .map_err(|e| usage(anyhow!(e)))?;
    let hash = match &bytes {
        Some(bytes) => host.check_deployable(&name, bytes).await.map_err(|e| {
            usage(anyhow!(e).context(format!("{} cannot run", args.module.display())))
        })?,
        None => {
            host.journal()
                .active(&name)
                .await
                .map_err(|e| usage(anyhow!(e)))?
                .hash
        }
    };
    resume_quietly(g, &host).await?;
    let observer = if g.json { no_observer() } else { printer() };
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(wasaga_runtime::executor::new_run_id);
    let exists = match host.journal().run(&run_id).await {
        Ok(record) => {
            // The run id makes a start idempotent for the same request only: reporting a run
            // of other input as this one's outcome would tell the caller a payment it did
            // not ask for succeeded.
            if let Some(pruned_at_ms) = record.pruned_at_ms {
                return Err(usage(anyhow!(
                    "run id {run_id} belonged to a run pruned at {}: a run id is never used twice (the ledger's entries are keyed by it); use a new run id",
                    super::serve::timestamp(pruned_at_ms)
                )));
            }
            let same_input = serde_json::from_str::<Value>(&record.input).ok()
                == serde_json::from_str::<Value>(&input).ok();
            if record.workflow != name || !same_input {
                return Err(usage(anyhow!(
                    "run id {run_id} was already used for a run of '{}' with a different input; use a new run id (or the same input to see that run)",
                    record.workflow
                )));
            }
            true
        }
        Err(wasaga_journal::JournalError::UnknownRun(_)) => false,
        Err(e) => return Err(host_failure(e.into())),
    };
    // A new run is created by its first durable write: a module that refuses its input
    // before making one leaves no run behind (exit 2), and its id stays free.
    let outcome = if exists {
        None
    } else {
        if !g.json {
            if g.host.grants.is_none() {
                eprintln!(
                    "note: no config file, so every workflow may use every participant and lock; give --config with [workflows.<name>] grants to allow each only what it needs"
                );
            }
            println!("run {run_id}: {name} (module {})", &hash[..12]);
        }
        match host
            .start_first_write(
                Some(run_id.clone()),
                &name,
                &hash,
                &input,
                observer.clone(),
                wasaga_runtime::NewRun::default(),
            )
            .await
        {
            Err(HostError::RunExists(_)) => None,
            Err(e @ HostError::Rejected { .. }) => return Err(usage(anyhow!(e))),
            other => Some(other.map_err(host_failure)?),
        }
    };
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => {
            if !g.json {
                println!("run {run_id} already exists; reporting it");
            }
            host.drive(&run_id, observer).await.map_err(host_failure)?
        }
    };
    Ok(report(g, &outcome))
}

pub(crate) fn parse_or_string(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

pub(crate) fn report(g: &Settings, outcome: &RunOutcome) -> u8 {
    if g.json {
        println!(
            "{}",
            json!({
                "run_id": outcome.run_id,
                "status": outcome.status,
                "output": outcome.output.as_deref().map(parse_or_string),
                "error": outcome.error,
                "waiting": outcome.waiting,
            })
        );
    } else if let Some(waiting) = &outcome.waiting {
        let when = if waiting.wake_at_ms >= i64::MAX as u64 {
            String::new()
        } else if waiting.wake_at_ms == 0 {
            ", due now".to_owned()
        } else {
            format!(" until {}", super::serve::timestamp(waiting.wake_at_ms))
        };
        eprintln!(
            "run {} waits ({}{when}); it holds no instance meanwhile: `wasaga serve` takes it up when it is due, `wasaga signal` sends it a signal",
            outcome.run_id, waiting.waiting_for
        );
    } else {
        match outcome.status {
            RunStatus::Completed => println!(
                "completed: {}",
                outcome.output.as_deref().unwrap_or_default()
            ),
            status => eprintln!(
                "run {} {status}: {}",
                outcome.run_id,
                outcome.error.as_deref().unwrap_or("no reason recorded")
            ),
        }
    }
    if outcome.waiting.is_some() {
        return super::failure::EXIT_WAITING;
    }
    exit_code(outcome.status)
}

/// An observer that prints each step and compensation as it is journaled.
pub(crate) fn printer() -> Observer {
    let steps: Mutex<Steps> = Mutex::new(Steps::default());
    Arc::new(move |_run_id, event| {
        let mut steps = steps.lock().expect("printer lock poisoned");
        steps.apply(event);
        match event {
            Event::StepDone { call, output } => {
                let (name, action, _) = described(&steps, *call);
                println!("  step  {name:<16} {action:<22} done      {output}");
            }
            Event::StepFailed { call, error } => {
                let (name, action, _) = described(&steps, *call);
                println!("  step  {name:<16} {action:<22} failed    {error}");
            }
            Event::StepResolved { call, outcome } => {
                let (name, action, _) = described(&steps, *call);
                let outcome = match outcome {
                    Ok(output) => format!("applied   {output}"),
                    Err(e) => format!("not applied ({e})"),
                };
                println!("  check {name:<16} {action:<22} {outcome}");
            }
            Event::CompensationDone { call, output } => {
                let (name, _, undo) = described(&steps, *call);
                println!("  undo  {name:<16} {undo:<22} done      {output}");
            }
            other => print_other(other),
        }
    })
}

/// A step's name, action and compensation (`participant.action`) as the printer shows them;
/// a step whose intent this process did not see (a resumed run's) by its call number.
fn described(steps: &Steps, call: u32) -> (String, String, String) {
    match steps.get(call) {
        Some(step) => (
            step.name.clone(),
            step.action_name(),
            step.compensation
                .as_ref()
                .map(|c| format!("{}.{}", c.participant, c.action))
                .unwrap_or_default(),
        ),
        None => (format!("call {call}"), String::new(), String::new()),
    }
}

/// Prints an event that is not about a step, if it is one a run's progress shows.
fn print_other(event: &Event) {
    match event {
        Event::Compensating { cause } => println!("  compensating: {cause}"),
        Event::TwoPhaseDecided { commit, reason, .. } => match (commit, reason) {
            (true, _) => println!("  2pc   decision: commit"),
            (false, reason) => println!(
                "  2pc   decision: abort ({})",
                reason.as_deref().unwrap_or("no reason")
            ),
        },
        Event::Log { message, .. } => {
            for line in message.lines() {
                println!("  log   {line}");
            }
        }
        Event::LockAcquired {
            key,
            fencing_token,
            waited_ms,
            ..
        } => {
            println!("  lock  {key:<16} token {fencing_token} (waited {waited_ms} ms)");
        }
        Event::LockFailed { key, reason, .. } => println!("  lock  {key:<16} failed: {reason}"),
        _ => {}
    }
}

pub(crate) async fn resume(g: &Settings) -> Result<u8, Failure> {
    let _lock = lock_executor(&g.host.journal, true)?;
    let host = open_showing_steps(g).await?;
    // Many runs on a terminal: a progress bar instead of every step of every run.
    let bar_wanted = !g.json && std::io::stderr().is_terminal();
    let quiet = Arc::new(AtomicBool::new(false));
    let observer = if g.json {
        no_observer()
    } else {
        let (steps, quiet) = (printer(), quiet.clone());
        Arc::new(move |run_id: &str, event: &Event| {
            if !quiet.load(Ordering::Relaxed) {
                steps(run_id, event);
            }
        }) as Observer
    };
    let bar = Mutex::new(None);
    let progress = |done: usize, total: usize| {
        let mut bar = bar.lock().expect("progress lock poisoned");
        if done == 0 && bar_wanted && total > 1 {
            quiet.store(true, Ordering::Relaxed);
            *bar = Some(super::progress::bar(total as u64, "runs"));
        }
        if let Some(bar) = &*bar {
            bar.set_position(done as u64);
        }
    };
    let resumed = host
        .resume_unfinished_showing(observer, takeover(g), &progress)
        .await
        .map_err(host_failure)?;
    drop(bar);
    // Once every unfinished run has resolved its own prepared transactions, what is left in
    // doubt belongs to ended runs: resolve it from the journal.
    sweep(g, &host).await?;
    void_expired_holds(g, &host).await?;
    let outcomes = &resumed.ended;
    for (run_id, reason) in &resumed.unfinished {
        eprintln!("run {run_id} is still unfinished: {reason}");
    }
    if g.json {
        println!(
            "{}",
            json!({ "resumed": outcomes, "unfinished": resumed.unfinished })
        );
    } else if outcomes.is_empty() && resumed.unfinished.is_empty() {
        println!("no unfinished runs");
    } else {
        for outcome in outcomes {
            println!(
                "run {} {}{}",
                outcome.run_id,
                outcome.status,
                outcome
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    let failed = if resumed.unfinished.is_empty() {
        0
    } else {
        EXIT_FAILURE
    };
    Ok(outcomes
        .iter()
        .map(|o| exit_code(o.status))
        .chain([failed])
        .max()
        .unwrap_or(0))
}

pub(crate) async fn validate(g: &Settings, module: &Path) -> Result<u8, Failure> {
    let bytes = std::fs::read(module)
        .with_context(|| format!("cannot read module {}", module.display()))
        .map_err(usage)?;
    let engine = wasaga_runtime::engine::WorkflowEngine::new(&g.host.limits, &g.host.cache_dir)
        .map_err(|e| anyhow!("cannot start the wasm engine: {e:#}"))?;
    let hash = engine
        .validate(&bytes)
        .map_err(|e| usage(anyhow!(e).context(format!("{} cannot run", module.display()))))?;
    if g.json {
        println!(
            "{}",
            json!({ "module": module, "hash": hash, "valid": true })
        );
    } else {
        println!(
            "{} is a valid workflow component (hash {hash})",
            module.display()
        );
    }
    Ok(0)
}
