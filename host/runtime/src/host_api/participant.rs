//! `wasaga:workflow/participant`: saga steps. The step's intent (action and compensation) is
//! durable before the participant is called; its outcome is durable before the module sees it.

use crate::bindings::wasaga::workflow::participant::Host;
use crate::bindings::wasaga::workflow::types::{Call, CallError};
use crate::store::{Refusals, RunState};
use tracing::Instrument;
use wasaga_core::event::{CallFailure, CallSpec, Event};
use wasaga_participants::ParticipantRequest;

impl Host for RunState {
    async fn step(
        &mut self,
        name: String,
        action: Call,
        compensation: Option<Call>,
    ) -> wasmtime::Result<Result<String, CallError>> {
        let run = &mut self.run;
        let action = CallSpec::from(action);
        let compensation = compensation.map(CallSpec::from);
        let (call, replayed) = run.begin_call()?;
        let name_bytes_max = run.host.limits.name_bytes_max;
        run.check_size("a step name", name.len(), name_bytes_max, "name_bytes_max")?;
        run.check_call_size(&action)?;
        if let Some(compensation) = &compensation {
            run.check_call_size(compensation)?;
        }
        let made = || format!("step '{name}' ({}.{})", action.participant, action.action);
        let (before, fencing_tokens) = match replayed {
            Some(replayed) => {
                let fencing_tokens = match &replayed.first {
                    Event::StepIntent {
                        name: n,
                        action: a,
                        compensation: c,
                        fencing_tokens,
                        ..
                    } if *n == name && *a == action && *c == compensation => fencing_tokens.clone(),
                    other => return Err(run.diverged(call, other, made())),
                };
                run.step_names.insert(name.clone());
                match replayed.result {
                    Some(Event::StepDone { output, .. }) => return Ok(Ok(output)),
                    Some(Event::StepFailed { error, .. }) => return Ok(Err(error.into())),
                    // The intent is journaled but not the outcome (the host died in between):
                    // repeat the call with the same idempotency key (and tokens) to learn it.
                    _ if run.verifying => return Err(run.journal_end(call)),
                    _ => (Vec::new(), fencing_tokens),
                }
            }
            None => {
                run.check_journal_room(2)?;
                let fencing_tokens = run.fencing_tokens();
                let intent = Event::StepIntent {
                    call,
                    name: name.clone(),
                    action: action.clone(),
                    compensation: compensation.clone(),
                    fencing_tokens: fencing_tokens.clone(),
                };
                if let Err(reason) = check_step(run, &name, &action, compensation.as_ref()) {
                    let failure = CallFailure::Rejected(reason);
                    let failed = Event::StepFailed {
                        call,
                        error: failure.clone(),
                    };
                    run.log
                        .commit(vec![intent, failed])
                        .await
                        .map_err(|e| run.interrupted(e))?;
                    return Ok(Err(failure.into()));
                }
                (vec![intent], fencing_tokens)
            }
        };
        run.step_names.insert(name.clone());
        let span = crate::trace::call_span(crate::trace::CallKind::Step, &name, &action, call);
        let route = match run.host.participants.route(&action) {
            Ok(route) => route,
            Err(reason) => {
                // Only reachable on replay under a host whose participants changed.
                let failure = CallFailure::Rejected(reason);
                let mut events = before;
                events.push(Event::StepFailed {
                    call,
                    error: failure.clone(),
                });
                run.log
                    .commit(events)
                    .await
                    .map_err(|e| run.interrupted(e))?;
                return Ok(Err(failure.into()));
            }
        };
        let request = ParticipantRequest {
            run_id: run.log.run_id.clone(),
            op_id: wasaga_participants::op_key::step(&run.log.run_id, &name),
            undoes: None,
            fencing_tokens,
            traceparent: span
                .in_scope(|| crate::trace::current_traceparent(run.log.journaled.first())),
            call: action,
        };
        let host = run.host.clone();
        let payload_bytes_max = host.limits.payload_bytes_max;
        let after: crate::store::After =
            std::sync::Arc::new(move |outcome: &Result<String, CallFailure>| {
                Some(match outcome {
                    Ok(output) if output.len() > payload_bytes_max => Event::StepFailed {
                        call,
                        error: CallFailure::Unknown(format!(
                            "reply of {} bytes exceeds payload_bytes_max = {payload_bytes_max}",
                            output.len()
                        )),
                    },
                    Ok(output) => Event::StepDone {
                        call,
                        output: output.clone(),
                    },
                    Err(error) => Event::StepFailed {
                        call,
                        error: error.clone(),
                    },
                })
            });
        let outcome = run
            .log
            .call_step(
                &host,
                route,
                &request,
                before,
                after,
                call,
                host.limits.step_retries_max,
            )
            .instrument(span.clone())
            .await
            .map_err(|e| run.interrupted(e))?;
        crate::trace::call_ended(&span, &outcome);
        Ok(match outcome {
            Ok(output) if output.len() > payload_bytes_max => Err(CallError::Unknown(format!(
                "reply of {} bytes exceeds payload_bytes_max = {payload_bytes_max}",
                output.len()
            ))),
            Ok(output) => Ok(output),
            Err(failure) => Err(failure.into()),
        })
    }

    async fn commit_all(
        &mut self,
        calls: Vec<Call>,
    ) -> wasmtime::Result<Result<Vec<String>, CallError>> {
        use crate::two_phase::{self, Known};
        let run = &mut self.run;
        let calls: Vec<CallSpec> = calls.into_iter().map(CallSpec::from).collect();
        let (call, replayed) = run.begin_call()?;
        let branches_max = run.host.limits.branches_max;
        if calls.len() > branches_max {
            return Err(run.limit(format!(
                "commit-all of {} calls is over branches_max = {branches_max}",
                calls.len()
            )));
        }
        for spec in &calls {
            run.check_call_size(spec)?;
        }
        let xid = wasaga_participants::op_key::transaction(&run.log.run_id, call);
        let known = match replayed {
            Some(replayed) => {
                match &replayed.first {
                    Event::TwoPhaseStarted {
                        calls: journaled, ..
                    } if *journaled == calls => {}
                    other => {
                        return Err(run.diverged(
                            call,
                            other,
                            format!("commit-all of {} calls", calls.len()),
                        ));
                    }
                }
                if let Some(Event::TwoPhaseFinished { outcome, .. }) = replayed.result {
                    return Ok(outcome.map_err(Into::into));
                }
                if run.verifying {
                    return Err(run.journal_end(call));
                }
                match replayed.decision {
                    Some(Event::TwoPhaseDecided { commit, reason, .. }) => {
                        Known::Decided { commit, reason }
                    }
                    _ => Known::Undecided,
                }
            }
            None => {
                run.check_journal_room(3)?;
                let started = Event::TwoPhaseStarted {
                    call,
                    xid: xid.clone(),
                    calls: calls.clone(),
                };
                let granted = calls
                    .iter()
                    .try_for_each(|c| run.check_granted(&c.participant));
                if let Err(reason) = granted.and_then(|()| two_phase::check(&run.host, &calls)) {
                    let outcome = Err(CallFailure::Rejected(reason.clone()));
                    let events = vec![
                        started,
                        Event::TwoPhaseDecided {
                            call,
                            commit: false,
                            reason: Some(reason),
                        },
                        Event::TwoPhaseFinished {
                            call,
                            outcome: outcome.clone(),
                        },
                    ];
                    run.log
                        .commit(events)
                        .await
                        .map_err(|e| run.interrupted(e))?;
                    return Ok(outcome.map_err(Into::into));
                }
                run.log
                    .commit(vec![started])
                    .await
                    .map_err(|e| run.interrupted(e))?;
                Known::New
            }
        };
        let host = run.host.clone();
        match two_phase::drive(&host, &mut run.log, call, &xid, &calls, known).await {
            Ok(outcome) => Ok(outcome.map_err(Into::into)),
            Err(stalled) => {
                run.fatal = Some(crate::store::Fatal::Interrupted(stalled.clone()));
                Err(wasmtime::Error::msg(stalled))
            }
        }
    }

    async fn read(
        &mut self,
        participant: String,
        key: String,
    ) -> wasmtime::Result<Result<(String, u64), CallError>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        run.check_key_size(&participant, &key)?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::Read {
                    participant: p,
                    key: k,
                    outcome,
                    ..
                } if p == participant && k == key => Ok(outcome.map_err(Into::into)),
                other => Err(run.diverged(call, &other, format!("read of {participant} '{key}'"))),
            };
        }
        run.check_journal_room(1)?;
        let routed = run
            .check_granted(&participant)
            .and_then(|()| run.host.participants.route_versioned(&participant));
        let outcome = match routed {
            Ok(()) => run.host.participants.read(&key).await,
            Err(reason) => Err(CallFailure::Rejected(reason)),
        };
        // A read changes nothing anywhere: like a clock read, its result commits with the
        // run's next durable write.
        run.log.buffer(Event::Read {
            call,
            participant,
            key,
            outcome: outcome.clone(),
        });
        Ok(outcome.map_err(Into::into))
    }

    async fn write_if(
        &mut self,
        participant: String,
        key: String,
        expected_version: u64,
        value: String,
    ) -> wasmtime::Result<Result<u64, CallError>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        run.check_key_size(&participant, &key)?;
        let payload_bytes_max = run.host.limits.payload_bytes_max;
        run.check_size(
            "a value",
            value.len(),
            payload_bytes_max,
            "payload_bytes_max",
        )?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::WriteIf {
                    participant: p,
                    key: k,
                    expected_version: e,
                    value: v,
                    outcome,
                    ..
                } if p == participant && k == key && e == expected_version && v == value => {
                    Ok(outcome.map_err(Into::into))
                }
                other => {
                    Err(run.diverged(call, &other, format!("write-if of {participant} '{key}'")))
                }
            };
        }
        run.check_journal_room(1)?;
        let max = run.host.limits.payload_bytes_max;
        let checked = run
            .check_granted(&participant)
            .and_then(|()| run.host.participants.route_versioned(&participant))
            .and_then(|()| {
                if value.len() > max {
                    return Err(format!(
                        "value of {} bytes is over payload_bytes_max = {max}",
                        value.len()
                    ));
                }
                serde_json::from_str::<serde_json::Value>(&value)
                    .map_err(|e| format!("write-if value is not JSON: {e}"))
            });
        let parsed = match checked {
            Ok(parsed) => parsed,
            Err(reason) => {
                let outcome = Err(CallFailure::Rejected(reason));
                let event = Event::WriteIf {
                    call,
                    participant,
                    key,
                    expected_version,
                    value,
                    outcome: outcome.clone(),
                };
                run.log
                    .commit(vec![event])
                    .await
                    .map_err(|e| run.interrupted(e))?;
                return Ok(outcome.map_err(Into::into));
            }
        };
        let action = CallSpec {
            participant: participant.clone(),
            action: "write".to_owned(),
            payload: serde_json::json!({ "key": key, "value": parsed, "expected_version": expected_version })
                .to_string(),
        };
        let route = run
            .host
            .participants
            .route(&action)
            .map_err(wasmtime::Error::msg)?;
        let request = ParticipantRequest {
            run_id: run.log.run_id.clone(),
            op_id: wasaga_participants::op_key::write(&run.log.run_id, call),
            undoes: None,
            fencing_tokens: run.fencing_tokens(),
            call: action,
            traceparent: crate::trace::current_traceparent(run.log.journaled.first()),
        };
        let (p, k, v) = (participant.clone(), key.clone(), value.clone());
        let after: crate::store::After =
            std::sync::Arc::new(move |outcome: &Result<String, CallFailure>| {
                Some(Event::WriteIf {
                    call,
                    participant: p.clone(),
                    key: k.clone(),
                    expected_version,
                    value: v.clone(),
                    outcome: new_version(outcome),
                })
            });
        let host = run.host.clone();
        let outcome = run
            .log
            .call(
                &host,
                route,
                &request,
                Vec::new(),
                after,
                host.limits.step_retries_max,
                Refusals::Final,
            )
            .await
            .map_err(|e| run.interrupted(e))?;
        let outcome = new_version(&outcome);
        if let Err(CallFailure::Rejected(reason)) = &outcome
            && reason.starts_with("version conflict")
        {
            // Writers that collided all retry from a fresh read; a random pause spreads them
            // out so that the same ones do not collide again (timing only: nothing here is
            // seen by the module, so replay is unaffected).
            let pause_ms = 1 + rand::random::<u64>() % 8;
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        }
        Ok(outcome.map_err(Into::into))
    }
}

/// Checks a new step before anything is performed; the error is its rejection.
fn check_step(
    run: &crate::store::RunContext,
    name: &str,
    action: &CallSpec,
    compensation: Option<&CallSpec>,
) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err("step names must be 1 to 128 printable characters".to_owned());
    }
    if run.step_names.contains(name) {
        return Err(format!(
            "step name '{name}' is already used in this run; step names must be unique (they key idempotency)"
        ));
    }
    let max = run.host.limits.payload_bytes_max;
    for call in std::iter::once(action).chain(compensation) {
        if call.payload.len() > max {
            return Err(format!(
                "payload of {}.{} is {} bytes, over payload_bytes_max = {max}",
                call.participant,
                call.action,
                call.payload.len()
            ));
        }
        run.host.participants.route(call)?;
        run.check_granted_action(call)?;
    }
    Ok(())
}

/// The version a ledger `write` reply reports.
fn new_version(outcome: &Result<String, CallFailure>) -> Result<u64, CallFailure> {
    match outcome {
        Ok(reply) => serde_json::from_str::<serde_json::Value>(reply)
            .ok()
            .and_then(|r| r["version"].as_u64())
            .ok_or_else(|| CallFailure::Unknown(format!("write reply without a version: {reply}"))),
        Err(e) => Err(e.clone()),
    }
}
