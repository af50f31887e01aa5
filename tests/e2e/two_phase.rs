//! Two-phase commit on the ledger: both branches commit or neither does, a refused prepare
//! aborts every branch, and a host killed at any commit (after the prepares and before the
//! decision, after the decision and before phase two, ...) leaves nothing in doubt after
//! resume: no branch stays prepared and the money adds up.

use crate::guests::ATOMIC_TRANSFER;
use crate::support::{Sandbox, assert_ledger_consistent, last_error_line, scalar, text};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

fn bank() -> Sandbox {
    let s = Sandbox::new("2pc");
    s.open("alice", 1_000);
    s.open("bob", 1_000);
    s
}

/// Prepared branches not yet committed or aborted.
fn in_doubt(s: &Sandbox) -> i64 {
    scalar(
        &s.ledger_db(),
        "SELECT COUNT(*) FROM ledger_prepared WHERE state = 'prepared'",
    )
}

#[test]
fn both_branches_commit_together() {
    let s = bank();
    let input = json!({ "from": "alice", "to": "bob", "amount": 300 }).to_string();
    let out = s.wasaga(&["run", ATOMIC_TRANSFER, "--input", &input]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2pc   decision: commit"));
    assert_eq!(
        s.balances(),
        BTreeMap::from([("alice".into(), 700), ("bob".into(), 1_300)])
    );
    assert_eq!(in_doubt(&s), 0);
    assert_ledger_consistent(&s.db);
}

#[test]
fn a_branch_that_refuses_to_prepare_aborts_every_branch() {
    let s = bank();
    let input = json!({ "from": "alice", "to": "nobody", "amount": 300 }).to_string();
    let out = s.wasaga(&["run", ATOMIC_TRANSFER, "--input", &input]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let reason = last_error_line(&out);
    assert!(
        reason.contains("branch 1 (ledger.credit) refused to prepare: unknown account 'nobody'"),
        "the refusal is the run's reason: {reason}"
    );
    // Branch 0 had reserved alice's 300; the abort gave it back.
    assert_eq!(
        s.balances(),
        BTreeMap::from([("alice".into(), 1_000), ("bob".into(), 1_000)])
    );
    let held: Vec<i64> = s.json(&["ledger", "list"])["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| a["held"].as_i64().expect("held"))
        .collect();
    assert_eq!(held, [0, 0]);
    assert_eq!(in_doubt(&s), 0);
    assert_ledger_consistent(&s.db);
}

#[test]
fn a_crash_at_any_commit_leaves_nothing_in_doubt() {
    let input = json!({ "from": "alice", "to": "bob", "amount": 300 }).to_string();
    let (mut presumed_aborts, mut committed_after_crash) = (0, 0);
    for commit in 1..=40 {
        let mut reached_any = false;
        for point in [format!("before:{commit}"), format!("after:{commit}")] {
            let s = bank();
            let out = s.wasaga(&[
                "run",
                ATOMIC_TRANSFER,
                "--input",
                &input,
                "--run-id",
                "x",
                "--crash-at",
                &point,
            ]);
            if out.status.signal() != Some(9) {
                assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
                continue;
            }
            reached_any = true;
            let resumed = s.wasaga(&["resume"]);
            assert!(
                matches!(resumed.status.code(), Some(0) | Some(3)),
                "{point}: {}",
                text(&resumed)
            );
            assert_eq!(in_doubt(&s), 0, "{point}: a branch is still prepared");
            let balances = s.balances();
            assert_eq!(
                balances.values().sum::<i64>(),
                2_000,
                "{point}: money created or lost"
            );
            match s.runs().first() {
                Some((_, status, error)) if status == "completed" => {
                    committed_after_crash += 1;
                    assert_eq!(
                        balances,
                        BTreeMap::from([("alice".into(), 700), ("bob".into(), 1_300)]),
                        "{point}"
                    );
                }
                Some((_, status, error)) => {
                    assert_eq!(status, "compensated", "{point}: {error:?}");
                    if error
                        .as_deref()
                        .is_some_and(|e| e.contains("presumed abort"))
                    {
                        presumed_aborts += 1;
                    }
                    assert_eq!(
                        balances,
                        BTreeMap::from([("alice".into(), 1_000), ("bob".into(), 1_000)]),
                        "{point}"
                    );
                }
                None => assert_eq!(
                    balances,
                    BTreeMap::from([("alice".into(), 1_000), ("bob".into(), 1_000)])
                ),
            }
            assert_ledger_consistent(&s.db);
        }
        if !reached_any {
            assert!(
                presumed_aborts > 0,
                "no crash fell between the prepares and the decision"
            );
            assert!(
                committed_after_crash > 0,
                "no crash fell after the decision"
            );
            return;
        }
    }
    panic!("the run never stopped committing");
}

#[test]
fn tcc_confirms_partially_and_cancels_on_decline() {
    use crate::guests::TCC_ORDER;
    let s = Sandbox::new("tcc");
    s.open("alice", 1_000);
    s.open("shop", 0);
    let order = |id: &str, confirmed: i64| {
        json!({ "order_id": id, "customer": "alice", "merchant": "shop", "amount": 400, "confirmed_amount": confirmed })
            .to_string()
    };
    // Confirm 250 of the 400 held: 250 moves, 150 is released.
    let out = s.wasaga(&["run", TCC_ORDER, "--input", &order("t-1", 250)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"released\":150"),
        "{}",
        text(&out)
    );
    assert_eq!(
        s.balances(),
        BTreeMap::from([("alice".into(), 750), ("shop".into(), 250)])
    );
    // Declined: the host cancels the try (voids the hold).
    let out = s.wasaga(&["run", TCC_ORDER, "--input", &order("t-2", 0)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(last_error_line(&out).contains("declined"), "{}", text(&out));
    assert_eq!(
        s.balances(),
        BTreeMap::from([("alice".into(), 750), ("shop".into(), 250)])
    );
    let held: i64 = s.json(&["ledger", "balance", "alice"])["held"]
        .as_i64()
        .expect("held");
    assert_eq!(held, 0, "the cancel released the hold");
    assert_ledger_consistent(&s.db);
}
