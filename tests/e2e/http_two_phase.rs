//! Two-phase commit across two services reached over HTTP (`two_phase = true`): the card
//! processor of `card_payment.rs` plays two banks, each in a process of its own. A transfer
//! commits at both or at neither, whatever crashes, and nothing stays prepared.

use crate::card_payment::Processor;
use crate::crash::copy_of;
use crate::guests::XA_TRANSFER;
use crate::support::{Sandbox, agent, at_every_crash_point, request, text};
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;

fn config(s: &Sandbox, a: &Processor, b: &Processor) -> String {
    let path = s.dir.join("wasaga.toml");
    let text = format!(
        "[participants.bank-a]\nkind = \"http\"\nurl = \"{}/v1\"\ntwo_phase = true\ntimeout_ms = 700\n\n\
         [participants.bank-b]\nkind = \"http\"\nurl = \"{}/v1\"\ntwo_phase = true\ntimeout_ms = 700\n\n\
         [workflows.xa-transfer]\nparticipants = [\"bank-a\", \"bank-b\"]\nlock_prefixes = []\n",
        a.url, b.url
    );
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

fn transfer(amount: i64) -> String {
    json!({ "from_bank": "bank-a", "from": "alice", "to_bank": "bank-b", "to": "bob", "amount": amount })
        .to_string()
}

/// A card's limit (its balance here) and what is held of it.
fn account(bank: &Processor, card: &str) -> (i64, i64) {
    let state = bank.state();
    let card = &state["cards"][card];
    (
        card["limit"].as_i64().expect("limit"),
        card["held"].as_i64().expect("held"),
    )
}

fn prepared(bank: &Processor) -> Value {
    request(agent().get(&format!("{}/v1/prepared", bank.url)).call()).1["xids"].clone()
}

/// A transfer commits at both banks; one the debit cannot cover aborts at both, with the
/// bank's reason, and holds nothing.
#[test]
fn a_transfer_commits_at_both_banks_or_at_neither() {
    let a = Processor::start(&[("alice", 1_000)]);
    let b = Processor::start(&[("bob", 0)]);
    let s = Sandbox::new("http-2pc");
    let config = config(&s, &a, &b);
    let out = s.wasaga(&[
        "--config",
        &config,
        "run",
        XA_TRANSFER,
        "--input",
        &transfer(300),
        "--run-id",
        "t-1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(account(&a, "alice"), (700, 0));
    assert_eq!(account(&b, "bob"), (300, 0));

    let out = s.wasaga(&[
        "--config",
        &config,
        "run",
        XA_TRANSFER,
        "--input",
        &transfer(5_000),
        "--run-id",
        "t-2",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("insufficient funds"), "{}", text(&out));
    assert_eq!(account(&a, "alice"), (700, 0));
    assert_eq!(account(&b, "bob"), (300, 0));
    for bank in [&a, &b] {
        assert_eq!(prepared(bank), json!([]));
    }
    // The aborted transaction is fenced at both banks: its prepare, arriving late, is refused.
    let aborted = b.state()["aborted"].clone();
    let xid = aborted[0].as_str().expect("bank-b was told to abort");
    assert!(xid.starts_with("t-2#2pc-"), "{aborted}");
    assert_eq!(a.state()["aborted"], aborted);
    let (status, late) = request(
        agent()
            .post(&format!("{}/v1/prepare", b.url))
            .header("Idempotency-Key", "late")
            .send(
                json!({ "account": "bob", "action": "credit", "amount": 1, "branch": 1, "xid": xid })
                    .to_string()
                    .as_bytes(),
            ),
    );
    assert_eq!(status, 409, "{late}");
}

/// The host is killed before and after each commit of a transfer, then resumed: the transfer
/// ends committed at both banks exactly once, and neither bank holds anything prepared.
#[test]
fn a_crash_at_any_commit_leaves_both_banks_agreeing() {
    let a = Processor::start(&[("alice", 1_000_000)]);
    let b = Processor::start(&[("bob", 0)]);
    let template = Sandbox::new("http-2pc-crash");
    config(&template, &a, &b);
    let mut moved = 0;
    let exercised = at_every_crash_point(40, |point| {
        let s = copy_of(&template, false);
        let config = s.dir.join("wasaga.toml").display().to_string();
        let run_id = format!("t-{point}").replace(':', "-");
        let out = s.wasaga(&[
            "--config",
            &config,
            "run",
            XA_TRANSFER,
            "--input",
            &transfer(10),
            "--run-id",
            &run_id,
            "--crash-at",
            point,
        ]);
        let killed = out.status.signal() == Some(9);
        if killed {
            let resumed = s.wasaga(&["--config", &config, "resume"]);
            assert!(
                matches!(resumed.status.code(), Some(0) | Some(3)),
                "{point}: {}",
                text(&resumed)
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        }
        let runs = s.runs();
        match runs.iter().find(|(id, _, _)| *id == run_id) {
            Some((_, status, _)) if status == "completed" => moved += 10,
            Some((_, status, error)) => {
                assert_eq!(status, "compensated", "{point}: {error:?}")
            }
            None => {}
        }
        assert_eq!(account(&a, "alice"), (1_000_000 - moved, 0), "{point}");
        assert_eq!(account(&b, "bob"), (moved, 0), "{point}");
        for bank in [&a, &b] {
            assert_eq!(prepared(bank), json!([]), "{point}: left prepared");
        }
        killed
    });
    assert!(exercised >= 6, "only {exercised} crash points exercised");
}
