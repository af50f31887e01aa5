//! Two-phase commit across two real PostgreSQL databases (`postgres-xa` participants): both
//! commit or neither does, a refused prepare rolls back the other branch, and a host killed
//! after the prepares but before the decision, or after the decision but before the commits,
//! leaves nothing in `pg_prepared_xacts` once it is back, with the money across both
//! databases unchanged and both agreeing with the journal's decision.

use crate::guests::{TRANSFER, XA_TRANSFER};
use crate::services::Postgres;
use crate::support::{Sandbox, rt, text};
use serde_json::json;
use sqlx::Connection;
use std::os::unix::process::ExitStatusExt;

struct Banks {
    postgres: Postgres,
}

impl Banks {
    fn start() -> Self {
        let postgres = Postgres::start();
        rt().block_on(async {
            let mut admin = sqlx::PgConnection::connect(&postgres.url())
                .await
                .expect("connect");
            for db in ["bank_a", "bank_b"] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .execute(&mut admin)
                    .await
                    .expect("create database");
            }
        });
        let banks = Banks { postgres };
        banks.reset();
        banks
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.postgres.port)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--xa".to_owned(),
            format!("bank-a={}", self.url("bank_a")),
            "--xa".to_owned(),
            format!("bank-b={}", self.url("bank_b")),
        ]
    }

    /// alice has 1,000 in bank_a, bob 1,000 in bank_b; no transaction history.
    fn reset(&self) {
        rt().block_on(async {
            for (db, account) in [("bank_a", "alice"), ("bank_b", "bob")] {
                let mut conn = sqlx::PgConnection::connect(&self.url(db)).await.expect("connect");
                sqlx::raw_sql(wasaga_participants::xa::SCHEMA).execute(&mut conn).await.expect("schema");
                sqlx::raw_sql("DELETE FROM wasaga_accounts; DELETE FROM wasaga_xa_log; DELETE FROM wasaga_xa_fences")
                    .execute(&mut conn)
                    .await
                    .expect("reset");
                sqlx::query("INSERT INTO wasaga_accounts (account, balance) VALUES ($1, 1000)")
                    .bind(account)
                    .execute(&mut conn)
                    .await
                    .expect("account");
            }
        });
    }

    /// (alice's balance in bank_a, bob's in bank_b, prepared transactions in either).
    fn state(&self) -> (i64, i64, i64) {
        rt().block_on(async {
            let mut a = sqlx::PgConnection::connect(&self.url("bank_a"))
                .await
                .expect("connect");
            let mut b = sqlx::PgConnection::connect(&self.url("bank_b"))
                .await
                .expect("connect");
            let alice: i64 =
                sqlx::query_scalar("SELECT balance FROM wasaga_accounts WHERE account = 'alice'")
                    .fetch_one(&mut a)
                    .await
                    .expect("alice");
            let bob: i64 =
                sqlx::query_scalar("SELECT balance FROM wasaga_accounts WHERE account = 'bob'")
                    .fetch_one(&mut b)
                    .await
                    .expect("bob");
            let prepared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_prepared_xacts")
                .fetch_one(&mut a)
                .await
                .expect("prepared");
            (alice, bob, prepared)
        })
    }

    fn run(&self, s: &Sandbox, input: &str, extra: &[&str]) -> std::process::Output {
        let mut args: Vec<String> = self.args();
        args.extend([
            "run".to_owned(),
            XA_TRANSFER.to_owned(),
            "--input".to_owned(),
            input.to_owned(),
        ]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.wasaga(&args)
    }
}

fn transfer(to: &str) -> String {
    json!({ "from_bank": "bank-a", "from": "alice", "to_bank": "bank-b", "to": to, "amount": 300 })
        .to_string()
}

#[test]
fn money_moves_between_two_databases_all_or_nothing() {
    let banks = Banks::start();
    let s = Sandbox::new("xa");
    let out = banks.run(&s, &transfer("bob"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(banks.state(), (700, 1_300, 0));

    let out = banks.run(&s, &transfer("nobody"), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let reason = String::from_utf8_lossy(&out.stderr);
    assert!(
        reason.contains(
            "branch 1 (bank-b.credit) refused to prepare: unknown account 'nobody' in bank-b"
        ),
        "the refusal is the run's reason: {reason}"
    );
    assert_eq!(
        banks.state(),
        (700, 1_300, 0),
        "bank-a's prepared debit was rolled back"
    );
}

#[test]
fn a_host_killed_around_the_decision_leaves_nothing_in_doubt() {
    let banks = Banks::start();
    let (mut presumed_aborts, mut committed_after_crash) = (0, 0);
    for commit in 1..=40 {
        let mut reached_any = false;
        for point in [format!("before:{commit}"), format!("after:{commit}")] {
            banks.reset();
            let s = Sandbox::new("xa-crash");
            let run_id = format!("xa-{}", point.replace(':', "-"));
            // Killed as one host, taken over by another: the branches' ids derive from the
            // run, not from the host that prepared them, so the second finds and ends them.
            let out = banks.run(
                &s,
                &transfer("bob"),
                &[
                    "--run-id",
                    &run_id,
                    "--crash-at",
                    &point,
                    "--host-id",
                    "host-a",
                ],
            );
            if out.status.signal() != Some(9) {
                assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
                continue;
            }
            reached_any = true;
            let mut args = banks.args();
            args.extend(["--host-id".to_owned(), "host-b".to_owned()]);
            args.push("resume".to_owned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let resumed = s.wasaga(&args);
            assert!(
                matches!(resumed.status.code(), Some(0) | Some(3)),
                "{point}: {}",
                text(&resumed)
            );
            let (alice, bob, prepared) = banks.state();
            assert_eq!(prepared, 0, "{point}: a transaction is still in doubt");
            assert_eq!(
                alice + bob,
                2_000,
                "{point}: money created or lost across the databases"
            );
            match s.runs().first() {
                Some((_, status, _)) if status == "completed" => {
                    committed_after_crash += 1;
                    assert_eq!(
                        (alice, bob),
                        (700, 1_300),
                        "{point}: the journal decided commit"
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
                        (alice, bob),
                        (1_000, 1_000),
                        "{point}: the journal decided abort"
                    );
                }
                None => assert_eq!(
                    (alice, bob),
                    (1_000, 1_000),
                    "{point}: no run, yet money moved"
                ),
            }
        }
        if !reached_any {
            assert!(
                presumed_aborts > 0,
                "no crash fell between the prepares and the decision"
            );
            assert!(
                committed_after_crash > 0,
                "no crash fell between the decision and the commits"
            );
            return;
        }
    }
    panic!("the run never stopped committing");
}

/// Another process's start (which resolves what ended runs left in doubt) must not touch a
/// branch a live run has prepared and is still committing: the live run holds bank_b's row
/// lock wait between its two prepares while a second `wasaga run`, with its own journal and
/// the same default host id, starts; the first run then commits both branches.
#[test]
fn a_second_process_leaves_a_live_runs_prepared_branch_alone() {
    let banks = Banks::start();
    let first = Sandbox::new("xa-live");
    let second = Sandbox::new("xa-sweeper");
    rt().block_on(async {
        // Hold bob's row so that the first run's second prepare waits.
        let mut blocker = sqlx::PgConnection::connect(&banks.url("bank_b"))
            .await
            .expect("connect");
        sqlx::raw_sql(
            "BEGIN; SELECT balance FROM wasaga_accounts WHERE account = 'bob' FOR UPDATE",
        )
        .execute(&mut blocker)
        .await
        .expect("lock bob");
        let mut args = banks.args();
        args.extend([
            "run".to_owned(),
            XA_TRANSFER.to_owned(),
            "--input".to_owned(),
            transfer("bob"),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let live = first
            .command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut a = sqlx::PgConnection::connect(&banks.url("bank_a"))
            .await
            .expect("connect");
        for _ in 0..500 {
            let prepared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_prepared_xacts")
                .fetch_one(&mut a)
                .await
                .expect("prepared");
            if prepared == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        second.open("carol", 10);
        let mut args = banks.args();
        args.extend([
            "run".to_owned(),
            TRANSFER.to_owned(),
            "--input".to_owned(),
            json!({ "from": "carol", "to": "nobody", "amount": 1 }).to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let other = second.wasaga(&args);
        assert_eq!(other.status.code(), Some(3), "{}", text(&other));
        let prepared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_prepared_xacts")
            .fetch_one(&mut a)
            .await
            .expect("prepared");
        assert_eq!(
            prepared, 1,
            "the live run's prepared debit must be left alone"
        );
        sqlx::raw_sql("COMMIT")
            .execute(&mut blocker)
            .await
            .expect("unlock bob");
        let out = live.wait_with_output().expect("first run");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    });
    assert_eq!(
        banks.state(),
        (700, 1_300, 0),
        "both branches committed: no money created"
    );
}

/// bank_a as a participant, and a connection to it on which a second account, `amy`, is
/// opened, so that two branches there do not wait on one row.
async fn bank_a_with_amy(
    banks: &Banks,
) -> (wasaga_participants::xa::PostgresXa, sqlx::PgConnection) {
    let xa = wasaga_participants::xa::PostgresXa::new("bank-a", &banks.url("bank_a"))
        .expect("participant");
    let mut conn = sqlx::PgConnection::connect(&banks.url("bank_a"))
        .await
        .expect("connect");
    sqlx::raw_sql("INSERT INTO wasaga_accounts (account, balance) VALUES ('amy', 1000)")
        .execute(&mut conn)
        .await
        .expect("amy");
    (xa, conn)
}

fn prepare(xid: &str, branch: i64, account: &str) -> String {
    json!({ "xid": xid, "branch": branch, "action": "debit", "account": account, "amount": 10 })
        .to_string()
}

/// Ids are matched exactly: `_` is legal in run ids, and ending `pay_1`'s transaction must
/// not end `pay-1`'s (which a LIKE pattern would match).
#[test]
fn ending_one_transaction_never_touches_another_whose_id_looks_alike() {
    let banks = Banks::start();
    rt().block_on(async {
        let (xa, mut a) = bank_a_with_amy(&banks).await;
        xa.call("prepare", &prepare("pay-1#2pc-0", 0, "alice"))
            .await
            .expect("prepare pay-1");
        xa.call("prepare", &prepare("pay-1#2pc-0:9#2pc-0", 0, "amy"))
            .await
            .expect("prepare a longer id");
        xa.call(
            "abort-prepared",
            &json!({ "xid": "pay_1#2pc-0" }).to_string(),
        )
        .await
        .expect("abort pay_1");
        xa.call(
            "abort-prepared",
            &json!({ "xid": "pay-1#2pc-0" }).to_string(),
        )
        .await
        .expect("abort pay-1");
        let left: Vec<String> = sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts")
            .fetch_all(&mut a)
            .await
            .expect("prepared");
        assert_eq!(
            left,
            vec!["wasaga:pay-1#2pc-0:9#2pc-0:0".to_owned()],
            "only pay-1#2pc-0's own branch was rolled back"
        );
        xa.call(
            "abort-prepared",
            &json!({ "xid": "pay-1#2pc-0:9#2pc-0" }).to_string(),
        )
        .await
        .expect("abort the longer id");
    });
    assert_eq!(banks.state(), (1_000, 1_000, 0));
}

/// A commit is done only when every branch it covers is committed: a branch someone else
/// rolled back makes the commit fail, naming it, instead of answering success.
#[test]
fn a_commit_whose_branch_was_rolled_back_behind_its_back_is_not_done() {
    let banks = Banks::start();
    rt().block_on(async {
        let (xa, mut a) = bank_a_with_amy(&banks).await;
        for (branch, account) in [(0, "alice"), (1, "amy")] {
            xa.call("prepare", &prepare("t-1#2pc-0", branch, account))
                .await
                .expect("prepare");
        }
        sqlx::raw_sql("ROLLBACK PREPARED 'wasaga:t-1#2pc-0:1'")
            .execute(&mut a)
            .await
            .expect("someone else rolls branch 1 back");
        let decided = json!({ "xid": "t-1#2pc-0", "branches": [0, 1] }).to_string();
        let failure = xa
            .call("commit-prepared", &decided)
            .await
            .expect_err("branch 1 is gone: the commit is not done");
        assert!(
            failure.reason().contains("[1]") && failure.reason().contains("needs an operator"),
            "{failure}"
        );
        // Branch 0 did commit: the same call for it alone is done.
        let only = json!({ "xid": "t-1#2pc-0", "branches": [0] }).to_string();
        xa.call("commit-prepared", &only)
            .await
            .expect("branch 0 is committed");
    });
    assert_eq!(banks.state(), (990, 1_000, 0));
}
