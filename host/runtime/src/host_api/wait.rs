//! `wasaga:workflow/wait`: durable sleeps, signals and child runs.
//!
//! A wait is journaled (`wait-started`, with its due time) and, unless it is over at once,
//! ends the execution: the executor commits it, drops the instance and puts the run to sleep
//! (`Journal::suspend`). A host that claims the run when it is due replays it to this call,
//! which then looks again: the timer passed, a signal is there, the child ended. Only then is
//! `wait-ended` journaled, by the run's one owner (the append is fenced), so a wait ends once
//! however many hosts saw it due; every later replay returns that outcome.

use crate::bindings::wasaga::workflow::wait::Host;
use crate::store::{Replayed, RunContext, RunState};
use std::collections::HashSet;
use wasaga_core::clock::now_ms;
use wasaga_core::event::{Event, RunStatus, Wait, WaitOutcome};
use wasaga_journal::{JournalError, WakeCheck};

/// What a child wait's `due_ms` is: none, it ends only with the child.
const NEVER: u64 = i64::MAX as u64;

impl Host for RunState {
    async fn sleep(&mut self, duration_ms: u64) -> wasmtime::Result<()> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        if let Some(replayed) = replayed {
            return run.replay_sleep(call, replayed, None);
        }
        run.check_wait(duration_ms)?;
        let due = now_ms().saturating_add(duration_ms);
        run.begin_wait(call, Wait::Timer, due)?;
        run.sleep_until_due(call, due)
    }

    async fn sleep_until(&mut self, at_ms: u64) -> wasmtime::Result<()> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        if let Some(replayed) = replayed {
            return run.replay_sleep(call, replayed, Some(at_ms));
        }
        run.check_wait(at_ms.saturating_sub(now_ms()))?;
        run.begin_wait(call, Wait::Timer, at_ms)?;
        run.sleep_until_due(call, at_ms)
    }

    async fn signal(&mut self, name: String, timeout_ms: u64) -> wasmtime::Result<Option<String>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        let name_max = run.host.limits.name_bytes_max;
        run.check_size("a signal name", name.len(), name_max, "name_bytes_max")?;
        if name.is_empty() {
            // No signal can be sent with an empty name: the wait could only time out.
            return Err(run.limit("a wait for a signal with an empty name".to_owned()));
        }
        let due = match replayed {
            Some(replayed) => match (replayed.first, replayed.result) {
                (
                    Event::WaitStarted {
                        wait: Wait::Signal { name: n },
                        ..
                    },
                    Some(Event::WaitEnded { outcome, .. }),
                ) if n == name => {
                    return Ok(match outcome {
                        WaitOutcome::Signal { payload, .. } => Some(payload),
                        _ => None,
                    });
                }
                (
                    Event::WaitStarted {
                        wait: Wait::Signal { name: n },
                        ..
                    },
                    None,
                ) if n == name && run.verifying => return Err(run.journal_end(call)),
                (
                    Event::WaitStarted {
                        wait: Wait::Signal { name: n },
                        due_ms,
                        ..
                    },
                    None,
                ) if n == name => due_ms.unwrap_or(NEVER),
                (other, _) => {
                    return Err(run.diverged(call, &other, format!("a wait for signal '{name}'")));
                }
            },
            None => {
                run.check_wait(timeout_ms)?;
                let due = now_ms().saturating_add(timeout_ms);
                run.begin_wait(call, Wait::Signal { name: name.clone() }, due)?;
                due
            }
        };
        let kept = run
            .log
            .journal
            .signals(&run.log.run_id, &name)
            .await
            .map_err(|e| run.interrupted(e))?;
        let consumed: HashSet<String> = consumed_signals(run.events());
        if let Some((signal_id, payload)) = kept.iter().find(|(id, _)| !consumed.contains(id)) {
            let outcome = WaitOutcome::Signal {
                signal_id: signal_id.clone(),
                payload: payload.clone(),
            };
            run.end_wait(call, outcome)?;
            return Ok(Some(payload.clone()));
        }
        let now = now_ms();
        if now >= due {
            run.end_wait(call, WaitOutcome::Due { at_ms: now })?;
            return Ok(None);
        }
        let consumed = kept.iter().filter(|(id, _)| consumed.contains(id)).count() as u32;
        Err(run.suspend(
            due,
            &Wait::Signal { name: name.clone() },
            WakeCheck::Signal { name, consumed },
        ))
    }

    async fn start_child(
        &mut self,
        workflow: String,
        input: String,
    ) -> wasmtime::Result<Result<String, String>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        let name_max = run.host.limits.name_bytes_max;
        run.check_size(
            "a workflow name",
            workflow.len(),
            name_max,
            "name_bytes_max",
        )?;
        let payload_max = run.host.limits.payload_bytes_max;
        run.check_size(
            "a child's input",
            input.len(),
            payload_max,
            "payload_bytes_max",
        )?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::ChildStarted {
                    workflow: w,
                    run_id,
                    outcome,
                    ..
                } if w == workflow => Ok(outcome.map(|()| run_id)),
                other => Err(run.diverged(call, &other, format!("a start of child '{workflow}'"))),
            };
        }
        run.check_journal_room(1)?;
        let child_id = wasaga_journal::child_run_id(&run.log.run_id, call);
        let outcome = match run.child_refused(&workflow, &input, &child_id) {
            Some(reason) => Err(reason),
            None => run.create_child(&workflow, &input, &child_id).await?,
        };
        run.log.buffer(Event::ChildStarted {
            call,
            run_id: child_id.clone(),
            workflow,
            outcome: outcome.clone(),
        });
        Ok(outcome.map(|()| child_id))
    }

    async fn await_child(&mut self, run_id: String) -> wasmtime::Result<Result<String, String>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        let key_max = run.host.limits.key_bytes_max;
        run.check_size("a child's run id", run_id.len(), key_max, "key_bytes_max")?;
        match replayed {
            Some(replayed) => match (replayed.first, replayed.result) {
                (
                    Event::WaitStarted {
                        wait: Wait::Child { run_id: id },
                        ..
                    },
                    Some(Event::WaitEnded { outcome, .. }),
                ) if id == run_id => {
                    return Ok(match outcome {
                        WaitOutcome::Child { outcome } => outcome,
                        other => Err(format!("the wait ended unexpectedly: {other:?}")),
                    });
                }
                (
                    Event::WaitStarted {
                        wait: Wait::Child { run_id: id },
                        ..
                    },
                    None,
                ) if id == run_id && run.verifying => return Err(run.journal_end(call)),
                (
                    Event::WaitStarted {
                        wait: Wait::Child { run_id: id },
                        ..
                    },
                    None,
                ) if id == run_id => {}
                (other, _) => {
                    return Err(run.diverged(call, &other, format!("a wait for child {run_id}")));
                }
            },
            None => {
                let mine = run.events().any(|e| {
                    matches!(e, Event::ChildStarted { run_id: id, outcome: Ok(()), .. } if *id == run_id)
                });
                if !mine {
                    return Ok(Err(format!(
                        "{run_id} is not a child this run started (start it with start-child)"
                    )));
                }
                run.begin_wait(
                    call,
                    Wait::Child {
                        run_id: run_id.clone(),
                    },
                    NEVER,
                )?;
            }
        }
        let record = match run.log.journal.run(&run_id).await {
            Ok(record) => record,
            Err(e) => return Err(run.interrupted(e)),
        };
        let outcome = match record.status {
            RunStatus::Completed => Ok(record.output.unwrap_or_default()),
            RunStatus::Compensated => Err(record.error.unwrap_or_default()),
            _ => {
                return Err(run.suspend(
                    NEVER,
                    &Wait::Child {
                        run_id: run_id.clone(),
                    },
                    WakeCheck::Child { run_id },
                ));
            }
        };
        run.end_wait(
            call,
            WaitOutcome::Child {
                outcome: outcome.clone(),
            },
        )?;
        Ok(outcome)
    }
}

impl RunContext {
    /// Every event of the run so far: durable, then buffered.
    fn events(&self) -> impl Iterator<Item = &Event> {
        self.log.journaled.iter().chain(self.log.pending.iter())
    }

    /// Ends the run if a wait of `ms` is longer than the host allows.
    fn check_wait(&mut self, ms: u64) -> wasmtime::Result<()> {
        let max = self.host.limits.wait_ms_max;
        if ms > max {
            return Err(self.limit(format!(
                "a wait of {ms} ms is longer than wait_ms_max = {max}"
            )));
        }
        Ok(())
    }

    /// Journals (buffers) the start of a wait; the end follows, or the run suspends and the
    /// executor commits it.
    fn begin_wait(&mut self, call: u32, wait: Wait, due_ms: u64) -> wasmtime::Result<()> {
        self.check_journal_room(2)?;
        // A waiting run holds no lease: one the module still holds would pass to others
        // while it waits, which the module cannot know. (Locks the host keeps only for a
        // compensation go back to the backend and are taken again when the run resumes.)
        if let Some(lease) = self
            .locks
            .held()
            .into_iter()
            .find(|l| !self.deferred.contains(&l.key))
        {
            let message = format!(
                "a run may not wait while it holds lock '{}': release it before waiting",
                lease.key
            );
            self.fatal = Some(crate::store::Fatal::Failure(message.clone()));
            return Err(wasmtime::Error::msg(message));
        }
        self.log.buffer(Event::WaitStarted {
            call,
            wait,
            due_ms: (due_ms != NEVER).then_some(due_ms),
        });
        Ok(())
    }

    /// Journals (buffers) how a wait ended. Buffered is enough: nothing outside the run has
    /// seen it before the next durable write, and a replay after a crash looks again and finds
    /// the same (a timer stays passed, a signal stays kept, an ended child stays ended).
    fn end_wait(&mut self, call: u32, outcome: WaitOutcome) -> wasmtime::Result<()> {
        self.log.buffer(Event::WaitEnded { call, outcome });
        Ok(())
    }

    /// A sleep's replay: over if journaled so, else over now or still waiting.
    fn replay_sleep(
        &mut self,
        call: u32,
        replayed: Replayed,
        at_ms: Option<u64>,
    ) -> wasmtime::Result<()> {
        match (replayed.first, replayed.result) {
            (
                Event::WaitStarted {
                    wait: Wait::Timer,
                    due_ms: Some(due),
                    ..
                },
                result,
            ) if at_ms.is_none_or(|at| at == due) => match result {
                Some(_) => Ok(()),
                None if self.verifying => Err(self.journal_end(call)),
                None => self.sleep_until_due(call, due),
            },
            (other, _) => Err(self.diverged(call, &other, "a sleep".to_owned())),
        }
    }

    /// Ends the sleep of `call` if `due` has passed, else suspends the run until then.
    fn sleep_until_due(&mut self, call: u32, due: u64) -> wasmtime::Result<()> {
        let now = now_ms();
        if now >= due {
            return self.end_wait(call, WaitOutcome::Due { at_ms: now });
        }
        Err(self.suspend(due, &Wait::Timer, WakeCheck::Timer))
    }

    /// Why the run may not start `workflow` as a child on `input`, if it may not.
    fn child_refused(&self, workflow: &str, input: &str, child_id: &str) -> Option<String> {
        if let Some(grant) = &self.grant
            && !grant.allows_child(workflow)
        {
            return Some(format!(
                "workflow is not granted child workflow '{workflow}'; list it in the config's [workflows.<name>] children"
            ));
        }
        if let Some(grants) = &self.host.grants
            && !grants.workflows.contains_key(workflow)
        {
            return Some(format!(
                "workflow '{workflow}' has no grant in the config, so it may not run: add a [workflows.{workflow}] section"
            ));
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(input) {
            return Some(format!("the child's input is not valid JSON: {e}"));
        }
        if child_id.len() > 128 {
            return Some(format!(
                "the child's run id {child_id} would be over 128 characters: give the parent a shorter run id"
            ));
        }
        None
    }

    /// Creates the child run (unless a crash left it created already): the parent is made
    /// durable first, so no child ever names a parent that does not exist.
    async fn create_child(
        &mut self,
        workflow: &str,
        input: &str,
        child_id: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        if self.log.unstarted.is_some()
            && let Err(e) = self.log.commit(Vec::new()).await
        {
            return Err(self.interrupted(e));
        }
        let journal = self.log.journal.clone();
        let active = match journal.active(workflow).await {
            Ok(active) => active,
            Err(JournalError::UnknownWorkflow(_)) => {
                return Ok(Err(format!(
                    "workflow '{workflow}' is not deployed; deploy it before starting it as a child"
                )));
            }
            Err(e) => return Err(self.interrupted(e)),
        };
        let started = Event::Started {
            workflow: workflow.to_owned(),
            module_hash: active.hash,
            input: input.to_owned(),
            started_at_ms: now_ms(),
            // The child's spans belong to its parent's trace.
            traceparent: crate::trace::current_traceparent(self.log.journaled.first()),
        };
        match journal
            .create_child(child_id, &self.log.run_id, &started)
            .await
        {
            Ok(created) => {
                if created {
                    self.host.metrics.journaled(workflow, &started);
                }
                Ok(Ok(()))
            }
            // Another run holds the id (one written before child ids had a separator of
            // their own): it is not this parent's child, and is never adopted as one.
            Err(JournalError::RunExists(_)) => Ok(Err(format!(
                "run id {child_id} is taken by a run that is not a child of {}: the child was not started",
                self.log.run_id
            ))),
            Err(e) => Err(self.interrupted(e)),
        }
    }
}

/// The ids of the signals a run's journal consumed.
fn consumed_signals<'a>(events: impl Iterator<Item = &'a Event>) -> HashSet<String> {
    events
        .filter_map(|e| match e {
            Event::WaitEnded {
                outcome: WaitOutcome::Signal { signal_id, .. },
                ..
            } => Some(signal_id.clone()),
            _ => None,
        })
        .collect()
}
