//! `wasaga runs list | show | retry`: what the journal holds of runs.

use super::failure::{Failure, host_failure, usage};
use super::host::{lock_executor, open, open_showing_steps};
use super::run::{printer, report};
use super::settings::Settings;
use anyhow::{Result, anyhow};
use serde_json::json;
use std::collections::HashMap;
use wasaga_core::event::{CallSpec, Event, Wait, WaitOutcome};
use wasaga_core::steps::Steps;
use wasaga_journal::StoredEvent;
use wasaga_runtime::store::no_observer;

pub(crate) async fn runs_list(
    g: &Settings,
    status: Option<&str>,
    limit: u32,
) -> Result<u8, Failure> {
    let filter = wasaga_journal::RunFilter {
        limit,
        ..Default::default()
    };
    let filter = match status {
        Some(s) => filter.with_status(s).ok_or_else(|| {
            usage(anyhow!(
                "unknown status '{s}'; use {}",
                wasaga_journal::STATUS_NAMES
            ))
        })?,
        None => filter,
    };
    let host = open(g).await?;
    let runs = host.journal().runs(filter).await.map_err(|e| anyhow!(e))?;
    if g.json {
        println!("{}", json!({ "runs": runs }));
        return Ok(0);
    }
    if runs.is_empty() {
        println!("no runs");
    }
    for run in runs {
        // A waiting run is still `running` (it has not ended); what it waits for is its news.
        let (status, detail) = match &run.waiting {
            Some(waiting) if !run.status.is_terminal() => {
                ("waiting".to_owned(), format!("for {}", waiting.waiting_for))
            }
            _ => (
                run.status.to_string(),
                run.error
                    .as_deref()
                    .or(run.output.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
            ),
        };
        println!(
            "{:<32} {:<16} {:<12} {detail}",
            run.run_id, run.workflow, status
        );
    }
    Ok(0)
}

pub(crate) async fn runs_retry(g: &Settings, run_id: &str) -> Result<u8, Failure> {
    let _lock = lock_executor(&g.host.journal, true)?;
    let host = open_showing_steps(g).await?;
    let observer = if g.json { no_observer() } else { printer() };
    let outcome = host
        .retry_stuck(run_id, observer)
        .await
        .map_err(host_failure)?;
    Ok(report(g, &outcome))
}

pub(crate) async fn runs_show(g: &Settings, run_id: &str) -> Result<u8, Failure> {
    let host = open(g).await?;
    let run = host
        .journal()
        .run(run_id)
        .await
        .map_err(|e| usage(anyhow!(e)))?;
    let events = host
        .journal()
        .events(run_id)
        .await
        .map_err(|e| anyhow!(e))?;
    if g.json {
        println!("{}", json!({ "run": run, "events": events }));
        return Ok(0);
    }
    println!("run      {}", run.run_id);
    println!("workflow {} (module {})", run.workflow, run.module_hash);
    println!("status   {}", run.status);
    println!("input    {}", run.input);
    if let Some(output) = &run.output {
        println!("output   {output}");
    }
    if let Some(error) = &run.error {
        println!("reason   {error}");
    }
    println!();
    let start = events.first().map_or(0, |e| e.at_ms);
    let journaled: Vec<Event> = events.iter().map(|e| e.event.clone()).collect();
    let mut steps = Steps::default();
    // When each step's intent was journaled, for its duration.
    let mut began: HashMap<u32, u64> = HashMap::new();
    for stored in &events {
        steps.apply(&stored.event);
        let at = format!("+{} ms", stored.at_ms.saturating_sub(start));
        let line = event_line(stored, &steps, &mut began, &journaled);
        println!("{:>4} {at:>10}  {line}", stored.seq);
    }
    Ok(0)
}

/// One line of `runs show` for a journaled event: what happened, with the step it concerns.
fn event_line(
    stored: &StoredEvent,
    steps: &Steps,
    began: &mut HashMap<u32, u64>,
    journaled: &[Event],
) -> String {
    match &stored.event {
        Event::Started { .. } => "started".to_owned(),
        Event::StepIntent {
            call,
            name,
            action,
            compensation,
            ..
        } => {
            let undo = undo_of(compensation.as_ref());
            began.insert(*call, stored.at_ms);
            format!(
                "step {name:<14} intent    {}.{} {}  (undo: {undo})",
                action.participant, action.action, action.payload
            )
        }
        Event::StepDone { call, output } => {
            let (name, action, _, began_ms) = step_of(steps, began, *call);
            format!(
                "step {name:<14} done      {action} -> {output} ({} ms)",
                stored.at_ms.saturating_sub(began_ms)
            )
        }
        Event::StepFailed { call, error } => {
            let (name, action, _, began_ms) = step_of(steps, began, *call);
            format!(
                "step {name:<14} failed    {action}: {error} ({} ms)",
                stored.at_ms.saturating_sub(began_ms)
            )
        }
        Event::StepResolved { call, outcome } => {
            let (name, action, _, _) = step_of(steps, began, *call);
            match outcome {
                Ok(output) => {
                    format!("step {name:<14} resolved  {action} had applied: {output}")
                }
                Err(e) => format!("step {name:<14} resolved  {action} had not applied: {e}"),
            }
        }
        Event::TwoPhaseStarted { xid, calls, .. } => {
            let branches: Vec<String> = calls
                .iter()
                .map(|c| format!("{}.{} {}", c.participant, c.action, c.payload))
                .collect();
            format!("2pc       {xid} prepare: {}", branches.join("; "))
        }
        Event::TwoPhaseDecided { commit, reason, .. } => match (commit, reason) {
            (true, _) => "2pc       decision: commit".to_owned(),
            (false, reason) => format!(
                "2pc       decision: abort ({})",
                reason.as_deref().unwrap_or("no reason")
            ),
        },
        Event::TwoPhaseFinished { outcome, .. } => match outcome {
            Ok(_) => "2pc       committed on every branch".to_owned(),
            Err(e) => format!("2pc       aborted on every branch: {e}"),
        },
        Event::Read {
            participant,
            key,
            outcome,
            ..
        } => match outcome {
            Ok((value, version)) => {
                format!("read      {participant} '{key}' = {value} (version {version})")
            }
            Err(e) => format!("read      {participant} '{key}' failed: {e}"),
        },
        Event::WriteIf {
            participant,
            key,
            expected_version,
            value,
            outcome,
            ..
        } => match outcome {
            Ok(version) => format!(
                "write-if  {participant} '{key}' = {value} at version {expected_version} -> version {version}"
            ),
            Err(e) => format!(
                "write-if  {participant} '{key}' at version {expected_version} refused: {e}"
            ),
        },
        Event::Clock { ms, .. } => format!("clock     {ms}"),
        Event::Random { value, .. } => format!("random    {value}"),
        Event::Log { message, .. } => format!(
            "log       {}",
            message.replace('\n', "\n                    ")
        ),
        Event::LockAcquired {
            key,
            fencing_token,
            waited_ms,
            ..
        } => {
            format!(
                "lock      {key} acquired after waiting {waited_ms} ms, fencing token {fencing_token}"
            )
        }
        Event::LockFailed { key, reason, .. } => format!("lock      {key} failed: {reason}"),
        Event::LockReacquired {
            key, fencing_token, ..
        } => format!("lock      {key} taken again on resume, fencing token {fencing_token}"),
        Event::LockReleased {
            call: Some(call),
            key,
            fencing_token,
        } if wasaga_runtime::store::guards_compensation(journaled, key, *call) => format!(
            "lock      {key} release asked (token {fencing_token}); held until the run ends, as a step under it may need undoing"
        ),
        Event::LockReleased {
            key, fencing_token, ..
        } => {
            format!("lock      {key} released (token {fencing_token})")
        }
        Event::ModuleUpgraded { from, to, version } => format!(
            "upgraded  module {} -> {}{}",
            &from[..from.len().min(12)],
            &to[..to.len().min(12)],
            version
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default()
        ),
        Event::Completed { output } => format!("completed {output}"),
        Event::Compensating { cause } => format!("compensating: {cause}"),
        Event::CompensationDone { call, output } => {
            let (name, _, undo, _) = step_of(steps, began, *call);
            format!("undo {name:<14} done      {undo} -> {output}")
        }
        Event::Compensated { cause } => format!("compensated ({cause})"),
        Event::Stuck { reason } => format!("STUCK: {reason}"),
        Event::WaitStarted { wait, due_ms, .. } => {
            let until = due_ms.map_or(String::new(), |due| {
                format!(
                    " until {} (in {} ms)",
                    due,
                    due.saturating_sub(stored.at_ms)
                )
            });
            match wait {
                Wait::Timer => format!("wait      sleep{until}"),
                Wait::Signal { name } => format!("wait      for signal '{name}'{until}"),
                Wait::Child { run_id } => format!("wait      for child {run_id}"),
            }
        }
        Event::WaitEnded { outcome, .. } => match outcome {
            WaitOutcome::Due { at_ms } => format!(
                "wait      over: timer due, seen at {}",
                super::serve::timestamp(*at_ms)
            ),
            WaitOutcome::Signal { signal_id, payload } => {
                format!("wait      signal {signal_id} arrived: {payload}")
            }
            WaitOutcome::Child {
                outcome: Ok(output),
            } => {
                format!("wait      child completed: {output}")
            }
            WaitOutcome::Child { outcome: Err(e) } => {
                format!("wait      child compensated: {e}")
            }
        },
        Event::ChildStarted {
            run_id,
            workflow,
            outcome,
            ..
        } => match outcome {
            Ok(()) => format!("child     {run_id} started ({workflow})"),
            Err(e) => format!("child     {workflow} not started: {e}"),
        },
    }
}

/// A step's name, action, compensation and when its intent was journaled, as `runs show`
/// prints them; a step the journal has no intent for by its call number.
fn step_of(steps: &Steps, began: &HashMap<u32, u64>, call: u32) -> (String, String, String, u64) {
    match steps.get(call) {
        Some(step) => (
            step.name.clone(),
            step.action_name(),
            undo_of(step.compensation.as_ref()),
            began.get(&call).copied().unwrap_or(0),
        ),
        None => (format!("call {call}"), String::new(), String::new(), 0),
    }
}

/// A compensation with its payload, or `-` for none.
fn undo_of(compensation: Option<&CallSpec>) -> String {
    compensation.map_or("-".to_owned(), |c| {
        format!("{}.{} {}", c.participant, c.action, c.payload)
    })
}
