//! Waiting in line for a hot key within one host: every waiter gets the lock, in the order it
//! asked, each with a newer fencing token than the last, also when some give up while they
//! wait; and a waiter whose holder went away without releasing gets the lock once the lease
//! has expired, within the safety net's bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasaga_db::{Database, Location};
use wasaga_locks::{LockBackend, LockService, Queued, SAFETY_NET_MS, connect_backend};
use wasaga_testkit::services::{Postgres, Redis, ZooKeeper};
use wasaga_testkit::{Scratch, rt};

const WAITERS: usize = 32;

async fn line(s: &Scratch, backend: &LockBackend) -> Arc<Queued> {
    let db = Arc::new(
        Database::open(
            &Location::Sqlite(s.db.clone()),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("db"),
    );
    Arc::new(Queued::new(
        connect_backend(backend, &db).await.expect("lock backend"),
    ))
}

/// 32 runs queue behind a holder of one key; one in eight gives up while in line (its wait
/// is dropped). When the holder releases, every other run gets the key in the order it
/// asked, with growing tokens.
async fn waiters_get_the_key_in_order(backend: LockBackend) {
    let s = Scratch::new("lock-line");
    let locks = line(&s, &backend).await;
    let first = locks
        .acquire("account/hot", "holder", 10_000, 1_000)
        .await
        .expect("the first grant");
    let granted = Arc::new(Mutex::new(Vec::new()));
    let gave_up = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for i in 0..WAITERS {
        let (line, granted, gave) = (locks.clone(), granted.clone(), gave_up.clone());
        let gives_up = i % 8 == 7;
        waiters.push(tokio::spawn(async move {
            let owner = format!("run-{i}");
            let locks = line;
            let wait = locks.acquire("account/hot", &owner, 10_000, 20_000);
            let lease = if gives_up {
                match tokio::time::timeout(Duration::from_millis(20), wait).await {
                    Err(_) => {
                        gave.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    Ok(got) => panic!("run-{i} was to give up in line, but got {got:?}"),
                }
            } else {
                wait.await
                    .unwrap_or_else(|e| panic!("run-{i} must get the key: {e}"))
            };
            granted
                .lock()
                .expect("granted")
                .push((i, lease.fencing_token));
            tokio::time::sleep(Duration::from_millis(1)).await;
            locks.release(&lease).await.expect("release");
        }));
        // The next run asks only once this one is in line (or has been and given up): the
        // order of asking is i.
        let deadline = Instant::now() + Duration::from_secs(5);
        while locks.waiting() + gave_up.load(std::sync::atomic::Ordering::SeqCst) < i + 1 {
            assert!(Instant::now() < deadline, "run-{i} never got in line");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Let the runs that give up do so while they are in line.
    tokio::time::sleep(Duration::from_millis(50)).await;
    locks.release(&first).await.expect("release");
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    let granted = granted.lock().expect("granted").clone();
    let order: Vec<usize> = granted.iter().map(|(i, _)| *i).collect();
    let asked: Vec<usize> = (0..WAITERS).filter(|i| i % 8 != 7).collect();
    assert_eq!(
        order, asked,
        "{backend:?}: the key went to its waiters in the order they asked"
    );
    let mut last = first.fencing_token;
    for (i, token) in granted.iter() {
        assert!(
            *token > last,
            "{backend:?}: run-{i}'s token {token} after {last}"
        );
        last = *token;
    }
    assert_eq!(locks.waiting(), 0, "nobody is left in line");
    // The key is free again, for anyone.
    let after = locks
        .acquire("account/hot", "later", 1_000, 0)
        .await
        .expect("the key is free once the line is through");
    assert!(after.fencing_token > last);
}

#[test]
fn waiters_get_a_hot_key_in_order_with_database_locks() {
    rt().block_on(waiters_get_the_key_in_order(LockBackend::Journal));
}

#[test]
fn waiters_get_a_hot_key_in_order_with_postgres_locks() {
    let postgres = Postgres::start();
    rt().block_on(waiters_get_the_key_in_order(LockBackend::Postgres(
        postgres.url(),
    )));
}

#[test]
fn waiters_get_a_hot_key_in_order_with_redis_locks() {
    let redis = Redis::start();
    rt().block_on(waiters_get_the_key_in_order(LockBackend::Redis(
        redis.url(),
    )));
}

#[test]
fn waiters_get_a_hot_key_in_order_with_zookeeper_locks() {
    let zookeeper = ZooKeeper::start();
    rt().block_on(waiters_get_the_key_in_order(LockBackend::ZooKeeper(
        zookeeper.url(),
    )));
}

/// A holder that never releases (its run's host stopped renewing it) is not waited for
/// forever: the first in line asks the backend at the safety net's pace and gets the key
/// once the lease has expired, and not before.
#[test]
fn a_waiter_gets_the_key_of_a_holder_that_went_away_once_its_lease_expires() {
    rt().block_on(async {
        let s = Scratch::new("lock-line-gone");
        let locks = line(&s, &LockBackend::Journal).await;
        const TTL_MS: u64 = 400;
        let gone = locks
            .acquire("account/hot", "gone", TTL_MS as u32, 0)
            .await
            .expect("grant");
        let asked = Instant::now();
        let lease = locks
            .acquire("account/hot", "next", 1_000, 5_000)
            .await
            .expect("the waiter gets the key");
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_millis(TTL_MS - 50),
            "the key passed before the holder's lease expired: {waited:?}"
        );
        assert!(
            waited <= Duration::from_millis(TTL_MS + SAFETY_NET_MS + 500),
            "the waiter waited {waited:?}, past the lease and the safety net"
        );
        assert!(lease.fencing_token > gone.fencing_token);
        // The holder that went away is fenced out: it cannot extend its grant any more.
        assert!(locks.extend(&gone).await.is_err());
    });
}

/// A waiter whose run stops while it waits (its future is dropped: the host is shutting
/// down, or another host took the run over) leaves the line at once: the run behind it
/// becomes first in line, and gets the key of a holder that went away once its lease has
/// expired, rather than wait its whole wait behind a waiter that is gone.
#[test]
fn a_waiter_that_stops_waiting_leaves_the_line_to_the_next() {
    rt().block_on(async {
        let s = Scratch::new("lock-line-dropped");
        let locks = line(&s, &LockBackend::Journal).await;
        const TTL_MS: u64 = 400;
        let gone = locks
            .acquire("account/hot", "gone", TTL_MS as u32, 0)
            .await
            .expect("grant");
        let stops = tokio::time::timeout(
            Duration::from_millis(50),
            locks.acquire("account/hot", "stops", 1_000, 10_000),
        )
        .await;
        assert!(stops.is_err(), "the first waiter stopped waiting");
        assert_eq!(
            locks.waiting(),
            0,
            "a waiter that stopped is out of the line"
        );
        let asked = Instant::now();
        let lease = locks
            .acquire("account/hot", "next", 1_000, 5_000)
            .await
            .expect("the next waiter gets the key");
        assert!(
            asked.elapsed() <= Duration::from_millis(TTL_MS + SAFETY_NET_MS + 500),
            "the next waiter waited {:?}",
            asked.elapsed()
        );
        assert!(lease.fencing_token > gone.fencing_token);
    });
}
