//! `wasaga bench transfer` runs the workload through the real executor and checks its
//! invariants. (Only correctness is asserted here; the numbers are for people to read.)

use crate::guests::BENCH_TRANSFER;
use crate::services::Postgres;
use crate::support::{Sandbox, text};

#[test]
fn the_transfer_benchmark_runs_the_workload_and_its_invariants_hold() {
    let s = Sandbox::new("bench");
    let journal = s.dir.join("bench.db");
    let out = s.wasaga(&[
        "bench",
        "transfer",
        "--n",
        "120",
        "--c",
        "8",
        "--seed",
        "7",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &journal.display().to_string(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["engine"], "wasaga");
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(report["n"], 120);
    assert_eq!(
        report["succeeded"], 108,
        "every tenth transfer is compensated: {report}"
    );
    assert_eq!(report["compensated"], 12, "{report}");
    assert_eq!(report["journal"], "sqlite");
    for field in ["throughput", "p50_ms", "p95_ms", "p99_ms"] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} missing: {report}"
        );
    }
    let invariants = report["invariants"].as_array().expect("invariants");
    assert_eq!(invariants.len(), 5);
}

/// With `--locked` over four hot accounts, every transfer locks both its accounts first: the
/// runs wait for each other (the journal records how long), none times out, and the money
/// adds up as without locks.
#[test]
fn the_locked_transfer_benchmark_over_hot_accounts_waits_in_line_and_its_invariants_hold() {
    let s = Sandbox::new("bench-locked");
    let journal = s.dir.join("bench.db");
    let out = s.wasaga(&[
        "bench",
        "transfer",
        "--n",
        "120",
        "--c",
        "16",
        "--accounts",
        "4",
        "--locked",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &journal.display().to_string(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(report["locked"], true);
    assert_eq!(report["accounts"], 4);
    assert_eq!(report["lock_timeouts"], 0, "{report}");
    assert_eq!(report["succeeded"], 108, "{report}");
    assert!(
        report["lock_wait_max_ms"].as_f64().is_some_and(|v| v > 0.0),
        "16 clients over 4 accounts wait for locks: {report}"
    );
    let bad = s.wasaga(&[
        "--locks",
        "memcached://x",
        "bench",
        "transfer",
        "--locked",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &journal.display().to_string(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("memcached"), "{}", text(&bad));
    // A lock backend that is down is named before anything runs, not found out by every
    // transfer compensating.
    let down = format!("redis://127.0.0.1:{}", crate::services::free_port());
    let out = s.wasaga(&[
        "--locks",
        &down,
        "bench",
        "transfer",
        "--locked",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &journal.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unavailable") && text(&out).contains(&down),
        "{}",
        text(&out)
    );
}

#[test]
fn the_benchmark_refuses_to_reset_the_users_database() {
    let s = Sandbox::new("bench-refuse");
    s.open("alice", 5);
    let db = s.db.display().to_string();
    let out = s.wasaga(&[
        "bench",
        "transfer",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &db,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        s.balances()["alice"],
        5,
        "the user's ledger must be untouched"
    );
}

#[test]
fn the_transfer_benchmark_runs_on_postgres_by_url_and_keeps_to_its_own_schema() {
    let postgres = Postgres::start();
    let url = crate::postgres::database(&postgres, "bench", None);
    // A real journal in the same database must survive the benchmark's reset.
    let s = Sandbox::new("bench-pg").on_postgres(&url);
    s.open("alice", 5);
    let run = |ledger: Option<&str>| {
        let mut args = vec![
            "bench",
            "transfer",
            "--n",
            "120",
            "--c",
            "8",
            "--seed",
            "7",
            "--module",
            BENCH_TRANSFER,
            "--journal",
            &url,
            "--json",
        ];
        if let Some(ledger) = ledger {
            args.extend_from_slice(&["--ledger", ledger]);
        }
        let out = s.wasaga(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON line")
    };
    let report = run(None);
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(
        (report["journal"].as_str(), report["ledger"].as_str()),
        (Some("postgres"), Some("postgres"))
    );
    assert_eq!(
        (report["succeeded"].as_u64(), report["compensated"].as_u64()),
        (Some(108), Some(12))
    );
    // The ledger in a database of its own: ledger writes and journal entries commit apart.
    let ledger_url = format!("{url}?schema=bench_ledger");
    let report = run(Some(&ledger_url));
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(
        (report["succeeded"].as_u64(), report["compensated"].as_u64()),
        (Some(108), Some(12))
    );
    assert_eq!(
        s.balances()["alice"],
        5,
        "the journal's own schema is untouched"
    );
}

/// `--hosts 3`: three host processes share one PostgreSQL journal and drive the locked
/// workload over four hot accounts together, so their runs wait for each other's locks
/// across processes; each finishes its share, none times out on a lock, and the money adds
/// up. Without PostgreSQL the option is refused with what to do.
#[test]
fn the_locked_benchmark_runs_on_three_host_processes_sharing_postgres() {
    let postgres = Postgres::start();
    let url = crate::postgres::database(&postgres, "bench_hosts", None);
    let s = Sandbox::new("bench-hosts");
    let out = s.wasaga(&[
        "bench",
        "transfer",
        "--n",
        "150",
        "--c",
        "12",
        "--accounts",
        "4",
        "--locked",
        "--hosts",
        "3",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &url,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(report["hosts"], 3, "{report}");
    let shares: Vec<u64> = report["transfers_per_host"]
        .as_array()
        .expect("shares")
        .iter()
        .map(|v| v.as_u64().expect("count"))
        .collect();
    assert_eq!(shares, [50, 50, 50], "each host drove its third: {report}");
    assert_eq!(report["lock_timeouts"], 0, "{report}");
    assert_eq!(
        (report["succeeded"].as_u64(), report["compensated"].as_u64()),
        (Some(135), Some(15)),
        "{report}"
    );
    let journal = s.dir.join("bench.db").display().to_string();
    let refused = s.wasaga(&[
        "bench",
        "transfer",
        "--hosts",
        "2",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &journal,
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("postgres://"), "{}", text(&refused));
}

/// `--ledger-http`: the ledger is a separate `wasaga ledger serve` process reached as an
/// `http` participant; the workload's invariants, read from that process's database, hold.
#[test]
fn the_transfer_benchmark_with_the_ledger_over_http_keeps_its_invariants() {
    let s = Sandbox::new("bench-http-ledger");
    let journal = s.dir.join("bench.db");
    let ledger = s.dir.join("ledger.db");
    let out = s.wasaga(&[
        "bench",
        "transfer",
        "--n",
        "120",
        "--c",
        "8",
        "--seed",
        "7",
        "--module",
        BENCH_TRANSFER,
        "--journal",
        &journal.display().to_string(),
        "--ledger",
        &ledger.display().to_string(),
        "--ledger-http",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["ledger"], "http", "{report}");
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(report["succeeded"], 108, "{report}");
    assert_eq!(report["compensated"], 12, "{report}");
    // The journal's own database holds no ledger operation: every one went over HTTP.
    let local: i64 = crate::support::scalar(&journal, "SELECT COUNT(*) FROM ledger_ops");
    assert_eq!(local, 0);
    let remote: i64 = crate::support::scalar(
        &ledger,
        "SELECT COUNT(*) FROM ledger_ops WHERE op_id LIKE 'bench-7/%'",
    );
    assert!(
        remote >= 240,
        "{remote} operations reached the served ledger"
    );
}
