//! Locks with fencing tokens, on every backend against a real server: mutual exclusion under
//! contention, a paused holder fenced out by the ledger, a backend that dies and comes back,
//! opposing transfers that never deadlock, and a lock's ttl and wait cut to the host's limits.

use crate::guests::{COUNTER, LOCKED_UNDO, TRANSFER};
use crate::services::{Postgres, Redis, ZooKeeper};
use crate::support::{Sandbox, assert_ledger_consistent, rt, sql, text};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use wasaga_core::event::{Event, RunStatus};
use wasaga_db::Location;
use wasaga_locks::LockBackend;
use wasaga_runtime::store::no_observer;
use wasaga_runtime::{Host, HostConfig};

async fn host(s: &Sandbox, locks: LockBackend) -> Host {
    let mut config = HostConfig::new(Location::Sqlite(s.db.clone()));
    config.locks = locks;
    config.limits.concurrent_runs_max = 32;
    Host::open(&config).await.expect("host opens")
}

async fn register(host: &Host, key: &str) -> i64 {
    let key = key.to_owned();
    let value = host
        .ledger_db()
        .read(move |tx| {
            Box::pin(async move { wasaga_participants::ledger::read_register(tx, &key).await })
        })
        .await
        .expect("read register");
    value.map_or(0, |(v, _)| v.parse().expect("an integer register"))
}

/// 8 runs each doing 50 lock-guarded read-increment-writes of one register.
async fn guarded_increments(locks: LockBackend) {
    let s = Sandbox::new("increments");
    let host = host(&s, locks).await;
    let module = std::fs::read(COUNTER).expect("guest built");
    let hash = host
        .add_module("counter", &module)
        .await
        .expect("valid module");
    let input = json!({ "key": "shared", "increments": 50 }).to_string();
    let mut runs = Vec::new();
    for i in 0..8 {
        let (run_id, _) = host
            .start(Some(format!("inc-{i}")), "counter", &hash, &input)
            .await
            .expect("start");
        let host = host.clone();
        runs.push(tokio::spawn(async move {
            host.drive(&run_id, no_observer()).await
        }));
    }
    for run in runs {
        let outcome = run.await.expect("task").expect("drive");
        assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
    }
    assert_eq!(
        register(&host, "shared").await,
        400,
        "no increment may be lost"
    );

    // Holder intervals, from the journals: a release is journaled before the backend frees
    // the lock and an acquisition after the backend grants it, so no two may overlap.
    let mut intervals = Vec::new();
    for i in 0..8 {
        let events = host
            .journal()
            .events(&format!("inc-{i}"))
            .await
            .expect("events");
        let mut acquired = None;
        for stored in events {
            match stored.event {
                Event::LockAcquired { fencing_token, .. } => {
                    acquired = Some((stored.at_ms, fencing_token))
                }
                Event::LockReleased { .. } => {
                    let (at, token) = acquired.take().expect("released what was acquired");
                    intervals.push((at, stored.at_ms, token));
                }
                _ => {}
            }
        }
    }
    assert_eq!(intervals.len(), 400);
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "holder intervals overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
        assert!(
            pair[1].2 > pair[0].2,
            "fencing tokens must grow with each grant: {pair:?}"
        );
    }
}

#[test]
fn guarded_increments_are_exclusive_with_database_locks() {
    rt().block_on(guarded_increments(LockBackend::Journal));
}

#[test]
fn guarded_increments_are_exclusive_with_redis_locks() {
    let redis = Redis::start();
    rt().block_on(guarded_increments(LockBackend::Redis(redis.url())));
}

#[test]
fn guarded_increments_are_exclusive_with_postgres_locks() {
    let postgres = Postgres::start();
    rt().block_on(guarded_increments(LockBackend::Postgres(postgres.url())));
}

#[test]
fn guarded_increments_are_exclusive_with_zookeeper_locks() {
    let zookeeper = ZooKeeper::start();
    rt().block_on(guarded_increments(LockBackend::ZooKeeper(zookeeper.url())));
}

/// Holder A takes the lock and is frozen (SIGSTOP) between its read and its write; its lease
/// expires, B takes the lock and writes; A, thawed, writes with its old token and the ledger
/// refuses it.
fn paused_holder_is_fenced_out(locks: &str, lease_lapse: Duration) {
    let s = Sandbox::new("paused-holder");
    let shared_ledger = s.dir.join("ledger.db").display().to_string();
    let a_db = s.dir.join("a.db").display().to_string();
    let b_db = s.dir.join("b.db").display().to_string();
    let wasaga = crate::support::wasaga_bin();
    let common = |db: &str| {
        vec![
            "--db".to_owned(),
            db.to_owned(),
            "--ledger".to_owned(),
            shared_ledger.clone(),
            "--locks".to_owned(),
            locks.to_owned(),
        ]
    };

    let a_input =
        json!({ "key": "k", "increments": 1, "ttl_ms": 300, "pause_spins": 3_000_000_000u64 })
            .to_string();
    let mut a = std::process::Command::new(&wasaga)
        .args(common(&a_db))
        .args(["run", COUNTER, "--input", &a_input])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start holder A");
    let pid = a.id().to_string();
    let mut lines = BufReader::new(a.stdout.take().expect("stdout")).lines();
    // Freeze A once it has read the register under its lock.
    loop {
        let line = lines.next().expect("A streams its steps").expect("utf-8");
        if line.contains("read-0") {
            break;
        }
    }
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill");
    assert!(stop.success());
    std::thread::sleep(lease_lapse);

    let b_input = json!({ "key": "k", "increments": 1, "ttl_ms": 5_000 }).to_string();
    let b = std::process::Command::new(&wasaga)
        .args(common(&b_db))
        .args(["run", COUNTER, "--input", &b_input])
        .output()
        .expect("run B");
    assert_eq!(
        b.status.code(),
        Some(0),
        "B takes the expired lock: {}",
        text(&b)
    );

    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("kill");
    assert!(cont.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let a_out = a.wait_with_output().expect("A ends");
    assert_eq!(
        a_out.status.code(),
        Some(3),
        "A is compensated: {rest:?} {}",
        String::from_utf8_lossy(&a_out.stderr)
    );
    let reason = String::from_utf8_lossy(&a_out.stderr);
    assert!(
        reason.contains("stale fencing token"),
        "A's write must be refused for its stale token: {reason}"
    );

    let value: String = crate::support::scalar(
        std::path::Path::new(&shared_ledger),
        "SELECT value FROM ledger_registers WHERE key = 'k'",
    );
    assert_eq!(value, "1", "only B's write took effect");
}

#[test]
fn a_lock_that_cannot_be_had_in_time_fails_the_run_with_a_clear_error() {
    let s = Sandbox::new("lock-timeout");
    let wasaga = crate::support::wasaga_bin();
    let locks = format!("sqlite:{}", s.dir.join("locks.db").display());
    let ledger = s.dir.join("ledger.db").display().to_string();
    let args = |db: &str| {
        let db = s.dir.join(db).display().to_string();
        vec![
            "--db".to_owned(),
            db,
            "--ledger".to_owned(),
            ledger.clone(),
            "--locks".to_owned(),
            locks.clone(),
        ]
    };
    // A holds the lock for a long while (it spins between its read and its write).
    let a_input =
        json!({ "key": "k", "increments": 1, "pause_spins": 4_000_000_000u64 }).to_string();
    let mut a = std::process::Command::new(&wasaga)
        .args(args("a.db"))
        .args(["run", COUNTER, "--input", &a_input])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start A");
    let mut lines = BufReader::new(a.stdout.take().expect("stdout")).lines();
    while !lines
        .next()
        .expect("A streams")
        .expect("utf-8")
        .contains("read-0")
    {}

    let b_input = json!({ "key": "k", "increments": 1, "wait_ms": 300 }).to_string();
    let b = std::process::Command::new(&wasaga)
        .args(args("b.db"))
        .args(["run", COUNTER, "--input", &b_input])
        .output()
        .expect("run B");
    let _ = a.kill();
    let _ = a.wait();
    assert_eq!(b.status.code(), Some(3), "B compensates: {}", text(&b));
    let reason = String::from_utf8_lossy(&b.stderr);
    assert!(
        reason.contains("lock 'k'")
            && reason.contains("still held by")
            && reason.contains("after waiting"),
        "{reason}"
    );
}

#[test]
fn a_lock_asked_for_beyond_the_limits_is_cut_to_them() {
    let s = Sandbox::new("lock-limits");
    let locks_file = s.dir.join("locks.db");
    rt().block_on(async {
        let mut config = HostConfig::new(Location::Sqlite(s.db.clone()));
        config.locks = LockBackend::Sqlite(locks_file.clone());
        config.limits.lock_ttl_ms_max = 5_000;
        config.limits.lock_wait_ms_max = 300;
        let host = Host::open(&config).await.expect("host opens");
        let module = std::fs::read(COUNTER).expect("guest built");
        let hash = host
            .add_module("counter", &module)
            .await
            .expect("valid module");
        let run = |id: &'static str, ttl_ms: u32, wait_ms: u32| {
            let host = host.clone();
            let hash = hash.clone();
            async move {
                let input =
                    json!({ "key": "k", "increments": 1, "ttl_ms": ttl_ms, "wait_ms": wait_ms })
                        .to_string();
                host.start(Some(id.to_owned()), "counter", &hash, &input)
                    .await
                    .expect("start");
                let outcome = host.drive(id, no_observer()).await.expect("drive");
                let failed = host
                    .journal()
                    .events(id)
                    .await
                    .expect("events")
                    .into_iter()
                    .find_map(|stored| match stored.event {
                        Event::LockFailed { reason, .. } => Some(reason),
                        _ => None,
                    });
                (outcome, failed)
            }
        };

        // A ttl over the limit is refused before the backend is asked.
        let (outcome, failed) = run("long-ttl", 10_000, 1_000).await;
        assert_eq!(outcome.status, RunStatus::Compensated, "{outcome:?}");
        let reason = failed.expect("the refusal is journaled");
        assert!(
            reason.contains("ttl between 1 and 5000 ms"),
            "names the limit: {reason}"
        );
        assert_eq!(register(&host, "k").await, 0, "nothing was written");

        // A wait over the limit is cut to it: with the key held elsewhere, the run gives up
        // after about 300 ms, not the minute it asked for.
        let journal_db = host.journal().database().clone();
        let other = wasaga_locks::connect(&LockBackend::Sqlite(locks_file), &journal_db)
            .await
            .expect("lock file");
        let held = other
            .acquire("k", "someone-else", 120_000, 0)
            .await
            .expect("k is free");
        let (outcome, failed) = run("long-wait", 1_000, 60_000).await;
        assert_eq!(outcome.status, RunStatus::Compensated, "{outcome:?}");
        let reason = failed.expect("the timeout is journaled");
        let waited: u64 = reason
            .split("after waiting ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("names the wait: {reason}"));
        assert!(reason.contains("still held by someone-else"), "{reason}");
        assert!(
            (300..10_000).contains(&waited),
            "waited {waited} ms, asked for 60000 with a limit of 300"
        );

        // Within the limits, once the key is free, the same request succeeds.
        other.release(&held).await.expect("release");
        let (outcome, failed) = run("in-limits", 1_000, 60_000).await;
        assert_eq!(
            outcome.status,
            RunStatus::Completed,
            "{outcome:?} {failed:?}"
        );
        assert_eq!(register(&host, "k").await, 1);
    });
}

#[test]
fn a_paused_holder_is_fenced_out_with_database_locks() {
    let s = Sandbox::new("locks-file");
    paused_holder_is_fenced_out(
        &format!("sqlite:{}", s.dir.join("locks.db").display()),
        Duration::from_millis(900),
    );
}

#[test]
fn a_paused_holder_is_fenced_out_with_redis_locks() {
    let redis = Redis::start();
    paused_holder_is_fenced_out(&redis.url(), Duration::from_millis(900));
}

#[test]
fn a_paused_holder_is_fenced_out_with_postgres_locks() {
    let postgres = Postgres::start();
    paused_holder_is_fenced_out(&postgres.url(), Duration::from_millis(900));
}

#[test]
fn a_paused_holder_is_fenced_out_with_zookeeper_locks() {
    // A's session (2 s) expires while it is frozen, and ZooKeeper deletes its znode.
    let zookeeper = ZooKeeper::start();
    paused_holder_is_fenced_out(&zookeeper.url(), Duration::from_millis(4_000));
}

/// A lock server that can be killed and started again on the same port.
trait Server {
    fn url(&self) -> String;
    fn kill(&mut self);
}

impl Server for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
    fn kill(&mut self) {
        Redis::kill(self)
    }
}

impl Server for Postgres {
    fn url(&self) -> String {
        Postgres::url(self)
    }
    fn kill(&mut self) {
        Postgres::kill(self)
    }
}

impl Server for ZooKeeper {
    fn url(&self) -> String {
        ZooKeeper::url(self)
    }
    fn kill(&mut self) {
        ZooKeeper::kill(self)
    }
}

/// The lock server dies while a run is in the middle of lock-guarded work and before another
/// starts: both compensate with an error naming the backend and its address, nothing is lost,
/// and once the server is back new runs succeed on the same host.
fn server_going_away<S: Server, R>(
    mut server: S,
    backend: fn(String) -> LockBackend,
    restart: impl FnOnce(&S) -> R,
) {
    let url = server.url();
    let s = Sandbox::new("backend-down");
    rt().block_on(async {
        let host = host(&s, backend(url.clone())).await;
        for (account, balance) in [("alice", 1_000), ("bob", 1_000)] {
            wasaga_participants::ledger::open(host.ledger_db(), account, balance)
                .await
                .expect("open");
        }
        let module = std::fs::read(TRANSFER).expect("guest built");
        let hash = host.add_module("transfer", &module).await.expect("valid");
        let transfer = json!({ "from": "alice", "to": "bob", "amount": 10 }).to_string();
        let run = |id: &str| {
            let (host, hash, transfer, id) =
                (host.clone(), hash.clone(), transfer.clone(), id.to_owned());
            async move {
                let (run_id, _) = host
                    .start(Some(id), "transfer", &hash, &transfer)
                    .await
                    .expect("start");
                host.drive(&run_id, no_observer()).await.expect("drive")
            }
        };
        assert_eq!(run("before").await.status, RunStatus::Completed);

        // A run in the middle of many lock-guarded increments when the server dies.
        let counter = std::fs::read(COUNTER).expect("guest built");
        let counter = host.add_module("counter", &counter).await.expect("valid");
        let input = json!({ "key": "busy", "increments": 100_000 }).to_string();
        let (busy, _) = host
            .start(Some("busy".into()), "counter", &counter, &input)
            .await
            .expect("start");
        let in_flight = {
            let host = host.clone();
            tokio::spawn(async move { host.drive(&busy, no_observer()).await })
        };
        while register(&host, "busy").await < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill();
        let cut = in_flight.await.expect("task").expect("drive");
        assert_eq!(cut.status, RunStatus::Compensated, "{cut:?}");
        let reason = cut.error.unwrap_or_default();
        assert!(
            reason.contains(&url) && reason.contains("unavailable"),
            "{reason}"
        );
        let events = host.journal().events("busy").await.expect("events");
        let writes: Vec<u32> = events
            .iter()
            .filter_map(|e| match &e.event {
                Event::StepIntent { call, name, .. } if name.starts_with("write-") => Some(*call),
                _ => None,
            })
            .collect();
        let written = events
            .iter()
            .filter(|e| matches!(&e.event, Event::StepDone { call, .. } if writes.contains(call)))
            .count() as i64;
        assert!(
            written >= 5,
            "the run was cut mid-way, after {written} increments"
        );
        // Every journaled write is in the register, and nothing else: nothing was lost.
        assert_eq!(register(&host, "busy").await, written);

        let down = run("during").await;
        assert_eq!(down.status, RunStatus::Compensated, "{down:?}");
        let reason = down.error.unwrap_or_default();
        assert!(
            reason.contains(&url) && reason.contains("unavailable"),
            "{reason}"
        );

        let _back = restart(&server);
        assert_eq!(
            run("after").await.status,
            RunStatus::Completed,
            "no host restart needed"
        );
        let accounts = wasaga_participants::ledger::list(host.ledger_db())
            .await
            .expect("list");
        let balances: Vec<i64> = accounts.iter().map(|a| a.balance).collect();
        assert_eq!(
            balances,
            [980, 1_020],
            "exactly the two completed transfers moved money"
        );
    });
    assert_ledger_consistent(&s.db);
}

#[test]
fn redis_going_away_compensates_runs_and_coming_back_needs_no_restart() {
    let redis = Redis::start();
    let port = redis.port;
    server_going_away(redis, LockBackend::Redis, |_| Redis::start_on(port));
}

#[test]
fn zookeeper_going_away_compensates_runs_and_coming_back_needs_no_restart() {
    let zookeeper = ZooKeeper::start();
    let port = zookeeper.port;
    server_going_away(zookeeper, LockBackend::ZooKeeper, |_| {
        ZooKeeper::start_on(port)
    });
}

#[test]
fn postgres_going_away_compensates_runs_and_coming_back_needs_no_restart() {
    let postgres = Postgres::start();
    server_going_away(postgres, LockBackend::Postgres, Postgres::restart);
}

#[test]
fn transfers_in_both_directions_never_deadlock() {
    let s = Sandbox::new("deadlock");
    rt().block_on(async {
        let host = host(&s, LockBackend::Journal).await;
        let accounts = ["a", "b", "c"];
        for account in accounts {
            wasaga_participants::ledger::open(host.ledger_db(), account, 10_000)
                .await
                .expect("open");
        }
        let module = std::fs::read(TRANSFER).expect("guest built");
        let hash = host.add_module("transfer", &module).await.expect("valid");
        let mut runs = Vec::new();
        for i in 0..60usize {
            let (from, to) = (accounts[i % 3], accounts[(i + 1 + i / 3 % 2) % 3]);
            let input = json!({ "from": from, "to": to, "amount": 1 + i }).to_string();
            let (run_id, _) = host
                .start(None, "transfer", &hash, &input)
                .await
                .expect("start");
            let host = host.clone();
            runs.push(tokio::spawn(async move {
                host.drive(&run_id, no_observer()).await
            }));
        }
        for run in runs {
            let outcome = tokio::time::timeout(Duration::from_secs(120), run)
                .await
                .expect("every run ends: no deadlock")
                .expect("task")
                .expect("drive");
            assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        }
        let total: i64 = wasaga_participants::ledger::list(host.ledger_db())
            .await
            .expect("list")
            .iter()
            .map(|a| a.balance)
            .sum();
        assert_eq!(total, 30_000);
    });
    assert_ledger_consistent(&s.db);
}

/// A host renewing its runs' leases tells it which it has lost: a run another host took or
/// this one gave up, never one whose first write (which creates its row) is still on its way.
/// Such a run was once told to stop as if taken over, and a busy single host failed runs.
#[test]
fn a_run_lease_is_lost_to_another_owner_never_to_a_first_write_still_on_its_way() {
    let s = Sandbox::new("run-leases");
    rt().block_on(async {
        let host = host(&s, LockBackend::Journal).await;
        let module = std::fs::read(TRANSFER).expect("guest built");
        let hash = host.add_module("transfer", &module).await.expect("valid");
        let (run_id, created) = host
            .start(Some("leased".into()), "transfer", &hash, "{}")
            .await
            .expect("start");
        assert!(created);
        let ids = [run_id.clone(), "not-written-yet".to_owned()];
        assert_eq!(
            host.journal().renew(&ids).await.expect("renew"),
            Vec::<String>::new(),
            "the host holds its run, and a run without a row is not lost"
        );
        assert_eq!(host.release_runs().await.expect("release"), 1);
        assert_eq!(
            host.journal().renew(&ids).await.expect("renew"),
            vec![run_id],
            "a run the host gave up is lost"
        );
    });
}

/// The fencing token of the run's first `lock-acquired` and of its `lock-reacquired` events.
async fn journaled_tokens(host: &Host, run_id: &str) -> (u64, Vec<u64>) {
    let events = host.journal().events(run_id).await.expect("events");
    let mut first = None;
    let mut again = Vec::new();
    for stored in events {
        match stored.event {
            Event::LockAcquired { fencing_token, .. } => {
                first.get_or_insert(fencing_token);
            }
            Event::LockReacquired { fencing_token, .. } => again.push(fencing_token),
            _ => {}
        }
    }
    (first.expect("the run took its lock"), again)
}

/// A run that fails after a debit under `account/alice` must undo the debit under that lock:
/// the module's own release (its `Lock` dropped as it returns the error) waits for the run's
/// end, the lock stays held while the compensation keeps failing and once the run is stuck,
/// `runs retry` takes it back with a new token that the compensation carries to the ledger,
/// and only the run's end frees it.
async fn lock_outlives_compensation(locks: LockBackend) {
    let s = Sandbox::new("locked-undo");
    let mut config = HostConfig::new(Location::Sqlite(s.db.clone()));
    config.locks = locks.clone();
    config.limits.compensation_retries_max = 3;
    config.limits.retry_backoff_ms_min = 1;
    config.limits.retry_backoff_ms_max = 5;
    let host = Host::open(&config).await.expect("host opens");
    wasaga_participants::ledger::open(host.ledger_db(), "alice", 1_000)
        .await
        .expect("alice");
    let module = std::fs::read(LOCKED_UNDO).expect("guest built");
    let hash = host
        .add_module("locked-undo", &module)
        .await
        .expect("valid module");
    let input = json!({ "account": "alice", "undo_to": "ghost", "amount": 100 }).to_string();
    let outcome = host
        .start_and_drive(
            Some("undo-1".into()),
            "locked-undo",
            &hash,
            &input,
            no_observer(),
        )
        .await
        .expect("drive");
    assert_eq!(outcome.status, RunStatus::Stuck, "{outcome:?}");

    let rival = wasaga_locks::connect(&locks, host.ledger_db())
        .await
        .expect("lock service");
    match rival.acquire("account/alice", "rival", 1_000, 300).await {
        Err(wasaga_locks::LockError::Timeout { .. }) => {}
        other => panic!("the stuck run's lock must stay held, but a rival got {other:?}"),
    }

    wasaga_participants::ledger::open(host.ledger_db(), "ghost", 0)
        .await
        .expect("ghost");
    let outcome = host
        .retry_stuck("undo-1", no_observer())
        .await
        .expect("retry");
    assert_eq!(outcome.status, RunStatus::Compensated, "{outcome:?}");
    let (first, again) = journaled_tokens(&host, "undo-1").await;
    assert_eq!(again.len(), 1, "the retry takes the lock back once");
    assert!(
        again[0] > first,
        "the lock taken back has a newer token: {first} then {again:?}"
    );
    let fenced: i64 = sql(&s.db)
        .query_row(
            "SELECT token FROM ledger_fences WHERE key = 'account/alice'",
            [],
            |r| r.get(0),
        )
        .expect("the ledger saw the lock's token");
    assert_eq!(
        fenced as u64, again[0],
        "the compensation carries the token of the lock taken back"
    );
    match rival.acquire("account/alice", "rival", 1_000, 2_000).await {
        Ok(lease) => assert!(lease.fencing_token > again[0]),
        Err(e) => panic!("the ended run must free its lock: {e}"),
    }
    let balances = s.balances();
    assert_eq!(balances["alice"] + balances["ghost"], 1_000, "{balances:?}");
    assert_ledger_consistent(&s.db);
}

#[test]
fn a_failing_run_keeps_its_lock_through_compensation_with_database_locks() {
    rt().block_on(lock_outlives_compensation(LockBackend::Journal));
}

#[test]
fn a_failing_run_keeps_its_lock_through_compensation_with_redis_locks() {
    let redis = Redis::start();
    rt().block_on(lock_outlives_compensation(LockBackend::Redis(redis.url())));
}

#[test]
fn a_failing_run_keeps_its_lock_through_compensation_with_zookeeper_locks() {
    let zookeeper = ZooKeeper::start();
    rt().block_on(lock_outlives_compensation(LockBackend::ZooKeeper(
        zookeeper.url(),
    )));
}

/// A run killed while it held a lock takes it back before it goes on; while another run
/// holds it, `wasaga resume` leaves that run unfinished (exit 1, naming the lock) and still
/// finishes the other unfinished runs; once the lock is free the run ends and the money is
/// whole.
#[test]
fn a_resumed_run_takes_its_lock_back_and_one_that_cannot_does_not_block_the_others() {
    use std::os::unix::process::ExitStatusExt;
    let input = json!({ "account": "alice", "undo_to": "alice", "amount": 100 }).to_string();
    // Find the commit after which the run holds its lock but has not debited yet.
    let mut found = None;
    for commit in 1..=8 {
        let s = Sandbox::new("held-lock");
        s.open("alice", 1_000);
        s.open("bob", 1_000);
        s.open("carol", 0);
        let point = format!("after:{commit}");
        let out = s.wasaga(&[
            "run",
            LOCKED_UNDO,
            "--input",
            &input,
            "--run-id",
            "held-1",
            "--crash-at",
            &point,
        ]);
        if out.status.signal() != Some(9) {
            continue;
        }
        let kinds: Vec<String> = {
            let conn = crate::support::sql(&s.db);
            let mut statement = conn
                .prepare("SELECT kind FROM events WHERE run_id = 'held-1' ORDER BY seq")
                .expect("query");
            statement
                .query_map([], |r| r.get(0))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        if kinds.last().map(String::as_str) == Some("lock-acquired") {
            found = Some(s);
            break;
        }
    }
    let s = found.expect("some commit leaves the run holding its lock before its debit");

    // Another run holds the lock now; a second run is unfinished too.
    let conn = crate::support::sql(&s.db);
    conn.execute(
        "UPDATE locks SET owner = 'rival', expires_at_ms = 9000000000000 WHERE key = 'account/alice'",
        [],
    )
    .expect("the rival takes the lock");
    rt().block_on(async {
        let host = host(&s, LockBackend::Journal).await;
        let module = std::fs::read(TRANSFER).expect("guest built");
        let hash = host
            .add_module("transfer", &module)
            .await
            .expect("valid module");
        let transfer = json!({ "from": "bob", "to": "carol", "amount": 10 }).to_string();
        host.start(Some("plain-1".into()), "transfer", &hash, &transfer)
            .await
            .expect("start");
    });
    let config = s.dir.join("short-waits.toml");
    std::fs::write(
        &config,
        format!(
            "journal = \"{}\"\n\n[limits]\nlock_wait_ms_max = 300\n\n[workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n\n[workflows.locked-undo]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
            s.db.display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let out = s.wasaga(&["--config", &config, "resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run held-1 is still unfinished") && stderr.contains("account/alice"),
        "{stderr}"
    );
    let runs: std::collections::BTreeMap<String, String> = s
        .runs()
        .into_iter()
        .map(|(id, status, _)| (id, status))
        .collect();
    assert_eq!(runs["plain-1"], "completed", "the other run was finished");
    assert_eq!(runs["held-1"], "running", "the run without its lock waits");

    conn.execute(
        "UPDATE locks SET owner = NULL, expires_at_ms = 0 WHERE key = 'account/alice'",
        [],
    )
    .expect("the rival lets go");
    let out = s.wasaga(&["--config", &config, "resume"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let balances = s.balances();
    assert_eq!(
        (balances["alice"], balances["bob"], balances["carol"]),
        (1_000, 990, 10)
    );
    assert_ledger_consistent(&s.db);
}

/// Every backend's tokens are on one scale (at least the clock in microseconds), so a
/// deployment that moves between Redis, its database's and ZooKeeper's locks keeps its
/// transfers accepted by the ledger; ZooKeeper's grow with each grant of a key, and are not
/// the znodes' 32-bit sequence numbers, which wrap after 2^31 grants.
#[test]
fn lock_tokens_stay_accepted_across_a_change_of_backend() {
    let redis = Redis::start();
    let zookeeper = ZooKeeper::start();
    let s = Sandbox::new("token-scales");
    s.open("alice", 1_000);
    s.open("bob", 1_000);
    rt().block_on(async {
        let module = std::fs::read(TRANSFER).expect("guest built");
        let mut last = 0;
        let chain = [
            LockBackend::Redis(redis.url()),
            LockBackend::ZooKeeper(zookeeper.url()),
            LockBackend::Journal,
            LockBackend::ZooKeeper(zookeeper.url()),
            LockBackend::Redis(redis.url()),
        ];
        for (i, backend) in chain.into_iter().enumerate() {
            let host = host(&s, backend.clone()).await;
            let hash = host
                .add_module("transfer", &module)
                .await
                .expect("valid module");
            let input = json!({ "from": "alice", "to": "bob", "amount": 10 }).to_string();
            let outcome = host
                .start_and_drive(
                    Some(format!("move-{i}")),
                    "transfer",
                    &hash,
                    &input,
                    no_observer(),
                )
                .await
                .expect("drive");
            assert_eq!(
                outcome.status,
                RunStatus::Completed,
                "{backend:?}: the ledger must accept the new backend's tokens: {outcome:?}"
            );
            let (token, _) = journaled_tokens(&host, &format!("move-{i}")).await;
            assert!(token > last, "{backend:?}: token {token} after {last}");
            last = token;
        }
        let zk = wasaga_locks::connect(
            &LockBackend::ZooKeeper(zookeeper.url()),
            &std::sync::Arc::new(
                wasaga_db::Database::open(
                    &Location::Sqlite(s.db.clone()),
                    Default::default(),
                    Default::default(),
                )
                .await
                .expect("db"),
            ),
        )
        .await
        .expect("zookeeper");
        let mut previous = 0;
        for _ in 0..3 {
            let lease = zk
                .acquire("account/z", "run-z", 1_000, 1_000)
                .await
                .expect("grant");
            assert!(
                lease.fencing_token > previous,
                "a ZooKeeper token grows: {} after {previous}",
                lease.fencing_token
            );
            previous = lease.fencing_token;
            zk.release(&lease).await.expect("release");
        }
    });
    assert_eq!(s.balances()["bob"], 1_050);
}

/// Run ids are unique within one journal only: two hosts with journals of their own that
/// share a `sqlite:` lock file, each with a run `pay-1` locking the same account, are two
/// owners. The second waits for the first's lock (here: the first is stuck, so it keeps it)
/// instead of taking it over as if it were its own.
#[test]
fn runs_of_two_journals_with_one_id_are_two_lock_owners() {
    let shared = Sandbox::new("shared-locks");
    let lock_file = shared.dir.join("locks.db");
    rt().block_on(async {
        let mut outcomes = Vec::new();
        for name in ["journal-a", "journal-b"] {
            let s = Sandbox::new(name);
            let mut config = HostConfig::new(Location::Sqlite(s.db.clone()));
            config.locks = LockBackend::Sqlite(lock_file.clone());
            config.limits.compensation_retries_max = 2;
            config.limits.retry_backoff_ms_min = 1;
            config.limits.retry_backoff_ms_max = 2;
            config.limits.lock_wait_ms_max = 300;
            let host = Host::open(&config).await.expect("host opens");
            wasaga_participants::ledger::open(host.ledger_db(), "alice", 1_000)
                .await
                .expect("alice");
            let module = std::fs::read(LOCKED_UNDO).expect("guest built");
            let hash = host
                .add_module("locked-undo", &module)
                .await
                .expect("valid module");
            // The undo goes to a missing account: the first run ends stuck, holding its lock.
            let input =
                json!({ "account": "alice", "undo_to": "ghost", "amount": 100 }).to_string();
            let outcome = host
                .start_and_drive(
                    Some("pay-1".into()),
                    "locked-undo",
                    &hash,
                    &input,
                    no_observer(),
                )
                .await
                .expect("drive");
            outcomes.push((outcome, s, host));
        }
        assert_eq!(
            outcomes[0].0.status,
            RunStatus::Stuck,
            "{:?}",
            outcomes[0].0
        );
        let second = &outcomes[1].0;
        assert_eq!(second.status, RunStatus::Compensated, "{second:?}");
        let error = second.error.clone().unwrap_or_default();
        assert!(
            error.contains("account/alice") && error.contains("still held by"),
            "the second journal's pay-1 must not share the first's lock: {error}"
        );
        let alice = |host: &Host| {
            let host = host.clone();
            async move {
                wasaga_participants::ledger::list(host.ledger_db())
                    .await
                    .expect("accounts")
                    .into_iter()
                    .find(|a| a.account == "alice")
                    .map(|a| a.balance)
            }
        };
        assert_eq!(alice(&outcomes[1].2).await, Some(1_000), "nothing moved");
    });
}
