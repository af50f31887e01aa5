//! Waiting for a hot key across hosts: a release on one host wakes the waiter on another by
//! notification (PostgreSQL `LISTEN`/`NOTIFY`, Redis pub/sub, ZooKeeper's predecessor watch),
//! not by its next poll; a waiter whose notification is lost still gets the key, within the
//! safety net's bound; and a listener whose connection is cut connects again and still wakes
//! its waiters.
//!
//! Each "host" is a lock service of its own with connections of its own, as two wasaga
//! processes have. The notifying backends are given a safety net of a minute, far beyond the
//! waits here, so a grant within the test's bound can only have come from a notification.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wasaga_db::{Database, Location};
use wasaga_locks::{
    DatabaseLocks, HANDOVERS_MAX, LockService, PostgresLocks, Queued, RedisLocks, SAFETY_NET_MS,
    ZooKeeperLocks,
};
use wasaga_testkit::rt;
use wasaga_testkit::services::{Postgres, Redis, SlowLink, ZooKeeper};

const KEY: &str = "account/merchant-7";
/// Longer than any wait in these tests: a waiter that got the key did not get it by polling.
const NO_POLL: Duration = Duration::from_secs(60);
/// How long a notification may take to arrive on a loaded 2-core machine.
const HEARD_WITHIN: Duration = Duration::from_secs(10);

/// How a test's hosts get their locks.
enum Backend {
    Postgres(String),
    Journal(String),
    Redis(String),
    ZooKeeper(String),
}

impl Backend {
    /// One host's lock service: its own connections, its own line per key.
    async fn host(&self, safety_net: Duration) -> Arc<Queued> {
        let backend: Box<dyn LockService> = match self {
            Backend::Postgres(url) => Box::new(
                PostgresLocks::new(url)
                    .expect("postgres locks")
                    .with_safety_net(safety_net),
            ),
            Backend::Journal(url) => {
                let db = Database::open(
                    &Location::parse(url).expect("location"),
                    Default::default(),
                    Default::default(),
                )
                .await
                .expect("journal on PostgreSQL");
                Box::new(DatabaseLocks::new(Arc::new(db)).with_safety_net(safety_net))
            }
            Backend::Redis(url) => Box::new(
                RedisLocks::new(url)
                    .expect("redis locks")
                    .with_safety_net(safety_net),
            ),
            Backend::ZooKeeper(url) => Box::new(ZooKeeperLocks::new(url).expect("zookeeper")),
        };
        Arc::new(Queued::new(backend))
    }
}

/// Host A holds the key; host B's run waits for it. A's release reaches B by notification:
/// B holds the key well before any poll of its would have asked, with a newer fencing token,
/// and A's grant is fenced out.
async fn a_release_on_one_host_wakes_the_waiter_on_another(backend: Backend) {
    let a = backend.host(NO_POLL).await;
    let b = backend.host(NO_POLL).await;
    let held = a
        .acquire(KEY, "run-on-a", 30_000, 0)
        .await
        .expect("host A takes the key");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let lease = b.acquire(KEY, "run-on-b", 30_000, 30_000).await;
            (lease, Instant::now())
        })
    };
    // B has asked once, found the key taken, and waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "host B waits while A holds the key");
    let released = Instant::now();
    a.release(&held).await.expect("host A releases");
    let (lease, granted) = tokio::time::timeout(HEARD_WITHIN, waiter)
        .await
        .expect("host B hears of the release rather than waiting for a poll")
        .expect("waiter task");
    let lease = lease.expect("host B gets the key");
    eprintln!(
        "release on A to grant on B: {:?}",
        granted.duration_since(released)
    );
    assert_eq!(lease.owner, "run-on-b");
    assert!(lease.fencing_token > held.fencing_token);
    assert_eq!(b.woken(), 1, "host B's wait ended by a notification");
    assert_eq!(a.woken(), 0, "host A never waited");
    assert!(
        a.extend(&held).await.is_err(),
        "host A's old grant is fenced out"
    );
    b.release(&lease).await.expect("release");
}

#[test]
fn a_release_wakes_a_waiter_on_another_host_with_postgres_locks() {
    let postgres = Postgres::start();
    rt().block_on(a_release_on_one_host_wakes_the_waiter_on_another(
        Backend::Postgres(postgres.url()),
    ));
}

#[test]
fn a_release_wakes_a_waiter_on_another_host_with_journal_locks_on_postgres() {
    let postgres = Postgres::start();
    rt().block_on(a_release_on_one_host_wakes_the_waiter_on_another(
        Backend::Journal(postgres.url()),
    ));
}

#[test]
fn a_release_wakes_a_waiter_on_another_host_with_redis_locks() {
    let redis = Redis::start();
    rt().block_on(a_release_on_one_host_wakes_the_waiter_on_another(
        Backend::Redis(redis.url()),
    ));
}

#[test]
fn a_release_wakes_a_waiter_on_another_host_with_zookeeper_locks() {
    let zookeeper = ZooKeeper::start();
    rt().block_on(a_release_on_one_host_wakes_the_waiter_on_another(
        Backend::ZooKeeper(zookeeper.url()),
    ));
}

/// The safety net this test gives its waiter.
const NET: Duration = Duration::from_millis(300);

/// A's grant is freed without any announcement (`free` does it behind the backend's back, as
/// a lost notification would leave it): B hears nothing, and gets the key anyway at its next
/// safety-net ask.
async fn a_waiter_whose_notification_is_lost_gets_the_key_within_the_safety_net<F, Fut>(
    backend: Backend,
    free: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let a = backend.host(NET).await;
    let b = backend.host(NET).await;
    let held = a
        .acquire(KEY, "run-on-a", 30_000, 0)
        .await
        .expect("host A takes the key");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(KEY, "run-on-b", 30_000, 30_000).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "host B waits while A holds the key");
    let freed = Instant::now();
    free().await;
    let lease = tokio::time::timeout(NET + Duration::from_secs(3), waiter)
        .await
        .expect("host B asks again within the safety net")
        .expect("waiter task")
        .expect("host B gets the key");
    eprintln!("freed without notice to grant: {:?}", freed.elapsed());
    assert!(lease.fencing_token > held.fencing_token);
    assert_eq!(b.woken(), 0, "nothing was announced, so nothing was heard");
}

#[test]
fn a_lost_notification_is_made_up_by_the_safety_net_with_postgres_locks() {
    let postgres = Postgres::start();
    let url = postgres.url();
    rt().block_on(
        a_waiter_whose_notification_is_lost_gets_the_key_within_the_safety_net(
            Backend::Postgres(url.clone()),
            || async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                let freed = sqlx::query(
                    "UPDATE wasaga_locks SET owner = NULL, expires_at_ms = 0 WHERE key = $1",
                )
                .bind(KEY)
                .execute(&mut conn)
                .await
                .expect("free the key quietly");
                assert_eq!(freed.rows_affected(), 1);
            },
        ),
    );
}

#[test]
fn a_lost_notification_is_made_up_by_the_safety_net_with_redis_locks() {
    let redis = Redis::start();
    let url = redis.url();
    rt().block_on(
        a_waiter_whose_notification_is_lost_gets_the_key_within_the_safety_net(
            Backend::Redis(url.clone()),
            || async move {
                let client = redis::Client::open(url.as_str()).expect("client");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect");
                let deleted: i64 = redis::cmd("DEL")
                    .arg(format!("wasaga:lock:{KEY}"))
                    .query_async(&mut conn)
                    .await
                    .expect("free the key quietly");
                assert_eq!(deleted, 1);
            },
        ),
    );
}

/// The listening connection of host B is cut while B waits (`cut` kills it at the server).
/// B's listener connects again and wakes its waiter, and the release that follows is heard:
/// B gets the key without any poll.
async fn a_waiter_gets_the_key_after_its_listener_is_cut<F, Fut>(backend: Backend, cut: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let a = backend.host(NO_POLL).await;
    let b = backend.host(NO_POLL).await;
    let held = a
        .acquire(KEY, "run-on-a", 30_000, 0)
        .await
        .expect("host A takes the key");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(KEY, "run-on-b", 30_000, 30_000).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cut().await;
    // Long enough for the listener to notice and connect again.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(
        !waiter.is_finished(),
        "host B still waits while A holds the key"
    );
    a.release(&held).await.expect("host A releases");
    let lease = tokio::time::timeout(HEARD_WITHIN, waiter)
        .await
        .expect("host B hears of the release on its new connection")
        .expect("waiter task")
        .expect("host B gets the key");
    assert!(lease.fencing_token > held.fencing_token);
    assert!(
        b.woken() >= 2,
        "host B was woken when its listener came back and by the release: {}",
        b.woken()
    );
}

#[test]
fn a_cut_listener_connects_again_with_postgres_locks() {
    let postgres = Postgres::start();
    let url = postgres.url();
    rt().block_on(a_waiter_gets_the_key_after_its_listener_is_cut(
        Backend::Postgres(url.clone()),
        || async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            let cut: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut conn)
            .await
            .expect("cut the listeners");
            // Only B listens: A never waited.
            assert!(
                cut.len() == 1 && cut[0].0,
                "host B's listener was cut: {cut:?}"
            );
        },
    ));
}

#[test]
fn a_cut_listener_connects_again_with_redis_locks() {
    let redis = Redis::start();
    let url = redis.url();
    rt().block_on(a_waiter_gets_the_key_after_its_listener_is_cut(
        Backend::Redis(url.clone()),
        || async move {
            let client = redis::Client::open(url.as_str()).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut conn)
                .await
                .expect("cut the subscribers");
            // Only B subscribes: A never waited.
            assert_eq!(killed, 1, "host B's subscription was cut");
        },
    ));
}

use sqlx::Connection as _;

/// How far the far host of a test is from the backend, each way.
const FAR: Duration = Duration::from_millis(20);

/// Waiting runs of host A, queued in A's line behind A's holder.
const LOCAL_WAITERS: usize = 40;

/// Host A's line for the key is long (a hot merchant account on a busy host) and host B's
/// run waits for the same key. A's line may hand the key on within A for at most
/// `HANDOVERS_MAX` grants in a row; then the key goes back to the backend, where B asked
/// first: B gets it next, however many of A's runs are still in line. B is passed over a
/// bounded number of times, not until A's line is empty.
///
/// Host B is far away (`far`: the same backend through a link 20 ms slow each way), so it
/// hears of each release after A's own next run has already asked: without the backend's
/// queue B would lose every such race until A's line ran dry.
async fn a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times(
    backend: Backend,
    far: Backend,
) {
    let a = backend.host(Duration::from_millis(SAFETY_NET_MS)).await;
    let b = far.host(Duration::from_millis(SAFETY_NET_MS)).await;
    let granted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let held = a
        .acquire(KEY, "a-holder", 30_000, 0)
        .await
        .expect("host A takes the key");
    granted.lock().expect("order").push("a-holder".into());
    let mut runs = Vec::new();
    for i in 0..LOCAL_WAITERS {
        let (line, granted) = (a.clone(), granted.clone());
        runs.push(tokio::spawn(async move {
            let owner = format!("a-{i}");
            let lease = line
                .acquire(KEY, &owner, 30_000, 60_000)
                .await
                .unwrap_or_else(|e| panic!("{owner} gets the key: {e}"));
            granted.lock().expect("order").push(owner);
            tokio::time::sleep(Duration::from_millis(2)).await;
            line.release(&lease).await.expect("release");
        }));
        while a.waiting() < i + 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let on_b = {
        let (b, granted) = (b.clone(), granted.clone());
        tokio::spawn(async move {
            let lease = b
                .acquire(KEY, "b-run", 30_000, 60_000)
                .await
                .expect("host B's run gets the key");
            granted.lock().expect("order").push("b-run".into());
            tokio::time::sleep(Duration::from_millis(2)).await;
            b.release(&lease).await.expect("release");
        })
    };
    // B has asked, been refused and taken its place in the backend's queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.release(&held).await.expect("release");
    on_b.await.expect("host B's run");
    for run in runs {
        run.await.expect("host A's run");
    }
    let order = granted.lock().expect("order").clone();
    assert_eq!(order.len(), LOCAL_WAITERS + 2, "everyone got the key once");
    let place = order
        .iter()
        .position(|o| o == "b-run")
        .expect("B got the key");
    // The holder, then at most HANDOVERS_MAX hand-overs within A, then B.
    assert!(
        place <= HANDOVERS_MAX as usize + 1,
        "host B's run waited behind {place} grants on host A (at most {} allowed): {order:?}",
        HANDOVERS_MAX + 1
    );
    let local: Vec<&String> = order.iter().filter(|o| o.starts_with("a-")).collect();
    let mut expected: Vec<String> = vec!["a-holder".into()];
    expected.extend((0..LOCAL_WAITERS).map(|i| format!("a-{i}")));
    assert_eq!(
        local,
        expected.iter().collect::<Vec<_>>(),
        "host A's runs kept their order"
    );
}

#[test]
fn a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times_with_journal_locks() {
    let postgres = Postgres::start();
    let far = SlowLink::start(postgres.port, FAR);
    rt().block_on(
        a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times(
            Backend::Journal(postgres.url()),
            Backend::Journal(format!(
                "postgres://postgres@127.0.0.1:{}/postgres",
                far.port
            )),
        ),
    );
}

#[test]
fn a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times_with_postgres_locks() {
    let postgres = Postgres::start();
    let far = SlowLink::start(postgres.port, FAR);
    rt().block_on(
        a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times(
            Backend::Postgres(postgres.url()),
            Backend::Postgres(format!(
                "postgres://postgres@127.0.0.1:{}/postgres",
                far.port
            )),
        ),
    );
}

#[test]
fn a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times_with_redis_locks() {
    let redis = Redis::start();
    let far = SlowLink::start(redis.port, FAR);
    rt().block_on(
        a_waiter_on_another_host_is_passed_over_a_bounded_number_of_times(
            Backend::Redis(redis.url()),
            Backend::Redis(format!("redis://127.0.0.1:{}", far.port)),
        ),
    );
}

/// Host B's waiter took its place in the backend's queue and then went away without leaving
/// it (its process stopped while it waited). Its place goes stale within a second and holds
/// nobody up past that: host A's next run gets the key.
#[test]
fn a_waiter_that_went_away_holds_nobody_up_for_long() {
    let postgres = Postgres::start();
    let backend = Backend::Journal(postgres.url());
    rt().block_on(async {
        let a = backend.host(Duration::from_millis(SAFETY_NET_MS)).await;
        let b = backend.host(Duration::from_millis(SAFETY_NET_MS)).await;
        let held = a
            .acquire(KEY, "a-holder", 30_000, 0)
            .await
            .expect("host A takes the key");
        let gone = tokio::time::timeout(
            Duration::from_millis(300),
            b.acquire(KEY, "b-gone", 30_000, 60_000),
        )
        .await;
        assert!(gone.is_err(), "host B's run stopped while it waited");
        drop(b);
        a.release(&held).await.expect("release");
        let asked = Instant::now();
        let lease = a
            .acquire(KEY, "a-next", 30_000, 10_000)
            .await
            .expect("host A's next run gets the key");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "a place that went stale held the key up for {:?}",
            asked.elapsed()
        );
        assert_eq!(lease.owner, "a-next");
    });
}
