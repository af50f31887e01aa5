//! A module whose step sequence differs on replay is reported as nondeterministic and its
//! journaled steps are compensated.

use crate::guests::MISBEHAVE;
use crate::support::{Sandbox, sql, text};
use serde_json::json;
use std::os::unix::process::ExitStatusExt;

#[test]
fn a_replay_that_takes_another_step_is_nondeterministic_and_compensated() {
    let input = json!({ "mode": "branch", "from": "alice", "to": "bob", "amount": 5 }).to_string();
    // Find a commit to crash right before that leaves the run unfinished with the branch's
    // step journaled. The ledger is in its own file, so each step's intent is durable before
    // the ledger is called (with one file the steps and the run's end can share a commit).
    for commit in 1..=12 {
        let s = Sandbox::new("nondeterminism").with_separate_ledger();
        s.open("alice", 100);
        s.open("bob", 100);
        let crash = format!("before:{commit}");
        let out = s.wasaga(&["run", MISBEHAVE, "--input", &input, "--crash-at", &crash]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "commit {commit} must be reached: {}",
            text(&out)
        );
        let runs = s.runs();
        if runs.is_empty() {
            continue;
        }
        let (run_id, status, _) = &runs[0];
        let kinds: Vec<String> = s
            .events(run_id)
            .iter()
            .map(|e| e["kind"].as_str().expect("kind").to_owned())
            .collect();
        let random = kinds.iter().position(|k| k == "random");
        let branch = kinds.iter().rposition(|k| k == "step-intent");
        if status != "running" || random.is_none() || branch < random {
            continue;
        }
        // Make the module see a different random number on replay, as hidden nondeterminism
        // would: the branch it takes no longer matches the journal.
        {
            let conn = sql(&s.db);
            let body: String = conn
                .query_row(
                    "SELECT body FROM events WHERE run_id = ? AND kind = 'random'",
                    [run_id],
                    |r| r.get(0),
                )
                .expect("random journaled");
            let mut event: serde_json::Value = serde_json::from_str(&body).expect("json");
            let value = event["value"].as_u64().expect("value");
            event["value"] = json!(value ^ 1);
            conn.execute(
                "UPDATE events SET body = ? WHERE run_id = ? AND kind = 'random'",
                [event.to_string().as_str(), run_id],
            )
            .expect("update");
        }
        let resumed = s.wasaga(&["resume"]);
        assert_eq!(resumed.status.code(), Some(3), "{}", text(&resumed));
        let runs = s.runs();
        assert_eq!(runs[0].1, "compensated");
        let reason = runs[0].2.clone().unwrap_or_default();
        assert!(reason.starts_with("nondeterministic:"), "{reason}");
        assert!(
            reason.contains("credit-even") && reason.contains("credit-odd"),
            "{reason}"
        );
        let balances = s.balances();
        assert_eq!(
            (balances["alice"], balances["bob"]),
            (100, 100),
            "steps undone"
        );
        return;
    }
    panic!("no crash point left the run unfinished with the branch's step journaled");
}
