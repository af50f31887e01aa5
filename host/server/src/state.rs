//! What every request handler shares: the host, the token, the bounds on what is served
//! at once, the background drives in flight (which shutdown waits for), and the limits on
//! request sizes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Notify;
use wasaga_core::event::RunStatus;
use wasaga_runtime::executor::Host;
use wasaga_runtime::store::no_observer;

/// How long a start request may wait for its run's outcome (`?wait_ms=`).
pub const WAIT_MS_MAX: u64 = 60_000;

/// Runs listed by one request at most.
pub const LIST_LIMIT_MAX: u32 = 1_000;
/// The inputs, outputs and errors one listing of runs carries at most; a page stops at the
/// run that passes it (its `next` goes on from there).
pub const LIST_BYTES_MAX: usize = 4 << 20;
/// Runs read from the journal at a time while a listing fills its page.
pub const LIST_CHUNK: u32 = 100;
/// Listings of runs served at once; more wait (up to `LISTING_WAIT_MS`), then get 503.
pub const LISTINGS_CONCURRENT_MAX: usize = 8;
/// How long a listing waits for its turn.
pub const LISTING_WAIT_MS: u64 = 5_000;

/// Runs one claim takes over at most.
pub(crate) const CLAIM_BATCH_MAX: u32 = 64;

/// Requests served at once; one more is answered 503 at once, before its body is read.
pub const REQUESTS_CONCURRENT_MAX: usize = 512;

/// Module uploads read at once (each may buffer up to `MODULE_BYTES_MAX`).
pub const UPLOADS_CONCURRENT_MAX: usize = 2;

/// A start request's body beyond the run input it carries (`run_id`, the JSON around it).
pub(crate) const START_ENVELOPE_BYTES_MAX: usize = 4 << 10;

/// The body of a cancel request (`{"reason": "...", "by": "..."}`).
pub(crate) const CANCEL_BYTES_MAX: usize = 4 << 10;

/// The body of a rollback request (`{"version": N}`).
pub(crate) const ROLLBACK_BYTES_MAX: usize = 1 << 10;

/// How much of an unauthenticated request's body is read (and dropped as it arrives, so it
/// costs no memory) before answering 401, so that an upload of that size gets its answer
/// rather than a broken pipe; anything larger is cut off.
pub(crate) const UNAUTHORIZED_DRAIN_BYTES_MAX: usize = 256 << 10;

/// How long that reading may take.
pub(crate) const UNAUTHORIZED_DRAIN_MS_MAX: u64 = 2_000;

/// How long `/readyz` answers from its last journal check.
pub(crate) const READY_CHECK_MS: u64 = 1_000;

/// Background drives in flight, so shutdown can wait for them.
#[derive(Default)]
pub(crate) struct InFlight {
    pub(crate) count: AtomicUsize,
    pub(crate) idle: Notify,
}

pub(crate) struct InFlightGuard(pub(crate) Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// When `/readyz` last reached the journal, and what it found.
pub(crate) type ReadyCheck = (Instant, Result<(), String>);

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) host: Host,
    pub(crate) token: Arc<str>,
    pub(crate) in_flight: Arc<InFlight>,
    /// Bounds the requests served at once (`REQUESTS_CONCURRENT_MAX`).
    pub(crate) requests: Arc<tokio::sync::Semaphore>,
    /// Bounds the module uploads read at once (`UPLOADS_CONCURRENT_MAX`).
    pub(crate) uploads: Arc<tokio::sync::Semaphore>,
    /// When `/readyz` last reached the journal, and what it found.
    pub(crate) ready: Arc<tokio::sync::Mutex<Option<ReadyCheck>>>,
    /// Tells the claim loop to look now: a signal or a cancellation woke a waiting run.
    pub(crate) wake: Arc<Notify>,
    /// What `/metrics` encodes.
    pub(crate) scrapes: Arc<crate::metrics::Scrapes>,
    /// Timers this host set to wake the claim loop when a short wait comes due.
    pub(crate) wake_timers: Arc<AtomicUsize>,
    /// How deploys check a new version unless the request says otherwise (`[deploy]`).
    pub(crate) deploy: wasaga_runtime::upgrade::DeployOptions,
    /// Wrong sign-ins refused this second.
    pub(crate) refusals: Arc<crate::console::Refusals>,
    /// Console sessions signed out.
    pub(crate) revoked: Arc<crate::console::Revoked>,
    /// Bounds the run listings served at once (each may hold many runs' inputs).
    pub(crate) listings: Arc<tokio::sync::Semaphore>,
}

/// Waits due within this long of leaving the host get a timer of their own here, so that a
/// short sleep does not last until the claim loop's next look (up to a second).
pub(crate) const WAKE_TIMER_MS_MAX: u64 = 60_000;
/// Such timers at once, at most; past that the claim loop alone takes waits up.
pub(crate) const WAKE_TIMERS_MAX: usize = 10_000;

impl AppState {
    /// Drives `run_id` in the background.
    pub(crate) fn spawn_drive(&self, run_id: String) {
        self.in_flight.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(self.in_flight.clone());
        let (host, state) = (self.host.clone(), self.clone());
        tokio::spawn(async move {
            let _guard = guard;
            match host.drive(&run_id, no_observer()).await {
                Ok(outcome) if outcome.status == RunStatus::Stuck => tracing::warn!(
                    "run {run_id} is stuck: {:?}",
                    outcome.error.unwrap_or_default()
                ),
                Ok(outcome) => state.wake_for(&outcome),
                Err(e) => tracing::warn!("run {run_id} stopped: {:?}", e.to_string()),
            }
        });
    }

    /// If `outcome` is a run that now waits for a timer due soon, wakes the claim loop when it
    /// is due (the claim, not this timer, decides: the run may have been woken meanwhile, or
    /// another host may take it).
    pub(crate) fn wake_for(&self, outcome: &wasaga_runtime::RunOutcome) {
        let Some(waiting) = &outcome.waiting else {
            return;
        };
        let now = wasaga_core::clock::now_ms();
        if waiting.wake_at_ms <= now {
            self.wake.notify_one();
            return;
        }
        let delay_ms = waiting.wake_at_ms - now;
        if delay_ms > WAKE_TIMER_MS_MAX {
            return;
        }
        if self.wake_timers.fetch_add(1, Ordering::SeqCst) >= WAKE_TIMERS_MAX {
            self.wake_timers.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let (wake, timers) = (self.wake.clone(), self.wake_timers.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            wake.notify_one();
            timers.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
