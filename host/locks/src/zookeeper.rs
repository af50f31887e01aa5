//! The ZooKeeper lock backend, the standard recipe: each contender creates an ephemeral
//! sequential znode under the lock's node and holds the lock when its znode is the lowest;
//! otherwise it watches only its predecessor (no herd effect). The fencing token is drawn by
//! the contender that has become the head: a counter kept in the lock's node, raised to the
//! larger of its last value plus one and the clock in microseconds with a compare-and-set on
//! the node's version. Tokens of one key therefore only grow (a holder draws its token only
//! after every earlier holder's znode is gone), they are 64-bit (the parent's sequence
//! counter, a signed 32-bit number, would wrap), and they are on the scale of every other
//! backend's, so a deployment can move between backends without the ledger refusing the new
//! one's tokens as stale. A lease lives as long as the
//! host's ZooKeeper session: a host that stops heart-beating loses its znodes when the session
//! expires, and the next contender takes over.
//!
//! The session is made lazily and remade after it expires or the server goes away, so a
//! ZooKeeper that was down serves new runs as soon as it is back.

use crate::service::{Lease, LockError, LockService};
use std::time::Duration;
use tokio::sync::Mutex;
use wasaga_core::clock::now_ms;
use zookeeper_client as zk;

/// The session timeout asked of the server; a paused host loses its locks after about this.
const SESSION_TIMEOUT: Duration = Duration::from_millis(2_000);
/// How long connecting may take before the backend counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2_000);
const ROOT: &str = "/wasaga-locks";

/// Locks in a ZooKeeper ensemble.
pub struct ZooKeeperLocks {
    url: String,
    /// `host:port[,host:port...]`
    cluster: String,
    client: Mutex<Option<zk::Client>>,
    /// The znode of each grant this process holds, by `(key, token)`: the token is no longer
    /// the node's sequence number, so the node's path is kept.
    nodes: std::sync::Mutex<std::collections::HashMap<(String, u64), String>>,
    /// Waits that ended because the predecessor's znode went (its release, heard by watch).
    woken: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ZooKeeperLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperLocks")
            .field("url", &self.url)
            .finish()
    }
}

/// The znode under which contenders for `key` queue (`/` in keys is escaped).
fn lock_node(key: &str) -> String {
    format!("{ROOT}/{}", key.replace('%', "%25").replace('/', "%2F"))
}

/// A contender's znode name, as the server names sequential nodes.
fn sequence_of(child: &str) -> Option<i64> {
    child.strip_prefix("lock-")?.parse().ok()
}

impl ZooKeeperLocks {
    /// A backend for `zookeeper://host:port[,host:port...]`; nothing connects until first use.
    pub fn new(url: &str) -> Result<Self, LockError> {
        let cluster = url
            .strip_prefix("zookeeper://")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| LockError::Backend {
                backend: url.to_owned(),
                reason: "expected zookeeper://host:port".to_owned(),
            })?;
        Ok(ZooKeeperLocks {
            url: url.to_owned(),
            cluster: cluster.trim_end_matches('/').to_owned(),
            client: Mutex::new(None),
            nodes: std::sync::Mutex::new(std::collections::HashMap::new()),
            woken: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> LockError {
        LockError::Backend {
            backend: self.url.clone(),
            reason: e.to_string(),
        }
    }

    async fn client(&self) -> Result<zk::Client, LockError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.state().is_terminated()
        {
            return Ok(client.clone());
        }
        let connect = zk::Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_connection_timeout(CONNECT_TIMEOUT)
            .connect(&self.cluster);
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                self.unavailable(format!(
                    "no answer within {} ms",
                    CONNECT_TIMEOUT.as_millis()
                ))
            })?
            .map_err(|e| self.unavailable(e))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Maps a client error, dropping a session that can no longer be used.
    async fn failed(&self, e: zk::Error) -> LockError {
        let unusable = matches!(
            e,
            zk::Error::NoHosts
                | zk::Error::SessionExpired
                | zk::Error::AuthFailed
                | zk::Error::ClientClosed
                | zk::Error::ConnectionLoss
        );
        if unusable {
            *self.client.lock().await = None;
        }
        self.unavailable(e)
    }

    /// The znode of `lease`, if this process holds it.
    fn node_of(&self, lease: &Lease) -> Option<String> {
        self.nodes
            .lock()
            .expect("node map lock poisoned")
            .get(&(lease.key.clone(), lease.fencing_token))
            .cloned()
    }

    async fn ensure_node(&self, client: &zk::Client, path: &str) -> Result<(), LockError> {
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client.create(path, &[], &options).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(self.failed(e).await),
        }
    }

    /// Draws the next fencing token of the lock at `parent` (see the module's comment).
    async fn next_token(&self, client: &zk::Client, parent: &str) -> Result<u64, LockError> {
        loop {
            let (data, stat) = match client.get_data(parent).await {
                Ok(read) => read,
                Err(e) => return Err(self.failed(e).await),
            };
            let last: u64 = std::str::from_utf8(&data)
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let token = (last + 1).max(now_ms().saturating_mul(1_000));
            match client
                .set_data(parent, token.to_string().as_bytes(), Some(stat.version))
                .await
            {
                Ok(_) => return Ok(token),
                // Another grant drew a token meanwhile (an owner replacing its own): again.
                Err(zk::Error::BadVersion) => continue,
                Err(e) => return Err(self.failed(e).await),
            }
        }
    }

    async fn try_acquire(&self, key: &str, owner: &str, wait_ms: u32) -> Result<Lease, LockError> {
        let client = self.client().await?;
        let parent = lock_node(key);
        self.ensure_node(&client, ROOT).await?;
        self.ensure_node(&client, &parent).await?;
        let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let (_, sequence) = match client
            .create(&format!("{parent}/lock-"), owner.as_bytes(), &options)
            .await
        {
            Ok(created) => created,
            Err(e) => return Err(self.failed(e).await),
        };
        let ours = sequence.into_i64();
        let node = format!("{parent}/lock-{sequence}");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(wait_ms));
        loop {
            let mut queue: Vec<(i64, String)> = match client.list_children(&parent).await {
                Ok(children) => children
                    .into_iter()
                    .filter_map(|c| sequence_of(&c).map(|s| (s, c)))
                    .collect(),
                Err(e) => return Err(self.failed(e).await),
            };
            queue.sort();
            let Some(position) = queue.iter().position(|(s, _)| *s == ours) else {
                // Our znode is gone: the session expired while we waited.
                return Err(LockError::Lost {
                    key: key.to_owned(),
                    fencing_token: 0,
                });
            };
            if position == 0 {
                let token = self.next_token(&client, &parent).await?;
                self.nodes
                    .lock()
                    .expect("node map lock poisoned")
                    .insert((key.to_owned(), token), node.clone());
                return Ok(Lease {
                    key: key.to_owned(),
                    owner: owner.to_owned(),
                    fencing_token: token,
                    ttl_ms: SESSION_TIMEOUT.as_millis() as u32,
                    expires_at_ms: now_ms() + SESSION_TIMEOUT.as_millis() as u64,
                });
            }
            // The head may be this owner's own earlier grant of the key (a run taking a lock
            // it still holds, or a resumed run taking back what its dead process held): the
            // new grant replaces it, as on the other backends.
            let head = format!("{parent}/{}", queue[0].1);
            match client.get_data(&head).await {
                Ok((data, _)) if data == owner.as_bytes() => {
                    match client.delete(&head, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => continue,
                        Err(e) => return Err(self.failed(e).await),
                    }
                }
                Ok(_) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.failed(e).await),
            }
            let predecessor = format!("{parent}/{}", queue[position - 1].1);
            let watcher = match client.check_and_watch_stat(&predecessor).await {
                Ok((None, _)) => continue,
                Ok((Some(_), watcher)) => watcher,
                Err(e) => return Err(self.failed(e).await),
            };
            let heard = tokio::time::timeout_at(deadline, watcher.changed()).await;
            if heard.is_ok() {
                self.woken
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                let holder = match client.get_data(&format!("{parent}/{}", queue[0].1)).await {
                    Ok((data, _)) => String::from_utf8_lossy(&data).into_owned(),
                    Err(_) => "another run".to_owned(),
                };
                // Leave the queue; a failure here only leaves a znode until the session ends.
                let _ = client.delete(&node, None).await;
                return Err(LockError::Timeout {
                    key: key.to_owned(),
                    holder,
                    waited_ms: u64::from(wait_ms),
                });
            }
        }
    }
}

impl LockService for ZooKeeperLocks {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        _ttl_ms: u32,
        wait_ms: u32,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(self.try_acquire(key, owner, wait_ms))
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<Lease, LockError>> {
        Box::pin(async move {
            // The session's heartbeats keep the znode; the lease holds while the znode exists.
            let Some(node) = self.node_of(lease) else {
                return Err(lease.lost());
            };
            let client = self.client().await?;
            match client.check_stat(&node).await {
                Ok(Some(_)) => Ok(Lease {
                    expires_at_ms: now_ms() + SESSION_TIMEOUT.as_millis() as u64,
                    ..lease.clone()
                }),
                Ok(None) => Err(lease.lost()),
                Err(e) => Err(self.failed(e).await),
            }
        })
    }

    fn release<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> wasaga_core::BoxFuture<'a, Result<(), LockError>> {
        Box::pin(async move {
            // A grant of another process (a run's lease journaled before a crash) lives in
            // that process's session, and ends with it.
            let Some(node) = self.node_of(lease) else {
                return Ok(());
            };
            let client = self.client().await?;
            let released = client.delete(&node, None).await;
            self.nodes
                .lock()
                .expect("node map lock poisoned")
                .remove(&(lease.key.clone(), lease.fencing_token));
            match released {
                Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                Err(e) => Err(self.failed(e).await),
            }
        })
    }

    fn woken(&self) -> u64 {
        self.woken.load(std::sync::atomic::Ordering::Relaxed)
    }
}
