//! Waiting in line for a lock within one host. Runs of this host that want a key another of
//! its runs holds do not poll the backend: they queue, first come first served, and the
//! holder's release hands the lock to the first in line directly (for the backends that can,
//! one write that moves the grant to the new owner with a new fencing token; otherwise the
//! lock is released and the first in line asks the backend at once). Only the run at the
//! head of a key's line talks to the backend, so runs of one host never race each other for
//! a key, and no failed attempt of theirs is written anywhere.
//!
//! Fairness across hosts is the backend's: after [`HANDOVERS_MAX`] hand-overs in a row the
//! holder releases to the backend instead, and the next in line asks like anyone else, so a
//! queue on one host cannot keep a key from the others for long: every backend keeps the
//! hosts' waiting heads in the order they asked (ZooKeeper's sequence, the row backends'
//! `lock_waiters`, Redis's sorted sets), and a released key goes to the earliest of them. A
//! run at the head of a line whose holder neither releases nor renews (its lease expired,
//! say) asks the backend every [`SAFETY_NET_MS`].

use crate::service::{Lease, LockError, LockService};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wasaga_core::metrics::{Family, Histogram};

/// Hand-overs in a row within this host before the lock goes back to the backend.
pub const HANDOVERS_MAX: u32 = 16;

/// How often the run at the head of a line asks the backend while it waits (a safety net for
/// a holder that went away without releasing).
pub const SAFETY_NET_MS: u64 = 250;

/// A lock service whose callers on this host queue for each key (see the module comment).
pub struct Queued {
    backend: Arc<dyn LockService>,
    lines: Arc<Mutex<HashMap<String, Line>>>,
    /// How long acquires waited, by how they ended (`wasaga_lock_acquire_wait_seconds`).
    waits: LockWaits,
}

/// The lock-wait histograms of one host's lock service, labelled with its backend's kind.
#[derive(Clone)]
struct LockWaits {
    backend: String,
    seconds: Family<Vec<(&'static str, String)>, Histogram>,
}

impl LockWaits {
    fn observe(&self, started: Instant, outcome: &Result<Lease, LockError>) {
        let ended = match outcome {
            Ok(_) => "granted",
            Err(LockError::Timeout { .. }) => "timed-out",
            Err(_) => "failed",
        };
        self.seconds
            .get_or_create(&vec![
                ("backend", self.backend.clone()),
                ("outcome", ended.to_owned()),
            ])
            .observe(wasaga_core::metrics::seconds_since(started));
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// One key's line on this host.
#[derive(Default)]
struct Line {
    /// Who holds the key here, or is asking the backend for it; `None` if nobody is.
    holder: Option<String>,
    waiters: VecDeque<Waiter>,
    /// Whether the holder has its grant in hand (rather than asking the backend for it, or
    /// being handed it): only then may the first in line ask the backend behind its back,
    /// which would otherwise jump the line.
    settled: bool,
    /// Hand-overs in a row since the key was last released to the backend.
    handed: u32,
}

struct Waiter {
    id: u64,
    owner: String,
    ttl_ms: u32,
    turn: oneshot::Sender<Turn>,
}

/// What a waiter is told when its turn comes.
enum Turn {
    /// The lock, handed over to it.
    Granted(Lease),
    /// It is first in line: it asks the backend itself.
    Ask,
}

static NEXT_WAITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Queued {
    pub fn new(backend: Box<dyn LockService>) -> Queued {
        Queued {
            backend: Arc::from(backend),
            lines: Arc::new(Mutex::new(HashMap::new())),
            waits: LockWaits {
                backend: "unnamed".to_owned(),
                seconds: Family::new_with_constructor(wasaga_core::metrics::latency_histogram),
            },
        }
    }

    /// Names the backend's kind in this service's metrics (`journal`, `redis`, ...).
    pub fn with_backend_name(mut self, kind: &str) -> Queued {
        self.waits.backend = kind.to_owned();
        self
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, HashMap<String, Line>> {
        self.lines.lock().expect("lock lines poisoned")
    }

    /// Runs waiting in line on this host, over every key (for tests and the console).
    pub fn waiting(&self) -> usize {
        self.lines().values().map(|l| l.waiters.len()).sum()
    }

    async fn acquire_in_line(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(u64::from(wait_ms));
        let queued = {
            let mut lines = self.lines();
            let line = lines.entry(key.to_owned()).or_default();
            match &line.holder {
                None => {
                    line.holder = Some(owner.to_owned());
                    line.settled = false;
                    None
                }
                // The holder asking again renews its grant at the backend.
                Some(holder) if holder == owner => None,
                Some(_) if wait_ms == 0 => {
                    return Err(LockError::Timeout {
                        key: key.to_owned(),
                        holder: line.holder.clone().unwrap_or_default(),
                        waited_ms: 0,
                    });
                }
                Some(_) => {
                    let (turn, told) = oneshot::channel();
                    let id = NEXT_WAITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    line.waiters.push_back(Waiter {
                        id,
                        owner: owner.to_owned(),
                        ttl_ms,
                        turn,
                    });
                    Some((id, told))
                }
            }
        };
        if let Some((id, told)) = queued {
            // If this future is dropped while it waits (its run stopped), the guard takes it
            // out of the line, or passes on a turn that reached it too late.
            let mut waiting = WaiterGuard {
                lines: self.lines.clone(),
                backend: self.backend.clone(),
                key: key.to_owned(),
                owner: owner.to_owned(),
                id,
                told,
                armed: true,
            };
            let turn = self
                .wait_for_turn(
                    key,
                    owner,
                    ttl_ms,
                    id,
                    &mut waiting.told,
                    (started, deadline),
                )
                .await;
            waiting.armed = false;
            match turn? {
                Turn::Granted(lease) => return Ok(lease),
                Turn::Ask => {}
            }
        }
        // This run is at the head of the line: it asks the backend. If this future is dropped
        // meanwhile (the run stopped), the guard gives the turn to the next in line.
        let guard = HeadGuard {
            lines: self.lines.clone(),
            key: key.to_owned(),
            owner: owner.to_owned(),
            armed: true,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = self
            .backend
            .acquire(key, owner, ttl_ms, left.as_millis() as u32)
            .await;
        let mut guard = guard;
        let asked = match asked {
            // The wait is this run's, line and backend together.
            Err(LockError::Timeout { key, holder, .. }) => Err(LockError::Timeout {
                key,
                holder,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
            other => other,
        };
        match asked {
            Ok(lease) => {
                guard.armed = false;
                if let Some(line) = self.lines().get_mut(key)
                    && line.holder.as_deref() == Some(owner)
                {
                    line.settled = true;
                }
                Ok(lease)
            }
            // The guard passes the turn on.
            Err(e) => Err(e),
        }
    }

    /// Waits in line until the turn comes or `deadline` passes; at [`SAFETY_NET_MS`] the
    /// run first in line asks the backend in case the holder went away without releasing.
    async fn wait_for_turn(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u32,
        id: u64,
        told: &mut oneshot::Receiver<Turn>,
        (started, deadline): (Instant, Instant),
    ) -> Result<Turn, LockError> {
        loop {
            let now = Instant::now();
            let tick = deadline.min(now + Duration::from_millis(SAFETY_NET_MS));
            match tokio::time::timeout_at(tick.into(), &mut *told).await {
                Ok(Ok(turn)) => return Ok(turn),
                // The line was dropped without telling (cannot happen while the service lives).
                Ok(Err(_)) => return Ok(Turn::Ask),
                Err(_) => {}
            }
            let first = {
                let lines = self.lines();
                lines
                    .get(key)
                    .is_some_and(|l| l.settled && l.waiters.front().is_some_and(|w| w.id == id))
            };
            if Instant::now() >= deadline {
                return self.leave(key, id, told, started);
            }
            if first {
                // The safety net: one attempt, no wait. A grant means the holder here is
                // gone (its lease expired): this run takes the line's head with it.
                match self.backend.acquire(key, owner, ttl_ms, 0).await {
                    Ok(lease) => {
                        let mut lines = self.lines();
                        let line = lines.entry(key.to_owned()).or_default();
                        if let Some(at) = line.waiters.iter().position(|w| w.id == id) {
                            line.waiters.remove(at);
                            line.holder = Some(owner.to_owned());
                            line.settled = true;
                            line.handed = 0;
                            return Ok(Turn::Granted(lease));
                        }
                        drop(lines);
                        // The turn came meanwhile: this grant replaced whatever it brought.
                        return Ok(Turn::Granted(lease));
                    }
                    Err(LockError::Timeout { .. }) => {}
                    Err(e) => {
                        let _ = self.leave(key, id, told, started);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Leaves the line after waiting until `deadline`: the turn may have come just now, in
    /// which case it is taken.
    fn leave(
        &self,
        key: &str,
        id: u64,
        told: &mut oneshot::Receiver<Turn>,
        started: Instant,
    ) -> Result<Turn, LockError> {
        let holder = {
            let mut lines = self.lines();
            let line = lines.entry(key.to_owned()).or_default();
            if let Some(at) = line.waiters.iter().position(|w| w.id == id) {
                line.waiters.remove(at);
                Some(match (&line.holder, line.settled) {
                    (Some(holder), true) => holder.clone(),
                    // The first in line here is itself still asking the backend for it.
                    (Some(first), false) => {
                        format!("another run ({first} is first in line for it here)")
                    }
                    (None, _) => "another run".to_owned(),
                })
            } else {
                None
            }
        };
        match holder {
            Some(holder) => Err(LockError::Timeout {
                key: key.to_owned(),
                holder,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
            // Out of the line already: the turn was given; it is on its way or here.
            None => match told.try_recv() {
                Ok(turn) => Ok(turn),
                Err(_) => Ok(Turn::Ask),
            },
        }
    }

    async fn release_in_line(&self, lease: &Lease) -> Result<(), LockError> {
        let mut lease = lease.clone();
        loop {
            // `None`: not this line's holder (a grant of an earlier process, or one replaced),
            // so the backend alone decides; `Some(None)`: nobody to hand over to.
            let next: Option<Option<Waiter>> = {
                let mut lines = self.lines();
                match lines.get_mut(&lease.key) {
                    Some(line) if line.holder.as_deref() == Some(lease.owner.as_str()) => {
                        // The key is on its way to someone: nobody asks behind its back.
                        line.settled = false;
                        Some(if line.handed >= HANDOVERS_MAX {
                            None
                        } else {
                            line.waiters.pop_front()
                        })
                    }
                    _ => None,
                }
            };
            let Some(next) = next else {
                return self.backend.release(&lease).await;
            };
            let Some(waiter) = next else {
                let released = self.backend.release(&lease).await;
                self.pass_turn(&lease.key, &lease.owner);
                return released;
            };
            match self
                .backend
                .hand_over(&lease, &waiter.owner, waiter.ttl_ms)
                .await
            {
                Ok(Some(handed)) => {
                    {
                        let mut lines = self.lines();
                        let line = lines.entry(lease.key.clone()).or_default();
                        line.holder = Some(waiter.owner.clone());
                        line.settled = true;
                        line.handed += 1;
                    }
                    match waiter.turn.send(Turn::Granted(handed)) {
                        Ok(()) => return Ok(()),
                        // The waiter stopped waiting: the grant is handed on again.
                        Err(Turn::Granted(handed)) => lease = handed,
                        Err(Turn::Ask) => unreachable!("sent a grant"),
                    }
                }
                // The lease was no longer the key's grant, or the backend cannot hand over
                // (it has released it): the waiter asks the backend itself.
                Ok(None) => {
                    {
                        let mut lines = self.lines();
                        let line = lines.entry(lease.key.clone()).or_default();
                        line.holder = Some(waiter.owner.clone());
                        line.handed = 0;
                    }
                    if waiter.turn.send(Turn::Ask).is_err() {
                        self.pass_turn(&lease.key, &waiter.owner);
                    }
                    return Ok(());
                }
                Err(e) => {
                    // Back to the head of the line; the backend is unavailable.
                    {
                        let mut lines = self.lines();
                        lines
                            .entry(lease.key.clone())
                            .or_default()
                            .waiters
                            .push_front(waiter);
                    }
                    let _ = self.backend.release(&lease).await;
                    self.pass_turn(&lease.key, &lease.owner);
                    return Err(e);
                }
            }
        }
    }

    /// `owner` no longer holds or asks for `key` here: the next in line asks the backend.
    fn pass_turn(&self, key: &str, owner: &str) {
        pass_turn(&self.lines, key, owner);
    }
}

/// See [`Queued::pass_turn`].
fn pass_turn(lines: &Mutex<HashMap<String, Line>>, key: &str, owner: &str) {
    let mut lines = lines.lock().expect("lock lines poisoned");
    let Some(line) = lines.get_mut(key) else {
        return;
    };
    if line.holder.as_deref() != Some(owner) {
        return;
    }
    line.handed = 0;
    line.settled = false;
    loop {
        match line.waiters.pop_front() {
            None => {
                lines.remove(key);
                return;
            }
            Some(waiter) => {
                line.holder = Some(waiter.owner.clone());
                if waiter.turn.send(Turn::Ask).is_ok() {
                    return;
                }
            }
        }
    }
}

/// Takes a waiter whose future is dropped while it waits out of its line; a turn that had
/// already reached it is passed on (a grant released first).
struct WaiterGuard {
    lines: Arc<Mutex<HashMap<String, Line>>>,
    backend: Arc<dyn LockService>,
    key: String,
    owner: String,
    id: u64,
    told: oneshot::Receiver<Turn>,
    armed: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut lines = self.lines.lock().expect("lock lines poisoned");
            if let Some(line) = lines.get_mut(&self.key)
                && let Some(at) = line.waiters.iter().position(|w| w.id == self.id)
            {
                line.waiters.remove(at);
                return;
            }
        }
        // Out of the line: its turn was given. One still on its way fails to arrive, and the
        // giver passes it on; one that arrived is passed on here.
        match self.told.try_recv() {
            Ok(Turn::Ask) => pass_turn(&self.lines, &self.key, &self.owner),
            Ok(Turn::Granted(lease)) => {
                let (lines, backend, owner) =
                    (self.lines.clone(), self.backend.clone(), self.owner.clone());
                // Without a runtime (the host is gone) the grant ends with its ttl.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = backend.release(&lease).await;
                        pass_turn(&lines, &lease.key, &owner);
                    });
                }
            }
            Err(_) => {}
        }
    }
}

/// Gives the turn on if the run at the head of a line stops asking the backend without a
/// grant (it failed, or its future was dropped).
struct HeadGuard {
    lines: Arc<Mutex<HashMap<String, Line>>>,
    key: String,
    owner: String,
    armed: bool,
}

impl Drop for HeadGuard {
    fn drop(&mut self) {
        if self.armed {
            pass_turn(&self.lines, &self.key, &self.owner);
        }
    }
}

impl LockService for Queued {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.acquire_in_line(key, owner, ttl_ms, wait_ms).await;
            self.waits.observe(started, &outcome);
            outcome
        })
    }

    fn register_metrics(&self, registry: &mut wasaga_core::metrics::Registry) {
        registry.register(
            "lock_acquire_wait_seconds",
            "Time from a run asking for a lock to its grant or refusal, by backend and outcome",
            self.waits.seconds.clone(),
        );
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        self.backend.extend(lease)
    }

    fn release<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<(), LockError>> {
        Box::pin(self.release_in_line(lease))
    }

    fn hand_over<'a>(
        &'a self,
        lease: &'a Lease,
        owner: &'a str,
        ttl_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Option<Lease>, LockError>> {
        self.backend.hand_over(lease, owner, ttl_ms)
    }

    fn woken(&self) -> u64 {
        self.backend.woken()
    }
}
