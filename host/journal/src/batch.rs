//! Group commit for a PostgreSQL journal.
//!
//! On PostgreSQL a saga step that debits or credits the co-located ledger is one call of the
//! server-side function `ledger_step`, and an append of a run's events one fenced statement.
//! Done one transaction each, the server spends most of its time beginning, committing and
//! answering transactions rather than in the work. Here what concurrent runs ask for meanwhile
//! is sent as one statement (`ledger_steps` or `append_batch`, schema/postgres/0003 and 0005):
//! one transaction, one commit and one round trip for all of it, and on the server a few
//! statements for the whole batch rather than a few per write.
//!
//! Nothing about a single write changes: a step's ledger operation, idempotency record and
//! events still commit together, an append is still fenced by owner and position, and each
//! answer comes only once its write is durable. What a batch adds is that its writes commit
//! together too; if a batch fails, each of its writes is made again alone, so one write's
//! failure is never another's (and a write that then finds its place taken is answered as one
//! that may have landed: the batch may have committed before its answer was lost).
//!
//! One batch of each kind is in flight at a time: whatever arrives meanwhile waits for the
//! next, which is then larger. On the transfer benchmark that costs less CPU per saga than
//! several smaller batches at once (host and server together on two cores: 0.72 ms, against
//! 0.88 ms with two batches of a kind at a time and 1.0 ms with four), and shortens the tail.
//!
//! A batch of steps locks its accounts in one order, so batches from several hosts never wait
//! on each other in a cycle; runs' rows are only ever wanted by two batches when hosts contend
//! for a run being taken over, and if the server then breaks a deadlock by failing a batch,
//! its writes are made again alone. A lone write goes straight to the server, so a quiet host
//! adds no latency.

use crate::append::refused;
use crate::error::JournalError;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use wasaga_core::BoxFuture;
use wasaga_db::{Database, DbError, Tx};

/// Batches of one kind one host writes at once (see the module's comment).
const BATCHES_IN_FLIGHT: usize = 1;

/// Writes in one batch at most, to bound a batch's lock time and statement size.
const BATCH_WRITES_MAX: usize = 64;

/// A kind of write that can be batched.
pub trait Batched: Send + Sync + Sized + 'static {
    /// What a write gives back once it is durable.
    type Value: Send + 'static;

    /// The key of the rows a write locks: a batch takes its writes in this order.
    fn lock_key(&self) -> &str;

    /// The run, owner and position the write is fenced at.
    fn fence(&self) -> (&str, &str, i64);

    /// Makes one write alone, as one statement.
    fn write_alone<'t>(
        tx: &'t mut dyn Tx,
        write: &'t Self,
    ) -> BoxFuture<'t, Result<Self::Value, JournalError>>;

    /// Makes `writes` with one statement: per write, in order, its answer, or `None` if the
    /// server refused it because this host does not hold its run at that position.
    fn write_batch<'t>(
        tx: &'t mut dyn Tx,
        writes: &'t [Self],
    ) -> BoxFuture<'t, Result<Vec<Option<Answer<Self>>>, JournalError>>;
}

/// A write's answer.
pub type Answer<W> = Result<<W as Batched>::Value, JournalError>;

type Pending<W> = (W, oneshot::Sender<Answer<W>>);

/// The queue of writes waiting for a batch. The task that forms batches ends when the
/// batcher is dropped.
pub struct Batcher<W: Batched> {
    queue: mpsc::UnboundedSender<Pending<W>>,
}

impl<W: Batched> std::fmt::Debug for Batcher<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<W: Batched> Batcher<W> {
    /// Starts forming batches for `db`. Must be called inside the tokio runtime.
    pub fn start(db: Arc<Database>) -> Batcher<W> {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Pending<W>>();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Some(first) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                // Whatever arrived while every slot was busy goes in this batch.
                let mut batch = vec![first];
                while batch.len() < BATCH_WRITES_MAX {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let db = db.clone();
                tokio::spawn(async move {
                    let (writes, replies): (Vec<W>, Vec<_>) = batch.into_iter().unzip();
                    let answers = write_all(&db, writes).await;
                    drop(slot);
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        // A writer that stopped waiting has nothing to be told.
                        let _ = reply.send(answer);
                    }
                });
            }
        });
        Batcher { queue }
    }

    /// Makes `write` in the next batch and returns its answer once it is durable.
    pub async fn write(&self, write: W) -> Answer<W> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send((write, reply)).is_err() {
            return Err(closed());
        }
        answer.await.unwrap_or_else(|_| Err(closed()))
    }
}

/// Makes `writes` (at least one) as one batch; their answers, in the order given.
pub async fn write_all<W: Batched>(db: &Database, writes: Vec<W>) -> Vec<Answer<W>> {
    if writes.len() == 1 {
        return vec![write_alone(db, Arc::new(writes), 0).await];
    }
    // Lock order. The sort is stable: writes on one key keep the order they came in.
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by(|&a, &b| writes[a].lock_key().cmp(writes[b].lock_key()));
    let writes = Arc::new(sorted(writes, &order));
    let shared = writes.clone();
    let rows = db
        .write_one_grouped(writes.len(), move |tx| {
            Box::pin(async move { W::write_batch(tx, &shared).await })
        })
        .await;
    let mut answers = Vec::with_capacity(writes.len());
    match rows {
        Ok(rows) => {
            for (write, row) in writes.iter().zip(rows) {
                answers.push(match row {
                    Some(answer) => answer,
                    None => {
                        let (run_id, owner, seq) = write.fence();
                        Err(why_fenced(db, run_id, owner, seq).await)
                    }
                });
            }
        }
        // Each write alone gets its own answer. The batch may still have committed (its
        // answer lost with the connection): a write that then finds its place taken is not
        // told it clashed with someone else, but that it may have landed.
        Err(failed) => {
            for index in 0..writes.len() {
                let answer = write_alone(db, writes.clone(), index).await;
                answers.push(after_failed_batch(answer, &failed));
            }
        }
    }
    restore(answers, &order)
}

/// A write's answer when made alone after its batch failed with `failed`. Its run's place
/// being taken (`RunExists` for a first write, `VersionConflict` for a later one: only this
/// host writes at that owner and position) is what the batch having committed looks like, so
/// it is answered as a write whose outcome is not known: the run stalls, and whoever resumes
/// it reads what its journal holds. A caller is never told a run it started exists already
/// (and starts it again under a new id) when the run is its own.
fn after_failed_batch<V>(
    answer: Result<V, JournalError>,
    failed: &JournalError,
) -> Result<V, JournalError> {
    match answer {
        Err(JournalError::RunExists(_) | JournalError::VersionConflict { .. }) => {
            Err(JournalError::Database(DbError::Statement {
                database: "the journal".to_owned(),
                reason: format!(
                    "the batch holding this write failed ({failed}) and its place is now taken: the batch may have committed before its answer was lost"
                ),
            }))
        }
        other => other,
    }
}

async fn write_alone<W: Batched>(db: &Database, writes: Arc<Vec<W>>, index: usize) -> Answer<W> {
    db.write_one(move |tx| Box::pin(async move { W::write_alone(tx, &writes[index]).await }))
        .await
}

fn closed() -> JournalError {
    JournalError::Database(DbError::Closed(
        "the journal's batch writer (the host is shutting down)".to_owned(),
    ))
}

/// `items` in the order `order` lists their indexes.
fn sorted<T>(items: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&i| slots[i].take().expect("an index appears once"))
        .collect()
}

/// Answers for writes taken in `order`, put back in the order the writes came in.
fn restore<T>(answers: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut given: Vec<Option<T>> = (0..answers.len()).map(|_| None).collect();
    for (answer, &i) in answers.into_iter().zip(order) {
        given[i] = Some(answer);
    }
    given
        .into_iter()
        .map(|a| a.expect("every write answered"))
        .collect()
}

/// Why the server refused a write as not this host's at that position.
async fn why_fenced(db: &Database, run_id: &str, owner: &str, seq: i64) -> JournalError {
    let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
    db.read(move |tx| {
        Box::pin(async move { Ok::<_, JournalError>(refused(tx, &run_id, &owner, seq).await) })
    })
    .await
    .unwrap_or_else(|e| e)
}
