//! Sagas through the CLI: completed runs apply exactly once, failed runs are compensated by
//! the host and leave every balance as it was, and `runs show` tells the story.

use crate::guests::{MISBEHAVE, PAYMENT_ORDER, TRANSFER};
use crate::support::{Sandbox, assert_ledger_consistent, last_error_line, text};
use serde_json::json;
use std::collections::BTreeMap;

fn order(order_id: &str, amount: i64, reference: &str) -> String {
    json!({
        "order_id": order_id, "customer": "alice", "merchant": "shop",
        "amount": amount, "reference": reference,
    })
    .to_string()
}

fn shop() -> Sandbox {
    let sandbox = Sandbox::new("shop");
    sandbox.open("alice", 1_000);
    sandbox.open("bob", 500);
    sandbox.open("shop", 0);
    sandbox
}

#[test]
fn payment_order_completes_and_moves_the_money_once() {
    let s = shop();
    let out = s.wasaga(&["run", PAYMENT_ORDER, "--input", &order("o-1", 250, "inv-1")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in ["create-order", "hold", "capture", "record"] {
        assert!(stdout.contains(step), "step {step} not streamed: {stdout}");
    }
    assert!(stdout.contains("completed:"), "{stdout}");
    assert_eq!(
        s.balances(),
        BTreeMap::from([
            ("alice".into(), 750),
            ("bob".into(), 500),
            ("shop".into(), 250)
        ])
    );
    assert_ledger_consistent(&s.db);
}

#[test]
fn payment_order_failing_at_its_last_step_is_fully_compensated() {
    let s = shop();
    let first = s.wasaga(&["run", PAYMENT_ORDER, "--input", &order("o-1", 250, "inv-1")]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let before = s.balances();

    // Same transaction reference again: the last step (record) refuses a duplicate payment.
    let out = s.wasaga(&["run", PAYMENT_ORDER, "--input", &order("o-2", 100, "inv-1")]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "compensated exits 3: {}",
        text(&out)
    );
    assert!(
        last_error_line(&out).contains("duplicate payment"),
        "{}",
        text(&out)
    );
    assert_eq!(
        s.balances(),
        before,
        "a compensated run must leave every balance as it was"
    );
    assert_ledger_consistent(&s.db);

    let runs = s.runs();
    let (run_id, status, error) = &runs[0];
    assert_eq!(status, "compensated");
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("step 'record' rejected")
    );

    // The timeline lists each compensation the host performed, newest step first.
    let shown = s.wasaga(&["runs", "show", run_id]);
    assert!(shown.status.success(), "{}", text(&shown));
    let timeline = String::from_utf8_lossy(&shown.stdout);
    let undo_lines: Vec<&str> = timeline.lines().filter(|l| l.contains("undo ")).collect();
    assert_eq!(
        undo_lines.len(),
        3,
        "three compensations expected:\n{timeline}"
    );
    assert!(undo_lines[0].contains("capture") && undo_lines[0].contains("ledger.transfer"));
    assert!(undo_lines[1].contains("hold") && undo_lines[1].contains("ledger.void"));
    assert!(
        undo_lines[2].contains("create-order") && undo_lines[2].contains("ledger.order-cancel")
    );
    assert!(timeline.contains("compensated"), "{timeline}");

    let kinds: Vec<String> = s
        .events(run_id)
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_owned())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "compensation-done").count(),
        3
    );
    assert_eq!(kinds.last().map(String::as_str), Some("compensated"));
}

#[test]
fn transfer_with_insufficient_funds_changes_nothing() {
    let s = shop();
    let before = s.balances();
    let input = json!({ "from": "bob", "to": "alice", "amount": 501 }).to_string();
    let out = s.wasaga(&["run", TRANSFER, "--input", &input]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        last_error_line(&out).contains("insufficient funds"),
        "{}",
        text(&out)
    );
    assert_eq!(s.balances(), before);
    let runs = s.runs();
    let timeline =
        String::from_utf8_lossy(&s.wasaga(&["runs", "show", &runs[0].0]).stdout).into_owned();
    assert!(
        timeline.contains("step debit") && timeline.contains("failed"),
        "{timeline}"
    );
    assert!(
        !timeline.contains("undo "),
        "nothing applied, so nothing to undo:\n{timeline}"
    );
}

#[test]
fn transfer_whose_credit_fails_is_undone_by_the_host() {
    let s = shop();
    let before = s.balances();
    let input = json!({ "from": "alice", "to": "nobody", "amount": 10 }).to_string();
    let out = s.wasaga(&["run", TRANSFER, "--input", &input]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(s.balances(), before);
    let runs = s.runs();
    let timeline =
        String::from_utf8_lossy(&s.wasaga(&["runs", "show", &runs[0].0]).stdout).into_owned();
    assert!(
        timeline
            .lines()
            .any(|l| l.contains("undo debit") && l.contains("ledger.credit")),
        "the debit's compensation must be listed:\n{timeline}"
    );
    assert_ledger_consistent(&s.db);
}

#[test]
fn starting_the_same_run_id_twice_runs_it_once() {
    let s = shop();
    let input = json!({ "from": "alice", "to": "bob", "amount": 10 }).to_string();
    for _ in 0..2 {
        let out = s.wasaga(&["run", TRANSFER, "--input", &input, "--run-id", "payout-42"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert_eq!(s.balances()["alice"], 990);
    assert_eq!(s.balances()["bob"], 510);
    assert_eq!(s.runs().len(), 1);
}

#[test]
fn a_compensation_that_cannot_succeed_parks_the_run_as_stuck() {
    let s = shop();
    // The module credits bob, then pays all of bob's money out with no compensation and
    // fails: the host's undo of the credit (a debit of bob) can never succeed.
    let input = json!({ "mode": "drain", "from": "alice", "to": "bob", "amount": 10 }).to_string();
    let out = s.wasaga(&[
        "run",
        MISBEHAVE,
        "--input",
        &input,
        "--compensation-retries",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(4), "stuck exits 4: {}", text(&out));
    let runs = s.runs();
    assert_eq!(runs[0].1, "stuck");
    let reason = runs[0].2.clone().unwrap_or_default();
    assert!(
        reason.contains("compensation of step 'credit'") && reason.contains("insufficient funds"),
        "{reason}"
    );
    let stuck = s.json(&["runs", "list", "--status", "stuck"]);
    assert_eq!(stuck["runs"].as_array().map(Vec::len), Some(1));
    // Money is neither created nor lost, even though the run could not be undone.
    assert_eq!(s.balances().values().sum::<i64>(), 1_500);
    assert_ledger_consistent(&s.db);

    // Retrying before the cause is fixed parks it again, with the same reason.
    let again = s.wasaga(&["runs", "retry", &runs[0].0, "--compensation-retries", "2"]);
    assert_eq!(again.status.code(), Some(4), "{}", text(&again));
    // An operator refunds bob; the retry finishes the compensation where it stopped.
    let refund = json!({ "from": "alice", "to": "bob", "amount": 10 }).to_string();
    let funded = s.wasaga(&["run", TRANSFER, "--input", &refund]);
    assert_eq!(funded.status.code(), Some(0), "{}", text(&funded));
    let retried = s.wasaga(&["runs", "retry", &runs[0].0]);
    assert_eq!(
        retried.status.code(),
        Some(3),
        "compensated now: {}",
        text(&retried)
    );
    let timeline =
        String::from_utf8_lossy(&s.wasaga(&["runs", "show", &runs[0].0]).stdout).into_owned();
    assert_eq!(
        timeline.matches("undo credit").count(),
        1,
        "the credit is undone once:\n{timeline}"
    );
    assert_eq!(
        timeline.matches("undo debit").count(),
        1,
        "the debit is undone once:\n{timeline}"
    );
    let balances = s.balances();
    assert_eq!(balances.values().sum::<i64>(), 1_500);
    // alice: 1,000 - 10 (debit) + 510 (payout) - 10 (refund) + 10 (debit undone) = 1,500;
    // bob: 500 + 10 - 510 + 10 - 10 (credit undone) = 0.
    assert_eq!((balances["alice"], balances["bob"]), (1_500, 0));
    let not_stuck = s.wasaga(&["runs", "retry", &runs[0].0]);
    assert_eq!(not_stuck.status.code(), Some(2), "{}", text(&not_stuck));
    assert!(last_error_line(&not_stuck).contains("only stuck runs can be retried"));
    assert_ledger_consistent(&s.db);
}
