//! Many `wasaga serve` hosts on one PostgreSQL journal. A host that dies loses its leases and
//! the others resume its runs by replay; a host that was only paused finds its runs taken
//! over and can no longer write to them. Either way every run ends, money is conserved, and
//! no ledger operation takes effect twice.

use crate::guests::{GATED, TRANSFER};
use crate::postgres::{assert_ledger_consistent, database};
use crate::services::Postgres;
use crate::support::{Sandbox, Server, rt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasaga_db::{Database, Location};
use wasaga_locks::{DatabaseLocks, LockService};

const ACCOUNTS: u64 = 20;
const OPENING: i64 = 5_000;

fn host_config(url: &str, host_id: &str, workflow: &str, locks: &str) -> String {
    format!(
        "journal = \"{url}\"\nhost_id = \"{host_id}\"\n\n[limits]\nrun_lease_ms = 1500\nconcurrent_runs_max = 64\npostgres_connections_max = 12\n\n[workflows.{workflow}]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"{locks}\"]\n"
    )
}

/// The transfers of the test, from a fixed seed: (from, to, amount).
fn transfers(n: usize) -> Vec<(u64, u64, u64)> {
    let mut state: u64 = 0x5eed_1234_abcd_ef01;
    let mut next = move || {
        // xorshift64*: deterministic, good enough to spread transfers over the accounts.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..n)
        .map(|_| {
            let from = next() % ACCOUNTS;
            let to = (from + 1 + next() % (ACCOUNTS - 1)) % ACCOUNTS;
            (from, to, 1 + next() % 600)
        })
        .collect()
}

#[test]
fn three_hosts_finish_a_thousand_transfers_when_one_is_killed_half_way() {
    let postgres = Postgres::start();
    let url = database(&postgres, "scale", None);
    let s = Sandbox::new("scale").on_postgres(&url);
    for account in 0..ACCOUNTS {
        s.open(&format!("acct-{account}"), OPENING);
    }
    let mut servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            Server::start(
                &s.dir,
                name,
                &host_config(&url, &format!("host-{name}"), "transfer", "account/"),
                &[],
            )
        })
        .collect();
    let (status, deployed) = servers[0].upload(
        "/v1/workflows/transfer/versions",
        &std::fs::read(TRANSFER).expect("guest"),
    );
    assert_eq!(status, 201, "{deployed}");

    let all = transfers(1_000);
    let submit = |servers: &[&Server], range: std::ops::Range<usize>| -> HashMap<String, usize> {
        // Eight clients submit in parallel, round robin over the live hosts.
        let chunks: Vec<Vec<usize>> = (0..8)
            .map(|c| range.clone().filter(|i| i % 8 == c).collect())
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let all = &all;
                    scope.spawn(move || {
                        let mut created = HashMap::new();
                        for i in chunk {
                            let (from, to, amount) = all[i];
                            let host = i % servers.len();
                            let input = json!({
                                "from": format!("acct-{from}"),
                                "to": format!("acct-{to}"),
                                "amount": amount,
                            });
                            let (status, reply) =
                                servers[host].start_run("transfer", &format!("t-{i}"), &input);
                            assert_eq!(status, 201, "t-{i}: {reply}");
                            created.insert(format!("t-{i}"), host);
                        }
                        created
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("client thread"))
                .collect()
        })
    };
    let first = submit(&[&servers[0], &servers[1], &servers[2]], 0..500);
    // Half-way: host b dies with whatever it has in flight.
    servers[1].kill();
    let second = submit(&[&servers[0], &servers[2]], 500..1_000);
    assert_eq!(first.len() + second.len(), 1_000);

    let runs = servers[0].settled("limit=1000", 1_000, Duration::from_secs(300));
    assert_eq!(runs.len(), 1_000);
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for run in runs.values() {
        *by_status
            .entry(run["status"].as_str().expect("status").to_owned())
            .or_default() += 1;
    }
    let ended = by_status.get("completed").copied().unwrap_or(0)
        + by_status.get("compensated").copied().unwrap_or(0);
    assert_eq!(
        ended, 1_000,
        "every run completed or compensated: {by_status:?}"
    );
    // Runs b had in flight were taken over and finished by a or c.
    let taken_over = first
        .iter()
        .filter(|(_, host)| **host == 1)
        .filter(|(id, _)| {
            runs[*id]["owner"]
                .as_str()
                .is_some_and(|owner| !owner.starts_with("host-b/"))
        })
        .count();
    eprintln!("{taken_over} of host b's runs were finished by another host");
    assert!(
        taken_over > 0,
        "host b had no run in flight when it was killed; the test proves nothing:\n{}",
        servers[0].log_text()
    );

    // Money is conserved and every account matches its entries.
    assert_eq!(
        assert_ledger_consistent(&url),
        ACCOUNTS as i64 * OPENING,
        "money created or lost"
    );
    // No ledger operation took effect twice: a completed transfer moved its amount exactly
    // once each way; a compensated one moved nothing in the end.
    let entries: Vec<(String, String, i64)> = rt().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_as(
            "SELECT op_id, account, delta FROM wasaga.ledger_entries WHERE op_id LIKE 't-%'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("entries")
    });
    let mut moved: HashMap<(String, String), i64> = HashMap::new();
    let mut ops: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (op_id, account, delta) in &entries {
        let run = op_id.split('/').next().expect("run id").to_owned();
        *moved.entry((run.clone(), account.clone())).or_default() += delta;
        ops.entry(op_id.clone())
            .or_default()
            .push((account.clone(), *delta));
    }
    for (i, (from, to, amount)) in all.iter().enumerate() {
        let id = format!("t-{i}");
        let (from, to, amount) = (format!("acct-{from}"), format!("acct-{to}"), *amount as i64);
        let net = |account: &str| {
            moved
                .get(&(id.clone(), account.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        match runs[&id]["status"].as_str() {
            Some("completed") => {
                assert_eq!((net(&from), net(&to)), (-amount, amount), "{id}");
                assert_eq!(
                    ops[&format!("{id}/debit")],
                    [(from.clone(), -amount)],
                    "{id}: debit once"
                );
                assert_eq!(
                    ops[&format!("{id}/credit")],
                    [(to.clone(), amount)],
                    "{id}: credit once"
                );
            }
            Some("compensated") => assert_eq!((net(&from), net(&to)), (0, 0), "{id}"),
            other => panic!("{id} ended {other:?}"),
        }
    }
    drop(servers);
    drop(s);
}

#[test]
fn a_paused_host_loses_its_runs_and_cannot_write_to_them() {
    let postgres = Postgres::start();
    let url = database(&postgres, "paused", None);
    let s = Sandbox::new("paused").on_postgres(&url);
    s.open("alice", 10_000);
    s.open("bob", 0);
    let a = Server::start(
        &s.dir,
        "a",
        &host_config(&url, "host-a", "gated", "gate/"),
        &[],
    );
    let b = Server::start(
        &s.dir,
        "b",
        &host_config(&url, "host-b", "gated", "gate/"),
        &[],
    );
    let (status, _) = a.upload(
        "/v1/workflows/gated/versions",
        &std::fs::read(GATED).expect("guest"),
    );
    assert_eq!(status, 201);

    // The test holds the gate (a lock row in the journal's database), so b's runs wait in flight.
    let runtime = rt();
    let (locks, lease) = runtime.block_on(async {
        let db = Database::open(
            &Location::parse(&url).expect("url"),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("open the journal");
        let locks = DatabaseLocks::new(Arc::new(db));
        let lease = locks
            .acquire("gate/p", "the-test", 120_000, 0)
            .await
            .expect("gate");
        (locks, lease)
    });
    for i in 0..10 {
        let input = json!({ "gate": "gate/p", "from": "alice", "to": "bob", "amount": 7 });
        let (status, reply) = b.start_run("gated", &format!("p-{i}"), &input);
        assert_eq!(status, 201, "{reply}");
    }
    // b is paused (a long GC, a stalled VM): its leases run out and a takes its runs over.
    b.signal(19);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = a.get("/v1/runs?limit=100");
        let taken = listed["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .filter(|r| {
                r["owner"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("host-a/"))
            })
            .count();
        if taken == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a took {taken} of 10:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // b wakes up still executing runs it no longer owns; it must stop them, not write.
    b.signal(18);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .log_text()
        .matches("another host took the run over")
        .count()
        + b.log_text().matches("is now owned by host-a").count()
        < 10
    {
        assert!(
            Instant::now() < deadline,
            "b did not give its runs up:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime
        .block_on(locks.release(&lease))
        .expect("open the gate");
    let runs = a.settled("limit=100", 10, Duration::from_secs(60));
    for (id, run) in &runs {
        assert_eq!(run["status"], "completed", "{id}: {run}");
        assert!(
            run["owner"]
                .as_str()
                .is_some_and(|o| o.starts_with("host-a/")),
            "{run}"
        );
    }
    // Each run journaled its steps once, all by a: b's executions left no event behind.
    for i in 0..10 {
        let events = s.events(&format!("p-{i}"));
        let steps = events.iter().filter(|e| e["kind"] == "step-intent").count();
        assert_eq!(steps, 2, "p-{i}: {events:?}");
    }
    drop((a, b));
    let balances = s.balances();
    assert_eq!((balances["alice"], balances["bob"]), (10_000 - 70, 70));
    assert_eq!(assert_ledger_consistent(&url), 10_000);
}

/// `/readyz` (which anyone may ask) reaches the journal at most once a second: with the
/// journal's PostgreSQL gone, it still answers from its last check for up to a second, then
/// says the journal is not reachable, and ready again once it is back.
#[test]
fn readiness_asks_the_journal_at_most_once_a_second() {
    let mut postgres = Postgres::start();
    let url = database(&postgres, "ready", None);
    let s = Sandbox::new("ready").on_postgres(&url);
    let server = Server::start(
        &s.dir,
        "a",
        &host_config(&url, "host-a", "transfer", "account/"),
        &[],
    );
    let ready = || {
        crate::support::agent()
            .get(&format!("{}/readyz", server.url()))
            .call()
            .expect("answered")
            .status()
            .as_u16()
    };
    assert_eq!(ready(), 200);
    postgres.kill();
    let killed = Instant::now();
    // Within the second since the last check: its answer, without asking the journal.
    assert_eq!(ready(), 200, "answered from the last check");
    assert!(
        killed.elapsed() < Duration::from_millis(900),
        "the cached answer came at once"
    );
    std::thread::sleep(Duration::from_millis(1_200));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ready();
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never saw the journal gone (still {status})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    postgres.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready() != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz never saw the journal back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
