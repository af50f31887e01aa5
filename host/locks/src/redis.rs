//! The Redis lock backend: `SET key value NX PX ttl` semantics in Lua scripts, so that taking a
//! lock and drawing its fencing token (`INCR` of a per-key counter) happen atomically, and a
//! holder only ever extends or deletes its own grant (compare-and-pexpire, compare-and-delete).
//!
//! The connection is made lazily and remade after failures, so a Redis that was down serves
//! new runs as soon as it is back, without restarting the host.

use crate::service::{Lease, LockError, LockService};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::Mutex;
use wasaga_core::clock::now_ms;

/// Takes the lock if it is free (or already the caller's) and no live waiter of another host
/// asked for it first, and returns the new fencing token. KEYS[1] lock key, KEYS[2] token
/// counter, KEYS[3] the waiters in the order they asked (score: when, in microseconds),
/// KEYS[4] when each waiter's place goes stale (ms); ARGV[1] owner, ARGV[2] ttl ms, ARGV[3]
/// how long a refused caller's place lasts (0: it is not waiting, take no place).
///
/// The token is the per-key counter plus one, but never less than the server's clock in
/// microseconds: a Redis that restarts without its data (no persistence, a failover to a
/// replica that missed the last `INCR`) must not hand out a token the participants have
/// already seen. (Lua numbers are doubles: microsecond timestamps are exact below 2^53.)
const ACQUIRE: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local now_ms = math.floor(now_us / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.0f', now_ms))
for _, waiter in ipairs(gone) do
  redis.call('ZREM', KEYS[3], waiter)
  redis.call('ZREM', KEYS[4], waiter)
end
local current = redis.call('GET', KEYS[1])
local mine = current and string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|'
local refused = false
if current and not mine then
  refused = current
elseif not mine then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0)
  if first[1] and first[1] ~= ARGV[1] then
    refused = '|'
  end
end
if refused then
  local place = tonumber(ARGV[3])
  if place > 0 then
    redis.call('ZADD', KEYS[3], 'NX', string.format('%.0f', now_us), ARGV[1])
    redis.call('ZADD', KEYS[4], string.format('%.0f', now_ms + place), ARGV[1])
  end
  return {0, refused}
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local token = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now_us)
redis.call('SET', KEYS[2], string.format('%.0f', token))
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%.0f', token), 'PX', ARGV[2])
return {token, ''}
";

/// Gives up a waiter's place. KEYS[1] the waiters, KEYS[2] their places' staleness; ARGV[1]
/// owner.
const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

/// Extends the grant if it is still ours. KEYS[1] lock key; ARGV[1] owner|token, ARGV[2] ttl.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the grant if it is still ours, and announces the release to waiters on other
/// hosts. KEYS[1] lock key; ARGV[1] owner|token, ARGV[2] the key as callers name it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', 'wasaga:lock-released', ARGV[2])
  return 1
end
return 0
";

/// Moves the grant to a new owner with a new token if it is still ours. KEYS[1] lock key,
/// KEYS[2] token counter; ARGV[1] owner|token, ARGV[2] new owner, ARGV[3] ttl ms. Returns the
/// new token, or 0 if the grant had passed on.
const HAND_OVER: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
local token = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, floor)
redis.call('SET', KEYS[2], string.format('%.0f', token))
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. string.format('%.0f', token), 'PX', ARGV[3])
return token
";

/// Locks in a Redis server.
pub struct RedisLocks {
    url: String,
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    acquire: redis::Script,
    extend: redis::Script,
    release: redis::Script,
    hand_over: redis::Script,
    leave: redis::Script,
    /// Releases on other hosts, heard by subscription.
    wakeups: crate::wakeups::Wakeups,
}

impl std::fmt::Debug for RedisLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLocks")
            .field("url", &self.url)
            .finish()
    }
}

/// How long one Redis command or connection attempt may take before the backend counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1_000);

impl RedisLocks {
    /// A backend for the server at `url`; nothing is connected until first use.
    pub fn new(url: &str) -> Result<Self, LockError> {
        let client = redis::Client::open(url).map_err(|e| LockError::Backend {
            backend: url.to_owned(),
            reason: format!("invalid Redis URL: {e}"),
        })?;
        Ok(RedisLocks {
            url: url.to_owned(),
            wakeups: crate::wakeups::Wakeups::redis(client.clone()),
            client,
            connection: Mutex::new(None),
            acquire: redis::Script::new(ACQUIRE),
            extend: redis::Script::new(EXTEND),
            release: redis::Script::new(RELEASE),
            hand_over: redis::Script::new(HAND_OVER),
            leave: redis::Script::new(LEAVE),
        })
    }

    /// Waiters ask again at least this often even when they hear no release (by default
    /// [`crate::SAFETY_NET_MS`]).
    pub fn with_safety_net(mut self, every: Duration) -> Self {
        self.wakeups.set_safety_net(every);
        self
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> LockError {
        LockError::Backend {
            backend: self.url.clone(),
            reason: e.to_string(),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, LockError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = self
            .client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| self.unavailable(e))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a connection that failed, so the next call connects afresh.
    async fn forget(&self) {
        *self.connection.lock().await = None;
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, LockError> {
        let mut connection = self.connection().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        match invocation.invoke_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(e) => {
                self.forget().await;
                Err(self.unavailable(e))
            }
        }
    }
}

fn lock_key(key: &str) -> String {
    format!("wasaga:lock:{key}")
}

fn token_key(key: &str) -> String {
    format!("wasaga:lock-token:{key}")
}

fn waiters_key(key: &str) -> String {
    format!("wasaga:lock-waiters:{key}")
}

fn places_key(key: &str) -> String {
    format!("wasaga:lock-places:{key}")
}

impl LockService for RedisLocks {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        let place_ms = if wait_ms > 0 {
            crate::poll::place_ms(Some(&self.wakeups))
        } else {
            0
        };
        Box::pin(async move {
            let got = crate::poll::poll(key, wait_ms, Some(&self.wakeups), move || async move {
                let (token, holder): (u64, String) = self
                    .invoke(
                        &self.acquire,
                        &[
                            lock_key(key),
                            token_key(key),
                            waiters_key(key),
                            places_key(key),
                        ],
                        &[owner.to_owned(), ttl_ms.to_string(), place_ms.to_string()],
                    )
                    .await?;
                if token == 0 {
                    let holder = holder.split('|').next().unwrap_or_default();
                    return Ok(Err(if holder.is_empty() {
                        crate::poll::FIRST_IN_LINE_ELSEWHERE.to_owned()
                    } else {
                        holder.to_owned()
                    }));
                }
                Ok(Ok(Lease {
                    key: key.to_owned(),
                    owner: owner.to_owned(),
                    fencing_token: token,
                    ttl_ms,
                    expires_at_ms: now_ms() + u64::from(ttl_ms),
                }))
            })
            .await;
            if place_ms > 0 && matches!(got, Err(LockError::Timeout { .. })) {
                // Out of the queue now, not when its place goes stale.
                let _: Result<i64, _> = self
                    .invoke(
                        &self.leave,
                        &[waiters_key(key), places_key(key)],
                        &[owner.to_owned()],
                    )
                    .await;
            }
            got
        })
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            let grant = format!("{}|{}", lease.owner, lease.fencing_token);
            let extended: i64 = self
                .invoke(
                    &self.extend,
                    &[lock_key(&lease.key)],
                    &[grant, lease.ttl_ms.to_string()],
                )
                .await?;
            if extended == 1 {
                Ok(Lease {
                    expires_at_ms: now_ms() + u64::from(lease.ttl_ms),
                    ..lease.clone()
                })
            } else {
                Err(lease.lost())
            }
        })
    }

    fn release<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            let grant = format!("{}|{}", lease.owner, lease.fencing_token);
            let _deleted: i64 = self
                .invoke(
                    &self.release,
                    &[lock_key(&lease.key)],
                    &[grant, lease.key.clone()],
                )
                .await?;
            Ok(())
        })
    }

    fn hand_over<'a>(
        &'a self,
        lease: &'a Lease,
        owner: &'a str,
        ttl_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Option<Lease>, LockError>> {
        Box::pin(async move {
            let grant = format!("{}|{}", lease.owner, lease.fencing_token);
            let token: u64 = self
                .invoke(
                    &self.hand_over,
                    &[lock_key(&lease.key), token_key(&lease.key)],
                    &[grant, owner.to_owned(), ttl_ms.to_string()],
                )
                .await?;
            Ok((token != 0).then(|| Lease {
                key: lease.key.clone(),
                owner: owner.to_owned(),
                fencing_token: token,
                ttl_ms,
                expires_at_ms: now_ms() + u64::from(ttl_ms),
            }))
        })
    }

    fn woken(&self) -> u64 {
        self.wakeups.woken()
    }
}
