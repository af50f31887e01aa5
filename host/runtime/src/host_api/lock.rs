//! `wasaga:workflow/lock`: leases owned by the run, with fencing tokens, renewed by the host
//! while the run executes. The host releases whatever the run still holds when it ends.

use crate::bindings::wasaga::workflow::lock::{Host, Lease};
use crate::store::RunState;
use wasaga_core::event::Event;

impl Host for RunState {
    async fn acquire(
        &mut self,
        key: String,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> wasmtime::Result<Result<Lease, String>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        let key_bytes_max = run.host.limits.key_bytes_max;
        run.check_size("a lock key", key.len(), key_bytes_max, "key_bytes_max")?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::LockAcquired {
                    key: k,
                    ttl_ms: t,
                    fencing_token,
                    expires_at_ms,
                    ..
                } if k == key && t == ttl_ms => {
                    // A resumed run took its locks back before replaying: it holds that
                    // grant now. The module still sees the journaled one (replay).
                    let lease = run
                        .reacquired
                        .get(&key)
                        .cloned()
                        .unwrap_or(wasaga_locks::Lease {
                            key: key.clone(),
                            owner: run.host.lock_owner(&run.log.run_id),
                            fencing_token,
                            ttl_ms,
                            expires_at_ms,
                        });
                    // A check of a module holds nothing: the lease is the run's, elsewhere.
                    if !run.verifying {
                        run.hold(lease);
                    }
                    Ok(Ok(Lease {
                        key,
                        fencing_token,
                        expires_at_ms,
                    }))
                }
                Event::LockFailed {
                    key: k,
                    ttl_ms: t,
                    reason,
                    ..
                } if k == key && t == ttl_ms => Ok(Err(reason)),
                other => Err(run.diverged(call, &other, format!("lock acquire '{key}'"))),
            };
        }
        run.check_journal_room(1)?;
        let limits = &run.host.limits;
        let refused = match &run.grant {
            Some(grant) if !grant.allows_lock(&key) => Some(format!(
                "workflow is not granted lock '{key}' (granted prefixes: {}); grant a prefix of it in the config's [workflows.<name>] lock_prefixes",
                if grant.lock_prefixes.is_empty() {
                    "none".to_owned()
                } else {
                    grant.lock_prefixes.join(", ")
                }
            )),
            _ => None,
        };
        let event = if let Some(reason) = refused {
            Event::LockFailed {
                call,
                key: key.clone(),
                ttl_ms,
                reason,
            }
        } else if ttl_ms == 0 || ttl_ms > limits.lock_ttl_ms_max || key.is_empty() {
            Event::LockFailed {
                call,
                key: key.clone(),
                ttl_ms,
                reason: format!(
                    "a lock needs a key of 1 to {} bytes and a ttl between 1 and {} ms",
                    limits.key_bytes_max, limits.lock_ttl_ms_max
                ),
            }
        } else {
            let wait_ms = wait_ms.min(limits.lock_wait_ms_max);
            let host = run.host.clone();
            let owner = host.lock_owner(&run.log.run_id);
            // A run not yet created (by its first write) that must wait for a lock is created
            // first: whoever started it learns that it exists rather than wait for the lock.
            let asked = std::time::Instant::now();
            let mut first = None;
            if run.log.unstarted.is_some() && wait_ms > 0 {
                match host.locks.acquire(&key, &owner, ttl_ms, 0).await {
                    Err(wasaga_locks::LockError::Timeout { .. }) => run
                        .log
                        .commit(Vec::new())
                        .await
                        .map_err(|e| run.interrupted(e))?,
                    other => first = Some(other),
                }
            }
            let acquired = if let Some(acquired) = first {
                acquired
            } else {
                tokio::select! {
                acquired = host.locks.acquire(&key, &owner, ttl_ms, wait_ms) => acquired,
                // A shutdown does not wait for a lock: the run stops here, unjournaled, and
                // asks again when it resumes. A lease granted in the race expires by its ttl.
                () = host.stopped() => {
                    let reason = "the host is shutting down; the run resumes when a host starts again";
                    run.fatal = Some(crate::store::Fatal::Interrupted(reason.to_owned()));
                    return Err(wasmtime::Error::msg(reason));
                }
                // A cancelled run stops waiting and compensates.
                reason = run.live.cancelled() => {
                    return Err(run.cancelled(reason));
                }
                // Nor does a run another host has taken over: that host drives it now.
                () = run.live.lost() => {
                    let reason = "another host took the run over after this host's lease on it expired";
                    run.fatal = Some(crate::store::Fatal::Interrupted(reason.to_owned()));
                    return Err(wasmtime::Error::msg(reason));
                }
                }
            };
            match acquired {
                Ok(lease) => {
                    let event = Event::LockAcquired {
                        call,
                        key: key.clone(),
                        ttl_ms,
                        fencing_token: lease.fencing_token,
                        expires_at_ms: lease.expires_at_ms,
                        waited_ms: asked.elapsed().as_millis() as u64,
                    };
                    run.hold(lease);
                    event
                }
                Err(e) => Event::LockFailed {
                    call,
                    key: key.clone(),
                    ttl_ms,
                    reason: e.to_string(),
                },
            }
        };
        if let Err(e) = run.log.commit(vec![event.clone()]).await {
            // A lease the journal does not record would be held until it expires (this host
            // lost the run, say): give it back now.
            if let Event::LockAcquired { .. } = event
                && fencing_token_of(&event) != 0
                && let Some(lease) = run.locks.unhold(&key)
            {
                let host = run.host.clone();
                let _ = host.locks.release(&lease).await;
            }
            return Err(run.interrupted(e));
        }
        Ok(match event {
            Event::LockAcquired {
                fencing_token,
                expires_at_ms,
                ..
            } => Ok(Lease {
                key,
                fencing_token,
                expires_at_ms,
            }),
            Event::LockFailed { reason, .. } => Err(reason),
            _ => unreachable!("acquire journals only lock events"),
        })
    }

    async fn release(&mut self, lease: Lease) -> wasmtime::Result<Result<(), String>> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        let key_bytes_max = run.host.limits.key_bytes_max;
        run.check_size(
            "a lock key",
            lease.key.len(),
            key_bytes_max,
            "key_bytes_max",
        )?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::LockReleased {
                    key, fencing_token, ..
                } if key == lease.key && fencing_token == lease.fencing_token => {
                    if crate::store::guards_compensation(&run.log.journaled, &key, call) {
                        run.deferred.insert(key);
                    } else {
                        run.locks.unhold(&key);
                    }
                    Ok(Ok(()))
                }
                other => Err(run.diverged(call, &other, format!("lock release '{}'", lease.key))),
            };
        }
        if run.deferred.contains(&lease.key) || run.locks.get(&lease.key).is_none() {
            return Ok(Err(format!(
                "this run does not hold lock '{}' with fencing token {}",
                lease.key, lease.fencing_token
            )));
        }
        run.check_journal_room(1)?;
        // Journal first: if the host dies after releasing, replay must not think it still
        // holds the lock. A release the backend misses only delays the next holder until the
        // lease expires.
        let event = Event::LockReleased {
            call: Some(call),
            key: lease.key.clone(),
            fencing_token: lease.fencing_token,
        };
        run.log
            .commit(vec![event])
            .await
            .map_err(|e| run.interrupted(e))?;
        // A step with a compensation taken under this lock may still be undone, should the
        // run fail later: the undo must run under the lock too, so the host keeps it (and
        // renews it) until the run ends. The module sees the release as done.
        if crate::store::guards_compensation(&run.log.journaled, &lease.key, call) {
            run.deferred.insert(lease.key);
            return Ok(Ok(()));
        }
        let Some(held) = run.locks.unhold(&lease.key) else {
            return Ok(Ok(()));
        };
        let host = run.host.clone();
        Ok(host.locks.release(&held).await.map_err(|e| e.to_string()))
    }
}

fn fencing_token_of(event: &Event) -> u64 {
    match event {
        Event::LockAcquired { fencing_token, .. } => *fencing_token,
        _ => 0,
    }
}
