//! Durable waits against real `wasaga serve` processes: sleeps across SIGKILL, signals sent
//! while the host is down, before the wait and twice, cancellation of running, waiting and
//! parent runs, holds that expire while their run waits, two PostgreSQL hosts sharing the
//! timers, ten thousand sleeping runs holding no instance, and a module built against the
//! previous WIT version.

use crate::guests::{CARD_PAYMENT_3DS, SETTLEMENT, TRANSFER, WAITER};
use crate::support::{Sandbox, Server, assert_ledger_consistent, text};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wasaga_db::Location;
use wasaga_runtime::store::no_observer;
use wasaga_runtime::{Host, HostConfig};

/// The claim loop's period with `run_lease_ms = 3000`: a third of the lease, at most 1 s.
const PERIOD_MS: u64 = 1_000;

fn config(journal: &str) -> String {
    host_config(journal, "wasaga")
}

fn host_config(journal: &str, host_id: &str) -> String {
    host_config_leased(journal, host_id, 3_000)
}

/// [`host_config`] with leases on runs of `lease_ms` (renewed every third of it: what a host
/// learns of another host's cancellation waits for that).
fn host_config_leased(journal: &str, host_id: &str, lease_ms: u64) -> String {
    format!(
        "journal = \"{journal}\"\nhost_id = \"{host_id}\"\n\n[limits]\nrun_lease_ms = {lease_ms}\n\n\
         [workflows.waiter]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"acct/\"]\nchildren = [\"waiter\"]\n\n\
         [workflows.card-payment-3ds]\nparticipants = [\"ledger\"]\n\n\
         [workflows.settlement]\nparticipants = [\"ledger\"]\nchildren = [\"transfer\"]\n\n\
         [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n"
    )
}

fn deploy(server: &Server, workflow: &str, path: &str) {
    let bytes = std::fs::read(path).expect("guest built by tests/build.rs");
    let (status, reply) = server.upload(&format!("/v1/workflows/{workflow}/versions"), &bytes);
    assert!(status == 200 || status == 201, "deploy {workflow}: {reply}");
}

fn start(server: &Server, workflow: &str, run_id: &str, input: Value) {
    let (status, reply) = server.start_run(workflow, run_id, &input);
    assert!(status == 201 || status == 200, "start {run_id}: {reply}");
}

fn run(server: &Server, run_id: &str) -> Value {
    let (status, reply) = server.get(&format!("/v1/runs/{run_id}"));
    assert_eq!(status, 200, "{reply}");
    reply
}

/// Polls until `done` holds of the run (or panics with the server's log after `timeout`).
fn until(server: &Server, run_id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let found = run(server, run_id);
        if done(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} is {found}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ended(run: &Value) -> bool {
    run["status"] != "running" && run["status"] != "compensating"
}

/// Sleeping (its timer in the future), not merely woken.
fn sleeping(run: &Value) -> bool {
    run["waiting"]["wake_at_ms"]
        .as_u64()
        .is_some_and(|at| at > 0)
}

fn events(server: &Server, run_id: &str) -> Vec<Value> {
    let (status, reply) = server.get(&format!("/v1/runs/{run_id}/journal"));
    assert_eq!(status, 200, "{reply}");
    reply["events"].as_array().expect("events").clone()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn balance(s: &Sandbox, account: &str) -> i64 {
    s.balances()[account]
}

#[test]
fn a_sleep_survives_sigkill_and_wakes_once_on_time() {
    let s = Sandbox::new("sleep-kill");
    s.open("alice", 100);
    s.open("bob", 0);
    let mut server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "waiter", WAITER);
    let transfer = |ms: u64| json!({ "debit": "alice", "credit": "bob", "amount": 5, "waits": [{ "sleep": { "ms": ms } }] });
    // One sleeps across a crash, one sleeps through to its time with the host up.
    start(&server, "waiter", "nap-kill", transfer(2_500));
    start(&server, "waiter", "nap-up", transfer(1_500));
    until(&server, "nap-kill", Duration::from_secs(10), sleeping);
    let up = until(&server, "nap-up", Duration::from_secs(10), ended);
    assert_eq!(up["status"], "completed", "{up}");
    let journal = events(&server, "nap-up");
    let due = of_kind(&journal, "wait-started")[0]["due_ms"]
        .as_u64()
        .expect("due");
    let woke = of_kind(&journal, "wait-ended")[0]["at_ms"]
        .as_u64()
        .expect("at");
    assert!(
        woke >= due && woke - due <= PERIOD_MS + 1_000,
        "woke {} ms after its due time, the timer loop's period is {PERIOD_MS} ms",
        woke as i64 - due as i64
    );

    server.kill();
    // The timer comes due while no host is up: it fires once a host starts.
    std::thread::sleep(Duration::from_millis(3_000));
    let restarted = wasaga_core::clock::now_ms();
    server.restart(&[]);
    let done = until(&server, "nap-kill", Duration::from_secs(10), ended);
    assert_eq!(done["status"], "completed", "{done}");
    let journal = events(&server, "nap-kill");
    let (started, ended_) = (
        of_kind(&journal, "wait-started"),
        of_kind(&journal, "wait-ended"),
    );
    assert_eq!(
        (started.len(), ended_.len()),
        (1, 1),
        "one wait, ended once"
    );
    let woke = ended_[0]["at_ms"].as_u64().expect("at");
    let due = started[0]["due_ms"].as_u64().expect("due");
    assert!(
        woke >= due && woke >= restarted,
        "it woke after its time and the restart"
    );
    assert!(
        woke - restarted <= PERIOD_MS + 5_000,
        "it woke {} ms after the restart began (the host's start included)",
        woke - restarted
    );
    assert_eq!(of_kind(&journal, "completed").len(), 1);
    assert_eq!(balance(&s, "alice"), 90);
    assert_eq!(balance(&s, "bob"), 10);
    assert_ledger_consistent(&s.ledger_db());
}

#[test]
fn signals_arrive_once_whether_sent_before_the_wait_twice_or_while_the_host_is_down() {
    let s = Sandbox::new("signals");
    let mut server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "waiter", WAITER);

    // Sent during a sleep that comes before the wait: kept, and delivered at the wait. Sent
    // twice with one id: delivered once, so the second wait for it times out.
    let waits = json!({ "waits": [
        { "sleep": { "ms": 1_000 } },
        { "signal": { "name": "go", "timeout_ms": 30_000 } },
        { "signal": { "name": "go", "timeout_ms": 1_500 } },
    ]});
    start(&server, "waiter", "early", waits);
    until(&server, "early", Duration::from_secs(10), sleeping);
    let body = json!({ "payload": { "n": 1 }, "signal_id": "sig-1" });
    let (status, reply) = server.post("/v1/runs/early/signals/go", &body);
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = server.post("/v1/runs/early/signals/go", &body);
    assert_eq!(
        (status, &reply["duplicate"]),
        (200, &json!(true)),
        "{reply}"
    );
    let done = until(&server, "early", Duration::from_secs(15), ended);
    assert_eq!(done["status"], "completed", "{done}");
    let output = &done["output"];
    assert_eq!(output[1], json!({ "n": 1 }), "{done}");
    assert_eq!(
        output[2], "timed out",
        "the duplicate was not delivered: {done}"
    );

    // Sent with the CLI on the journal while no host is up: delivered after the restart.
    start(
        &server,
        "waiter",
        "while-down",
        json!({ "waits": [{ "signal": { "name": "bank", "timeout_ms": 60_000 } }] }),
    );
    until(&server, "while-down", Duration::from_secs(10), sleeping);
    server.kill();
    let config = server.config.display().to_string();
    let out = s.wasaga(&[
        "--config",
        &config,
        "signal",
        "while-down",
        "bank",
        "--payload",
        r#"{"settled": true}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    server.restart(&[]);
    let done = until(&server, "while-down", Duration::from_secs(10), ended);
    assert_eq!(done["output"], json!([{ "settled": true }]), "{done}");

    // What cannot be delivered is refused, with the reason.
    let (status, reply) = server.post("/v1/runs/early/signals/go", &json!({ "payload": 1 }));
    assert_eq!(status, 409, "a finished run: {reply}");
    let (status, reply) = server.post("/v1/runs/nobody/signals/go", &json!({ "payload": 1 }));
    assert_eq!(status, 404, "an unknown run: {reply}");
    start(
        &server,
        "waiter",
        "bounded",
        json!({ "waits": [{ "signal": { "name": "x", "timeout_ms": 60_000 } }] }),
    );
    let big = json!({ "payload": "x".repeat(70 << 10) });
    let (status, reply) = server.post("/v1/runs/bounded/signals/x", &big);
    assert!(
        status == 400 || status == 413,
        "an oversized payload: {status} {reply}"
    );
    let (status, reply) = server.post("/v1/runs/bounded/signals/x", &json!({ "nonsense": 1 }));
    assert_eq!(status, 400, "a malformed body: {reply}");
    let (status, _) = server.post("/v1/runs/bounded/cancel", &json!({}));
    assert_eq!(status, 202);
    let done = until(&server, "bounded", Duration::from_secs(10), ended);
    assert_eq!(done["status"], "compensated", "{done}");
}

#[test]
fn a_wait_too_long_or_under_a_lock_fails_the_run_and_moves_nothing() {
    let s = Sandbox::new("wait-bounds");
    s.open("alice", 100);
    let server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "waiter", WAITER);
    let year = 1_000 * 24 * 3_600 * 1_000u64;
    start(
        &server,
        "waiter",
        "too-long",
        json!({ "debit": "alice", "amount": 7, "waits": [{ "sleep": { "ms": year } }] }),
    );
    let done = until(&server, "too-long", Duration::from_secs(10), ended);
    assert_eq!(done["status"], "compensated", "{done}");
    assert!(
        done["error"].as_str().unwrap_or("").contains("wait_ms_max"),
        "{done}"
    );
    start(
        &server,
        "waiter",
        "locked",
        json!({ "debit": "alice", "amount": 7, "lock": "acct/alice", "waits": [{ "sleep": { "ms": 500 } }] }),
    );
    let done = until(&server, "locked", Duration::from_secs(10), ended);
    assert_eq!(done["status"], "compensated", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap_or("")
            .contains("may not wait while it holds lock 'acct/alice'"),
        "{done}"
    );
    assert_eq!(balance(&s, "alice"), 100);
}

#[test]
fn cancelled_runs_compensate_whether_running_waiting_or_parents_of_children() {
    let s = Sandbox::new("cancel");
    s.open("alice", 100);
    s.open("carol", 100);
    let server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "waiter", WAITER);

    // Waiting: stops at once.
    start(
        &server,
        "waiter",
        "waiting",
        json!({ "debit": "alice", "amount": 10, "waits": [{ "signal": { "name": "never", "timeout_ms": 600_000 } }] }),
    );
    until(&server, "waiting", Duration::from_secs(10), sleeping);
    let (status, reply) = server.post(
        "/v1/runs/waiting/cancel",
        &json!({ "reason": "customer asked", "by": "ops" }),
    );
    assert_eq!(status, 202, "{reply}");
    let done = until(&server, "waiting", Duration::from_secs(10), ended);
    assert_eq!(done["status"], "compensated", "{done}");
    assert_eq!(done["error"], "cancelled by ops: customer asked", "{done}");

    // Running (computing between two journal points): stops at the next epoch tick, long
    // before its computation would have ended.
    start(
        &server,
        "waiter",
        "busy",
        json!({ "debit": "alice", "amount": 10, "waits": [{ "spin": { "iterations": 200_000_000_000u64 } }] }),
    );
    until(&server, "busy", Duration::from_secs(10), |r| {
        r["owner"].is_string()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(&server, "busy")
        .iter()
        .any(|e| e["kind"] == "step-done")
    {
        assert!(Instant::now() < deadline, "the debit never landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = Instant::now();
    let (status, _) = server.post("/v1/runs/busy/cancel", &json!({ "reason": "too slow" }));
    assert_eq!(status, 202);
    let done = until(&server, "busy", Duration::from_secs(20), ended);
    assert_eq!(done["status"], "compensated", "{done}");
    assert_eq!(done["error"], "cancelled by api: too slow", "{done}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "a computing run stops when cancelled"
    );

    // A parent and its child, both waiting: cancelling the parent compensates both.
    let child = json!({ "debit": "carol", "amount": 30, "waits": [{ "signal": { "name": "never", "timeout_ms": 600_000 } }] });
    start(
        &server,
        "waiter",
        "parent",
        json!({ "debit": "alice", "amount": 20, "waits": [{ "child": { "workflow": "waiter", "input": child } }] }),
    );
    let kid = "parent~c1";
    until(&server, kid, Duration::from_secs(10), sleeping);
    until(&server, "parent", Duration::from_secs(10), sleeping);
    assert_eq!(balance(&s, "carol"), 70, "the child debited");
    let out = s.wasaga(&[
        "--config",
        &server.config.display().to_string(),
        "runs",
        "cancel",
        "parent",
        "--reason",
        "batch withdrawn",
        "--server",
        &server.url(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains(kid), "{}", text(&out));
    for id in ["parent", kid] {
        let done = until(&server, id, Duration::from_secs(10), ended);
        assert_eq!(done["status"], "compensated", "{done}");
    }
    let child_run = run(&server, kid);
    assert!(
        child_run["error"]
            .as_str()
            .unwrap_or("")
            .contains("its parent parent was cancelled"),
        "{child_run}"
    );
    assert_eq!(balance(&s, "alice"), 100);
    assert_eq!(balance(&s, "carol"), 100);

    let (status, _) = server.post("/v1/runs/parent/cancel", &json!({}));
    assert_eq!(status, 409, "an ended run cannot be cancelled");
    let (status, _) = server.post("/v1/runs/nobody/cancel", &json!({}));
    assert_eq!(status, 404);
    assert_ledger_consistent(&s.ledger_db());
}

#[test]
fn the_3ds_payment_captures_on_success_voids_on_decline_timeout_or_an_expired_hold() {
    let s = Sandbox::new("3ds");
    s.open("card", 1_000);
    s.open("shop", 0);
    let server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "card-payment-3ds", CARD_PAYMENT_3DS);
    let payment = |id: &str, extra: Value| {
        let mut p =
            json!({ "payment_id": id, "card_account": "card", "merchant": "shop", "amount": 100 });
        for (k, v) in extra.as_object().expect("object") {
            p[k] = v.clone();
        }
        p
    };
    start(&server, "card-payment-3ds", "ok", payment("ok", json!({})));
    start(&server, "card-payment-3ds", "no", payment("no", json!({})));
    start(
        &server,
        "card-payment-3ds",
        "late",
        payment("late", json!({ "challenge_timeout_ms": 1_000 })),
    );
    start(
        &server,
        "card-payment-3ds",
        "expired",
        payment("expired", json!({ "hold_ttl_ms": 1_000 })),
    );
    for id in ["ok", "no", "expired"] {
        until(&server, id, Duration::from_secs(10), sleeping);
    }
    let (status, _) = server.post(
        "/v1/runs/ok/signals/3ds",
        &json!({ "payload": { "ok": true } }),
    );
    assert_eq!(status, 202);
    let (status, _) = server.post(
        "/v1/runs/no/signals/3ds",
        &json!({ "payload": { "ok": false, "reason": "wrong code" } }),
    );
    assert_eq!(status, 202);
    let ok = until(&server, "ok", Duration::from_secs(10), ended);
    assert_eq!(ok["status"], "completed", "{ok}");
    let no = until(&server, "no", Duration::from_secs(10), ended);
    assert_eq!(no["status"], "compensated", "{no}");
    assert!(
        no["error"].as_str().unwrap_or("").contains("wrong code"),
        "{no}"
    );
    let late = until(&server, "late", Duration::from_secs(10), ended);
    assert_eq!(late["status"], "compensated", "{late}");
    assert!(
        late["error"]
            .as_str()
            .unwrap_or("")
            .contains("not answered"),
        "{late}"
    );

    // The hold expires while its run waits: the host voids it and the money goes back, once,
    // however the run ends later (an answer now cannot capture a voided hold).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.json(&["ledger", "balance", "card"])["held"].as_i64() != Some(0) {
        assert!(Instant::now() < deadline, "the expired hold was not voided");
        std::thread::sleep(Duration::from_millis(100));
    }
    let voided: i64 = crate::support::scalar(
        &s.ledger_db(),
        "SELECT COUNT(*) FROM ledger_ops WHERE op_id = '#expired/expired' AND status = 'applied'",
    );
    assert_eq!(
        voided, 1,
        "the void is recorded as the ledger's own operation"
    );
    let (status, _) = server.post(
        "/v1/runs/expired/signals/3ds",
        &json!({ "payload": { "ok": true } }),
    );
    assert_eq!(status, 202);
    let expired = until(&server, "expired", Duration::from_secs(10), ended);
    assert_eq!(expired["status"], "compensated", "{expired}");
    assert_eq!(
        balance(&s, "card"),
        900,
        "only the successful payment was taken"
    );
    assert_eq!(balance(&s, "shop"), 100);
    assert_ledger_consistent(&s.ledger_db());
}

#[test]
fn settlement_pays_each_merchant_in_a_child_then_settles_after_the_cutoff() {
    let s = Sandbox::new("settlement");
    s.open("clearing", 10_000);
    s.open("fees", 0);
    for m in ["m1", "m2", "m3"] {
        s.open(m, 0);
    }
    let server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "settlement", SETTLEMENT);
    deploy(&server, "transfer", TRANSFER);
    start(
        &server,
        "settlement",
        "eod",
        json!({
            "batch_id": "eod", "clearing": "clearing", "fees": "fees", "fee_bps": 200,
            "merchants": [
                { "merchant": "m1", "gross": 1_000 },
                { "merchant": "m2", "gross": 2_000 },
                { "merchant": "m3", "gross": 500 },
                { "merchant": "unknown-merchant", "gross": 100 },
            ],
            "cutoff_in_ms": 1_500,
        }),
    );
    let done = until(&server, "eod", Duration::from_secs(20), ended);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["paid"], json!(["m1", "m2", "m3"]), "{done}");
    assert_eq!(done["output"]["failed"][0][0], "unknown-merchant", "{done}");
    assert_eq!(done["output"]["fees"], 70, "{done}");
    let journal = events(&server, "eod");
    assert_eq!(of_kind(&journal, "child-started").len(), 4);
    assert_eq!(
        (balance(&s, "m1"), balance(&s, "m2"), balance(&s, "m3")),
        (980, 1_960, 490)
    );
    assert_eq!(balance(&s, "fees"), 70);
    assert_eq!(balance(&s, "clearing"), 10_000 - 3_500);
    assert_ledger_consistent(&s.ledger_db());
}

#[test]
fn two_postgres_hosts_fire_each_timer_once_and_take_over_a_killed_hosts_waits() {
    let postgres = crate::services::Postgres::start();
    let url = crate::postgres::database(&postgres, "waits", None);
    let s = Sandbox::new("waits-pg").on_postgres(&url);
    let mut a = Server::start(&s.dir, "a", &host_config(&url, "host-a"), &[]);
    let b = Server::start(&s.dir, "b", &host_config(&url, "host-b"), &[]);
    deploy(&a, "waiter", WAITER);
    let ids: Vec<String> = (0..24).map(|i| format!("pg-nap-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let on = if i % 2 == 0 { &a } else { &b };
        start(
            on,
            "waiter",
            id,
            json!({ "waits": [{ "sleep": { "ms": 2_500 } }, { "sleep": { "ms": 200 } }] }),
        );
    }
    for id in &ids {
        until(&b, id, Duration::from_secs(20), sleeping);
    }
    // Host a dies while every run sleeps: b wakes them all, each timer once.
    a.kill();
    for id in &ids {
        let done = until(&b, id, Duration::from_secs(30), ended);
        assert_eq!(done["status"], "completed", "{done}");
        let journal = events(&b, id);
        assert_eq!(of_kind(&journal, "wait-started").len(), 2, "{id}");
        assert_eq!(
            of_kind(&journal, "wait-ended").len(),
            2,
            "{id}: each timer fired once"
        );
    }
    // Both hosts up: the same, with the runs split between them.
    a.restart(&[]);
    let ids: Vec<String> = (0..24).map(|i| format!("pg-both-{i}")).collect();
    for id in &ids {
        start(
            &a,
            "waiter",
            id,
            json!({ "waits": [{ "sleep": { "ms": 1_000 } }] }),
        );
    }
    for id in &ids {
        let done = until(&a, id, Duration::from_secs(30), ended);
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(of_kind(&events(&a, id), "wait-ended").len(), 1, "{id}");
    }
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss pages");
    pages * 4096
}

#[test]
fn ten_thousand_sleeping_runs_hold_no_instance() {
    let s = Sandbox::new("many-sleepers");
    let mut config = HostConfig::new(Location::Sqlite(s.db.clone()));
    config.limits.concurrent_runs_max = 64;
    wasaga_testkit::rt().block_on(async {
        let host = Host::open(&config).await.expect("host opens");
        let module = std::fs::read(WAITER).expect("guest built");
        let hash = host.add_module("waiter", &module).await.expect("valid");
        let input = json!({ "waits": [{ "sleep": { "ms": 3_600_000 } }] }).to_string();
        let mut rss_at_1000 = 0;
        let batch = 200;
        for round in 0..(10_000 / batch) {
            let mut started = tokio::task::JoinSet::new();
            for i in 0..batch {
                let (host, hash, input) = (host.clone(), hash.clone(), input.clone());
                started.spawn(async move {
                    host.start_and_drive(
                        Some(format!("sleeper-{round}-{i}")),
                        "waiter",
                        &hash,
                        &input,
                        no_observer(),
                    )
                    .await
                });
            }
            while let Some(outcome) = started.join_next().await {
                let outcome = outcome.expect("task").expect("the run started");
                assert!(outcome.waiting.is_some(), "{outcome:?}");
            }
            if (round + 1) * batch == 1_000 {
                rss_at_1000 = rss_bytes();
            }
        }
        assert_eq!(host.live_instances(), 0, "a waiting run holds no instance");
        assert_eq!(host.live_runs(), 0, "nor a place among the live runs");
        let (waiting, _) = host.journal().waiting().await.expect("count");
        assert_eq!(waiting, 10_000);
        let grown = rss_bytes().saturating_sub(rss_at_1000);
        assert!(
            grown < 64 << 20,
            "9,000 more waiting runs grew the host by {} MiB",
            grown >> 20
        );
    });
}

#[test]
fn a_module_built_against_wit_0_1_0_still_runs() {
    let s = Sandbox::new("old-wit");
    s.open("alice", 100);
    s.open("bob", 0);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/transfer-wit-0.1.0.wasm"
    );
    let out = s.wasaga(&[
        "run",
        fixture,
        "--name",
        "transfer",
        "--input",
        r#"{"from": "alice", "to": "bob", "amount": 30}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(balance(&s, "bob"), 30);
}

/// Where a crash-point run of the 3-D Secure payment kills a process: the run up to its wait,
/// the signal sent on the journal, or the resumption that takes the signal and captures.
#[derive(Clone, Copy, Debug)]
enum WaitPhase {
    Run,
    Signal,
    Resume,
}

/// A 3-D Secure payment of 100 from `card` to `shop`, answered yes, with the process of
/// `phase` killed at `point`; then everything is done again without a crash, as an operator
/// would. Returns whether the kill happened.
fn three_ds_killed_at(template: &Sandbox, phase: WaitPhase, point: &str) -> bool {
    let s = crate::crash::copy_of(template, false);
    let run_id = format!("3ds-{phase:?}-{point}").replace(':', "-");
    let input =
        json!({ "payment_id": run_id, "card_account": "card", "merchant": "shop", "amount": 100 })
            .to_string();
    let crash = |at: WaitPhase| -> Vec<&str> {
        if matches!(
            (at, phase),
            (WaitPhase::Run, WaitPhase::Run)
                | (WaitPhase::Signal, WaitPhase::Signal)
                | (WaitPhase::Resume, WaitPhase::Resume)
        ) {
            vec!["--crash-at", point]
        } else {
            Vec::new()
        }
    };
    let killed = |out: &std::process::Output| {
        use std::os::unix::process::ExitStatusExt;
        out.status.signal() == Some(9)
    };
    let mut was_killed = false;

    let mut args = vec![
        "run",
        CARD_PAYMENT_3DS,
        "--input",
        &input,
        "--run-id",
        &run_id,
    ];
    args.extend(crash(WaitPhase::Run));
    let out = s.wasaga(&args);
    if killed(&out) {
        was_killed = true;
        // Whatever the kill left is taken up again: the run reaches its wait, or never began.
        let resumed = s.wasaga(&["resume"]);
        assert!(
            resumed.status.code().is_some(),
            "{point}: {}",
            text(&resumed)
        );
        if !s.runs().iter().any(|(id, _, _)| *id == run_id) {
            let out = s.wasaga(&[
                "run",
                CARD_PAYMENT_3DS,
                "--input",
                &input,
                "--run-id",
                &run_id,
            ]);
            assert_eq!(out.status.code(), Some(5), "{point}: {}", text(&out));
        }
    } else {
        assert_eq!(out.status.code(), Some(5), "{point}: waits: {}", text(&out));
    }
    assert_eq!(balance(&s, "card"), 1_000, "{point}: held, not moved");

    let mut args = vec![
        "signal",
        &run_id,
        "3ds",
        "--payload",
        r#"{"ok":true}"#,
        "--signal-id",
        "acs-1",
    ];
    args.extend(crash(WaitPhase::Signal));
    let out = s.wasaga(&args);
    if killed(&out) {
        was_killed = true;
        // The sender does not know whether it arrived: it sends again under the same id.
        let out = s.wasaga(&[
            "signal",
            &run_id,
            "3ds",
            "--payload",
            r#"{"ok":true}"#,
            "--signal-id",
            "acs-1",
        ]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
    } else {
        assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
    }

    let mut args = vec!["resume"];
    args.extend(crash(WaitPhase::Resume));
    let out = s.wasaga(&args);
    if killed(&out) {
        was_killed = true;
        let out = s.wasaga(&["resume"]);
        assert!(out.status.code().is_some(), "{point}: {}", text(&out));
    }

    let runs = s.runs();
    let (_, status, error) = runs
        .iter()
        .find(|(id, _, _)| *id == run_id)
        .unwrap_or_else(|| panic!("{phase:?} {point}: the run is lost: {runs:?}"));
    assert_eq!(status, "completed", "{phase:?} {point}: {error:?}");
    let journal = s.events(&run_id);
    let count = |kind: &str| journal.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(
        (count("wait-started"), count("wait-ended")),
        (1, 1),
        "{phase:?} {point}: one wait, ended once: {journal:?}"
    );
    let ended = journal
        .iter()
        .find(|e| e["kind"] == "wait-ended")
        .expect("wait-ended");
    assert_eq!(
        ended["outcome"]["signal_id"], "acs-1",
        "{phase:?} {point}: the wait took the signal: {ended}"
    );
    assert_eq!(
        (balance(&s, "card"), balance(&s, "shop")),
        (900, 100),
        "{phase:?} {point}: captured once"
    );
    assert_ledger_consistent(&s.ledger_db());
    was_killed
}

#[test]
fn a_3ds_payment_killed_at_every_commit_of_its_wait_signal_and_wake_captures_once() {
    let template = Sandbox::new("3ds-crash-template");
    template.open("card", 1_000);
    template.open("shop", 0);
    // The module compiled once into the template's cache, so each copy starts warm.
    let out = template.wasaga(&["validate", CARD_PAYMENT_3DS]);
    assert!(out.status.success(), "{}", text(&out));
    // At least the commits seen when this was written: the run's start, hold, log and wait
    // (with the executor's own); the signal's one; the wake's claim, capture and end.
    for (phase, points_min) in [
        (WaitPhase::Run, 10),
        (WaitPhase::Signal, 2),
        (WaitPhase::Resume, 6),
    ] {
        let exercised = crate::support::at_every_crash_point(40, |point| {
            three_ds_killed_at(&template, phase, point)
        });
        assert!(
            exercised >= points_min,
            "{phase:?}: only {exercised} crash points were reached"
        );
    }
}

/// A run that spins for a few seconds after its debit, then completes: long enough for a
/// cancel to arrive by another way than its own host, short of that host's next renewal.
fn debit_then_spin(account: &str) -> Value {
    json!({ "debit": account, "amount": 10, "waits": [{ "spin": { "iterations": 3_000_000_000_u64 } }] })
}

#[test]
fn a_cancel_accepted_before_a_run_ends_is_never_followed_by_its_completion() {
    // SQLite: the cancel goes to the journal from the command line, which the serving host
    // hears of only at its next renewal (every 20 s here), after the run finished computing.
    let s = Sandbox::new("cancel-guard");
    s.open("alice", 100);
    let config = host_config_leased(&s.db.display().to_string(), "wasaga", 60_000);
    let server = Server::start(&s.dir, "a", &config, &[]);
    deploy(&server, "waiter", WAITER);
    start(&server, "waiter", "spin-1", debit_then_spin("alice"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while balance(&s, "alice") != 90 {
        assert!(Instant::now() < deadline, "the run did not debit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = s.wasaga(&[
        "--config",
        &server.config.display().to_string(),
        "runs",
        "cancel",
        "spin-1",
        "--reason",
        "too late?",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = until(&server, "spin-1", Duration::from_secs(60), ended);
    assert_eq!(
        done["status"],
        "compensated",
        "{done}\n{}",
        server.log_text()
    );
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("too late?")),
        "{done}"
    );
    assert_eq!(balance(&s, "alice"), 100, "the debit was undone");
    assert_eq!(of_kind(&events(&server, "spin-1"), "completed").len(), 0);
    assert_ledger_consistent(&s.ledger_db());
}

#[test]
fn on_postgres_a_cancel_through_another_host_stops_a_run_from_completing() {
    let postgres = crate::services::Postgres::start();
    let url = crate::postgres::database(&postgres, "cancel_guard", None);
    let s = Sandbox::new("cancel-guard-pg").on_postgres(&url);
    s.open("alice", 100);
    let a = Server::start(
        &s.dir,
        "a",
        &host_config_leased(&url, "host-a", 60_000),
        &[],
    );
    let b = Server::start(
        &s.dir,
        "b",
        &host_config_leased(&url, "host-b", 60_000),
        &[],
    );
    deploy(&a, "waiter", WAITER);
    start(&a, "waiter", "spin-pg", debit_then_spin("alice"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while balance(&s, "alice") != 90 {
        assert!(Instant::now() < deadline, "the run did not debit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, reply) = b.post("/v1/runs/spin-pg/cancel", &json!({ "reason": "raced" }));
    assert_eq!(status, 202, "{reply}");
    let done = until(&b, "spin-pg", Duration::from_secs(60), ended);
    assert_eq!(done["status"], "compensated", "{done}\n{}", a.log_text());
    assert_eq!(balance(&s, "alice"), 100, "the debit was undone");
    assert_eq!(of_kind(&events(&b, "spin-pg"), "completed").len(), 0);
    assert_eq!(crate::postgres::assert_ledger_consistent(&url), 100);
}

#[test]
fn hostile_ids_names_and_repeats_are_refused_and_children_keep_their_own_ids() {
    let s = Sandbox::new("waits-hostile");
    s.open("alice", 100);
    s.open("bob", 0);
    let server = Server::start(&s.dir, "a", &config(&s.db.display().to_string()), &[]);
    deploy(&server, "waiter", WAITER);
    deploy(&server, "transfer", TRANSFER);
    // No client may take a child's id, or use `.` / `..`.
    for id in ["zz~c1", ".", ".."] {
        let (status, reply) = server.start_run("waiter", id, &json!({ "waits": [] }));
        assert_eq!(status, 400, "{id}: {reply}");
    }
    // A run whose id looks like an old-style child id is no child of anyone: the parent's
    // child gets an id of its own and its own result.
    start(
        &server,
        "transfer",
        "zz.c1",
        json!({ "from": "alice", "to": "bob", "amount": 2 }),
    );
    start(
        &server,
        "waiter",
        "zz",
        json!({ "waits": [{ "child": { "workflow": "waiter", "input": { "waits": [] } } }] }),
    );
    let parent = until(&server, "zz", Duration::from_secs(20), ended);
    assert_eq!(parent["status"], "completed", "{parent}");
    assert_eq!(
        parent["output"],
        json!([[]]),
        "the child's own output: {parent}"
    );
    let journal = events(&server, "zz");
    let kid = of_kind(&journal, "child-started")[0]["run_id"]
        .as_str()
        .expect("the child's id")
        .to_owned();
    assert!(kid.starts_with("zz~c"), "{kid}");
    let (status, child) = server.get(&format!("/v1/runs/{}", crate::support::encoded(&kid)));
    assert_eq!(status, 200, "{child}");
    assert_eq!(child["parent_run_id"], "zz");
    assert_eq!(child["workflow"], "waiter");

    // A signal id names one signal: the same id with another payload is refused.
    start(
        &server,
        "waiter",
        "sig",
        json!({ "waits": [{ "signal": { "name": "go", "timeout_ms": 60_000 } }] }),
    );
    let (status, _) = server.post(
        "/v1/runs/sig/signals/go",
        &json!({ "payload": 1, "signal_id": "s-1" }),
    );
    assert_eq!(status, 202);
    let (status, reply) = server.post(
        "/v1/runs/sig/signals/go",
        &json!({ "payload": 2, "signal_id": "s-1" }),
    );
    assert_eq!(status, 409, "{reply}");
    let (status, reply) = server.post(
        "/v1/runs/sig/signals/go",
        &json!({ "payload": 1, "signal_id": "s-1" }),
    );
    assert_eq!(
        (status, &reply["duplicate"]),
        (200, &json!(true)),
        "{reply}"
    );
    let done = until(&server, "sig", Duration::from_secs(20), ended);
    assert_eq!(done["output"], json!([1]), "{done}");

    // A wait for a signal with no name can never be answered: it fails the run at once.
    start(
        &server,
        "waiter",
        "nameless",
        json!({ "debit": "alice", "amount": 1, "waits": [{ "signal": { "name": "", "timeout_ms": 60_000 } }] }),
    );
    let done = until(&server, "nameless", Duration::from_secs(20), ended);
    assert_eq!(done["status"], "compensated", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("empty name")),
        "{done}"
    );

    // A reason with a newline (a declined 3-D Secure answer here) cannot forge a line of the
    // server's log.
    s.open("card", 1_000);
    s.open("shop", 0);
    deploy(&server, "card-payment-3ds", CARD_PAYMENT_3DS);
    start(
        &server,
        "card-payment-3ds",
        "forge-log",
        json!({ "payment_id": "forge-log", "card_account": "card", "merchant": "shop", "amount": 5 }),
    );
    until(&server, "forge-log", Duration::from_secs(20), sleeping);
    let forged = "2026-01-01T00:00:00.000000Z  INFO run completed";
    let (status, _) = server.post(
        "/v1/runs/forge-log/signals/3ds",
        &json!({ "payload": { "ok": false, "reason": format!("no\n{forged}") }, "signal_id": "f" }),
    );
    assert_eq!(status, 202);
    let done = until(&server, "forge-log", Duration::from_secs(20), ended);
    assert_eq!(done["status"], "compensated", "{done}");
    assert!(
        !server.log_text().lines().any(|l| l.starts_with(forged)),
        "the reason's newline stayed inside its line:\n{}",
        server.log_text()
    );

    // A cancellation's reason cannot carry control characters into operators' terminals.
    start(
        &server,
        "waiter",
        "forged",
        json!({ "waits": [{ "signal": { "name": "x", "timeout_ms": 60_000 } }] }),
    );
    let (status, reply) = server.post(
        "/v1/runs/forged/cancel",
        &json!({ "reason": "ok\nstatus   completed\u{1b}[32m" }),
    );
    assert_eq!(status, 400, "{reply}");
    let (status, _) = server.post("/v1/runs/forged/cancel", &json!({ "reason": "plain" }));
    assert_eq!(status, 202);
    // Oversized bodies are refused with a JSON reason.
    let big = json!({ "reason": "x".repeat(8 << 10) });
    let (status, reply) = server.post("/v1/runs/forged/cancel", &big);
    assert_eq!(status, 413, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
}

#[test]
fn only_signals_a_run_has_not_taken_count_against_its_bound() {
    let s = Sandbox::new("waits-bound");
    let limited = config(&s.db.display().to_string())
        .replace("[limits]\n", "[limits]\nsignals_per_run_max = 3\n");
    let server = Server::start(&s.dir, "a", &limited, &[]);
    deploy(&server, "waiter", WAITER);
    let waits: Vec<Value> = (0..5)
        .map(|_| json!({ "signal": { "name": "go", "timeout_ms": 60_000 } }))
        .collect();
    start(&server, "waiter", "many", json!({ "waits": waits }));
    // Five signals one after another, each taken before the next: none is refused.
    for i in 0..5 {
        until(&server, "many", Duration::from_secs(20), |r| {
            r["waiting"]["waiting_for"] == "signal:go" || ended(r)
        });
        let (status, reply) = server.post(
            "/v1/runs/many/signals/go",
            &json!({ "payload": i, "signal_id": format!("g-{i}") }),
        );
        assert_eq!(status, 202, "signal {i}: {reply}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let taken = of_kind(&events(&server, "many"), "wait-ended").len();
            if taken > i {
                break;
            }
            assert!(Instant::now() < deadline, "signal {i} was not taken");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let done = until(&server, "many", Duration::from_secs(20), ended);
    assert_eq!(done["output"], json!([0, 1, 2, 3, 4]), "{done}");
    // Signals nobody takes fill the bound, and the next is refused with the reason.
    start(
        &server,
        "waiter",
        "junk",
        json!({ "waits": [{ "signal": { "name": "real", "timeout_ms": 60_000 } }] }),
    );
    for i in 0..3 {
        let (status, _) = server.post(
            &format!("/v1/runs/junk/signals/junk-{i}"),
            &json!({ "payload": i }),
        );
        assert_eq!(status, 202);
    }
    let (status, reply) = server.post("/v1/runs/junk/signals/junk-9", &json!({ "payload": 9 }));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("not taken")),
        "{reply}"
    );
}
