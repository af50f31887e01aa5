//! Hearing on this host of a lock released on another, so that the run first in line here
//! for the key asks again at once instead of polling for it.
//!
//! - PostgreSQL (the `postgres://` backend and the journal's own lock rows on PostgreSQL): a
//!   release sends `pg_notify('wasaga_lock_released', key)` in its own transaction, and each
//!   host `LISTEN`s on one connection of its own.
//! - Redis: the release script `PUBLISH`es the key on `wasaga:lock-released`, and each host
//!   subscribes on one connection of its own.
//!
//! A notification can be lost: the listening connection drops, or a holder's lease expires
//! with no release at all. So a waiter also asks every [`SAFETY_NET_MS`], and when the
//! listener connects again after a drop it wakes every waiter, since whatever it missed is
//! unknown. While the listener is not connected, waiters poll with a short backoff as if
//! there were no notifications.

use crate::queue::SAFETY_NET_MS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The PostgreSQL channel releases are announced on; the payload is the key.
pub(crate) const PG_CHANNEL: &str = "wasaga_lock_released";
/// The Redis channel releases are published on; the message is the key.
pub(crate) const REDIS_CHANNEL: &str = "wasaga:lock-released";

/// How long the first waiter waits for the listener to connect before asking without it.
const LISTEN_READY: Duration = Duration::from_millis(2_000);
/// The pause before the listener connects again after failing.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Where releases are heard from.
#[derive(Debug, Clone)]
enum Source {
    Postgres { url: String },
    Redis { client: redis::Client },
}

/// Releases heard from other hosts, for the keys this host waits for (see the module comment).
pub struct Wakeups {
    source: Source,
    shared: Arc<Shared>,
    /// How often a waiter asks anyway, in case its notification was lost.
    safety_net: Duration,
    /// The listening task, started by the first wait; stopped when this is dropped.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Default)]
struct Shared {
    /// Each waited-for key's count of releases heard.
    keys: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Whether the listener is connected and subscribed now.
    listening: AtomicBool,
    /// Whether it has been, once.
    ready: tokio::sync::Notify,
    /// Waits that ended because a release was heard.
    woken: AtomicU64,
}

impl Shared {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.keys.lock().expect("wake-up keys poisoned")
    }

    fn wake(&self, key: &str) {
        if let Some(heard) = self.keys().get(key) {
            heard.send_modify(|n| *n += 1);
        }
    }

    /// Wakes every waiter: after a gap in listening, any of their releases may have been missed.
    fn wake_all(&self) {
        for heard in self.keys().values() {
            heard.send_modify(|n| *n += 1);
        }
    }

    fn listening(&self, now: bool) {
        self.listening.store(now, Ordering::SeqCst);
        if now {
            self.ready.notify_waiters();
            self.wake_all();
        }
    }
}

impl std::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeups")
            .field("listening", &self.shared.listening.load(Ordering::Relaxed))
            .field("safety_net", &self.safety_net)
            .finish_non_exhaustive()
    }
}

impl Wakeups {
    /// Hears releases on the PostgreSQL database at `url`.
    pub(crate) fn postgres(url: &str) -> Wakeups {
        Wakeups::new(Source::Postgres {
            url: url.to_owned(),
        })
    }

    /// Hears releases published on the Redis server `client` connects to.
    pub(crate) fn redis(client: redis::Client) -> Wakeups {
        Wakeups::new(Source::Redis { client })
    }

    fn new(source: Source) -> Wakeups {
        Wakeups {
            source,
            shared: Arc::new(Shared::default()),
            safety_net: Duration::from_millis(SAFETY_NET_MS),
            task: Mutex::new(None),
        }
    }

    /// Waiters ask at least this often even when they hear nothing.
    pub(crate) fn set_safety_net(&mut self, every: Duration) {
        self.safety_net = every;
    }

    pub(crate) fn safety_net(&self) -> Duration {
        self.safety_net
    }

    /// Waits that ended because a release was heard.
    pub(crate) fn woken(&self) -> u64 {
        self.shared.woken.load(Ordering::Relaxed)
    }

    /// Starts hearing releases of `key`. Call it before the attempt that may find the key
    /// taken, so that a release between that attempt and the wait is not missed.
    pub(crate) async fn watch(&self, key: &str) -> Watch {
        let ready = self.shared.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if self.start() && !self.shared.listening.load(Ordering::SeqCst) {
            // The first wait of this host: give the listener a moment to subscribe.
            let _ = tokio::time::timeout(LISTEN_READY, ready).await;
        }
        let heard = {
            let mut keys = self.shared.keys();
            keys.entry(key.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        Watch {
            heard,
            shared: self.shared.clone(),
            key: key.to_owned(),
            safety_net: self.safety_net,
        }
    }

    /// Starts the listening task if it is not running; true if it was started now.
    fn start(&self) -> bool {
        let mut task = self.task.lock().expect("wake-up task poisoned");
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return false;
        }
        let (source, shared) = (self.source.clone(), self.shared.clone());
        *task = Some(tokio::spawn(listen(source, shared)).abort_handle());
        true
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().expect("wake-up task poisoned").take() {
            task.abort();
        }
    }
}

/// One waiter's ear for its key's releases.
pub(crate) struct Watch {
    heard: watch::Receiver<u64>,
    shared: Arc<Shared>,
    key: String,
    safety_net: Duration,
}

impl Watch {
    /// Pauses before the next attempt, for at most `left`: until a release of the key is
    /// heard (at once if one was heard since the last pause), or the safety net's interval
    /// passes. Without a listener, for `backoff`.
    pub(crate) async fn pause(&mut self, left: Duration, backoff: Duration) {
        if !self.shared.listening.load(Ordering::SeqCst)
            && !self.heard.has_changed().unwrap_or(false)
        {
            tokio::time::sleep(backoff.min(left)).await;
            return;
        }
        if let Ok(Ok(())) =
            tokio::time::timeout(self.safety_net.min(left), self.heard.changed()).await
        {
            self.heard.mark_unchanged();
            self.shared.woken.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut keys = self.shared.keys();
        // This watch's receiver is still counted while it is being dropped.
        if keys
            .get(&self.key)
            .is_some_and(|heard| heard.receiver_count() <= 1)
        {
            keys.remove(&self.key);
        }
    }
}

/// Listens for releases for as long as the wake-ups live, connecting again after failures.
async fn listen(source: Source, shared: Arc<Shared>) {
    // What was last said, and when: a listener that cannot connect (a pooler that does not
    // pass LISTEN on, say) says so once a minute, not at every attempt.
    let mut said: Option<(String, std::time::Instant)> = None;
    loop {
        let ended = match &source {
            Source::Postgres { url } => listen_postgres(url, &shared).await,
            Source::Redis { client } => listen_redis(client, &shared).await,
        };
        shared.listening(false);
        if let Err(reason) = ended {
            let repeat = said
                .as_ref()
                .is_some_and(|(before, at)| *before == reason && at.elapsed() < SAY_AGAIN_AFTER);
            if !repeat {
                tracing::warn!(
                    "not hearing lock releases from other hosts ({reason}); waiters poll until it connects again"
                );
                said = Some((reason, std::time::Instant::now()));
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// How long the listener keeps quiet about the same failure.
const SAY_AGAIN_AFTER: Duration = Duration::from_secs(60);

async fn listen_postgres(url: &str, shared: &Shared) -> Result<(), String> {
    let connect = async {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(PG_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    let mut listener = tokio::time::timeout(LISTEN_READY, connect)
        .await
        .map_err(|_| format!("no answer within {} ms", LISTEN_READY.as_millis()))?
        .map_err(|e| e.to_string())?;
    shared.listening(true);
    loop {
        match listener.try_recv().await {
            Ok(Some(released)) => shared.wake(released.payload()),
            // The connection was lost and made again (listening again): what was sent
            // meanwhile is unknown.
            Ok(None) => shared.wake_all(),
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn listen_redis(client: &redis::Client, shared: &Shared) -> Result<(), String> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(REDIS_CHANNEL).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = tokio::time::timeout(LISTEN_READY, connect)
        .await
        .map_err(|_| format!("no answer within {} ms", LISTEN_READY.as_millis()))?
        .map_err(|e| e.to_string())?;
    shared.listening(true);
    let mut messages = pubsub.into_on_message();
    loop {
        let next = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut messages), cx)
        })
        .await;
        match next {
            Some(message) => match std::str::from_utf8(message.get_payload_bytes()) {
                Ok(key) => shared.wake(key),
                Err(_) => shared.wake_all(),
            },
            None => return Err("the subscription's connection closed".to_owned()),
        }
    }
}
