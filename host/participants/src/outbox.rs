//! Transaction records synced downstream. Every balance change of the ledger writes a record
//! to `ledger_outbox` in its own transaction (a trigger on `ledger_entries`, on SQLite and
//! PostgreSQL alike), so no committed change is ever without its record. [`Outbox`] delivers
//! the records to the configured sinks:
//!
//! - at least once: a record is delivered when every sink acknowledged it, and sent again
//!   (to the sinks that have not) after a failure or a crash, under its stable `event_id`;
//! - in order per account: only the oldest undelivered record of an account is ever sent, and
//!   the next only once it is delivered, so a failing record holds back its account's later
//!   ones (never another account's);
//! - by one host at a time: a host leases the records it sends (`lease_owner`,
//!   `lease_until_ms`), with a conditional update that a second host's finds taken;
//! - retried with backoff while a sink is down (doubling from 500 ms to a minute), never
//!   dropped; `wasaga outbox list` shows what is pending or failing and why, `retry` makes it
//!   due now;
//! - pruned once delivered and older than the retention period.
//!
//! A webhook receives `POST` with the record as JSON and the headers `Wasaga-Event-Id`,
//! `Wasaga-Timestamp` (ms) and `Wasaga-Signature: sha256=<hex>`, the HMAC-SHA256 of
//! `<timestamp>.<body>` under the sink's secret; a 2xx answer acknowledges. A Redis sink
//! `XADD`s the record to its stream with the fields `event_id`, `account` and `record`.

use crate::http::chain;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use wasaga_core::clock::now_ms;
use wasaga_db::{Database, DbError, Row, args};

/// Records claimed in one pass, at most.
const CLAIM_MAX: i64 = 1_000;
/// Records of one account sent in one pass, at most (they go one after the other).
const PER_ACCOUNT_MAX: usize = 50;
/// Accounts whose records are sent at once.
const ACCOUNTS_AT_ONCE: usize = 16;
/// How long a claim holds records. A pass sends nothing more once half of it has gone, so a
/// live host's lease never lapses under it; a dead host's records wait this long at most
/// (on SQLite not at all: see [`Outbox::take_over`]).
const LEASE_MS: i64 = 30_000;
/// The first wait after a failure; doubled each attempt up to [`BACKOFF_MS_MAX`].
const BACKOFF_MS_MIN: i64 = 500;
const BACKOFF_MS_MAX: i64 = 60_000;
/// How much of an answer a message quotes.
const QUOTED_CHARS_MAX: usize = 200;

/// Where records go.
#[derive(Clone)]
pub enum SinkConfig {
    /// A signed HTTP `POST` per record.
    Webhook {
        name: String,
        url: String,
        /// The HMAC key (resolved from the environment by the caller; never printed).
        secret: String,
        timeout_ms: u64,
    },
    /// `XADD` to a Redis stream.
    Redis {
        name: String,
        url: String,
        stream: String,
    },
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Webhook { name, .. } | SinkConfig::Redis { name, .. } => name,
        }
    }
}

/// The secret stays out of debug output.
impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkConfig::Webhook {
                name,
                url,
                timeout_ms,
                ..
            } => f
                .debug_struct("Webhook")
                .field("name", name)
                .field("url", url)
                .field("timeout_ms", timeout_ms)
                .finish_non_exhaustive(),
            SinkConfig::Redis { name, url, stream } => f
                .debug_struct("Redis")
                .field("name", name)
                .field("url", &url_shown(url))
                .field("stream", stream)
                .finish(),
        }
    }
}

fn url_shown(url: &str) -> String {
    wasaga_db::url::without_password(url)
}

/// How the outbox is configured.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub sinks: Vec<SinkConfig>,
    /// Delivered records older than this are pruned.
    pub retention_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            sinks: Vec::new(),
            retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

/// One record as sinks receive it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Stable across every delivery: the same record always has the same id.
    pub event_id: String,
    /// Its place in the outbox; increasing per account.
    pub seq: i64,
    pub account: String,
    /// The change of the account's balance.
    pub delta: i64,
    /// The ledger operation's idempotency key.
    pub op_id: String,
    /// The ledger operation (`debit`, `credit`, `capture`, `open`, ...).
    pub action: String,
    /// The operation's request, as the workflow sent it.
    pub request: serde_json::Value,
    pub created_ms: i64,
}

/// `bytes` as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The event id of the change of `account` by operation `op_id`: stable, and one-to-one.
pub fn event_id(op_id: &str, account: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(op_id.as_bytes());
    hash.update([0]);
    hash.update(account.as_bytes());
    hex(&hash.finalize()[..16])
}

/// The signature header's value for `body` sent at `timestamp_ms`.
pub fn signature(secret: &str, timestamp_ms: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// A sink, connected on first use.
struct Sink {
    config: SinkConfig,
    http: reqwest::Client,
    redis: Mutex<Option<redis::aio::ConnectionManager>>,
}

impl Sink {
    fn new(config: SinkConfig) -> Result<Sink, String> {
        let timeout = match &config {
            SinkConfig::Webhook { timeout_ms, .. } => *timeout_ms,
            SinkConfig::Redis { .. } => 5_000,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("sink {}: {e}", config.name()))?;
        if let SinkConfig::Redis { url, .. } = &config {
            redis::Client::open(url.as_str())
                .map_err(|e| format!("sink {}: {}: {e}", config.name(), url_shown(url)))?;
        }
        Ok(Sink {
            config,
            http,
            redis: Mutex::new(None),
        })
    }

    async fn send(&self, record: &Record, body: &str) -> Result<(), String> {
        let name = self.config.name();
        match &self.config {
            SinkConfig::Webhook { url, secret, .. } => {
                let timestamp = now_ms() as i64;
                let answer = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("wasaga-event-id", &record.event_id)
                    .header("wasaga-timestamp", timestamp.to_string())
                    .header("wasaga-signature", signature(secret, timestamp, body))
                    .body(body.to_owned())
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "sink {name}: POST {url}: {}; is the receiver up? The records wait and are retried",
                            chain(&e)
                        )
                    })?;
                let status = answer.status();
                if status.is_success() {
                    return Ok(());
                }
                let text = answer.text().await.unwrap_or_default();
                let quoted: String = text.chars().take(QUOTED_CHARS_MAX).collect();
                Err(format!(
                    "sink {name}: POST {url} answered {status}: {quoted}; fix the receiver, then `wasaga outbox retry`"
                ))
            }
            SinkConfig::Redis { url, stream, .. } => {
                let shown = url_shown(url);
                let mut slot = self.redis.lock().await;
                if slot.is_none() {
                    let client = redis::Client::open(url.as_str())
                        .map_err(|e| format!("sink {name}: {shown}: {e}"))?;
                    let connect = client.get_connection_manager();
                    let manager = tokio::time::timeout(Duration::from_secs(5), connect)
                        .await
                        .map_err(|_| format!("sink {name}: no connection to {shown} in 5 s"))?
                        .map_err(|e| format!("sink {name}: cannot connect to {shown}: {e}"))?;
                    *slot = Some(manager);
                }
                let mut connection = slot.clone().expect("connected above");
                drop(slot);
                let mut command = redis::cmd("XADD");
                command
                    .arg(stream)
                    .arg("*")
                    .arg("event_id")
                    .arg(&record.event_id)
                    .arg("account")
                    .arg(&record.account)
                    .arg("record")
                    .arg(body);
                let add = command.query_async::<String>(&mut connection);
                tokio::time::timeout(Duration::from_secs(5), add)
                    .await
                    .map_err(|_| format!("sink {name}: XADD to {shown} took over 5 s"))?
                    .map(|_| ())
                    .map_err(|e| format!("sink {name}: XADD {stream} at {shown}: {e}"))
            }
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub delivered: u64,
    pub failed: u64,
}

/// One row of `wasaga outbox list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub seq: i64,
    pub event_id: String,
    pub account: String,
    pub delta: i64,
    pub op_id: String,
    pub created_ms: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub acked: Vec<String>,
    pub delivered_ms: Option<i64>,
}

/// Which records `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not delivered yet.
    Pending,
    /// Not delivered, and the last attempt failed.
    Failing,
    Delivered,
}

/// A claimed record and what is known of its delivery.
struct Claimed {
    record: Record,
    acked: Vec<String>,
    attempts: i64,
}

/// The delivery loop over one ledger database's outbox.
pub struct Outbox {
    db: Arc<Database>,
    sinks: Vec<Arc<Sink>>,
    owner: String,
    retention_ms: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("owner", &self.owner)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| &s.config).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Outbox {
    /// The outbox of the ledger in `db`, delivered by `owner` (which names this process).
    pub fn new(db: Arc<Database>, config: &OutboxConfig, owner: &str) -> Result<Outbox, String> {
        let sinks = config
            .sinks
            .iter()
            .map(|s| Sink::new(s.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Outbox {
            db,
            sinks,
            owner: owner.to_owned(),
            retention_ms: config.retention_ms,
        })
    }

    /// Frees every lease: for the one process that executes on a SQLite file, which knows
    /// every earlier one is dead, so their records need not wait for their leases to lapse.
    pub async fn take_over(&self) -> Result<u64, DbError> {
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "UPDATE ledger_outbox SET lease_owner = NULL, lease_until_ms = NULL
                         WHERE delivered_ms IS NULL AND lease_owner IS NOT NULL",
                        args![],
                    )
                    .await
                })
            })
            .await
    }

    /// Delivers until stopped: a pass, then a short pause when nothing was due; prunes every
    /// minute. Failures are retried by later passes; a database that fails is tried again.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut pruned_at = 0;
        let mut failing = false;
        while !*stop.borrow() {
            let pass = self.deliver_once().await;
            let idle = match &pass {
                Ok(pass) => {
                    if pass.failed > 0 && !failing {
                        tracing::warn!(
                            "outbox: {} record(s) could not be delivered; `wasaga outbox list --status failing` says why",
                            pass.failed
                        );
                    }
                    failing = pass.failed > 0;
                    pass.delivered == 0
                }
                Err(e) => {
                    tracing::warn!("outbox: {e}");
                    true
                }
            };
            if now_ms() > pruned_at + 60_000 {
                pruned_at = now_ms();
                if let Err(e) = self.prune().await {
                    tracing::warn!("outbox: pruning: {e}");
                }
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// One pass: claims what is due, sends it, and records what happened.
    pub async fn deliver_once(&self) -> Result<Pass, DbError> {
        if self.sinks.is_empty() {
            // No sink to wait for: every record is delivered (to none) and pruned in time.
            let now = now_ms() as i64;
            let delivered = self
                .db
                .write(move |tx| {
                    Box::pin(async move {
                        tx.execute(
                            "UPDATE ledger_outbox SET delivered_ms = $1, lease_owner = NULL WHERE delivered_ms IS NULL",
                            args![now],
                        )
                        .await
                    })
                })
                .await?;
            return Ok(Pass {
                delivered,
                failed: 0,
            });
        }
        let accounts = self.claim().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEASE_MS as u64 / 2);
        let mut pass = Pass::default();
        let mut set = tokio::task::JoinSet::new();
        let mut results = Vec::new();
        for records in accounts {
            if set.len() >= ACCOUNTS_AT_ONCE
                && let Some(done) = set.join_next().await
            {
                results.push(done.expect("a delivery task does not panic"));
            }
            let sinks = self.sinks.clone();
            set.spawn(async move { deliver_account(&sinks, records, deadline).await });
        }
        while let Some(done) = set.join_next().await {
            results.push(done.expect("a delivery task does not panic"));
        }
        let outcomes: Vec<Outcome> = results.into_iter().flatten().collect();
        for outcome in &outcomes {
            match outcome {
                Outcome::Delivered { .. } => pass.delivered += 1,
                Outcome::Failed { .. } => pass.failed += 1,
                Outcome::Unsent { .. } => {}
            }
        }
        self.record(outcomes).await?;
        Ok(pass)
    }

    /// Leases the oldest undelivered records of the accounts whose oldest is due and free.
    async fn claim(&self) -> Result<Vec<Vec<Claimed>>, DbError> {
        let owner = self.owner.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let now = now_ms() as i64;
                    let rows = tx
                        .fetch_all(
                            "SELECT seq, account, next_attempt_ms, lease_owner, lease_until_ms
                             FROM ledger_outbox WHERE delivered_ms IS NULL ORDER BY seq LIMIT $1",
                            args![CLAIM_MAX],
                        )
                        .await?;
                    // Per account, in order: (first seq, last seq) to claim.
                    let mut ranges: Vec<(String, i64, i64, usize)> = Vec::new();
                    // Each account seen, and the index of its range if it is claimed.
                    let mut seen: std::collections::HashMap<String, Option<usize>> =
                        Default::default();
                    for row in &rows {
                        let (seq, account) = (row.int(0)?, row.text(1)?);
                        match seen.get(&account) {
                            Some(Some(index)) => {
                                let range = &mut ranges[*index];
                                if range.3 < PER_ACCOUNT_MAX {
                                    range.2 = seq;
                                    range.3 += 1;
                                }
                                continue;
                            }
                            Some(None) => continue,
                            None => {}
                        }
                        // The account's oldest record decides for all of it.
                        let due = row.int(2)? <= now;
                        let leased = row.opt_int(4)?.is_some_and(|until| until >= now)
                            && row.opt_text(3)?.as_deref() != Some(owner.as_str());
                        if due && !leased {
                            seen.insert(account.clone(), Some(ranges.len()));
                            ranges.push((account, seq, seq, 1));
                        } else {
                            seen.insert(account, None);
                        }
                    }
                    let until = now + LEASE_MS;
                    let mut claimed = Vec::new();
                    for (account, first, last, _) in ranges {
                        let taken = tx
                            .fetch_all(
                                "UPDATE ledger_outbox SET lease_owner = $1, lease_until_ms = $2
                                 WHERE account = $3 AND seq >= $4 AND seq <= $5 AND delivered_ms IS NULL
                                   AND (lease_until_ms IS NULL OR lease_until_ms < $6 OR lease_owner = $1)
                                 RETURNING seq",
                                args![&owner, until, &account, first, last, now],
                            )
                            .await?;
                        let mut seqs: Vec<i64> =
                            taken.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
                        seqs.sort_unstable();
                        // Another host took the oldest: the account is its until it is done.
                        if seqs.first() != Some(&first) {
                            if !seqs.is_empty() {
                                tx.execute(
                                    "UPDATE ledger_outbox SET lease_owner = NULL, lease_until_ms = NULL
                                     WHERE account = $1 AND seq >= $2 AND seq <= $3 AND lease_owner = $4 AND delivered_ms IS NULL",
                                    args![&account, first, last, &owner],
                                )
                                .await?;
                            }
                            continue;
                        }
                        claimed.push(account);
                    }
                    if claimed.is_empty() {
                        return Ok(Vec::new());
                    }
                    // Every row this claim leased (its lease ends at `until`), in one read.
                    let rows = tx
                        .fetch_all(
                            "SELECT o.seq, o.op_id, o.account, o.delta, o.created_ms, o.acked, o.attempts,
                                    p.action, p.request
                             FROM ledger_outbox o LEFT JOIN ledger_ops p ON p.op_id = o.op_id
                             WHERE o.lease_owner = $1 AND o.lease_until_ms = $2 AND o.delivered_ms IS NULL
                             ORDER BY o.seq",
                            args![&owner, until],
                        )
                        .await?;
                    let index: std::collections::HashMap<&str, usize> = claimed
                        .iter()
                        .enumerate()
                        .map(|(i, account)| (account.as_str(), i))
                        .collect();
                    let mut accounts: Vec<Vec<Claimed>> = claimed.iter().map(|_| Vec::new()).collect();
                    for row in &rows {
                        let record = claimed_of(row)?;
                        if let Some(&i) = index.get(record.record.account.as_str()) {
                            accounts[i].push(record);
                        }
                    }
                    Ok(accounts)
                })
            })
            .await
    }

    /// Writes what a pass found: delivered records, failures with their next attempt, and
    /// the leases given back.
    async fn record(&self, outcomes: Vec<Outcome>) -> Result<(), DbError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let owner = self.owner.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let now = now_ms() as i64;
                    for outcome in &outcomes {
                        match outcome {
                            Outcome::Delivered { seq, acked } => {
                                tx.execute(
                                    "UPDATE ledger_outbox SET delivered_ms = $1, acked = $2, last_error = NULL,
                                            lease_owner = NULL, lease_until_ms = NULL
                                     WHERE seq = $3 AND lease_owner = $4",
                                    args![now, acked.as_str(), *seq, &owner],
                                )
                                .await?;
                            }
                            Outcome::Failed {
                                seq,
                                acked,
                                attempts,
                                error,
                            } => {
                                let wait = BACKOFF_MS_MIN
                                    .saturating_mul(1 << (*attempts).clamp(0, 20))
                                    .min(BACKOFF_MS_MAX);
                                tx.execute(
                                    "UPDATE ledger_outbox SET attempts = attempts + 1, next_attempt_ms = $1,
                                            last_error = $2, acked = $3, lease_owner = NULL, lease_until_ms = NULL
                                     WHERE seq = $4 AND lease_owner = $5",
                                    args![now + wait, error.as_str(), acked.as_str(), *seq, &owner],
                                )
                                .await?;
                            }
                            Outcome::Unsent { seq } => {
                                tx.execute(
                                    "UPDATE ledger_outbox SET lease_owner = NULL, lease_until_ms = NULL
                                     WHERE seq = $1 AND lease_owner = $2",
                                    args![*seq, &owner],
                                )
                                .await?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .await
    }

    /// Deletes delivered records older than the retention period; returns how many.
    pub async fn prune(&self) -> Result<u64, DbError> {
        let before = now_ms() as i64 - self.retention_ms as i64;
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "DELETE FROM ledger_outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < $1",
                        args![before],
                    )
                    .await
                })
            })
            .await
    }
}

/// A record's row, claimed.
fn claimed_of(row: &Row) -> Result<Claimed, DbError> {
    let op_id = row.text(1)?;
    let account = row.text(2)?;
    let request = row
        .opt_text(8)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok(Claimed {
        record: Record {
            event_id: event_id(&op_id, &account),
            seq: row.int(0)?,
            delta: row.int(3)?,
            created_ms: row.int(4)?,
            action: row.opt_text(7)?.unwrap_or_else(|| "unknown".to_owned()),
            request,
            op_id,
            account,
        },
        acked: split_acked(&row.text(5)?),
        attempts: row.int(6)?,
    })
}

fn split_acked(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn join_acked(acked: &[String]) -> String {
    acked.iter().map(|s| format!("{s}\n")).collect()
}

/// What happened to one claimed record.
enum Outcome {
    Delivered {
        seq: i64,
        acked: String,
    },
    Failed {
        seq: i64,
        acked: String,
        attempts: i64,
        error: String,
    },
    /// Not tried: an older record of its account failed in this pass, or the pass ran out of
    /// its lease's time.
    Unsent {
        seq: i64,
    },
}

/// Sends one account's claimed records in order, stopping at the first that fails.
async fn deliver_account(
    sinks: &[Arc<Sink>],
    records: Vec<Claimed>,
    deadline: tokio::time::Instant,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(records.len());
    let mut stopped = false;
    for claimed in records {
        let seq = claimed.record.seq;
        if stopped || tokio::time::Instant::now() >= deadline {
            outcomes.push(Outcome::Unsent { seq });
            continue;
        }
        let body = serde_json::to_string(&claimed.record).expect("a record serializes");
        let mut acked = claimed.acked;
        let mut errors = Vec::new();
        for sink in sinks {
            let name = sink.config.name();
            if acked.iter().any(|a| a == name) {
                continue;
            }
            match sink.send(&claimed.record, &body).await {
                Ok(()) => acked.push(name.to_owned()),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            outcomes.push(Outcome::Delivered {
                seq,
                acked: join_acked(&acked),
            });
        } else {
            stopped = true;
            outcomes.push(Outcome::Failed {
                seq,
                acked: join_acked(&acked),
                attempts: claimed.attempts,
                error: errors.join("; "),
            });
        }
    }
    outcomes
}

/// The records `status` names, oldest first, at most `limit`.
pub async fn list(db: &Database, status: Status, limit: i64) -> Result<Vec<Listed>, DbError> {
    db.read(move |tx| {
        Box::pin(async move {
            let rows = match status {
                Status::Pending => {
                    tx.fetch_all(
                        "SELECT seq, op_id, account, delta, created_ms, attempts, next_attempt_ms, last_error, acked, delivered_ms
                         FROM ledger_outbox WHERE delivered_ms IS NULL ORDER BY seq LIMIT $1",
                        args![limit],
                    )
                    .await?
                }
                Status::Failing => {
                    tx.fetch_all(
                        "SELECT seq, op_id, account, delta, created_ms, attempts, next_attempt_ms, last_error, acked, delivered_ms
                         FROM ledger_outbox WHERE delivered_ms IS NULL AND last_error IS NOT NULL ORDER BY seq LIMIT $1",
                        args![limit],
                    )
                    .await?
                }
                Status::Delivered => {
                    tx.fetch_all(
                        "SELECT seq, op_id, account, delta, created_ms, attempts, next_attempt_ms, last_error, acked, delivered_ms
                         FROM ledger_outbox WHERE delivered_ms IS NOT NULL ORDER BY seq DESC LIMIT $1",
                        args![limit],
                    )
                    .await?
                }
            };
            rows.iter()
                .map(|row| {
                    let op_id = row.text(1)?;
                    let account = row.text(2)?;
                    Ok(Listed {
                        seq: row.int(0)?,
                        event_id: event_id(&op_id, &account),
                        delta: row.int(3)?,
                        created_ms: row.int(4)?,
                        attempts: row.int(5)?,
                        next_attempt_ms: row.int(6)?,
                        last_error: row.opt_text(7)?,
                        acked: split_acked(&row.text(8)?),
                        delivered_ms: row.opt_int(9)?,
                        op_id,
                        account,
                    })
                })
                .collect()
        })
    })
    .await
}

/// Makes every undelivered record due now (after a receiver was fixed); returns how many.
pub async fn retry(db: &Database) -> Result<u64, DbError> {
    db.write(move |tx| {
        Box::pin(async move {
            tx.execute(
                "UPDATE ledger_outbox SET next_attempt_ms = 0 WHERE delivered_ms IS NULL",
                args![],
            )
            .await
        })
    })
    .await
}

/// How many records are undelivered, and how many of those failed at their last attempt.
pub async fn counts(db: &Database) -> Result<(i64, i64), DbError> {
    db.read(move |tx| {
        Box::pin(async move {
            let row = tx
                .fetch_optional(
                    "SELECT COUNT(*), COUNT(last_error) FROM ledger_outbox WHERE delivered_ms IS NULL",
                    args![],
                )
                .await?
                .expect("COUNT answers a row");
            Ok((row.int(0)?, row.int(1)?))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_tell_operations_apart() {
        assert_eq!(event_id("r/credit", "shop"), event_id("r/credit", "shop"));
        assert_ne!(event_id("r/a@b", "c"), event_id("r/a", "b@c"));
        assert_ne!(event_id("r/x", "shop"), event_id("r/x", "alice"));
        assert_eq!(event_id("r/x", "shop").len(), 32);
    }

    /// The signature a receiver computes from the secret, the timestamp header and the body.
    #[test]
    fn signatures_cover_timestamp_and_body() {
        let signed = signature("s3cret", 1_700_000_000_000, r#"{"a":1}"#);
        assert!(
            signed.starts_with("sha256=") && signed.len() == 7 + 64,
            "{signed}"
        );
        assert_ne!(signed, signature("s3cret", 1_700_000_000_001, r#"{"a":1}"#));
        assert_ne!(signed, signature("s3cret", 1_700_000_000_000, r#"{"a":2}"#));
        assert_ne!(signed, signature("other", 1_700_000_000_000, r#"{"a":1}"#));
        // RFC 4231 test case 2, to know it is HMAC-SHA256 and not something like it.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    async fn ledger(name: &str) -> (wasaga_testkit::Scratch, Arc<Database>) {
        let scratch = wasaga_testkit::Scratch::new(name);
        let db = Database::open(
            &wasaga_db::Location::Sqlite(scratch.db.clone()),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("open");
        (scratch, Arc::new(db))
    }

    async fn apply(db: &Database, op_id: &str, action: &str, payload: serde_json::Value) {
        let call = crate::ledger::LedgerCall {
            op_id: op_id.to_owned(),
            undoes: None,
            action: action.to_owned(),
            payload: payload.to_string(),
            fencing_tokens: Vec::new(),
        };
        let _ = db
            .write(move |tx| Box::pin(async move { crate::ledger::apply(tx, &call).await }))
            .await
            .expect("the database answers");
    }

    /// A committed change has its record, a refused one none; delivered records are pruned
    /// after the retention period, undelivered ones never, and `retry` makes them due.
    #[test]
    fn records_follow_commits_and_only_delivered_ones_are_pruned() {
        wasaga_testkit::rt().block_on(async {
            let (_scratch, db) = ledger("outbox-records").await;
            crate::ledger::open(&db, "alice", 100).await.expect("alice");
            crate::ledger::open(&db, "bob", 0).await.expect("bob");
            let t =
                |amount: i64| serde_json::json!({ "from": "alice", "to": "bob", "amount": amount });
            apply(&db, "r1/pay", "transfer", t(30)).await;
            // Refused (alice has 70): nothing changes, so there is nothing to record.
            apply(&db, "r2/pay", "transfer", t(500)).await;
            let pending = list(&db, Status::Pending, 100).await.expect("list");
            let seen: Vec<(&str, &str, i64)> = pending
                .iter()
                .map(|r| (r.op_id.as_str(), r.account.as_str(), r.delta))
                .collect();
            assert_eq!(
                seen,
                [
                    ("#open/alice", "alice", 100),
                    ("#open/bob", "bob", 0),
                    ("r1/pay", "alice", -30),
                    ("r1/pay", "bob", 30)
                ]
            );

            // A sink that is down: every record stays, failing, with the reason.
            let down = OutboxConfig {
                sinks: vec![SinkConfig::Webhook {
                    name: "books".into(),
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "0123456789abcdef".into(),
                    timeout_ms: 1_000,
                }],
                retention_ms: 0,
            };
            let outbox = Outbox::new(db.clone(), &down, "test").expect("outbox");
            let pass = outbox.deliver_once().await.expect("pass");
            // Each account's oldest record is tried; the later one of alice waits behind it.
            assert_eq!(
                pass,
                Pass {
                    delivered: 0,
                    failed: 2
                }
            );
            let failing = list(&db, Status::Failing, 100).await.expect("list");
            assert_eq!(failing.len(), 2);
            assert!(
                failing[0]
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("sink books")),
                "{failing:?}"
            );
            assert_eq!(
                outbox.deliver_once().await.expect("pass"),
                Pass::default(),
                "backing off"
            );
            assert_eq!(outbox.prune().await.expect("prune"), 0);
            assert_eq!(counts(&db).await.expect("counts"), (4, 2));
            assert_eq!(retry(&db).await.expect("retry"), 4);
            assert_eq!(
                outbox.deliver_once().await.expect("pass").failed,
                2,
                "due again"
            );

            // With no sink every record counts as delivered, and the retention of 0 prunes it.
            let none = OutboxConfig {
                sinks: Vec::new(),
                retention_ms: 0,
            };
            let outbox = Outbox::new(db.clone(), &none, "test").expect("outbox");
            assert_eq!(outbox.deliver_once().await.expect("pass").delivered, 4);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(outbox.prune().await.expect("prune"), 4);
            assert_eq!(counts(&db).await.expect("counts"), (0, 0));
            // A later change is recorded again.
            apply(&db, "r3/pay", "transfer", t(5)).await;
            assert_eq!(counts(&db).await.expect("counts"), (2, 0));
        });
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let sink = SinkConfig::Webhook {
            name: "books".into(),
            url: "https://books.example/hook".into(),
            secret: "s3cret".into(),
            timeout_ms: 1_000,
        };
        assert!(!format!("{sink:?}").contains("s3cret"));
        let redis = SinkConfig::Redis {
            name: "stream".into(),
            url: "redis://:hunter2@127.0.0.1:6379".into(),
            stream: "s".into(),
        };
        assert!(!format!("{redis:?}").contains("hunter2"), "{redis:?}");
    }
}
