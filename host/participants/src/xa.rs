//! The `postgres-xa` participant: accounts in a PostgreSQL database, changed only through
//! two-phase commit branches. Prepare runs the branch's update in a transaction and ends it
//! with `PREPARE TRANSACTION`; phase two is `COMMIT PREPARED` / `ROLLBACK PREPARED`. Global
//! transaction ids derive from the run and its call alone (`wasaga:<run>#2pc-<call>:<branch>`),
//! never from the host driving it, so whichever host takes a run over finds its branches; the
//! sweeper lists them in `pg_prepared_xacts` and resolves those of ended runs from the journal
//! (a run still unfinished resolves its own, under its owner). A commit is finished only when
//! every branch is verifiably committed: its row in `wasaga_xa_log`, written inside the
//! prepared transaction, is visible.

use crate::branch::{Decided, Prepare};
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};
use std::time::Duration;
use tokio::sync::OnceCell;
use wasaga_core::BoxFuture;
use wasaga_core::event::CallFailure;

/// The tables the participant keeps in its database (created on first use). `wasaga_xa_log`
/// is written inside each prepared branch, so it says which branches committed; a fence row
/// marks a transaction as aborted so that a prepare arriving late is refused.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS wasaga_accounts (
    account TEXT PRIMARY KEY,
    balance BIGINT NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS wasaga_xa_log (
    xid    TEXT NOT NULL,
    branch INTEGER NOT NULL,
    PRIMARY KEY (xid, branch)
);
CREATE TABLE IF NOT EXISTS wasaga_xa_fences (
    xid TEXT PRIMARY KEY
);";

/// What every global transaction id of wasaga's starts with.
const GID_PREFIX: &str = "wasaga:";

/// Whether `text` is a branch number, all that may follow a transaction's gid prefix.
fn is_branch(text: &str) -> bool {
    !text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit())
}

/// One PostgreSQL database taking part in two-phase commits.
pub struct PostgresXa {
    name: String,
    shown: String,
    pool: PgPool,
    schema: OnceCell<()>,
}

impl std::fmt::Debug for PostgresXa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresXa")
            .field("name", &self.name)
            .field("url", &self.shown)
            .finish()
    }
}

impl PostgresXa {
    /// The participant `name` on the database at `url`; connects on first use.
    pub fn new(name: &str, url: &str) -> Result<Self, String> {
        let shown = wasaga_db::url::without_password(url);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .map_err(|e| format!("participant {name} ({shown}): {e}"))?;
        Ok(PostgresXa {
            name: name.to_owned(),
            shown,
            pool,
            schema: OnceCell::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> CallFailure {
        CallFailure::Unavailable(format!("participant {} ({}): {e}", self.name, self.shown))
    }

    fn gid_prefix(xid: &str) -> String {
        format!("{GID_PREFIX}{xid}:")
    }

    async fn ready(&self) -> Result<(), CallFailure> {
        self.schema
            .get_or_try_init(|| async {
                sqlx::raw_sql(SCHEMA).execute(&self.pool).await.map(|_| ())
            })
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// Performs a two-phase action (`prepare`, `commit-prepared`, `abort-prepared`).
    pub async fn call(&self, action: &str, payload: &str) -> Result<String, CallFailure> {
        self.ready().await?;
        match action {
            "prepare" => {
                let p: Prepare = serde_json::from_str(payload).map_err(|e| {
                    CallFailure::Rejected(format!("invalid prepare for {}: {e}", self.name))
                })?;
                self.prepare(p).await
            }
            "commit-prepared" | "abort-prepared" => {
                let d: Decided = serde_json::from_str(payload).map_err(|e| {
                    CallFailure::Rejected(format!("invalid decision for {}: {e}", self.name))
                })?;
                self.finish(&d.xid, action == "commit-prepared", d.branches.as_deref())
                    .await
            }
            other => Err(CallFailure::Rejected(format!(
                "participant {} only takes part in two-phase commits (debit or credit branches), not '{other}'",
                self.name
            ))),
        }
    }

    async fn prepare(&self, p: Prepare) -> Result<String, CallFailure> {
        let gid = format!("{}{}", Self::gid_prefix(&p.xid), p.branch);
        assert!(
            !gid.contains('\''),
            "gids are built from run ids, which cannot hold quotes"
        );
        let reply =
            json!({ "participant": self.name, "xid": p.xid, "branch": p.branch, "prepared": true })
                .to_string();
        let mut conn = self.pool.acquire().await.map_err(|e| self.unavailable(e))?;
        // Idempotent: a branch already prepared, or already committed, answers as before.
        let prepared: Option<String> =
            sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE gid = $1")
                .bind(&gid)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        let committed: Option<i32> =
            sqlx::query_scalar("SELECT branch FROM wasaga_xa_log WHERE xid = $1 AND branch = $2")
                .bind(&p.xid)
                .bind(p.branch as i32)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        if prepared.is_some() || committed.is_some() {
            return Ok(reply);
        }
        let fenced: Option<String> =
            sqlx::query_scalar("SELECT xid FROM wasaga_xa_fences WHERE xid = $1")
                .bind(&p.xid)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        if fenced.is_some() {
            return Err(CallFailure::Rejected(format!(
                "transaction {} was aborted; it can never prepare",
                p.xid
            )));
        }
        let (sql, refusal) = match p.action.as_str() {
            "debit" => (
                "UPDATE wasaga_accounts SET balance = balance - $1 WHERE account = $2 AND balance >= $1",
                format!(
                    "insufficient funds or unknown account '{}' in {}",
                    p.account, self.name
                ),
            ),
            "credit" => (
                "UPDATE wasaga_accounts SET balance = balance + $1 WHERE account = $2",
                format!("unknown account '{}' in {}", p.account, self.name),
            ),
            other => {
                return Err(CallFailure::Rejected(format!(
                    "{} can prepare debit and credit, not '{other}'",
                    self.name
                )));
            }
        };
        if p.amount <= 0 {
            return Err(CallFailure::Rejected(format!(
                "amount {} must be positive",
                p.amount
            )));
        }
        // A plain BEGIN (not sqlx's Transaction, which would try to commit or roll back what
        // PREPARE TRANSACTION has already taken off this session).
        sqlx::raw_sql("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(|e| self.unavailable(e))?;
        let work = async {
            let changed = sqlx::query(sql)
                .bind(p.amount)
                .bind(&p.account)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if changed != 1 {
                return Ok(false);
            }
            sqlx::query("INSERT INTO wasaga_xa_log (xid, branch) VALUES ($1, $2)")
                .bind(&p.xid)
                .bind(p.branch as i32)
                .execute(&mut *conn)
                .await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await;
        match work {
            Ok(true) => {}
            Ok(false) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                return Err(CallFailure::Rejected(refusal));
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                return Err(self.unavailable(e));
            }
        }
        // PREPARE TRANSACTION ends the transaction block without committing it: from here the
        // branch survives crashes of this host and of the database, until phase two.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE TRANSACTION '{gid}'")))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                CallFailure::Unknown(format!("participant {}: prepare of {gid}: {e}", self.name))
            })?;
        Ok(reply)
    }

    /// Commits or rolls back every prepared branch of `xid` here; an abort also fences `xid`.
    /// A commit given the `expected` branches succeeds only once each of them is committed
    /// here: a branch neither prepared nor committed was rolled back behind the decision's
    /// back, and the commit must not be reported done.
    async fn finish(
        &self,
        xid: &str,
        commit: bool,
        expected: Option<&[i64]>,
    ) -> Result<String, CallFailure> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.unavailable(e))?;
        if !commit {
            sqlx::query("INSERT INTO wasaga_xa_fences (xid) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(xid)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        let prefix = Self::gid_prefix(xid);
        // What follows the prefix must be a bare branch number: a longer id that happens to
        // start with this one (run `a:b#2pc-1:c` against `a:b`) is another transaction.
        let gids: Vec<String> = self
            .prepared(&mut conn, &prefix)
            .await?
            .into_iter()
            .filter(|gid| is_branch(&gid[prefix.len()..]))
            .collect();
        let verb = if commit {
            "COMMIT PREPARED"
        } else {
            "ROLLBACK PREPARED"
        };
        for gid in &gids {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{verb} '{gid}'")))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        if commit && let Some(expected) = expected {
            let committed: Vec<i64> =
                sqlx::query_scalar("SELECT branch::bigint FROM wasaga_xa_log WHERE xid = $1")
                    .bind(xid)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| self.unavailable(e))?;
            let missing: Vec<&i64> = expected.iter().filter(|b| !committed.contains(b)).collect();
            if !missing.is_empty() {
                // Retrying cannot bring a rolled-back branch back: the run ends stuck with
                // this reason for an operator, never `completed` over a half-applied commit.
                return Err(CallFailure::Unavailable(format!(
                    "participant {}: transaction {xid} was decided commit but branches {missing:?} are neither prepared nor committed here (rolled back by someone else?); the commit is incomplete and needs an operator",
                    self.name
                )));
            }
        }
        Ok(json!({ "participant": self.name, "xid": xid, "committed": commit, "branches": gids.len() }).to_string())
    }

    async fn prepared(
        &self,
        conn: &mut PgConnection,
        prefix: &str,
    ) -> Result<Vec<String>, CallFailure> {
        // `starts_with`, not LIKE: `_` and `%` are legal in run ids and would match others'.
        let rows = sqlx::query("SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, $1) AND database = current_database()")
            .bind(prefix)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// The transaction ids (`<run>#2pc-<call>`) left prepared here, by any host.
    pub async fn in_doubt(&self) -> Result<Vec<String>, CallFailure> {
        self.ready().await?;
        let mut conn = self.pool.acquire().await.map_err(|e| self.unavailable(e))?;
        let prefix = GID_PREFIX;
        let mut xids: Vec<String> = self
            .prepared(&mut conn, prefix)
            .await?
            .iter()
            .filter_map(|gid| {
                gid.strip_prefix(prefix)?
                    .rsplit_once(':')
                    .filter(|(_, branch)| is_branch(branch))
                    .map(|(xid, _)| xid.to_owned())
            })
            .collect();
        xids.sort();
        xids.dedup();
        Ok(xids)
    }
}

impl crate::participant::Participant for PostgresXa {
    fn name(&self) -> &str {
        PostgresXa::name(self)
    }

    fn prepares(&self) -> bool {
        true
    }

    fn call<'a>(
        &'a self,
        request: &'a crate::participant::ParticipantRequest,
    ) -> BoxFuture<'a, Result<String, CallFailure>> {
        Box::pin(PostgresXa::call(
            self,
            &request.call.action,
            &request.call.payload,
        ))
    }

    fn in_doubt(&self) -> BoxFuture<'_, Result<Vec<String>, CallFailure>> {
        Box::pin(PostgresXa::in_doubt(self))
    }
}
