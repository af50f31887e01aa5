//! Writes to a run inside a transaction: creating its row, fenced appends of its events, and
//! why a fence refused a write. The journal makes them in transactions of its own; the
//! co-located ledger (`wasaga_participants::colocated`) makes them in the ledger's.

use crate::encoded::Encoded;
use crate::error::JournalError;
use wasaga_core::clock::now_ms;
use wasaga_core::event::Event;
use wasaga_db::{Arg, DbError, Dialect, Tx};

/// Inserts a run and its `started` event inside `tx`, unless the run id exists. Returns whether
/// it was created.
pub async fn create_run(
    tx: &mut dyn Tx,
    run_id: &str,
    started: &Event,
    owner: &str,
    lease_ms: u64,
) -> Result<bool, JournalError> {
    let events = Encoded::new(std::slice::from_ref(started));
    let reserved = first_next_seq(tx.dialect(), events.len());
    if !insert_run(tx, run_id, started, owner, lease_ms, reserved).await? {
        return Ok(false);
    }
    append_created(tx, run_id, owner, reserved, &events).await?;
    Ok(true)
}

/// The `next_seq` to insert a run's row with when its first events, `len` of them from its
/// `started` event on, follow in the same transaction ([`append_created`]). On SQLite it is
/// where those events will end, so that writing them needs no update of the row; on
/// PostgreSQL it is 1, and the batched append (`batch::append_batch_pg`) fences and moves it.
pub fn first_next_seq(dialect: Dialect, len: usize) -> i64 {
    match dialect {
        Dialect::Sqlite => 1 + len as i64,
        Dialect::Postgres => 1,
    }
}

/// Inserts a run's row inside `tx`, unless the run id exists, owned by `owner`, at `next_seq`
/// (see [`first_next_seq`]); its events follow with [`append_created`]. Returns whether it was
/// created.
pub async fn insert_run(
    tx: &mut dyn Tx,
    run_id: &str,
    started: &Event,
    owner: &str,
    lease_ms: u64,
    next_seq: i64,
) -> Result<bool, JournalError> {
    let Event::Started {
        workflow,
        module_hash,
        input,
        ..
    } = started
    else {
        unreachable!("insert_run takes a started event");
    };
    let now = now_ms() as i64;
    let sql = match tx.dialect() {
        Dialect::Sqlite => {
            "INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms, updated_at_ms,
                               next_seq, owner, lease_expires_at_ms)
             VALUES ($1, $2, $3, 'running', $4, $5, $5, $8, $6, $5 + $7) ON CONFLICT (run_id) DO NOTHING"
        }
        Dialect::Postgres => {
            "INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms, updated_at_ms,
                               next_seq, owner, lease_expires_at_ms)
             VALUES ($1, $2, $3, 'running', $4, $5, $5, $8, $6,
                     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $7)
             ON CONFLICT (run_id) DO NOTHING"
        }
    };
    let inserted = tx
        .execute(
            sql,
            wasaga_db::args![
                run_id,
                workflow,
                module_hash,
                input,
                now,
                owner,
                lease_ms as i64,
                next_seq
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Writes the first events of a run [`insert_run`] inserted in this transaction at `reserved`:
/// `events` starts with its `started` event. Returns the next free seq. Events that end
/// elsewhere than `reserved`, or that change the run's status, update the row as an append
/// does (fenced at `reserved`, which this transaction holds).
pub async fn append_created(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    reserved: i64,
    events: &Encoded,
) -> Result<i64, JournalError> {
    if tx.dialect() == Dialect::Postgres {
        return append_events(tx, run_id, owner, 1, events).await;
    }
    let now = now_ms() as i64;
    let after = insert_events(tx, run_id, 1, now, &events.rows).await?;
    if after != reserved || events.projection.is_some() {
        fence_and_project(tx, run_id, owner, reserved, after, now, events).await?;
    }
    Ok(after)
}

/// Appends `events` at `next_seq` inside a write transaction (which may also carry a
/// co-located participant's write), fenced by `owner`; returns the next free seq.
///
/// The fence is the last statement: the update of the run's row only matches if this host
/// still owns the run and `next_seq` is still its next position. A refusal therefore comes
/// after this job's writes, and must undo them: on PostgreSQL the job is its own transaction
/// and rolls back; on SQLite the writer rolls back the whole batch of a job that fails after
/// writing (see `db::sqlite`). Both leave nothing of a refused append. In PostgreSQL the update
/// locks the row, so a host taking the run over waits for this transaction and then sees it.
pub async fn append_events(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    next_seq: i64,
    events: &Encoded,
) -> Result<i64, JournalError> {
    let now = now_ms() as i64;
    let after = next_seq + events.len() as i64;
    if tx.dialect() == Dialect::Postgres {
        if events.is_empty() {
            // Nothing to append (a co-located ledger call that journals no event of its own,
            // such as a two-phase branch or a refused compensation): `append_batch` reports a
            // batch without events as not appended, so the fence is held by locking the run's
            // row at this owner and position until the transaction commits.
            return match tx
                .fetch_optional(
                    "SELECT 1 FROM runs WHERE run_id = $1 AND next_seq = $2 AND owner = $3
                     FOR UPDATE",
                    wasaga_db::args![run_id, next_seq, owner],
                )
                .await?
            {
                Some(_) => Ok(next_seq),
                None => Err(refused(tx, run_id, owner, next_seq).await),
            };
        }
        // One statement: the fenced update of the run, and its events only if it matched.
        let append = AppendRef {
            run_id,
            owner,
            next_seq,
            events,
        };
        if append_batch_pg(tx, &[append]).await? == [true] {
            return Ok(after);
        }
        return Err(refused(tx, run_id, owner, next_seq).await);
    }
    check_fence(tx, run_id, owner, next_seq).await?;
    if completes(events) {
        check_not_cancelled(tx, run_id).await?;
    }
    let seq = insert_events(tx, run_id, next_seq, now, &events.rows).await?;
    fence_and_project(tx, run_id, owner, next_seq, after, now, events).await?;
    Ok(seq)
}

/// On SQLite, refuses before anything is written a job that would append to `run_id` at
/// `next_seq` without holding it there (`owner`): a job whose fence fails at its end would
/// have written first, and its batch, with every other job in it, answers already given
/// early among them, would have to be rolled back. The single writer makes the check hold
/// until the job's own fenced update. (PostgreSQL's appends are one fenced statement.)
pub async fn check_fence(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    next_seq: i64,
) -> Result<(), JournalError> {
    if tx.dialect() == Dialect::Postgres {
        return Ok(());
    }
    let held = tx
        .fetch_optional(
            "SELECT 1 FROM runs WHERE run_id = $1 AND next_seq = $2 AND owner = $3",
            wasaga_db::args![run_id, next_seq, owner],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(refused(tx, run_id, owner, next_seq).await),
    }
}

/// Inserts `rows` (kind and body) as a run's events from `seq` on, up to four to a
/// statement; returns the seq after the last. SQLite only (PostgreSQL's appends are one
/// statement of their own, `append_batch`).
async fn insert_events(
    tx: &mut dyn Tx,
    run_id: &str,
    mut seq: i64,
    now: i64,
    mut rows: &[(&'static str, String)],
) -> Result<i64, JournalError> {
    // A step journals its intent and outcome at once, a run's end its last step and its
    // outcome: most writes are two to four events, each one statement. OR FAIL: a conflict
    // ends the statement without undoing its earlier rows, so SQLite keeps no statement journal
    // (a copy of every page the statement touches) for it; a job that fails after writing has
    // its whole batch rolled back by the writer.
    while !rows.is_empty() {
        let (chunk, rest) = rows.split_at(rows.len().min(4));
        match chunk {
            [(k1, b1), (k2, b2), (k3, b3), (k4, b4)] => {
                tx.execute(
                    "INSERT OR FAIL INTO events (run_id, seq, at_ms, kind, body)
                     VALUES ($1, $2, $3, $4, $5), ($1, $2 + 1, $3, $6, $7),
                            ($1, $2 + 2, $3, $8, $9), ($1, $2 + 3, $3, $10, $11)",
                    wasaga_db::args![run_id, seq, now, *k1, b1, *k2, b2, *k3, b3, *k4, b4],
                )
                .await?
            }
            [(k1, b1), (k2, b2), (k3, b3)] => {
                tx.execute(
                    "INSERT OR FAIL INTO events (run_id, seq, at_ms, kind, body)
                     VALUES ($1, $2, $3, $4, $5), ($1, $2 + 1, $3, $6, $7),
                            ($1, $2 + 2, $3, $8, $9)",
                    wasaga_db::args![run_id, seq, now, *k1, b1, *k2, b2, *k3, b3],
                )
                .await?
            }
            [(k1, b1), (k2, b2)] => {
                tx.execute(
                    "INSERT OR FAIL INTO events (run_id, seq, at_ms, kind, body)
                     VALUES ($1, $2, $3, $4, $5), ($1, $2 + 1, $3, $6, $7)",
                    wasaga_db::args![run_id, seq, now, *k1, b1, *k2, b2],
                )
                .await?
            }
            [(k1, b1)] => {
                tx.execute(
                    "INSERT INTO events (run_id, seq, at_ms, kind, body) VALUES ($1, $2, $3, $4, $5)",
                    wasaga_db::args![run_id, seq, now, *k1, b1],
                )
                .await?
            }
            _ => unreachable!("chunks hold one to four events"),
        };
        seq += chunk.len() as i64;
        rows = rest;
    }
    Ok(seq)
}

/// Whether `events` end their run as completed.
fn completes(events: &Encoded) -> bool {
    matches!(&events.projection, Some((status, _, _)) if *status == "completed")
}

/// On SQLite, refuses before anything is written to complete a run someone cancelled: a
/// cancel that was accepted (the run had not ended) is never followed by the run completing;
/// it compensates instead. (PostgreSQL's `append_batch` holds the same guard.)
async fn check_not_cancelled(tx: &mut dyn Tx, run_id: &str) -> Result<(), JournalError> {
    let row = tx
        .fetch_optional(
            "SELECT cancel_reason FROM runs WHERE run_id = $1 AND cancel_reason IS NOT NULL",
            wasaga_db::args![run_id],
        )
        .await?;
    match row {
        Some(row) => Err(JournalError::Cancelled {
            run_id: run_id.to_owned(),
            reason: row.text(0)?,
        }),
        None => Ok(()),
    }
}

/// The fence of a SQLite append: moves the run from `next_seq` to `after`, with the status a
/// terminal event sets, only if this host still owns it and it is still at `next_seq`.
async fn fence_and_project(
    tx: &mut dyn Tx,
    run_id: &str,
    owner: &str,
    next_seq: i64,
    after: i64,
    now: i64,
    events: &Encoded,
) -> Result<(), JournalError> {
    let updated = match &events.projection {
        Some((status, output, error)) => {
            // A run that has ended holds no lease: nothing executes it any more, and a stuck
            // run must be free for whichever host an operator retries it on.
            tx.execute(
                "UPDATE runs SET next_seq = $1, updated_at_ms = $2, status = $3, output = $4, error = $5,
                                 lease_expires_at_ms = CASE WHEN $3 = 'compensating'
                                                            THEN lease_expires_at_ms ELSE 0 END
                 WHERE run_id = $6 AND next_seq = $7 AND owner = $8",
                wasaga_db::args![
                    after,
                    now,
                    *status,
                    output.as_deref(),
                    error.as_deref(),
                    run_id,
                    next_seq,
                    owner
                ],
            )
            .await?
        }
        None => {
            tx.execute(
                "UPDATE runs SET next_seq = $1, updated_at_ms = $2
                 WHERE run_id = $3 AND next_seq = $4 AND owner = $5",
                wasaga_db::args![after, now, run_id, next_seq, owner],
            )
            .await?
        }
    };
    if updated != 1 {
        return Err(refused(tx, run_id, owner, next_seq).await);
    }
    Ok(())
}

/// Why a fenced append of `owner` at `next_seq` was refused: another owner, or another position.
pub async fn refused(tx: &mut dyn Tx, run_id: &str, owner: &str, next_seq: i64) -> JournalError {
    let row = match tx
        .fetch_optional(
            "SELECT next_seq, owner, cancel_reason FROM runs WHERE run_id = $1",
            wasaga_db::args![run_id],
        )
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return JournalError::UnknownRun(run_id.to_owned()),
        Err(e) => return e.into(),
    };
    let (held_here, cancelled) = (
        row.int(0).ok() == Some(next_seq)
            && row.opt_text(1).ok().flatten().as_deref() == Some(owner),
        row.opt_text(2).ok().flatten(),
    );
    if let (true, Some(reason)) = (held_here, cancelled) {
        // Held at this position: what refused the append is the guard on completing a run
        // that was cancelled.
        return JournalError::Cancelled {
            run_id: run_id.to_owned(),
            reason,
        };
    }
    match row.opt_text(1) {
        Ok(Some(holder)) if holder != owner => JournalError::NotOwner {
            run_id: run_id.to_owned(),
            owner: holder,
        },
        Ok(None) => JournalError::NotOwner {
            run_id: run_id.to_owned(),
            owner: "nobody (this host gave the run up)".to_owned(),
        },
        Ok(Some(_)) => JournalError::VersionConflict {
            run_id: run_id.to_owned(),
            seq: next_seq,
        },
        Err(e) => e.into(),
    }
}

/// An [`Append`] by reference, for appends made inside another transaction.
pub struct AppendRef<'a> {
    pub run_id: &'a str,
    pub owner: &'a str,
    pub next_seq: i64,
    pub events: &'a Encoded,
}

/// Appends with one call of `append_batch`: whether each run was appended, in order. Every
/// append on PostgreSQL is made this way, a lone one as a batch of one.
pub async fn append_batch_pg(
    tx: &mut dyn Tx,
    appends: &[AppendRef<'_>],
) -> Result<Vec<bool>, JournalError> {
    let (mut run_ids, mut owners, mut next_seqs, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut kinds, mut bodies, mut statuses, mut outputs, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for a in appends {
        run_ids.push(a.run_id.to_owned());
        owners.push(a.owner.to_owned());
        next_seqs.push(a.next_seq);
        counts.push(a.events.len() as i64);
        for (kind, body) in a.events.rows() {
            kinds.push((*kind).to_owned());
            bodies.push(body.clone());
        }
        let (status, output, error) = match a.events.projection() {
            Some((status, output, error)) => (status.to_owned(), output.clone(), error.clone()),
            // '' is read as "the run's status does not change".
            None => (String::new(), None, None),
        };
        statuses.push(status);
        outputs.push(output);
        errors.push(error);
    }
    let rows = tx
        .fetch_all(
            "SELECT appended FROM append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                Arg::TextList(&run_ids),
                Arg::TextList(&owners),
                Arg::IntList(&next_seqs),
                Arg::IntList(&counts),
                Arg::TextList(&kinds),
                Arg::TextList(&bodies),
                Arg::TextList(&statuses),
                Arg::OptTextList(&outputs),
                Arg::OptTextList(&errors),
                Arg::Int(now_ms() as i64),
            ],
        )
        .await?;
    answered(rows.len(), appends.len())?;
    rows.iter().map(|row| Ok(row.int(0)? != 0)).collect()
}

/// Fails unless a batch of `writes` writes was answered with one row each.
pub fn answered(rows: usize, writes: usize) -> Result<(), JournalError> {
    if rows == writes {
        return Ok(());
    }
    Err(JournalError::Database(DbError::Decode(format!(
        "a batch of {writes} writes was answered with {rows} rows"
    ))))
}
