//! Deliberate crash points for the crash tests: the process SIGKILLs itself right before or
//! right after its N-th durable commit (journal or ledger), exactly as if the machine had died
//! there. Off unless the (hidden) `--crash-at` flag is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where to crash: before or after the N-th commit of this process (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    BeforeCommit(u32),
    AfterCommit(u32),
}

impl std::str::FromStr for CrashPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |n: &str| {
            n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("crash point '{s}': the commit number must be a positive integer")
            })
        };
        match s.split_once(':') {
            Some(("before", n)) => Ok(CrashPoint::BeforeCommit(parse(n)?)),
            Some(("after", n)) => Ok(CrashPoint::AfterCommit(parse(n)?)),
            _ => Err(format!("crash point '{s}' must be before:N or after:N")),
        }
    }
}

/// Shared by everything that commits; counts commits and fires at the configured point.
#[derive(Debug, Clone, Default)]
pub struct CrashSwitch {
    inner: Option<Arc<(CrashPoint, AtomicU32)>>,
}

impl CrashSwitch {
    pub fn new(point: Option<CrashPoint>) -> Self {
        CrashSwitch {
            inner: point.map(|p| Arc::new((p, AtomicU32::new(0)))),
        }
    }

    /// Called right before a commit; returns the commit's number (0 when the switch is off),
    /// which the caller hands to `after_commit` once that commit is durable.
    pub fn before_commit(&self) -> u32 {
        let Some(inner) = &self.inner else { return 0 };
        let n = inner.1.fetch_add(1, Ordering::SeqCst) + 1;
        if inner.0 == CrashPoint::BeforeCommit(n) {
            die();
        }
        n
    }

    /// Called once the commit numbered `ticket` (by `before_commit`) is durable; commits made
    /// concurrently may be numbered meanwhile.
    pub fn after_commit(&self, ticket: u32) {
        if let Some(inner) = &self.inner
            && inner.0 == CrashPoint::AfterCommit(ticket)
        {
            die();
        }
    }
}

#[allow(unsafe_code)]
fn die() -> ! {
    eprintln!("wasaga: crash point reached, killing this process with SIGKILL");
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL cannot be caught");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_parse_and_refuse_nonsense() {
        assert_eq!("before:3".parse(), Ok(CrashPoint::BeforeCommit(3)));
        assert_eq!("after:1".parse(), Ok(CrashPoint::AfterCommit(1)));
        for bad in ["before:0", "after:x", "during:2", "3"] {
            assert!(bad.parse::<CrashPoint>().is_err(), "{bad} must be refused");
        }
    }
}
