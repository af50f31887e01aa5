//! Safe upgrades and day-2 operations against a real `wasaga serve`: a new version is replayed
//! against the recorded runs before it may serve (a reordering one is refused, naming the
//! call), runs waiting in flight move to a compatible version and stay on their own when it is
//! not, `wasaga verify` judges exported journals as a deploy judges live ones, a hundred stuck
//! runs are retried at once once their cause is fixed, and pruning removes exactly the
//! finished runs past their retention.

use crate::guests::{MISBEHAVE, PAYOUT, PAYOUT_V2, PAYOUT_V3, TRANSFER};
use crate::support::{Sandbox, Server, assert_ledger_consistent, scalar, text};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const CONFIG: &str = "journal = \"wasaga.db\"\n\n[limits]\ncompensation_retries_max = 2\n\n\
    [workflows.payout]\nparticipants = [\"ledger\"]\n\n\
    [workflows.misbehave]\nparticipants = [\"ledger\"]\n\n\
    [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n";

fn serving(s: &Sandbox, accounts: &[(&str, i64)]) -> Server {
    std::fs::write(s.dir.join("wasaga.toml"), CONFIG).expect("config");
    let config = s.dir.join("wasaga.toml").display().to_string();
    for (account, balance) in accounts {
        let out = s.wasaga(&[
            "--config",
            &config,
            "ledger",
            "open",
            account,
            "--balance",
            &balance.to_string(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    Server::start(&s.dir, "upgrades", CONFIG, &[])
}

/// Uploads `path` as a version of `workflow` with `query`; the status and the reply.
fn upload(server: &Server, workflow: &str, path: &str, query: &str) -> (u16, Value) {
    let bytes = std::fs::read(path).expect("guest built by tests/build.rs");
    server.upload(
        &format!("/v1/workflows/{workflow}/versions?{query}"),
        &bytes,
    )
}

fn payout(server: &Server, id: &str) -> Value {
    let (status, reply) = server.post(
        "/v1/workflows/payout/runs?wait_ms=10000",
        &json!({ "run_id": id, "input": { "payout_id": id, "from": "treasury", "to": "payee", "amount": 10 } }),
    );
    assert_eq!(status, 201, "{reply}");
    reply
}

fn confirm(server: &Server, id: &str) {
    let (status, reply) = server.post(
        &format!("/v1/runs/{id}/signals/bank"),
        &json!({ "payload": { "ok": true }, "signal_id": format!("bank-{id}") }),
    );
    assert_eq!(status, 202, "{reply}");
}

fn until_ended(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run) = server.get(&format!("/v1/runs/{id}"));
        if !matches!(run["status"].as_str(), Some("running" | "compensating")) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not end: {run}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn until_waiting(server: &Server, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run) = server.get(&format!("/v1/runs/{id}"));
        if run["waiting"]["waiting_for"] == "signal:bank" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} does not wait: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three payouts completed on version 1 and two waiting for the bank.
fn recorded_runs(server: &Server) {
    let (status, reply) = upload(server, "payout", PAYOUT, "");
    assert_eq!(status, 201, "{reply}");
    for id in ["done-1", "done-2", "done-3"] {
        payout(server, id);
        until_waiting(server, id);
        confirm(server, id);
        assert_eq!(until_ended(server, id)["status"], "completed");
    }
    for id in ["wait-1", "wait-2"] {
        payout(server, id);
        until_waiting(server, id);
    }
}

#[test]
fn a_version_that_reorders_two_calls_is_refused_at_deploy_naming_the_call() {
    let s = Sandbox::new("upgrade-refused");
    let server = serving(&s, &[("treasury", 1_000), ("payee", 0)]);
    recorded_runs(&server);
    let (status, reply) = upload(&server, "payout", PAYOUT_V3, "upgrade_in_flight=true");
    assert_eq!(status, 409, "{reply}");
    let error = reply["error"].as_str().expect("a reason");
    assert!(
        error.contains("diverge") && error.contains("--force"),
        "{error}"
    );
    let checked = reply["verified"]["checked"]
        .as_array()
        .expect("checked runs");
    assert_eq!(
        checked.len(),
        5,
        "the two in flight and the three completed: {reply}"
    );
    for check in checked {
        assert_eq!(check["replay"], "diverges", "{check}");
        assert_eq!(
            check["call"], 1,
            "where version 1 waited, version 3 pays: {check}"
        );
        assert!(
            check["reason"]
                .as_str()
                .is_some_and(|r| r.contains("step 'pay'")),
            "{check}"
        );
    }
    // Nothing changed: version 1 is still what new runs get, and the waiting runs go on on it.
    let (_, versions) = server.get("/v1/workflows/payout/versions");
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(1),
        "{versions}"
    );
    confirm(&server, "wait-1");
    assert_eq!(until_ended(&server, "wait-1")["output"]["version"], 1);
    // The command line says the same, with the runs.
    let config = server.config.display().to_string();
    let url = server.url();
    let out = s.wasaga(&[
        "--config", &config, "deploy", PAYOUT_V3, "--name", "payout", "--server", &url,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("diverge"), "{}", text(&out));
}

#[test]
fn runs_waiting_in_flight_move_to_a_compatible_version_and_stay_when_it_is_not() {
    let s = Sandbox::new("upgrade-in-flight");
    let server = serving(&s, &[("treasury", 1_000), ("payee", 0)]);
    recorded_runs(&server);
    // Version 2 makes version 1's calls, then one more: every recorded run replays on it.
    let (status, reply) = upload(&server, "payout", PAYOUT_V2, "upgrade_in_flight=true");
    assert_eq!(status, 201, "{reply}");
    let mut upgraded: Vec<&str> = reply["upgraded"]
        .as_array()
        .expect("upgraded")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    upgraded.sort();
    assert_eq!(upgraded, ["wait-1", "wait-2"], "{reply}");
    assert_eq!(reply["pinned"], json!([]), "{reply}");
    for id in ["wait-1", "wait-2"] {
        confirm(&server, id);
        let done = until_ended(&server, id);
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["output"]["version"], 2,
            "it finished on version 2: {done}"
        );
        assert_eq!(done["version"], 2, "{done}");
        let (_, journal) = server.get(&format!("/v1/runs/{id}/journal"));
        let moved: Vec<&Value> = journal["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["kind"] == "module-upgraded")
            .collect();
        assert_eq!(moved.len(), 1, "{journal}");
        assert_eq!(moved[0]["version"], 2);
        assert_ne!(moved[0]["from"], moved[0]["to"]);
    }

    // Version 3 does not replay them: forced, it serves new runs, and the runs waiting on
    // version 2 stay on it and finish there.
    payout(&server, "wait-3");
    until_waiting(&server, "wait-3");
    let (status, reply) = upload(
        &server,
        "payout",
        PAYOUT_V3,
        "upgrade_in_flight=true&force=true",
    );
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["upgraded"], json!([]), "{reply}");
    let pinned = reply["pinned"].as_array().expect("pinned");
    assert_eq!(pinned.len(), 1, "{reply}");
    assert_eq!(pinned[0]["run_id"], "wait-3");
    assert!(
        pinned[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("call 1")),
        "{reply}"
    );
    confirm(&server, "wait-3");
    let done = until_ended(&server, "wait-3");
    assert_eq!(
        done["output"]["version"], 2,
        "it finished on its own version: {done}"
    );
    let fresh = payout(&server, "fresh-1");
    assert_eq!(fresh["version"], 3, "new runs get version 3: {fresh}");
    assert_ledger_consistent(&s.db);
}

#[test]
fn verify_judges_exported_journals_as_a_deploy_judges_live_ones() {
    let s = Sandbox::new("verify");
    let server = serving(&s, &[("treasury", 1_000), ("payee", 0)]);
    recorded_runs(&server);
    let config = server.config.display().to_string();
    let exported = s.dir.join("payouts.jsonl");
    let out = s.wasaga(&[
        "--config",
        &config,
        "runs",
        "export",
        "--workflow",
        "payout",
        "--out",
        &exported.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = std::fs::read_to_string(&exported).expect("export");
    assert_eq!(lines.lines().count(), 5, "{lines}");
    let file = exported.display().to_string();
    for (module, code) in [(PAYOUT_V2, 0), (PAYOUT_V3, 6)] {
        // Against the exported file, then against the journal itself.
        for runs in [vec!["--runs", file.as_str()], vec![]] {
            let mut args = vec![
                "--config",
                &config,
                "verify",
                module,
                "--workflow",
                "payout",
            ];
            args.extend(runs.iter());
            let out = s.wasaga(&args);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{module} {runs:?}: {}",
                text(&out)
            );
            if code == 6 {
                assert!(text(&out).contains("diverges at call 1"), "{}", text(&out));
            }
        }
    }
    // A file that is not an export is refused with the line that is wrong.
    std::fs::write(s.dir.join("bad.jsonl"), "{\"run\": 5}\n").expect("write");
    let bad = s.dir.join("bad.jsonl").display().to_string();
    let out = s.wasaga(&[
        "--config",
        &config,
        "verify",
        PAYOUT_V2,
        "--workflow",
        "payout",
        "--runs",
        &bad,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("line 1"), "{}", text(&out));
    // The export read from stdin, as a pipeline gives it.
    let mut child = s
        .command(&[
            "--config",
            &config,
            "verify",
            PAYOUT_V3,
            "--workflow",
            "payout",
            "--runs",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("verify");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).expect("feed the export");
    }
    let out = child.wait_with_output().expect("verify ends");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    // Checking nothing is not a pass: the runs of another workflow are skipped and said so,
    // and a workflow with no recorded run is exit 2, not 0.
    let out = s.wasaga(&[
        "--config",
        &config,
        "verify",
        PAYOUT_V2,
        "--workflow",
        "transfer",
        "--runs",
        &file,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("holds 5 runs of other workflows"),
        "{}",
        text(&out)
    );
    let out = s.wasaga(&[
        "--config",
        &config,
        "verify",
        PAYOUT_V2,
        "--workflow",
        "transfer",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nothing was checked"), "{}", text(&out));
    // Hostile exports: a run twice counts once; a journal the host never writes (a call begun
    // twice, events in another order) refuses the file, naming the run, instead of a panic.
    let runs: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let verify_file = |name: &str, content: String| {
        let path = s.dir.join(name);
        std::fs::write(&path, content).expect("write");
        s.wasaga(&[
            "--config",
            &config,
            "--json",
            "verify",
            PAYOUT_V2,
            "--workflow",
            "payout",
            "--runs",
            &path.display().to_string(),
        ])
    };
    let out = verify_file("twice.jsonl", format!("{lines}{lines}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["checked"].as_array().map(Vec::len),
        Some(5),
        "{report}"
    );
    let mut repeated = runs[0].clone();
    let events = repeated["events"].as_array_mut().expect("events");
    let begun = events
        .iter()
        .find(|e| e["kind"] == "step-intent" || e["kind"] == "wait-started")
        .expect("a call")
        .clone();
    events.push(begun);
    let out = verify_file("repeated.jsonl", format!("{repeated}\n"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a journal wasaga wrote") && text(&out).contains("twice"),
        "{}",
        text(&out)
    );
    let mut reversed = runs[0].clone();
    reversed["events"].as_array_mut().expect("events").reverse();
    let out = verify_file("reversed.jsonl", format!("{reversed}\n"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not started"), "{}", text(&out));
}

#[test]
fn a_bulk_retry_of_a_hundred_stuck_runs_after_their_cause_is_fixed_ends_them_all() {
    let s = Sandbox::new("bulk-retry");
    let server = serving(&s, &[("alice", 10_000), ("bob", 0)]);
    let (status, reply) = upload(&server, "misbehave", MISBEHAVE, "");
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = upload(&server, "transfer", TRANSFER, "");
    assert_eq!(status, 201, "{reply}");
    // Each credits bob 10, pays all of bob's money out without a compensation, and fails:
    // the undo of its credit cannot succeed until bob has the money again. One after the
    // other, so that no run's credit pays for another's undo.
    for i in 0..100 {
        let (status, reply) = server.post(
            "/v1/workflows/misbehave/runs?wait_ms=30000",
            &json!({ "run_id": format!("drain-{i:03}"), "input": { "mode": "drain", "from": "alice", "to": "bob", "amount": 10 } }),
        );
        assert_eq!(
            (status, reply["status"].as_str()),
            (201, Some("stuck")),
            "{reply}"
        );
    }
    let config = server.config.display().to_string();
    let url = server.url();
    // Without --yes a hundred runs are only counted.
    let out = s.wasaga(&[
        "--config",
        &config,
        "runs",
        "retry",
        "--status",
        "stuck",
        "--workflow",
        "misbehave",
        "--server",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("100 runs match"), "{}", text(&out));
    let (status, reply) = server.post("/v1/bulk/retry", &json!({ "workflow": "misbehave" }));
    assert_eq!((status, &reply["matching"]), (409, &json!(100)), "{reply}");
    let selection = reply["selection"].as_str().expect("a selection").to_owned();
    // A confirmation names the runs, not their number: another hundred is not confirmed.
    let (status, reply) = server.post(
        "/v1/bulk/retry",
        &json!({ "workflow": "misbehave", "confirm": "0000000000000000" }),
    );
    assert_eq!(status, 409, "{reply}");
    // Another run gets stuck after the dry run: the confirmed selection no longer names the
    // matching runs, and nothing is retried on the old confirmation.
    let (status, reply) = server.post(
        "/v1/workflows/misbehave/runs?wait_ms=30000",
        &json!({ "run_id": "drain-100", "input": { "mode": "drain", "from": "alice", "to": "bob", "amount": 10 } }),
    );
    assert_eq!(
        (status, reply["status"].as_str()),
        (201, Some("stuck")),
        "{reply}"
    );
    let (status, reply) = server.post(
        "/v1/bulk/retry",
        &json!({ "workflow": "misbehave", "confirm": selection }),
    );
    assert_eq!((status, &reply["matching"]), (409, &json!(101)), "{reply}");
    assert_ne!(reply["selection"].as_str(), Some(selection.as_str()));
    let (status, reply) = server.post(
        "/v1/bulk/retry",
        &json!({ "workflow": "misbehave", "dry_run": true }),
    );
    assert_eq!((status, &reply["matching"]), (200, &json!(101)), "{reply}");
    assert_eq!(reply["capped"], false, "{reply}");
    let selection = reply["selection"].as_str().expect("a selection").to_owned();
    // Retried before the cause is fixed: stuck again, each reported.
    let (status, reply) = server.post(
        "/v1/bulk/retry",
        &json!({ "workflow": "misbehave", "confirm": selection }),
    );
    assert_eq!(status, 200, "{reply}");
    let outcomes = reply["outcomes"].as_array().expect("outcomes");
    assert_eq!(outcomes.len(), 101);
    assert!(outcomes.iter().all(|o| o["status"] == "stuck"), "{reply}");
    // The operator funds bob, then retries them all.
    let (status, reply) = server.post(
        "/v1/workflows/transfer/runs?wait_ms=10000",
        &json!({ "run_id": "refund-bob", "input": { "from": "alice", "to": "bob", "amount": 1_010 } }),
    );
    assert_eq!(
        (status, &reply["status"]),
        (201, &json!("completed")),
        "{reply}"
    );
    let out = s.wasaga(&[
        "--config",
        &config,
        "--json",
        "runs",
        "retry",
        "--status",
        "stuck",
        "--workflow",
        "misbehave",
        "--yes",
        "--server",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done["matching"], 101, "{done}");
    let runs = server.settled(
        "workflow=misbehave&limit=1000",
        101,
        Duration::from_secs(60),
    );
    assert!(
        runs.values().all(|r| r["status"] == "compensated"),
        "{runs:?}"
    );
    // Every credit undone once: bob has nothing left of the refund, the total is unchanged.
    let balances = s.balances();
    assert_eq!(balances.values().sum::<i64>(), 10_000);
    assert_eq!(balances["bob"], 0, "{balances:?}");
    assert_ledger_consistent(&s.db);
}

#[test]
fn pruning_keeps_every_unfinished_run_and_removes_exactly_the_expired_ones() {
    let s = Sandbox::new("prune");
    let server = serving(
        &s,
        &[
            ("treasury", 1_000),
            ("payee", 0),
            ("alice", 100),
            ("bob", 0),
        ],
    );
    let (status, reply) = upload(&server, "payout", PAYOUT, "");
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = upload(&server, "misbehave", MISBEHAVE, "");
    assert_eq!(status, 201, "{reply}");
    for id in ["old-done", "new-done"] {
        payout(&server, id);
        until_waiting(&server, id);
        confirm(&server, id);
        assert_eq!(until_ended(&server, id)["status"], "completed");
    }
    // A payout the bank refuses is compensated.
    payout(&server, "old-refused");
    until_waiting(&server, "old-refused");
    let (status, _) = server.post(
        "/v1/runs/old-refused/signals/bank",
        &json!({ "payload": { "ok": false }, "signal_id": "no" }),
    );
    assert_eq!(status, 202);
    assert_eq!(until_ended(&server, "old-refused")["status"], "compensated");
    payout(&server, "old-waiting");
    until_waiting(&server, "old-waiting");
    let (status, _) = server.post(
        "/v1/workflows/misbehave/runs?wait_ms=20000",
        &json!({ "run_id": "old-stuck", "input": { "mode": "drain", "from": "alice", "to": "bob", "amount": 10 } }),
    );
    assert_eq!(status, 201);
    assert_eq!(until_ended(&server, "old-stuck")["status"], "stuck");
    // Forty days pass for the old ones.
    let forty_days_ago = wasaga_core::clock::now_ms() as i64 - 40 * 86_400_000;
    let conn = crate::support::sql(&s.db);
    conn.execute(
        "UPDATE runs SET updated_at_ms = ?1, created_at_ms = ?1 WHERE run_id LIKE 'old-%'",
        [forty_days_ago],
    )
    .expect("age the old runs");
    drop(conn);
    let events_before: i64 = scalar(
        &s.db,
        "SELECT COUNT(*) FROM events WHERE run_id IN ('old-done', 'old-refused')",
    );
    assert!(events_before > 0);

    let config = server.config.display().to_string();
    let exported = s.dir.join("archive.jsonl");
    // A pass a crash interrupted left a torn last line (its runs were never deleted): it is
    // cut off, not appended to.
    std::fs::write(&exported, "{\"run\":{\"run_id\":\"old-do").expect("torn export");
    let out = s.wasaga(&[
        "--config",
        &config,
        "--json",
        "runs",
        "prune",
        "--older-than-days",
        "30",
        "--export",
        &exported.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pruned: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(pruned["runs"], 2, "{pruned}");
    let (status, listed) = server.get("/v1/runs?limit=100");
    assert_eq!(status, 200);
    let mut left: Vec<&str> = listed["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["new-done", "old-stuck", "old-waiting"],
        "finished and old: gone; recent, stuck or unfinished: kept"
    );
    let events_after: i64 = scalar(
        &s.db,
        "SELECT COUNT(*) FROM events WHERE run_id IN ('old-done', 'old-refused')",
    );
    assert_eq!(events_after, 0, "their events went with them");
    let archive = std::fs::read_to_string(&exported).expect("archive");
    let archived: Vec<Value> = archive
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let mut ids: Vec<&str> = archived
        .iter()
        .filter_map(|r| r["run"]["run_id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["old-done", "old-refused"]);
    assert!(
        archived
            .iter()
            .all(|r| r["events"].as_array().is_some_and(|e| !e.is_empty()))
    );
    // The waiting run still finishes; the ledger's audit holds (its entries are kept).
    confirm(&server, "old-waiting");
    assert_eq!(until_ended(&server, "old-waiting")["status"], "completed");
    assert_ledger_consistent(&s.db);
    // Pruning again finds nothing more.
    let out = s.wasaga(&[
        "--config",
        &config,
        "--json",
        "runs",
        "prune",
        "--older-than-days",
        "30",
    ]);
    let again: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(again["runs"], 0, "{again}");
}

#[test]
fn ledger_records_outlive_every_run_that_may_need_them_and_run_ids_stay_taken_for_good() {
    let s = Sandbox::new("prune-ledger");
    s.open("alice", 100);
    s.open("bob", 0);
    s.open("treasury", 1_000);
    s.open("payee", 0);
    let config = s.dir.join("wasaga.toml");
    std::fs::write(
        &config,
        "journal = \"wasaga.db\"\n\n[retention]\nruns_days = 1\nledger_ops_days = 2\n\n\
         [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n\n\
         [workflows.payout]\nparticipants = [\"ledger\"]\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let wasaga = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        s.wasaga(&all)
    };
    let transfer = json!({ "from": "alice", "to": "bob", "amount": 10 }).to_string();
    let out = wasaga(&["run", TRANSFER, "--input", &transfer, "--run-id", "t-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let payout =
        json!({ "payout_id": "w-1", "from": "treasury", "to": "payee", "amount": 10 }).to_string();
    let out = wasaga(&["run", PAYOUT, "--input", &payout, "--run-id", "w-1"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "it waits for the bank: {}",
        text(&out)
    );
    // Years pass: t-1 ended long ago, w-1 began a little after and still waits.
    let conn = crate::support::sql(&s.db);
    conn.execute_batch(
        "UPDATE runs SET created_at_ms = 1000, updated_at_ms = 1000 WHERE run_id = 't-1';
         UPDATE ledger_ops SET at_ms = 1500 WHERE op_id NOT LIKE 'w-1/%';
         UPDATE runs SET created_at_ms = 2000 WHERE run_id = 'w-1';
         UPDATE ledger_ops SET at_ms = 3000 WHERE op_id LIKE 'w-1/%';
         INSERT INTO ledger_ops (op_id, action, request, status, reply, at_ms)
             VALUES ('ghost#undo', 'undo', '{}', 'tombstone', '', 0);",
    )
    .expect("age the journal and the ledger");
    drop(conn);
    let entries: i64 = scalar(&s.db, "SELECT COUNT(*) FROM ledger_entries");
    let out = wasaga(&["--json", "runs", "prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pruned: Value = serde_json::from_slice(&out.stdout).expect("json");
    // t-1 is pruned; of the records, only those made before w-1 began (the four openings,
    // t-1's debit and credit) go: w-1 may still undo its reserve.
    assert_eq!(pruned["runs"], 1, "{pruned}");
    assert_eq!(pruned["ledger_ops"], 6, "{pruned}");
    let kept: i64 = scalar(
        &s.db,
        "SELECT COUNT(*) FROM ledger_ops WHERE op_id LIKE 'w-1/%'",
    );
    assert_eq!(kept, 1, "w-1's reserve is kept");
    assert_eq!(
        scalar::<i64>(
            &s.db,
            "SELECT COUNT(*) FROM ledger_ops WHERE op_id = 'ghost#undo'"
        ),
        1
    );
    assert_eq!(
        scalar::<i64>(&s.db, "SELECT COUNT(*) FROM ledger_entries"),
        entries
    );
    // t-1's id stays taken even with its records gone: the ledger's entries, kept forever,
    // are keyed by its operation ids, and a new t-1 would add to them.
    let out = wasaga(&["run", TRANSFER, "--input", &transfer, "--run-id", "t-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("never used twice"), "{}", text(&out));
    // The bank refuses the payout: its undo finds the reserve it undoes, and the money is back.
    let out = wasaga(&[
        "signal",
        "w-1",
        "bank",
        "--payload",
        r#"{"ok":false}"#,
        "--signal-id",
        "no",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = wasaga(&["resume"]);
    assert!(out.status.code().is_some(), "{}", text(&out));
    let runs = s.runs();
    let w1 = runs.iter().find(|(id, _, _)| id == "w-1").expect("w-1");
    assert_eq!(w1.1, "compensated", "{w1:?}");
    assert_eq!(s.balances()["treasury"], 1_000, "the reserve was undone");
    assert_eq!(s.balances().values().sum::<i64>(), 1_100);
    assert_ledger_consistent(&s.db);

    // A config that would forget a run's operations before the run is refused.
    std::fs::write(
        s.dir.join("bad.toml"),
        "journal = \"wasaga.db\"\n\n[retention]\nruns_days = 30\nledger_ops_days = 7\n",
    )
    .expect("config");
    let bad = s.dir.join("bad.toml").display().to_string();
    let out = s.wasaga(&["--config", &bad, "runs", "prune"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("ledger_ops_days"), "{}", text(&out));
}

#[test]
fn a_pruned_run_keeps_its_id_while_its_ledger_records_are_kept() {
    let s = Sandbox::new("prune-ids");
    s.open("alice", 100);
    s.open("bob", 0);
    let config = s.dir.join("wasaga.toml");
    std::fs::write(
        &config,
        "journal = \"wasaga.db\"\n\n[retention]\nruns_days = 1\nledger_ops_days = 400\n\n\
         [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let input = json!({ "from": "alice", "to": "bob", "amount": 10 }).to_string();
    let out = s.wasaga(&[
        "--config", &config, "run", TRANSFER, "--input", &input, "--run-id", "c-1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Ended two days ago: past `runs_days`, well within `ledger_ops_days`.
    let conn = crate::support::sql(&s.db);
    conn.execute(
        "UPDATE runs SET updated_at_ms = updated_at_ms - 172800000 WHERE run_id = 'c-1'",
        [],
    )
    .expect("age the run");
    drop(conn);
    let out = s.wasaga(&["--config", &config, "--json", "runs", "prune"]);
    let pruned: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (pruned["runs"].as_u64(), pruned["ledger_ops"].as_u64()),
        (Some(1), Some(0)),
        "{pruned}"
    );
    // Its ledger records are kept: the same id again would be answered from them (no money
    // moved, then real credits): it is refused, by the command line and the server alike.
    let out = s.wasaga(&[
        "--config", &config, "run", TRANSFER, "--input", &input, "--run-id", "c-1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pruned"), "{}", text(&out));
    let server = Server::start(
        &s.dir,
        "ids",
        "journal = \"wasaga.db\"\n\n[workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
        &[],
    );
    let (status, reply) = server.post(
        "/v1/workflows/transfer/runs",
        &json!({ "run_id": "c-1", "input": { "from": "alice", "to": "bob", "amount": 10 } }),
    );
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("pruned")),
        "{reply}"
    );
    let (status, run) = server.get("/v1/runs/c-1");
    assert_eq!(status, 200);
    assert!(run["pruned_at_ms"].is_u64(), "{run}");
    let (_, listed) = server.get("/v1/runs");
    assert_eq!(
        listed["runs"].as_array().map(Vec::len),
        Some(0),
        "pruned runs are not listed"
    );
    assert_eq!(s.balances().values().sum::<i64>(), 100);
    assert_ledger_consistent(&s.db);
}

#[test]
fn a_watched_directory_deploys_only_versions_on_which_the_recorded_runs_replay() {
    let s = Sandbox::new("upgrade-watch");
    std::fs::write(s.dir.join("wasaga.toml"), CONFIG).expect("config");
    let config = s.dir.join("wasaga.toml").display().to_string();
    for (account, balance) in [("treasury", 1_000), ("payee", 0)] {
        let out = s.wasaga(&[
            "--config",
            &config,
            "ledger",
            "open",
            account,
            "--balance",
            &balance.to_string(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let modules = s.dir.join("modules");
    std::fs::create_dir_all(&modules).expect("modules dir");
    let watched = modules.join("payout.wasm");
    std::fs::write(&watched, std::fs::read(PAYOUT).expect("guest")).expect("copy");
    let dir = modules.display().to_string();
    let server = Server::start(&s.dir, "watch", CONFIG, &["--watch", &dir]);
    let versions = || {
        let (_, versions) = server.get("/v1/workflows/payout/versions");
        versions["versions"].as_array().cloned().unwrap_or_default()
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} never happened:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("version 1", &|| versions().len() == 1);
    payout(&server, "done-1");
    until_waiting(&server, "done-1");
    confirm(&server, "done-1");
    assert_eq!(until_ended(&server, "done-1")["status"], "completed");
    payout(&server, "wait-1");
    until_waiting(&server, "wait-1");
    // Version 3 pays where version 1 waited: the watcher refuses it, as a deploy would.
    std::fs::write(&watched, std::fs::read(PAYOUT_V3).expect("guest")).expect("replace");
    until("the refusal", &|| {
        server.log_text().contains("was not deployed") && server.log_text().contains("diverge")
    });
    assert_eq!(versions().len(), 1, "nothing was deployed");
    // A compatible version is deployed; the waiting run stays on its own (not asked to move).
    std::fs::write(&watched, std::fs::read(PAYOUT_V2).expect("guest")).expect("replace");
    until("version 2", &|| versions().len() == 2);
    confirm(&server, "wait-1");
    let ended = until_ended(&server, "wait-1");
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["output"]["version"], 1, "{ended}");
    assert_eq!(s.balances()["payee"], 20);
    assert_ledger_consistent(&s.db);
}

#[test]
fn a_version_number_is_never_given_twice_even_after_its_version_is_pruned() {
    let s = Sandbox::new("version-numbers");
    std::fs::write(s.dir.join("wasaga.toml"), CONFIG).expect("config");
    let config = s.dir.join("wasaga.toml").display().to_string();
    let wasaga = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        let out = s.wasaga(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (module, version) in [(PAYOUT, 1), (PAYOUT_V2, 2), (PAYOUT_V3, 3)] {
        let out = wasaga(&["deploy", module, "--name", "payout"]);
        assert!(
            out.contains(&format!("version {version}")),
            "{module}: {out}"
        );
    }
    wasaga(&["deploy", "--rollback", "--name", "payout"]);
    // Version 3 is neither active nor the one before: no run needs it, and it is pruned.
    let pruned: Value = serde_json::from_str(&wasaga(&[
        "--json",
        "runs",
        "prune",
        "--older-than-days",
        "30",
    ]))
    .expect("json");
    assert_eq!(pruned["modules"], 1, "{pruned}");
    let out = wasaga(&["deploy", PAYOUT_V3, "--name", "payout"]);
    assert!(
        out.contains("version 4"),
        "a new number, not the pruned one's: {out}"
    );
    let listed: Value =
        serde_json::from_str(&wasaga(&["versions", "payout", "--json"])).expect("json");
    let numbers: Vec<i64> = listed["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_i64())
        .collect();
    assert_eq!(numbers, [1, 2, 4], "{listed}");
}

#[test]
fn runs_of_a_forced_version_rolled_back_do_not_bar_later_deploys() {
    let s = Sandbox::new("forced-then-back");
    std::fs::write(s.dir.join("wasaga.toml"), CONFIG).expect("config");
    let config = s.dir.join("wasaga.toml").display().to_string();
    let wasaga = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        s.wasaga(&all)
    };
    for (account, balance) in [("treasury", "1000"), ("payee", "0")] {
        let out = wasaga(&["ledger", "open", account, "--balance", balance]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let start = |id: &str| {
        let input =
            json!({ "payout_id": id, "from": "treasury", "to": "payee", "amount": 10 }).to_string();
        let out = wasaga(&["run", "payout", "--input", &input, "--run-id", id]);
        assert_eq!(out.status.code(), Some(5), "{id} waits: {}", text(&out));
    };
    let out = wasaga(&["deploy", PAYOUT, "--name", "payout"]);
    assert!(out.status.success(), "{}", text(&out));
    start("on-1");
    // Version 2 (payout-v3's module) pays before the wait: forced past on-1, a run starts on
    // it, then it is rolled back.
    let out = wasaga(&["deploy", PAYOUT_V3, "--name", "payout", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    start("on-2");
    let out = wasaga(&["deploy", "--rollback", "--name", "payout"]);
    assert!(out.status.success(), "{}", text(&out));
    // A version compatible with version 1 deploys: on-2 diverges on it, but it belongs to the
    // rolled-back version and stays there; it is reported, it does not bar the deploy.
    let out = wasaga(&["--json", "deploy", PAYOUT_V2, "--name", "payout"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["deployment"]["version"], 3, "{report}");
    let diverged: Vec<&str> = report["verified"]["checked"]
        .as_array()
        .expect("checked")
        .iter()
        .filter(|c| c["replay"] == "diverges")
        .filter_map(|c| c["run_id"].as_str())
        .collect();
    assert_eq!(diverged, ["on-2"], "{report}");
    // Runs of the active version still bar a version they diverge on.
    start("on-3");
    let out = wasaga(&["deploy", PAYOUT_V3, "--name", "payout"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("on-3") && text(&out).contains("diverge"),
        "{}",
        text(&out)
    );
    // Every run finishes, each on the version it runs.
    for id in ["on-1", "on-2", "on-3"] {
        let out = wasaga(&[
            "signal",
            id,
            "bank",
            "--payload",
            r#"{"ok":true}"#,
            "--signal-id",
            id,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = wasaga(&["resume"]);
    assert!(out.status.code().is_some(), "{}", text(&out));
    let runs = s.runs();
    assert!(
        runs.iter().all(|(_, status, _)| status == "completed"),
        "{runs:?}"
    );
    assert_eq!(s.balances()["payee"], 30);
    assert_ledger_consistent(&s.db);
}
