//! The PostgreSQL database (sqlx), for many hosts sharing one journal. Every write is its own
//! transaction on a pooled connection; with `synchronous_commit=on` (the server default,
//! never relaxed here) a commit returns once its WAL is flushed, and the server flushes
//! concurrent commits together. wasaga's tables live in their own schema (`wasaga` unless the
//! URL says `?schema=`), which every pooled connection has as its search path.

use crate::location::Location;
use crate::tx::{Arg, DbError, Dialect, OpenError, Row, Tx, Value, Work};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Column, Connection, PgConnection, Row as _, TypeInfo, ValueRef};
use std::str::FromStr;
use std::time::Duration;
use wasaga_core::BoxFuture;
use wasaga_core::crash::CrashSwitch;

/// Schema migrations, applied in order and recorded in `schema_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../schema/postgres/0001_initial.sql"),
    include_str!("../schema/postgres/0002_step_function.sql"),
    include_str!("../schema/postgres/0003_batches.sql"),
    include_str!("../schema/postgres/0004_fewer_statements.sql"),
    include_str!("../schema/postgres/0005_set_wise_batches.sql"),
    include_str!("../schema/postgres/0006_hold_expiry.sql"),
    include_str!("../schema/postgres/0007_lock_waiters.sql"),
    include_str!("../schema/postgres/0008_outbox.sql"),
    include_str!("../schema/postgres/0009_waits.sql"),
    include_str!("../schema/postgres/0010_stuck_runs.sql"),
    include_str!("../schema/postgres/0011_cancel_stops_completion.sql"),
    include_str!("../schema/postgres/0012_pruned_runs.sql"),
];

/// How long a caller waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT_MS: u64 = 10_000;

/// A PostgreSQL database.
#[derive(Debug)]
pub struct PostgresDatabase {
    location: Location,
    /// `location` for messages, made once: every statement's error names it.
    name: String,
    stats: crate::tx::CommitStats,
    pool: PgPool,
    crash: CrashSwitch,
}

impl PostgresDatabase {
    /// Connects, creates the schema and migrates it (one host at a time), and keeps a pool of
    /// up to `connections_max` connections.
    pub async fn open(
        url: &str,
        schema: &str,
        pools: crate::tx::PoolSizes,
        crash: CrashSwitch,
    ) -> Result<Self, OpenError> {
        let location = Location::Postgres {
            url: url.to_owned(),
            schema: schema.to_owned(),
        };
        let open_error = |e: sqlx::Error| OpenError {
            database: location.describe(),
            cause: describe(&e),
            hint: open_hint(&e),
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| OpenError {
                hint: "write it as postgres://user[:password]@host[:port]/database[?schema=name]",
                ..open_error(e)
            })?
            .options([("search_path", schema)]);
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(open_error)?;
        migrate(&mut conn, schema).await.map_err(open_error)?;
        conn.close().await.map_err(open_error)?;
        let pool = PgPoolOptions::new()
            .max_connections(pools.postgres_connections_max.max(1))
            .min_connections(
                pools
                    .postgres_connections_min
                    .min(pools.postgres_connections_max),
            )
            .acquire_timeout(Duration::from_millis(ACQUIRE_TIMEOUT_MS))
            .connect_lazy_with(options);
        Ok(PostgresDatabase {
            name: location.describe(),
            location,
            stats: crate::tx::CommitStats::default(),
            pool,
            crash,
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn stats(&self) -> &crate::tx::CommitStats {
        &self.stats
    }

    fn error(&self, e: sqlx::Error) -> DbError {
        DbError::Statement {
            database: self.name.clone(),
            reason: describe(&e),
        }
    }

    pub(super) async fn write<T, E>(&self, work: Work<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let began = std::time::Instant::now();
        // sqlx's transaction rolls back if this future is dropped half-way, so a cancelled
        // caller never leaves a pooled connection inside a transaction.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| E::from(self.error(e)))?;
        let database = &self.name;
        let result = {
            let mut pg = PgTx {
                conn: &mut tx,
                database,
            };
            work(&mut pg).await
        };
        match result {
            Ok(value) => {
                self.stats.record(1);
                let ticket = self.crash.before_commit();
                tx.commit().await.map_err(|e| {
                    E::from(DbError::Commit {
                        database: database.to_owned(),
                        reason: describe(&e),
                    })
                })?;
                self.crash.after_commit(ticket);
                self.stats.durable(began);
                Ok(value)
            }
            Err(error) => {
                // Rolling back can only fail if the connection is gone, which ends the
                // transaction as well.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    pub(super) async fn write_one<T, E>(&self, jobs: usize, work: Work<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let began = std::time::Instant::now();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| E::from(self.error(e)))?;
        let database = &self.name;
        // The statement commits itself: the crash switch sees it as one commit.
        let ticket = self.crash.before_commit();
        let result = {
            let mut pg = PgTx {
                conn: &mut conn,
                database,
            };
            work(&mut pg).await
        };
        if result.is_ok() {
            self.stats.record(jobs);
            self.crash.after_commit(ticket);
            self.stats.durable(began);
        }
        result
    }

    pub(super) async fn read<T, E>(&self, work: Work<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| E::from(self.error(e)))?;
        let database = &self.name;
        let mut tx = conn.begin().await.map_err(|e| E::from(self.error(e)))?;
        let result = {
            let mut pg = PgTx {
                conn: &mut tx,
                database,
            };
            work(&mut pg).await
        };
        let _ = tx.rollback().await;
        result
    }
}

/// Drops `schema` and everything in it.
pub(super) async fn drop_schema(url: &str, schema: &str) -> Result<(), OpenError> {
    let location = Location::Postgres {
        url: url.to_owned(),
        schema: schema.to_owned(),
    }
    .describe();
    let open_error = |e: sqlx::Error| OpenError {
        database: location.clone(),
        cause: describe(&e),
        hint: open_hint(&e),
    };
    let mut conn = PgConnection::connect(url).await.map_err(open_error)?;
    // The schema name was validated (lowercase letters, digits, '_') when it was parsed.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut conn)
    .await
    .map_err(open_error)?;
    conn.close().await.map_err(open_error)
}

/// A sqlx error for a person: a server error as the server words it, with its SQLSTATE (sqlx
/// appends "at line N", a line of PostgreSQL's own C source), anything else as sqlx says it.
fn describe(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

/// What to do about an error met while connecting and migrating.
fn open_hint(e: &sqlx::Error) -> &'static str {
    let Some(db) = e.as_database_error() else {
        return match e {
            sqlx::Error::Configuration(_) => {
                "write it as postgres://user[:password]@host[:port]/database[?schema=name]"
            }
            _ => "check that the server is running and reachable at that host and port",
        };
    };
    match db.code().as_deref() {
        Some("3D000") => "create the database (createdb NAME) or name an existing one in the URL",
        Some("28000") => "check the user in the URL: the server has no such role or refuses it",
        Some("28P01") => "check the user and password in the URL",
        Some("42501") => "grant the user CREATE on the database, or connect as a user who may",
        Some("53300") => {
            "the server has no connection free: raise its max_connections or lower wasaga's pool"
        }
        Some("57P03") => "the server is starting or stopping: try again once it is up",
        _ => "check that the user may create a schema and tables in that database",
    }
}

/// Creates the schema and applies missing migrations, holding an advisory lock so that hosts
/// starting together migrate one after the other.
async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('wasaga-migrate:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    // The schema name was validated (lowercase letters, digits, '_') when it was parsed.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (version BIGINT NOT NULL)"
    )))
    .execute(&mut *tx)
    .await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let version = version.unwrap_or(0);
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if version >= target {
            continue;
        }
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(target)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// A transaction on a pooled connection.
struct PgTx<'c> {
    conn: &'c mut PgConnection,
    database: &'c str,
}

impl PgTx<'_> {
    fn error(&self, e: sqlx::Error) -> DbError {
        DbError::Statement {
            database: self.database.to_owned(),
            reason: describe(&e),
        }
    }
}

fn query<'a>(
    sql: &'static str,
    args: &'a [Arg<'a>],
) -> sqlx::query::Query<'a, sqlx::Postgres, PgArguments> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match *arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Blob(v) => query.bind(v),
            Arg::OptInt(v) => query.bind(v),
            Arg::OptText(v) => query.bind(v),
            Arg::TextList(v) => query.bind(v),
            Arg::IntList(v) => query.bind(v),
            Arg::OptTextList(v) => query.bind(v),
        };
    }
    query
}

fn row_of(row: &PgRow) -> Result<Row, DbError> {
    let decode = |e: sqlx::Error| DbError::Decode(e.to_string());
    let mut values = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        if row.try_get_raw(index).map_err(decode)?.is_null() {
            values.push(Value::Null);
            continue;
        }
        let value = match column.type_info().name() {
            "INT8" => Value::Int(row.try_get::<i64, _>(index).map_err(decode)?),
            "INT4" => Value::Int(i64::from(row.try_get::<i32, _>(index).map_err(decode)?)),
            "INT2" => Value::Int(i64::from(row.try_get::<i16, _>(index).map_err(decode)?)),
            "BOOL" => Value::Int(i64::from(row.try_get::<bool, _>(index).map_err(decode)?)),
            "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => {
                Value::Text(row.try_get::<String, _>(index).map_err(decode)?)
            }
            "BYTEA" => Value::Blob(row.try_get::<Vec<u8>, _>(index).map_err(decode)?),
            other => {
                return Err(DbError::Decode(format!(
                    "column {} has type {other}, which wasaga does not read",
                    column.name()
                )));
            }
        };
        values.push(value);
    }
    Ok(Row(values))
}

impl Tx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(async move {
            query(sql, args)
                .execute(&mut *self.conn)
                .await
                .map(|done| done.rows_affected())
                .map_err(|e| self.error(e))
        })
    }

    fn fetch_optional<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Option<Row>, DbError>> {
        Box::pin(async move {
            let row = query(sql, args)
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(|e| self.error(e))?;
            row.as_ref().map(row_of).transpose()
        })
    }

    fn fetch_all<'a>(
        &'a mut self,
        sql: &'static str,
        args: &'a [Arg<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>, DbError>> {
        Box::pin(async move {
            let rows = query(sql, args)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(|e| self.error(e))?;
            rows.iter().map(row_of).collect()
        })
    }
}
