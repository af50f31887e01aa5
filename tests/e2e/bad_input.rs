//! Mistakes a user can make: each gives one line naming the problem and a non-zero exit code,
//! and nothing reaches the ledger.

use crate::guests::{MISBEHAVE, TRANSFER};
use crate::support::{Sandbox, last_error_line, scalar, text};
use serde_json::json;

/// Ledger operations recorded so far (opening an account records one).
fn ledger_ops(s: &Sandbox) -> i64 {
    scalar(&s.ledger_db(), "SELECT COUNT(*) FROM ledger_ops")
}

#[test]
fn bad_files_and_bad_json_are_refused_before_anything_runs() {
    let s = Sandbox::new("bad-input");
    s.open("alice", 100);
    s.open("bob", 100);
    let not_wasm = s.dir.join("notes.wasm");
    std::fs::write(&not_wasm, "this is not wasm").expect("write");
    let core = s.dir.join("core.wasm");
    // The smallest valid core module: a component is required.
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let empty_component = s.dir.join("empty.wasm");
    std::fs::write(&empty_component, b"\0asm\x0d\0\x01\0").expect("write");
    let missing = s.dir.join("missing.wasm");

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                TRANSFER.into(),
                "--input".into(),
                "{\"from\": ".into(),
            ],
            "input is not valid JSON",
        ),
        (
            vec![
                "run".into(),
                TRANSFER.into(),
                "--input".into(),
                "@/nonexistent/input.json".into(),
            ],
            "cannot read input file",
        ),
        (
            vec!["run".into(), not_wasm.display().to_string()],
            "not a WebAssembly file",
        ),
        (
            vec!["run".into(), core.display().to_string()],
            "not a component",
        ),
        (
            vec!["run".into(), empty_component.display().to_string()],
            "does not export the wasaga workflow world",
        ),
        (
            vec!["run".into(), missing.display().to_string()],
            "cannot read module",
        ),
        (
            vec!["validate".into(), core.display().to_string()],
            "not a component",
        ),
    ];
    let ops_before = ledger_ops(&s);
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.wasaga(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?} must fail in one line: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    assert_eq!(
        ledger_ops(&s),
        ops_before,
        "refused input must not reach the ledger"
    );
    assert!(s.runs().is_empty(), "refused input must not start a run");
}

#[test]
fn unknown_participants_and_actions_fail_the_step_without_touching_the_ledger() {
    let s = Sandbox::new("unknown-participant");
    s.open("alice", 100);
    s.open("bob", 100);
    let ops_before = ledger_ops(&s);
    for (mode, expected) in [
        ("unknown-participant", "unknown participant 'bank'"),
        ("unknown-action", "the ledger has no action 'teleport'"),
    ] {
        let input = json!({ "mode": mode, "from": "alice", "to": "bob", "amount": 1 }).to_string();
        let out = s.wasaga(&["run", MISBEHAVE, "--input", &input]);
        assert_eq!(out.status.code(), Some(3), "{mode}: {}", text(&out));
        let line = last_error_line(&out);
        assert!(
            line.contains(expected),
            "{mode}: expected {expected:?} in {line}"
        );
    }
    assert_eq!(
        ledger_ops(&s),
        ops_before,
        "nothing may be written to the ledger"
    );
    let balances = s.balances();
    assert_eq!((balances["alice"], balances["bob"]), (100, 100));
}

#[test]
fn a_module_with_a_mistyped_input_fails_cleanly() {
    let s = Sandbox::new("typed-input");
    s.open("alice", 100);
    let input = json!({ "from": "alice", "to": "bob" }).to_string();
    let out = s.wasaga(&["run", TRANSFER, "--input", &input]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        last_error_line(&out).contains("missing field `amount`"),
        "{}",
        text(&out)
    );
    assert_eq!(s.balances()["alice"], 100);
    assert!(s.runs().is_empty(), "a refused input leaves no run");
}

/// A config file denies what it does not grant: with no `[workflows.transfer]` table, running
/// or deploying `transfer` is refused, naming the missing table, and nothing is written.
/// Without any config file everything is allowed, and the run says so.
#[test]
fn a_config_without_a_grant_refuses_the_workflow() {
    let s = Sandbox::new("no-grant");
    s.open("alice", 100);
    s.open("bob", 100);
    let config = s.dir.join("wasaga.toml");
    std::fs::write(&config, format!("journal = \"{}\"\n", s.db.display())).expect("config");
    let config = config.display().to_string();
    let input = json!({ "from": "alice", "to": "bob", "amount": 5 }).to_string();
    let ops_before = ledger_ops(&s);
    for args in [
        vec!["--config", &config, "run", TRANSFER, "--input", &input],
        vec![
            "--config", &config, "deploy", TRANSFER, "--name", "transfer",
        ],
    ] {
        let out = s.wasaga(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            last_error_line(&out).contains("[workflows.transfer]"),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert_eq!(ledger_ops(&s), ops_before, "nothing reached the ledger");
    assert!(s.runs().is_empty(), "nothing was started");
    let modules: i64 = scalar(&s.db, "SELECT COUNT(*) FROM modules");
    assert_eq!(modules, 0, "nothing was stored");

    let out = s.wasaga(&["run", TRANSFER, "--input", &input]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no config file"),
        "a run without a config says it allows everything: {}",
        text(&out)
    );
}

/// Input the module refuses before it makes any durable call leaves no run: exit 2 with the
/// module's reason, and the same run id then starts with the right input.
#[test]
fn input_the_module_refuses_leaves_no_run_and_frees_its_id() {
    let s = Sandbox::new("rejected-input");
    s.open("alice", 100);
    s.open("bob", 100);
    let ops_before = ledger_ops(&s);
    for input in [
        "5",
        "[]",
        "null",
        r#"{"from":"alice","to":"bob","amount":-5}"#,
    ] {
        let out = s.wasaga(&["run", TRANSFER, "--input", input, "--run-id", "pay-1"]);
        assert_eq!(out.status.code(), Some(2), "{input}: {}", text(&out));
        let line = last_error_line(&out);
        assert!(
            line.contains("refused its input") && line.contains("run id is still free"),
            "{input}: {line}"
        );
    }
    assert!(s.runs().is_empty(), "no run was written");
    assert_eq!(ledger_ops(&s), ops_before);
    let good = json!({ "from": "alice", "to": "bob", "amount": 5 }).to_string();
    let out = s.wasaga(&["run", TRANSFER, "--input", &good, "--run-id", "pay-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.balances()["bob"], 105);
}

/// `run` checks its run id and input before it stores the module or resumes anything.
#[test]
fn run_checks_everything_before_it_does_anything() {
    let s = Sandbox::new("run-order");
    s.open("alice", 100);
    let input = json!({ "from": "alice", "to": "bob", "amount": 5 }).to_string();
    for id in ["has space", "", &"x".repeat(200)] {
        let out = s.wasaga(&["run", TRANSFER, "--input", &input, "--run-id", id]);
        assert_eq!(out.status.code(), Some(2), "{id:?}: {}", text(&out));
        assert!(last_error_line(&out).contains("run id"), "{}", text(&out));
    }
    let modules: i64 = scalar(&s.db, "SELECT COUNT(*) FROM modules");
    assert_eq!(modules, 0, "a refused run stores nothing");
}

/// A run id is idempotent for the same request only: `run` with an existing id and another
/// input, or another workflow, is refused (exit 2) rather than reporting the old run's
/// outcome as if it were this one's; the same input again reports the run.
#[test]
fn an_existing_run_id_with_another_input_is_refused() {
    use crate::guests::PAYMENT_ORDER;
    let s = Sandbox::new("reused-id");
    s.open("alice", 1_000);
    s.open("bob", 0);
    let five = json!({ "from": "alice", "to": "bob", "amount": 5 }).to_string();
    let out = s.wasaga(&["run", TRANSFER, "--input", &five, "--run-id", "r1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let more = json!({ "from": "alice", "to": "bob", "amount": 500 }).to_string();
    let order = json!({
        "order_id": "o1", "customer": "alice", "merchant": "bob", "amount": 450, "reference": "x",
    })
    .to_string();
    for (module, input) in [(TRANSFER, &more), (PAYMENT_ORDER, &order)] {
        for json in [false, true] {
            let mut args = vec!["run", module, "--input", input, "--run-id", "r1"];
            if json {
                args.push("--json");
            }
            let out = s.wasaga(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
            assert!(
                text(&out).contains("already used"),
                "{args:?}: {}",
                text(&out)
            );
        }
    }
    // Key order does not make another input.
    let same = r#"{"amount":5,"to":"bob","from":"alice"}"#;
    let out = s.wasaga(&["run", TRANSFER, "--input", same, "--run-id", "r1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.balances()["bob"], 5, "only the first request moved money");
}

/// Account names and run ids never meet in the ledger's keys: a run named `open` whose step
/// is `debit` and an account named `debit` are two operations.
#[test]
fn an_account_and_a_run_of_the_same_names_do_not_collide() {
    let s = Sandbox::new("open-keys");
    s.open("alice", 100);
    s.open("bob", 0);
    s.open("debit", 0);
    let input = json!({ "from": "alice", "to": "bob", "amount": 5 }).to_string();
    let out = s.wasaga(&["run", TRANSFER, "--input", &input, "--run-id", "open"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    s.open("credit", 7);
    let balances = s.balances();
    assert_eq!(
        (balances["alice"], balances["bob"], balances["credit"]),
        (95, 5, 7)
    );
}
