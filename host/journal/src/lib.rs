//! The durable journal: append-only events per run, the `runs` projection, the module store
//! and the registry of deployed workflow versions, in a wasaga database (SQLite or
//! PostgreSQL, see `db`).
//!
//! Appends are version-checked and fenced: `(run_id, seq)` is unique, the projection's
//! `next_seq` must match, and the run must still be owned by this journal's owner. A host owns
//! a run through a lease in its `runs` row (`owner`, `lease_expires_at_ms`); a host whose lease
//! expired (it was paused, say) and was taken over can no longer append to that run.

mod append;
mod batch;
mod encoded;
mod error;
mod journal;
mod ownership;
mod records;
mod registry;
mod retention;
mod upgrades;
mod waits;

pub use append::{
    answered, append_created, append_events, check_fence, create_run, first_next_seq, insert_run,
    refused,
};
pub use batch::{Answer, Batched, Batcher, write_all};
pub use encoded::Encoded;
pub use error::JournalError;
pub use journal::Journal;
pub use ownership::Takeover;
pub use records::{
    COUNTED_RUNS_MAX, Deployed, Deployment, RunCounts, RunFilter, RunRecord, STATUS_NAMES,
    StoredEvent, Waiting,
};
pub use retention::PRUNED_PER_BATCH_MAX;
pub use upgrades::Upgraded;
pub use waits::{Cancelled, Signalled, WakeCheck, child_run_id};

#[cfg(test)]
mod tests {
    use super::*;
    use wasaga_core::event::Event;
    use wasaga_db::{Database, Location, PoolSizes, Tx};

    /// A job that appends to a run this host does not hold there is refused before it has
    /// written anything: the batch it is in (with answers given early in it) need not be
    /// rolled back.
    #[tokio::test]
    async fn an_append_without_the_fence_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("wasaga-fence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = Database::open(
            &Location::Sqlite(dir.join("journal.db")),
            PoolSizes::default(),
            wasaga_core::crash::CrashSwitch::default(),
        )
        .await
        .expect("open");
        let started = Event::Started {
            workflow: "w".into(),
            module_hash: "h".into(),
            input: "{}".into(),
            started_at_ms: 1,
            traceparent: None,
        };
        let encoded = Encoded::new(std::slice::from_ref(&started));
        let reserved = first_next_seq(db.dialect(), encoded.len());
        let next: i64 = db
            .write(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES ('h', 'w', x'00', 1, 0)",
                        &[],
                    )
                    .await?;
                    assert!(insert_run(tx, "r", &started, "host-a", 60_000, reserved).await?);
                    append_created(tx, "r", "host-a", reserved, &encoded).await
                })
            })
            .await
            .expect("created");
        let log = Event::Log {
            call: None,
            message: "x".into(),
        };
        for (owner, seq, refusal) in [("host-b", next, "owner"), ("host-a", next + 1, "position")] {
            let events = Encoded::new(std::slice::from_ref(&log));
            let (refused, changed) = db
                .write(move |tx| {
                    Box::pin(async move {
                        let before = scalar(tx, "SELECT COUNT(*) FROM events").await?;
                        let refused = append_events(tx, "r", owner, seq, &events).await.is_err();
                        let after = scalar(tx, "SELECT COUNT(*) FROM events").await?;
                        Ok::<_, JournalError>((refused, after - before))
                    })
                })
                .await
                .expect("the job runs");
            assert!(refused, "a wrong {refusal} is refused");
            assert_eq!(
                changed, 0,
                "a refused append (wrong {refusal}) wrote nothing"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A run cancelled while it runs can no longer be completed (the append is refused and
    /// writes nothing), and a child's id held by a run that is not that parent's child is
    /// never adopted.
    #[tokio::test]
    async fn a_cancelled_run_cannot_complete_and_no_stranger_is_adopted_as_a_child() {
        let dir = std::env::temp_dir().join(format!("wasaga-cancel-guard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = std::sync::Arc::new(
            Database::open(
                &Location::Sqlite(dir.join("journal.db")),
                PoolSizes::default(),
                wasaga_core::crash::CrashSwitch::default(),
            )
            .await
            .expect("open"),
        );
        db.write(|tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES ('h', 'w', x'00', 1, 0)",
                    &[],
                )
                .await
                .map(|_| ())
            })
        })
        .await
        .expect("module");
        let journal = Journal::new(db.clone(), "host-a".to_owned(), 60_000);
        let started = Event::Started {
            workflow: "w".into(),
            module_hash: "h".into(),
            input: "{}".into(),
            started_at_ms: 1,
            traceparent: None,
        };
        assert!(journal.create_run("r", &started).await.expect("created"));
        assert_eq!(
            journal.cancel("r", "by ops: test").await.expect("cancel"),
            Cancelled::Requested {
                children: Vec::new()
            }
        );
        let completed = journal
            .append("r", 2, vec![Event::Completed { output: "1".into() }])
            .await;
        assert!(
            matches!(&completed, Err(JournalError::Cancelled { reason, .. }) if reason == "by ops: test"),
            "{completed:?}"
        );
        let (record, events) = journal.run_with_events("r").await.expect("run");
        assert_eq!(record.status, wasaga_core::event::RunStatus::Running);
        assert_eq!(events.len(), 1, "nothing was appended");
        // Compensation still journals.
        journal
            .append(
                "r",
                2,
                vec![Event::Compensating {
                    cause: "cancelled".into(),
                }],
            )
            .await
            .expect("a cancelled run compensates");

        // A run of its own under a child's id: the parent does not take it for its child.
        assert!(journal.create_run("p", &started).await.expect("parent"));
        let stranger = child_run_id("p", 1);
        assert!(
            journal
                .create_run(&stranger, &started)
                .await
                .expect("stranger")
        );
        let adopted = journal.create_child(&stranger, "p", &started).await;
        assert!(
            matches!(adopted, Err(JournalError::RunExists(_))),
            "{adopted:?}"
        );
        // The parent's own child, created twice (a crash between), is found again.
        let own = child_run_id("p", 2);
        assert!(
            journal
                .create_child(&own, "p", &started)
                .await
                .expect("child")
        );
        assert!(
            !journal
                .create_child(&own, "p", &started)
                .await
                .expect("again")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An upgrade moves only a run nobody executes, at the position that was checked, from
    /// the module it was checked on; anything else is left as it is.
    #[tokio::test]
    async fn an_upgrade_moves_only_an_idle_run_at_its_checked_position() {
        let dir = std::env::temp_dir().join(format!("wasaga-upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = std::sync::Arc::new(
            Database::open(
                &Location::Sqlite(dir.join("journal.db")),
                PoolSizes::default(),
                wasaga_core::crash::CrashSwitch::default(),
            )
            .await
            .expect("open"),
        );
        db.write(|tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES ('v1', 'w', x'00', 1, 0), ('v2', 'w', x'00', 1, 0)",
                    &[],
                )
                .await
                .map(|_| ())
            })
        })
        .await
        .expect("modules");
        let journal = Journal::new(db.clone(), "host-a".to_owned(), 60_000);
        let started = Event::Started {
            workflow: "w".into(),
            module_hash: "v1".into(),
            input: "{}".into(),
            started_at_ms: 1,
            traceparent: None,
        };
        assert!(journal.create_run("r", &started).await.expect("created"));
        // Owned by this host: busy.
        let moved = journal
            .upgrade_run("r", "v1", "v2", Some(2), 2)
            .await
            .expect("asked");
        assert_eq!(moved, Upgraded::Busy);
        journal.release_leases().await.expect("released");
        // Idle, but checked at another position, or from another module: busy.
        for (from, at) in [("v1", 3), ("v9", 2)] {
            let moved = journal
                .upgrade_run("r", from, "v2", Some(2), at)
                .await
                .expect("asked");
            assert_eq!(moved, Upgraded::Busy, "{from} at {at}");
        }
        let moved = journal
            .upgrade_run("r", "v1", "v2", Some(2), 2)
            .await
            .expect("asked");
        assert_eq!(moved, Upgraded::Moved);
        let (record, events) = journal.run_with_events("r").await.expect("run");
        assert_eq!(record.module_hash, "v2");
        let last: Vec<Event> = events.into_iter().map(|e| e.event).collect();
        assert_eq!(wasaga_core::event::current_module(&last), Some("v2"));
        assert!(matches!(last.last(), Some(Event::ModuleUpgraded { from, .. }) if from == "v1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn scalar(tx: &mut dyn Tx, sql: &'static str) -> Result<i64, JournalError> {
        Ok(tx
            .fetch_optional(sql, &[])
            .await?
            .expect("one row")
            .int(0)?)
    }
}
