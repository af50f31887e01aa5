//! What every run of a host shares, and what a run's store holds of its host: the journal,
//! participants, locks, limits and grants, the runs being driven, and the shutdown signal.
//! The engine is not here: it is the executor's, and a store never needs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasaga_core::clock::now_ms;
use wasaga_core::limits::{Grant, Grants, Limits};
use wasaga_db::Database;
use wasaga_journal::Journal;
use wasaga_locks::{Lease, LockService};
use wasaga_participants::Participants;

/// A run this host is driving right now.
#[derive(Debug, Default)]
pub(crate) struct LiveRun {
    /// Set when the renewal found that another host has taken the run over.
    pub lost: AtomicBool,
    /// Wakes a run waiting (for a lock) when it is lost or cancelled.
    pub lost_signal: tokio::sync::Notify,
    /// Set when someone asked for the run to be cancelled: who, and why.
    pub cancelled: Mutex<Option<String>>,
}

impl LiveRun {
    pub(crate) fn lose(&self) {
        self.lost.store(true, Ordering::Relaxed);
        self.lost_signal.notify_waiters();
    }

    /// Tells the run to stop and compensate at its next journal point (a lock wait ends at
    /// once, a computing module at its next epoch tick).
    pub(crate) fn cancel(&self, reason: &str) {
        let mut cancelled = self.cancelled.lock().expect("cancel lock poisoned");
        if cancelled.is_none() {
            *cancelled = Some(reason.to_owned());
        }
        drop(cancelled);
        self.lost_signal.notify_waiters();
    }

    /// Why the run was cancelled, if it was.
    pub(crate) fn cancellation(&self) -> Option<String> {
        self.cancelled.lock().expect("cancel lock poisoned").clone()
    }

    /// Completes once the run is cancelled.
    pub(crate) async fn cancelled(&self) -> String {
        loop {
            let notified = self.lost_signal.notified();
            if let Some(reason) = self.cancellation() {
                return reason;
            }
            notified.await;
        }
    }

    /// Completes once the run is lost.
    pub(crate) async fn lost(&self) {
        loop {
            let notified = self.lost_signal.notified();
            if self.lost.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

/// Shared by every run of a host.
#[derive(Debug)]
pub(crate) struct HostInner {
    pub journal: Journal,
    pub ledger_db: Arc<Database>,
    pub participants: Participants,
    pub locks: Box<dyn LockService>,
    pub limits: Limits,
    pub grants: Option<Grants>,
    /// One permit per instance slot of the pool: a run waits here for a slot rather than
    /// failing when `concurrent_runs_max` modules are already executing.
    pub executions: tokio::sync::Semaphore,
    /// Runs being driven, whose leases the renewal task extends.
    pub live: Mutex<HashMap<String, Arc<LiveRun>>>,
    /// Module instances alive now (a store exists): a waiting run has none.
    pub instances: std::sync::atomic::AtomicUsize,
    /// Set when the host is shutting down: runs stop at their next journal point.
    pub stopping: AtomicBool,
    /// Wakes runs that wait (for a lock) when the host starts shutting down.
    pub stop_signal: tokio::sync::watch::Sender<bool>,
    /// Names the journal in lock owners: run ids are unique only within one journal, and
    /// hosts with journals of their own may share a lock backend.
    pub lock_owner_prefix: String,
    /// Slots for modules that compute through a whole epoch tick without a host call: at most
    /// this many such modules run at once, so a crowd of spinning modules cannot starve the
    /// runs that do their work in host calls (see `new_store`).
    pub compute_slots: Arc<tokio::sync::Semaphore>,
    /// What this host counts of its runs (`/metrics`).
    pub metrics: crate::metrics::RunMetrics,
    /// Whether runs get a trace of their own when started without one.
    pub trace_runs: bool,
    /// Held through a checked deploy, so that two deploys on this host do not interleave
    /// their checks, activations and moves of runs.
    pub deploying: tokio::sync::Mutex<()>,
}

impl HostInner {
    /// Who owns `run_id`'s locks: the run, of this journal. Stable across restarts (a resumed
    /// run takes back its own lease at once); never containing `|`, which the Redis backend
    /// uses to end the owner in a grant.
    pub(crate) fn lock_owner(&self, run_id: &str) -> String {
        format!("{}#{run_id}", self.lock_owner_prefix)
    }

    /// Whether a run must stop at its next host call, and why.
    pub(crate) fn stop_reason(&self, live: &LiveRun) -> Option<&'static str> {
        if live.lost.load(Ordering::Relaxed) {
            Some("another host took the run over after this host's lease on it expired")
        } else if self.stopping.load(Ordering::Relaxed) {
            Some("the host is shutting down; the run resumes when a host starts again")
        } else {
            None
        }
    }

    /// Completes when the host starts shutting down.
    pub(crate) async fn stopped(&self) {
        let mut signal = self.stop_signal.subscribe();
        // The sender lives as long as the host, so this only ends by the flag turning true.
        let _ = signal.wait_for(|stopping| *stopping).await;
    }

    /// The grant of `workflow`, or `None` when no grants are configured (everything allowed).
    pub(crate) fn grant(&self, workflow: &str) -> Option<Arc<Grant>> {
        self.grants
            .as_ref()
            .map(|grants| Arc::new(grants.workflows.get(workflow).cloned().unwrap_or_default()))
    }
}

/// Keeps the run's leases alive while its module executes: each lease is extended once a
/// third of its ttl is left. A lease that cannot be extended has passed to someone else; the
/// run goes on, and participants refuse its stale fencing token.
pub(crate) async fn renew(host: Arc<HostInner>, leases: Arc<std::sync::Mutex<Vec<Lease>>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let due: Vec<Lease> = {
            let leases = leases.lock().expect("lease list lock poisoned");
            let now = now_ms();
            leases
                .iter()
                .filter(|l| l.expires_at_ms.saturating_sub(now) < u64::from(l.ttl_ms) / 3)
                .cloned()
                .collect()
        };
        for lease in due {
            if let Ok(extended) = host.locks.extend(&lease).await {
                let mut leases = leases.lock().expect("lease list lock poisoned");
                if let Some(held) = leases
                    .iter_mut()
                    .find(|l| l.key == lease.key && l.fencing_token == lease.fencing_token)
                {
                    held.expires_at_ms = extended.expires_at_ms;
                }
            }
        }
    }
}
