//! Crash tests: the `wasaga` process is SIGKILLed right before and right after each of its
//! commits during a payment-order run (step intents, participant writes, step completions,
//! compensations, the run's end), in turn. After `wasaga resume`, every run has ended, the
//! money adds up, and no ledger operation took effect twice.

use crate::guests::PAYMENT_ORDER;
use crate::support::{Sandbox, assert_ledger_consistent, sql, text};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    Completed,
    Compensated,
}

fn order(order_id: &str, reference: &str) -> String {
    json!({
        "order_id": order_id, "customer": "alice", "merchant": "shop",
        "amount": 250, "reference": reference,
    })
    .to_string()
}

/// Copies the template's database files (and compiled-module cache) into a fresh sandbox.
pub(crate) fn copy_of(template: &Sandbox, separate_ledger: bool) -> Sandbox {
    let mut s = Sandbox::new("crash");
    if separate_ledger {
        s = s.with_separate_ledger();
    }
    for entry in std::fs::read_dir(&template.dir).expect("template dir") {
        let entry = entry.expect("entry");
        let from = entry.path();
        let to = s.dir.join(entry.file_name());
        if from.is_dir() {
            std::fs::create_dir_all(&to).expect("mkdir");
            for file in std::fs::read_dir(&from).expect("cache dir") {
                let file = file.expect("file");
                std::fs::copy(file.path(), to.join(file.file_name())).expect("copy cache");
            }
        } else {
            std::fs::copy(&from, &to).expect("copy db");
        }
    }
    s
}

/// Runs one scenario at every crash point; returns how many crash points were exercised.
fn crash_everywhere(separate_ledger: bool, ending: Ending) -> u32 {
    let mut template = Sandbox::new("crash-template");
    if separate_ledger {
        template = template.with_separate_ledger();
    }
    template.open("alice", 1_000);
    template.open("shop", 0);
    if ending == Ending::Compensated {
        // Records reference inv-1, so the crashed run's last step refuses a duplicate payment.
        let out = template.wasaga(&["run", PAYMENT_ORDER, "--input", &order("o-1", "inv-1")]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let before = template.balances();
    let total: i64 = before.values().sum();
    let expected: BTreeMap<String, i64> = match ending {
        Ending::Completed => BTreeMap::from([
            ("alice".to_owned(), before["alice"] - 250),
            ("shop".to_owned(), before["shop"] + 250),
        ]),
        Ending::Compensated => before.clone(),
    };

    let mut exercised = 0;
    for commit in 1..=200 {
        let mut reached_any = false;
        for point in [format!("before:{commit}"), format!("after:{commit}")] {
            let s = copy_of(&template, separate_ledger);
            let out = s.wasaga(&[
                "run",
                PAYMENT_ORDER,
                "--input",
                &order("o-2", "inv-1"),
                "--run-id",
                "crashed",
                "--crash-at",
                &point,
            ]);
            if out.status.signal() != Some(9) {
                // The run made fewer commits than this: it must simply have ended.
                let code = if ending == Ending::Completed { 0 } else { 3 };
                assert_eq!(out.status.code(), Some(code), "{point}: {}", text(&out));
                continue;
            }
            reached_any = true;
            exercised += 1;
            // Whatever the terminal showed done is durable: the kill cannot have undone it.
            let shown = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("  step  ") && l.contains(" done "))
                .count();
            let journaled: i64 = crate::support::scalar(
                &s.db,
                "SELECT COUNT(*) FROM events WHERE run_id = 'crashed' AND kind = 'step-done'",
            );
            assert!(
                shown as i64 <= journaled,
                "{point}: {shown} steps shown done, {journaled} journaled: {}",
                text(&out)
            );
            let resumed = s.wasaga(&["resume"]);
            assert!(
                matches!(resumed.status.code(), Some(0) | Some(3)),
                "{point}: resume failed: {}",
                text(&resumed)
            );
            let runs = s.runs();
            for (run_id, status, error) in &runs {
                assert!(
                    status == "completed" || status == "compensated",
                    "{point}: run {run_id} ended {status} ({error:?})"
                );
            }
            let balances = s.balances();
            assert_eq!(
                balances.values().sum::<i64>(),
                total,
                "{point}: money created or lost"
            );
            match runs.iter().find(|(id, _, _)| id == "crashed") {
                Some((_, status, error)) => {
                    let want = if ending == Ending::Completed {
                        "completed"
                    } else {
                        "compensated"
                    };
                    assert_eq!(status, want, "{point}: {error:?}");
                    assert_eq!(balances, expected, "{point}: wrong balances after resume");
                }
                // Killed before the run was created: nothing may have happened.
                None => assert_eq!(balances, before, "{point}: no run, yet money moved"),
            }
            {
                assert_ledger_consistent(&s.ledger_db());
                let conn = sql(&s.ledger_db());
                let mut statement = conn
                    .prepare("SELECT op_id FROM ledger_ops WHERE op_id LIKE 'crashed/%' AND status = 'applied' ORDER BY op_id")
                    .expect("ops");
                let applied: Vec<String> = statement
                    .query_map([], |r| r.get(0))
                    .expect("ops")
                    .collect::<Result<_, _>>()
                    .expect("ops");
                if ending == Ending::Completed && runs.iter().any(|(id, _, _)| id == "crashed") {
                    assert_eq!(
                        applied,
                        [
                            "crashed/capture",
                            "crashed/create-order",
                            "crashed/hold",
                            "crashed/record"
                        ],
                        "{point}: each step applies exactly once"
                    );
                }
            }
        }
        if !reached_any {
            return exercised;
        }
    }
    panic!("the run never stopped committing");
}

#[test]
fn crash_at_every_commit_of_a_completing_run() {
    let points = crash_everywhere(false, Ending::Completed);
    assert!(points >= 12, "only {points} crash points exercised");
}

#[test]
fn crash_at_every_commit_of_a_compensating_run() {
    let points = crash_everywhere(false, Ending::Compensated);
    assert!(points >= 18, "only {points} crash points exercised");
}

#[test]
fn crash_at_every_commit_with_the_ledger_in_its_own_database() {
    // Here intent, participant write and completion are three separate commits.
    let completing = crash_everywhere(true, Ending::Completed);
    assert!(completing >= 26, "only {completing} crash points exercised");
    let compensating = crash_everywhere(true, Ending::Compensated);
    assert!(
        compensating >= 36,
        "only {compensating} crash points exercised"
    );
}
