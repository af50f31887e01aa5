//! Waiting for a key on the backends without a queue of their own (rows, Redis keys): ask,
//! then wait for a release to be heard, or for a growing backoff.

use crate::service::{Lease, LockError};
use crate::wakeups::Wakeups;

/// Tries `attempt` until it grants a lease, for at most `wait_ms`; an attempt's
/// `Err(holder)` means the lock is taken (by `holder`). Backends without a queue of their own
/// (rows, Redis keys) acquire through this. Between attempts it waits for a release to be
/// heard through `wakeups` (with the safety net's bound), or, without them, pauses with a
/// growing backoff.
pub(crate) async fn poll<F, A>(
    key: &str,
    wait_ms: u32,
    wakeups: Option<&Wakeups>,
    mut attempt: F,
) -> Result<Lease, LockError>
where
    F: FnMut() -> A,
    A: std::future::Future<Output = Result<Result<Lease, String>, LockError>>,
{
    let started = std::time::Instant::now();
    let wait = std::time::Duration::from_millis(u64::from(wait_ms));
    // Heard from before the first attempt, so a release just after it is not missed.
    let mut watch = match wakeups {
        Some(wakeups) if wait_ms > 0 => Some(wakeups.watch(key).await),
        _ => None,
    };
    let mut backoff = std::time::Duration::from_millis(2);
    loop {
        match attempt().await? {
            Ok(lease) => return Ok(lease),
            Err(holder) => {
                let waited = started.elapsed();
                if waited >= wait {
                    return Err(LockError::Timeout {
                        key: key.to_owned(),
                        holder,
                        waited_ms: waited.as_millis() as u64,
                    });
                }
                let left = wait - waited;
                match &mut watch {
                    Some(watch) => watch.pause(left, backoff).await,
                    None => tokio::time::sleep(backoff.min(left)).await,
                }
                backoff = (backoff * 2).min(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Who a lock is "held by" when it is free but a waiter of another host asked for it first:
/// the key goes to that waiter next.
pub(crate) const FIRST_IN_LINE_ELSEWHERE: &str =
    "another run (a run of another host is first in line for it)";

/// How long a waiter's place in a key's queue at the backend lasts after its last attempt: a
/// few of its asks (which renew it) even if notifications are lost, so that a waiter that is
/// gone (its host stopped) holds nobody up for long.
pub(crate) fn place_ms(wakeups: Option<&Wakeups>) -> u32 {
    let asks_every = wakeups.map_or(std::time::Duration::from_millis(50), |w| w.safety_net());
    (asks_every * 4)
        .max(std::time::Duration::from_millis(PLACE_MIN_MS))
        .as_millis()
        .min(u128::from(u32::MAX)) as u32
}

/// The shortest life of a waiter's place in a key's queue at the backend.
const PLACE_MIN_MS: u64 = 1_000;
