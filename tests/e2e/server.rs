//! `wasaga serve` on the embedded SQLite journal: hot deploy while runs are in flight,
//! rollback, the bearer token, refused uploads, grants, graceful shutdown and `--watch`.
//! Each test drives real server processes over HTTP.

use crate::guests::{GATED, GATED_V2, PAYMENT_ORDER, TRANSFER};
use crate::support::{Sandbox, Server, agent, assert_ledger_consistent, encoded, rt, text};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasaga_db::{Database, Location};
use wasaga_locks::{DatabaseLocks, Lease, LockService};

/// Grants for the `gated` workflow: the ledger, and locks under `gate/`.
fn config(s: &Sandbox) -> String {
    format!(
        "journal = \"{}\"\n\n[limits]\nrun_lease_ms = 3000\n\n[workflows.gated]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"gate/\"]\n",
        s.db.display()
    )
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("guest built by tests/build.rs")
}

/// A lock this test holds in the journal's own lock table, so that `gated` runs wait on it.
struct Gate {
    rt: tokio::runtime::Runtime,
    locks: DatabaseLocks,
    lease: Lease,
}

impl Gate {
    fn hold(db: &Path, key: &str) -> Gate {
        let rt = rt();
        let (locks, lease) = rt.block_on(async {
            let db = Database::open(
                &Location::Sqlite(db.to_owned()),
                Default::default(),
                Default::default(),
            )
            .await
            .expect("open the journal");
            let locks = DatabaseLocks::new(Arc::new(db));
            let lease = locks
                .acquire(key, "the-test", 120_000, 0)
                .await
                .expect("the gate is free");
            (locks, lease)
        });
        Gate { rt, locks, lease }
    }

    fn open(self) {
        self.rt
            .block_on(self.locks.release(&self.lease))
            .expect("release the gate");
    }
}

fn transfer(gate: Option<&str>, amount: u64) -> Value {
    match gate {
        Some(gate) => json!({ "gate": gate, "from": "alice", "to": "bob", "amount": amount }),
        None => json!({ "from": "alice", "to": "bob", "amount": amount }),
    }
}

#[test]
fn a_deploy_while_runs_are_in_flight_leaves_them_on_their_version() {
    let s = Sandbox::new("hot-deploy");
    s.open("alice", 1_000_000);
    s.open("bob", 0);
    let server = Server::start(&s.dir, "a", &config(&s), &[]);
    let (status, v1) = server.upload("/v1/workflows/gated/versions", &read(GATED));
    assert_eq!(status, 201, "{v1}");
    let v1_hash = v1["deployment"]["hash"].as_str().expect("hash").to_owned();

    // Hold the gate: every v1 run waits on it, in flight.
    let gate = Gate::hold(&s.db, "gate/hot");
    for i in 0..100 {
        let (status, run) =
            server.start_run("gated", &format!("v1-{i}"), &transfer(Some("gate/hot"), 1));
        assert_eq!(status, 201, "{run}");
        assert_eq!(run["version"], 1, "{run}");
    }
    let (_, running) = server.get("/v1/runs?workflow=gated&status=running&limit=1000");
    assert_eq!(
        running["runs"].as_array().map(Vec::len),
        Some(100),
        "all v1 runs are in flight"
    );

    let (status, v2) = server.upload("/v1/workflows/gated/versions", &read(GATED_V2));
    assert_eq!(status, 201, "{v2}");
    assert_eq!(v2["deployment"]["version"], 2);
    assert_eq!(v2["previous"], 1);
    let v2_hash = v2["deployment"]["hash"].as_str().expect("hash").to_owned();
    assert_ne!(v1_hash, v2_hash);

    // Runs started after the deploy get v2 (they take no gate and end at once).
    for i in 0..10 {
        let (status, run) = server.post(
            "/v1/workflows/gated/runs?wait_ms=20000",
            &json!({ "input": transfer(None, 1), "run_id": format!("v2-{i}") }),
        );
        assert_eq!(status, 201, "{run}");
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["output"]["version"], 2, "{run}");
        assert_eq!(run["module_hash"], v2_hash.as_str());
    }
    // The v1 runs are still waiting, untouched by the deploy.
    let (_, running) = server.get("/v1/runs?workflow=gated&status=running&limit=1000");
    assert_eq!(running["runs"].as_array().map(Vec::len), Some(100));

    gate.open();
    server.settled("workflow=gated&limit=1000", 0, Duration::from_secs(120));
    for i in 0..100 {
        let (status, shown) =
            server.get(&format!("/v1/runs/{}/journal", encoded(&format!("v1-{i}"))));
        assert_eq!(status, 200, "{shown}");
        let run = &shown["run"];
        assert_eq!(
            run["status"],
            "completed",
            "v1-{i} must not fail: {run}\n{}",
            server.log_text()
        );
        assert_eq!(run["output"]["version"], 1, "v1-{i} ran v1's code: {run}");
        assert_eq!(run["module_hash"], v1_hash.as_str());
        let started = &shown["events"][0];
        assert_eq!(started["kind"], "started");
        assert_eq!(
            started["module_hash"],
            v1_hash.as_str(),
            "the journal pins v1"
        );
    }

    // Rollback: new runs get v1 again; v2 stays listed.
    let (status, active) = server.post("/v1/workflows/gated/rollback", &json!({}));
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["version"], 1);
    let (status, run) = server.post(
        "/v1/workflows/gated/runs?wait_ms=20000",
        &json!({ "input": transfer(None, 1), "run_id": "after-rollback" }),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["output"]["version"], 1, "{run}");
    assert_eq!(run["module_hash"], v1_hash.as_str());
    let (_, versions) = server.get("/v1/workflows/gated/versions");
    let listed: Vec<(i64, bool)> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].as_i64().expect("version"), v["active"] == true))
        .collect();
    assert_eq!(listed, [(1, true), (2, false)]);

    // 111 transfers of 1, each applied once.
    drop(server);
    assert_eq!(s.balances()["alice"], 1_000_000 - 111);
    assert_eq!(s.balances()["bob"], 111);
    assert_ledger_consistent(&s.db);
}

#[test]
fn requests_without_the_token_are_refused_and_bad_uploads_change_nothing() {
    let s = Sandbox::new("auth");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let server = Server::start(&s.dir, "a", &config(&s), &[]);
    let (status, _) = server.upload("/v1/workflows/gated/versions", &read(GATED));
    assert_eq!(status, 201);

    // No token, or the wrong one: 401 on every mutating endpoint, and on reads.
    let url = server.url();
    let cases: [(&str, &str); 4] = [
        ("POST", "/v1/workflows/gated/versions"),
        ("POST", "/v1/workflows/gated/runs"),
        ("POST", "/v1/workflows/gated/rollback"),
        ("GET", "/v1/runs"),
    ];
    for (method, path) in cases {
        for token in [None, Some("not-the-token-0123456789")] {
            let target = format!("{url}{path}");
            let authorization = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
            let answered = match method {
                "GET" => agent()
                    .get(&target)
                    .header("Authorization", &authorization)
                    .call(),
                _ => agent()
                    .post(&target)
                    .header("Authorization", &authorization)
                    .send(&read(GATED_V2)[..]),
            };
            let mut response = answered.expect("answered");
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            let body = response.body_mut().read_to_string().expect("body");
            assert!(body.contains("bearer token"), "{body}");
        }
    }
    // The scheme is case-insensitive; the token is not.
    for (authorization, status) in [
        (format!("bearer {}", crate::support::TOKEN), 200),
        (format!("BEARER {}", crate::support::TOKEN), 200),
        (
            format!("Bearer {}", crate::support::TOKEN.to_uppercase()),
            401,
        ),
    ] {
        let response = agent()
            .get(&format!("{url}/v1/runs"))
            .header("Authorization", &authorization)
            .call()
            .expect("answered");
        assert_eq!(response.status(), status, "{authorization}");
    }
    // Health and readiness need no token.
    for path in ["/healthz", "/readyz"] {
        let response = agent()
            .get(&format!("{url}{path}"))
            .call()
            .expect("answered");
        assert_eq!(response.status(), 200, "{path}");
    }

    // Uploads that are not workflows: 400 with the reason, or 403 when the grant is missing.
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let mut truncated = read(GATED_V2);
    truncated.truncate(truncated.len() / 2);
    let uploads: [(&str, Vec<u8>, u16, &str); 5] = [
        (
            "gated",
            b"not wasm at all".to_vec(),
            400,
            "not a WebAssembly file",
        ),
        (
            "gated",
            core_module,
            400,
            "core WebAssembly module, not a component",
        ),
        ("gated", truncated, 400, "invalid WebAssembly component"),
        (
            "gated",
            read(TRANSFER),
            403,
            "asks for locks under 'account/', which its grant does not include",
        ),
        (
            "payment-order",
            read(PAYMENT_ORDER),
            403,
            "workflow 'payment-order' has no grant in the config",
        ),
    ];
    for (name, bytes, want, reason) in uploads {
        let (status, reply) = server.upload(&format!("/v1/workflows/{name}/versions"), &bytes);
        assert_eq!(status, want, "{name}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{name}: {reply}"
        );
    }
    // The registry is unchanged: one workflow, one version, and runs still get it.
    let (_, workflows) = server.get("/v1/workflows");
    let names: Vec<&str> = workflows["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .map(|w| w["workflow"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["gated"]);
    let (_, versions) = server.get("/v1/workflows/gated/versions");
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1));
    let (status, run) = server.post(
        "/v1/workflows/gated/runs?wait_ms=20000",
        &json!({ "input": transfer(None, 5), "run_id": "still-v1" }),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["output"]["version"], 1);

    // The same run id again is the same run; with another input it is a conflict.
    let (status, again) = server.start_run("gated", "still-v1", &transfer(None, 5));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "completed");
    let (status, conflict) = server.start_run("gated", "still-v1", &transfer(None, 6));
    assert_eq!(status, 409, "{conflict}");
    // Bad requests name what is wrong.
    let (status, bad) = server.post("/v1/workflows/gated/runs", &json!({ "inputs": {} }));
    assert_eq!(status, 400, "{bad}");
    let (status, unknown) = server.start_run("nope", "x-1", &json!({}));
    assert_eq!(status, 404, "{unknown}");
    assert!(
        unknown["error"]
            .as_str()
            .is_some_and(|e| e.contains("never been deployed"))
    );
    let (status, missing) = server.get("/v1/runs/no-such-run");
    assert_eq!(status, 404, "{missing}");
    drop(server);
    assert_eq!(s.balances()["bob"], 5, "only the one good run moved money");
}

#[test]
fn a_lock_outside_the_grant_fails_the_run_and_moves_nothing() {
    let s = Sandbox::new("grants");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let server = Server::start(&s.dir, "a", &config(&s), &[]);
    let (status, _) = server.upload("/v1/workflows/gated/versions", &read(GATED));
    assert_eq!(status, 201);
    let (status, run) = server.post(
        "/v1/workflows/gated/runs?wait_ms=20000",
        &json!({ "input": transfer(Some("vault/main"), 5), "run_id": "sneaky" }),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["status"], "compensated", "{run}");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("not granted lock 'vault/main'")),
        "{run}"
    );
    drop(server);
    assert_eq!(s.balances()["alice"], 1_000);
    assert_eq!(s.balances()["bob"], 0);
}

#[test]
fn a_graceful_shutdown_leaves_live_runs_for_the_next_start() {
    let s = Sandbox::new("shutdown");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let mut server = Server::start(&s.dir, "a", &config(&s), &[]);
    let (status, _) = server.upload("/v1/workflows/gated/versions", &read(GATED));
    assert_eq!(status, 201);
    let gate = Gate::hold(&s.db, "gate/shut");
    for i in 0..5 {
        let (status, run) = server.start_run(
            "gated",
            &format!("held-{i}"),
            &transfer(Some("gate/shut"), 10),
        );
        assert_eq!(status, 201, "{run}");
    }
    let began = Instant::now();
    assert_eq!(server.stop(), Some(0), "{}", server.log_text());
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "runs waiting on a lock must not hold the shutdown up"
    );
    let log = server.log_text();
    assert!(log.contains("released 5 unfinished runs"), "{log}");
    // Unfinished, owned by nobody: the next start takes them at once.
    for (_, status, _) in s.runs().iter().filter(|(id, _, _)| id.starts_with("held-")) {
        assert_eq!(status, "running");
    }
    let listed = s.json(&["runs", "list"]);
    for run in listed["runs"].as_array().expect("runs") {
        assert!(run["owner"].is_null(), "{run}");
    }

    server.restart(&[]);
    gate.open();
    server.settled("workflow=gated&limit=1000", 0, Duration::from_secs(60));
    for i in 0..5 {
        let (_, run) = server.get(&format!("/v1/runs/held-{i}"));
        assert_eq!(run["status"], "completed", "{run}");
    }
    drop(server);
    assert_eq!(s.balances()["bob"], 50);
    assert_ledger_consistent(&s.db);
}

#[test]
fn watch_deploys_changed_modules_and_keeps_serving_through_bad_ones() {
    let s = Sandbox::new("watch");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let modules = s.dir.join("modules");
    std::fs::create_dir_all(&modules).expect("modules dir");
    std::fs::write(modules.join("gated.wasm"), read(GATED)).expect("copy");
    let watched = modules.display().to_string();
    let server = Server::start(&s.dir, "a", &config(&s), &["--watch", &watched]);
    let active = |want: i64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, versions) = server.get("/v1/workflows/gated/versions");
            let now = versions["versions"].as_array().and_then(|all| {
                all.iter()
                    .find(|v| v["active"] == true)
                    .and_then(|v| v["version"].as_i64())
            });
            if now == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "version {want} never became active ({versions}):\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    active(1);
    std::fs::write(modules.join("gated.wasm"), read(GATED_V2)).expect("replace");
    active(2);
    std::fs::write(modules.join("gated.wasm"), b"half-written garbage").expect("break");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("was not deployed") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    active(2);
    // A FIFO no one writes, a link to an endless device and a huge (sparse) file: each is
    // refused, and the host keeps answering (opening the FIFO used to block it for good).
    let fifo = std::process::Command::new("mkfifo")
        .arg(modules.join("evil.wasm"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    std::os::unix::fs::symlink("/dev/zero", modules.join("zero.wasm")).expect("symlink");
    std::fs::File::create(modules.join("huge.wasm"))
        .and_then(|f| f.set_len(8 << 30))
        .expect("sparse file");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.log_text();
        let refused = |file: &str, why: &str| {
            log.lines()
                .any(|l| l.contains(file) && l.contains("was not deployed") && l.contains(why))
        };
        if refused("evil.wasm", "not a regular file")
            && refused("zero.wasm", "not a regular file")
            && refused("huge.wasm", "a module is at most")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
    active(2);
    let (status, run) = server.post(
        "/v1/workflows/gated/runs?wait_ms=20000",
        &json!({ "input": transfer(None, 1), "run_id": "watched" }),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["output"]["version"], 2, "{run}");
}

#[test]
fn the_command_line_deploys_lists_and_rolls_back_on_the_journal() {
    let s = Sandbox::new("cli-deploy");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let config_path = s.dir.join("wasaga.toml");
    std::fs::write(&config_path, config(&s)).expect("config");
    let with_config = |args: &[&str]| {
        let mut all = vec!["--config", config_path.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        s.wasaga(&all)
    };
    let first = with_config(&["deploy", GATED, "--name", "gated"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("deployed gated version 1"));
    let second = with_config(&["deploy", GATED_V2, "--name", "gated"]);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("deployed gated version 2"),
        "{}",
        text(&second)
    );
    let listed = with_config(&["versions", "gated", "--json"]);
    let versions: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));

    // `wasaga run <name>` runs the active version.
    let input = transfer(None, 3).to_string();
    let ran = with_config(&["run", "gated", "--input", &input, "--json"]);
    assert!(ran.status.success(), "{}", text(&ran));
    let outcome: Value = serde_json::from_slice(&ran.stdout).expect("json");
    assert_eq!(outcome["output"]["version"], 2, "{outcome}");

    let back = with_config(&["deploy", "--rollback", "--name", "gated"]);
    assert!(back.status.success(), "{}", text(&back));
    let ran = with_config(&["run", "gated", "--input", &input, "--json"]);
    let outcome: Value = serde_json::from_slice(&ran.stdout).expect("json");
    assert_eq!(outcome["output"]["version"], 1, "{outcome}");
    let nothing = with_config(&["deploy", "--rollback", "--name", "gated"]);
    assert_eq!(nothing.status.code(), Some(2), "{}", text(&nothing));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to roll back to"));

    // A deploy the grants refuse changes nothing, and says why.
    let refused = with_config(&["deploy", TRANSFER, "--name", "gated"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("its grant does not include"),
        "{}",
        text(&refused)
    );
    let listed = with_config(&["versions", "gated", "--json"]);
    let versions: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
}

/// The token is checked before a body is read: an unauthenticated upload that announces 50 MB
/// is answered 401 (and its connection closed) after the client has sent 1 MB, and a flood of
/// such uploads leaves the server answering and its memory where it was.
#[test]
fn an_unauthenticated_upload_is_refused_before_its_body_is_read() {
    use std::io::{Read, Write};
    let s = Sandbox::new("auth-body");
    let server = Server::start(&s.dir, "a", &config(&s), &[]);
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .expect("the server's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    };
    let before = rss_kib();
    let chunk = vec![0u8; 1 << 20];
    let mut uploads = Vec::new();
    for _ in 0..8 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            stream,
            "POST /v1/workflows/gated/versions HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
        )
        .expect("headers");
        // Part of the body; the rest never comes.
        let _ = stream.write_all(&chunk);
        uploads.push(stream);
    }
    for mut stream in uploads {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "answered before the body arrived: {answer:?}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    let grown_kib = rss_kib().saturating_sub(before);
    assert!(
        grown_kib < 32 << 10,
        "8 refused uploads grew the server by {grown_kib} KiB"
    );
    let response = agent()
        .get(&format!("{}/healthz", server.url()))
        .call()
        .expect("the server still answers");
    assert_eq!(response.status(), 200);
}

/// Each endpoint reads only its own kind of body: a start request far over the run input's
/// limit is refused with 413 (and starts nothing), with the token.
#[test]
fn a_start_request_over_its_limit_is_refused_and_starts_nothing() {
    let s = Sandbox::new("start-limit");
    s.open("alice", 1_000);
    let server = Server::start(&s.dir, "a", &config(&s), &[]);
    let (status, _) = server.upload("/v1/workflows/gated/versions", &read(GATED));
    assert_eq!(status, 201);
    // Over payload_bytes_max (64 KiB by default) and the request's envelope.
    let (status, body) = server.post(
        "/v1/workflows/gated/runs",
        &json!({ "run_id": "too-big", "input": { "memo": "x".repeat(100 << 10) } }),
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("payload_bytes_max"),
        "{body}"
    );
    assert!(s.runs().is_empty(), "nothing was started");
}

/// Over HTTP too, input the module refuses before any durable call is a 400 with its reason
/// and leaves no run, so a retry with the right input and the same id is a new run (201).
#[test]
fn a_start_whose_input_the_module_refuses_is_a_400_and_leaves_the_id_free() {
    let s = Sandbox::new("start-refused");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let server = Server::start(&s.dir, "a", &config(&s), &[]);
    let (status, _) = server.upload("/v1/workflows/gated/versions", &read(GATED));
    assert_eq!(status, 201);
    for input in [json!(5), json!([]), json!(null), json!({ "from": "alice" })] {
        let (status, body) = server.post(
            "/v1/workflows/gated/runs",
            &json!({ "run_id": "pay-1", "input": input }),
        );
        assert_eq!(status, 400, "{input}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("refused its input"),
            "{body}"
        );
    }
    let (status, body) = server.get("/v1/runs/pay-1");
    assert_eq!(status, 404, "no run was written: {body}");
    let (status, run) = server.post(
        "/v1/workflows/gated/runs?wait_ms=20000",
        &json!({ "run_id": "pay-1", "input": transfer(None, 3) }),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["status"], "completed", "{run}");
    // A workflow the config grants nothing is refused.
    let (status, body) = server.post(
        "/v1/workflows/transfer/runs",
        &json!({ "input": transfer(None, 1) }),
    );
    assert!(status == 403 || status == 404, "{status}: {body}");
}
