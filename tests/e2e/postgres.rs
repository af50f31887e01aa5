//! The journal and ledger on PostgreSQL, selected by URL: the same sagas end the same way as
//! on SQLite, a host killed at any commit loses nothing (another process takes its runs over
//! once the lease expires), a former owner can no longer append to a run it lost, and a step
//! the database keeps refusing is retried to its limit without taking other runs' steps down,
//! and pruning keeps a pruned run's id taken and its ledger records for their period.

use crate::guests::PAYMENT_ORDER;
use crate::services::Postgres;
use crate::support::{Sandbox, rt, text};
use serde_json::json;
use sqlx::Connection;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use wasaga_core::event::Event;
use wasaga_db::Location;
use wasaga_journal::JournalError;
use wasaga_runtime::{Host, HostConfig};

/// Creates database `name` (from `template`, if given) on `postgres`; returns its URL.
pub fn database(postgres: &Postgres, name: &str, template: Option<&str>) -> String {
    rt().block_on(async {
        let mut admin = sqlx::PgConnection::connect(&postgres.url())
            .await
            .expect("connect");
        let statement = match template {
            Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
            None => format!("CREATE DATABASE {name}"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            .expect("create database");
    });
    format!("postgres://postgres@127.0.0.1:{}/{name}", postgres.port)
}

/// The ledger's audit on PostgreSQL: every account's balance equals the sum of its entries.
/// Returns the total of balance + held.
pub fn assert_ledger_consistent(url: &str) -> i64 {
    rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT a.account, a.balance, a.held, CAST(COALESCE(SUM(e.delta), 0) AS BIGINT)
             FROM wasaga.ledger_accounts a LEFT JOIN wasaga.ledger_entries e ON e.account = a.account
             GROUP BY a.account, a.balance, a.held",
        )
        .fetch_all(&mut conn)
        .await
        .expect("audit query");
        let mut total = 0;
        for (account, balance, held, entries) in rows {
            assert_eq!(
                balance + held,
                entries,
                "account {account}: balance {balance} + held {held} but entries sum to {entries}"
            );
            total += balance + held;
        }
        total
    })
}

fn order(order_id: &str, customer: &str, reference: &str) -> String {
    json!({
        "order_id": order_id, "customer": customer, "merchant": "shop",
        "amount": 250, "reference": reference,
    })
    .to_string()
}

#[test]
fn sagas_on_a_postgres_journal_end_as_on_sqlite() {
    let postgres = Postgres::start();
    let url = database(&postgres, "sagas", None);
    let s = Sandbox::new("pg-sagas").on_postgres(&url);
    s.open("alice", 1_000);
    s.open("bob", 1_000);
    s.open("shop", 0);
    let paid = s.wasaga(&[
        "run",
        PAYMENT_ORDER,
        "--input",
        &order("o-1", "alice", "inv-1"),
    ]);
    assert_eq!(paid.status.code(), Some(0), "{}", text(&paid));
    // A duplicate reference: the last step refuses, the host undoes the others.
    let duplicate = s.wasaga(&[
        "run",
        PAYMENT_ORDER,
        "--input",
        &order("o-2", "bob", "inv-1"),
    ]);
    assert_eq!(duplicate.status.code(), Some(3), "{}", text(&duplicate));
    let balances = s.balances();
    assert_eq!(
        (balances["alice"], balances["bob"], balances["shop"]),
        (750, 1_000, 250)
    );
    let runs = s.runs();
    let mut statuses: Vec<&str> = runs.iter().map(|(_, status, _)| status.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["compensated", "completed"]);
    // The journal on PostgreSQL reads back as on SQLite.
    let (compensated, _, _) = runs
        .iter()
        .find(|(_, status, _)| status == "compensated")
        .expect("a compensated run");
    let kinds: Vec<String> = s
        .events(compensated)
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_owned())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("compensated"));
    assert_eq!(
        kinds.iter().filter(|k| *k == "compensation-done").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(assert_ledger_consistent(&url), 2_000);
}

#[test]
fn a_missing_database_or_role_is_named_with_what_to_do() {
    let postgres = Postgres::start();
    let port = postgres.port;
    let cases = [
        (
            format!("postgres://postgres@127.0.0.1:{port}/nosuch"),
            "database \"nosuch\" does not exist",
            "createdb",
        ),
        (
            format!("postgres://nobody@127.0.0.1:{port}/postgres"),
            "role \"nobody\" does not exist",
            "check the user in the URL",
        ),
    ];
    for (url, cause, hint) in cases {
        let s = Sandbox::new("pg-bad-url").on_postgres(&url);
        let listed = s.wasaga(&["ledger", "list"]);
        let said = text(&listed);
        assert_eq!(listed.status.code(), Some(1), "{said}");
        assert!(said.contains(cause), "{said}");
        assert!(said.contains(hint), "{said}");
        // Not sqlx's "at line N", a line of the server's C source.
        assert!(!said.contains(" at line "), "{said}");
    }
}

#[test]
fn a_host_killed_at_any_commit_on_postgres_loses_nothing() {
    let postgres = Postgres::start();
    let template_url = database(&postgres, "crash_template", None);
    let template = Sandbox::new("pg-crash-template").on_postgres(&template_url);
    template.open("alice", 1_000);
    template.open("shop", 0);
    drop(template);
    let mut exercised = 0;
    for commit in 1..=100 {
        let mut reached_any = false;
        for point in [format!("before:{commit}"), format!("after:{commit}")] {
            let name = format!("crash_{}_{commit}", point.split(':').next().unwrap_or("x"));
            let url = database(&postgres, &name, Some("crash_template"));
            let s = Sandbox::new("pg-crash").on_postgres(&url);
            let out = s.wasaga(&[
                "--run-lease-ms",
                "300",
                "run",
                PAYMENT_ORDER,
                "--input",
                &order("o-2", "alice", "inv-2"),
                "--run-id",
                "crashed",
                "--crash-at",
                &point,
            ]);
            if out.status.signal() != Some(9) {
                assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
                continue;
            }
            reached_any = true;
            exercised += 1;
            // Nothing knows the killed process is dead: its runs are taken over once its
            // lease on them has expired.
            std::thread::sleep(Duration::from_millis(400));
            let resumed = s.wasaga(&["--run-lease-ms", "300", "resume"]);
            assert_eq!(
                resumed.status.code(),
                Some(0),
                "{point}: {}",
                text(&resumed)
            );
            let runs = s.runs();
            match runs.iter().find(|(id, _, _)| id == "crashed") {
                Some((_, status, error)) => {
                    assert_eq!(status, "completed", "{point}: {error:?}");
                    let balances = s.balances();
                    assert_eq!((balances["alice"], balances["shop"]), (750, 250), "{point}");
                }
                None => {
                    let balances = s.balances();
                    assert_eq!(
                        (balances["alice"], balances["shop"]),
                        (1_000, 0),
                        "{point}: no run, yet money moved"
                    );
                }
            }
            assert_eq!(assert_ledger_consistent(&url), 1_000, "{point}");
        }
        if !reached_any {
            assert!(exercised >= 12, "only {exercised} crash points exercised");
            return;
        }
    }
    panic!("the run never stopped committing");
}

#[test]
fn a_former_owner_cannot_append_after_another_host_takes_the_run_over() {
    let postgres = Postgres::start();
    let url = database(&postgres, "fence", None);
    rt().block_on(async {
        let open = |host_id: &str| {
            let mut config = HostConfig::new(Location::parse(&url).expect("url"));
            config.host_id = host_id.to_owned();
            config.limits.run_lease_ms = 400;
            config.limits.concurrent_runs_max = 4;
            config.cache_dir = std::env::temp_dir().join("wasaga-module-cache");
            async move { Host::open(&config).await.expect("host opens") }
        };
        let a = open("host-a").await;
        let b = open("host-b").await;
        let module = std::fs::read(crate::guests::TRANSFER).expect("guest built");
        let hash = a.add_module("transfer", &module).await.expect("valid");
        let (run_id, created) = a
            .start(Some("contested".into()), "transfer", &hash, "{}")
            .await
            .expect("start");
        assert!(created);
        let log = |message: &str| Event::Log {
            call: None,
            message: message.to_owned(),
        };
        let next = a
            .journal()
            .append(&run_id, 2, vec![log("a owns it")])
            .await
            .expect("the owner appends");
        // a stops renewing (it is paused, say); its lease runs out and b takes the run.
        assert!(
            b.claim(10).await.expect("claim").is_empty(),
            "a's lease is live"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.claim(10).await.expect("claim"), vec![run_id.clone()]);
        // a's next renewal tells it so; a run whose first write is on its way is not lost.
        let ids = [run_id.clone(), "not-written-yet".to_owned()];
        assert_eq!(
            a.journal().renew(&ids).await.expect("renew"),
            vec![run_id.clone()]
        );
        assert_eq!(
            b.journal().renew(&ids).await.expect("renew"),
            Vec::<String>::new()
        );
        match a
            .journal()
            .append(&run_id, next, vec![log("a again")])
            .await
        {
            Err(JournalError::NotOwner { owner, .. }) => {
                assert!(owner.starts_with("host-b/"), "{owner}")
            }
            other => panic!("a must be fenced off, got {other:?}"),
        }
        b.journal()
            .append(&run_id, next, vec![log("b owns it")])
            .await
            .expect("the new owner appends");
        let messages: Vec<String> = b
            .journal()
            .events(&run_id)
            .await
            .expect("events")
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Log { message, .. } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(messages, ["a owns it", "b owns it"]);
    });
}

#[test]
fn the_server_side_step_alone_and_in_batches_keeps_exactly_the_ledgers_rules() {
    use wasaga_db::Database;
    use wasaga_participants::ledger::{self, LedgerCall};
    let postgres = Postgres::start();
    let url = database(&postgres, "parity", None);
    rt().block_on(async {
        let open = |schema: &str| {
            let location = Location::parse(&format!("{url}?schema={schema}")).expect("url");
            async move {
                Database::open(&location, Default::default(), Default::default())
                    .await
                    .expect("open")
            }
        };
        let general = open("general").await;
        let server = open("server").await;
        let batched = open("batched").await;
        let call = |op_id: &str, action: &str, account: &str, amount: i64, tokens: &[(&str, u64)]| {
            LedgerCall {
                op_id: op_id.to_owned(),
                undoes: None,
                action: action.to_owned(),
                payload: json!({ "account": account, "amount": amount }).to_string(),
                fencing_tokens: tokens.iter().map(|(k, t)| ((*k).to_owned(), *t)).collect(),
            }
        };
        for db in [&general, &server, &batched] {
            ledger::open(db, "alice", 100).await.expect("alice");
            ledger::open(db, "bob", 0).await.expect("bob");
            ledger::open(db, "rich", 0).await.expect("rich");
            ledger::open(db, "dora", 100).await.expect("dora");
            ledger::open(db, "erin", 50).await.expect("erin");
            // An operation compensated before it ran leaves a tombstone.
            let undo = LedgerCall {
                op_id: "r/ghost.undo".to_owned(),
                undoes: Some("r/ghost".to_owned()),
                ..call("r/ghost.undo", "credit", "alice", 1, &[])
            };
            db.write(move |tx| Box::pin(async move { ledger::apply(tx, &undo).await }))
                .await
                .expect("db")
                .expect("an undo of nothing succeeds");
            db.write(|tx| {
                Box::pin(async move {
                    tx.execute(
                        "UPDATE ledger_accounts SET balance = 4611686018427387903 WHERE account = 'rich'",
                        &[],
                    )
                    .await
                })
            })
            .await
            .expect("a balance at the ceiling");
        }
        let cases = [
            call("r/1", "debit", "alice", 30, &[]),
            call("r/1", "debit", "alice", 30, &[]),
            call("r/1", "debit", "alice", 31, &[]),
            call("r/1", "credit", "alice", 30, &[]),
            call("r/2", "debit", "bob", 5, &[]),
            call("r/2", "debit", "bob", 5, &[]),
            call("r/3", "debit", "carol", 5, &[]),
            call("r/4", "credit", "bob", 30, &[]),
            call("r/5", "credit", "carol", 1, &[]),
            call("r/6", "credit", "rich", 1, &[]),
            call("r/ghost", "debit", "alice", 1, &[]),
            call("r/7", "debit", "alice", 1, &[("account/alice", 5), ("account/bob", 2)]),
            call("r/8", "debit", "alice", 1, &[("account/alice", 4)]),
            call("r/8", "debit", "alice", 1, &[("account/alice", 4)]),
            call("r/9", "credit", "bob", 1, &[("account/bob", 9)]),
            call("r/10", "debit", "alice", 69, &[]),
            call("r/11", "debit", "alice", 1, &[]),
        ];
        let mut rejected = 0;
        let mut outcomes = Vec::new();
        for case in cases.clone() {
            let expected = {
                let case = case.clone();
                general
                    .write(move |tx| Box::pin(async move { ledger::apply(tx, &case).await }))
                    .await
                    .expect("db")
            };
            let got = crate::server_steps::apply_on_server(&server, "parity-run", "parity-owner", &case)
                .await
                .expect("db")
                .expect("the server-side step takes a well-formed debit or credit");
            assert_eq!(got, expected, "{case:?}");
            rejected += usize::from(got.is_err());
            outcomes.push(expected);
        }
        assert!(rejected >= 8, "the cases exercise the refusals ({rejected})");
        // Both left the ledger in the same state.
        let tables = |db: &'static str| {
            let url = url.clone();
            async move {
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                let mut all = Vec::new();
                for query in [
                    "SELECT account || ' ' || balance || ' ' || held FROM {}.ledger_accounts ORDER BY account",
                    "SELECT op_id || ' ' || action || ' ' || request || ' ' || status || ' ' || reply FROM {}.ledger_ops ORDER BY op_id",
                    "SELECT op_id || ' ' || account || ' ' || delta FROM {}.ledger_entries ORDER BY op_id, account",
                    "SELECT key || ' ' || token FROM {}.ledger_fences ORDER BY key",
                ] {
                    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query.replace("{}", db)))
                        .fetch_all(&mut conn)
                        .await
                        .expect("table");
                    all.push(rows);
                }
                all
            }
        };
        assert_eq!(tables("server").await, tables("general").await);

        // The same cases as one batch, as concurrent runs' steps are written: each its own
        // run, and each answered as if it had been written alone. With them, a step for a run
        // another host owns (fenced) and a second step creating a run the batch creates before
        // it (exists): neither writes anything, and neither disturbs the rest.
        let taken = call("r/taken", "credit", "nobody", 1, &[]);
        crate::server_steps::apply_on_server(&batched, "taken", "another-host", &taken)
            .await
            .expect("db");
        let created = call("r/dup1", "credit", "bob", 1, &[]);
        let mut alone = Vec::new();
        for case in [taken, created] {
            let outcome = general
                .write(move |tx| Box::pin(async move { ledger::apply(tx, &case).await }))
                .await
                .expect("db");
            alone.push(outcome);
        }
        assert_eq!(alone[0], Err("unknown account 'nobody'".to_owned()));
        assert_eq!(alone[1], Ok(r#"{"account":"bob","balance":32}"#.to_owned()));
        let mut batch: Vec<(String, LedgerCall)> = cases
            .iter()
            .enumerate()
            .map(|(i, case)| (format!("batched-{i}"), case.clone()))
            .collect();
        batch.push(("taken".to_owned(), call("r/x", "credit", "bob", 1, &[])));
        batch.push(("dup".to_owned(), call("r/dup1", "credit", "bob", 1, &[])));
        batch.push(("dup".to_owned(), call("r/dup2", "credit", "bob", 1, &[])));
        let answers = crate::server_steps::apply_batch_on_server(&batched, "parity-owner", &batch)
            .await
            .expect("db");
        assert_eq!(answers.len(), batch.len());
        for ((case, expected), answer) in cases.iter().zip(&outcomes).zip(&answers) {
            match answer {
                Ok(got) => assert_eq!(got, expected, "{case:?} in a batch"),
                Err(e) => panic!("{case:?} in a batch failed: {e}"),
            }
        }
        let n = cases.len();
        assert!(
            matches!(&answers[n], Err(JournalError::NotOwner { owner, .. }) if owner == "another-host"),
            "{:?}",
            answers[n]
        );
        assert!(
            matches!(&answers[n + 1], Ok(Ok(reply)) if Ok(reply) == alone[1].as_ref()),
            "{:?}",
            answers[n + 1]
        );
        assert!(
            matches!(&answers[n + 2], Err(JournalError::RunExists(run)) if run == "dup"),
            "{:?}",
            answers[n + 2]
        );
        assert_eq!(tables("batched").await, tables("general").await);

        // Batches of distinct runs without fencing tokens are written set-wise (0005) when
        // every step passes: each account moves by the sum of its steps, and each reply shows
        // the balance after its own step. A refusal, a repeated operation id or a fenced run
        // in such a batch sends its ledger part back to one step at a time. Every batch below
        // must leave the same answers and tables as the steps applied alone, in the batch's
        // order (by account, as `batch` sorts it).
        let batches: [Vec<(&str, LedgerCall)>; 3] = [
            // All pass, with several steps per account, erin down to exactly zero; two of
            // the runs exist (moved by their fence), the others are created by the batch.
            vec![
                ("batched-0", call("s/1", "debit", "dora", 10, &[])),
                ("set-1", call("s/2", "debit", "dora", 5, &[])),
                ("set-2", call("s/3", "credit", "dora", 3, &[])),
                ("batched-1", call("s/4", "credit", "erin", 7, &[])),
                ("set-3", call("s/5", "debit", "erin", 57, &[])),
            ],
            // One refusal (insufficient funds) and one fenced run among steps that pass.
            vec![
                ("set-1", call("s/6", "debit", "dora", 1000, &[])),
                ("set-2", call("s/7", "credit", "dora", 1, &[])),
                ("set-3", call("s/8", "debit", "erin", 1, &[])),
                ("taken", call("s/9", "credit", "erin", 1, &[])),
                ("set-4", call("s/10", "credit", "erin", 4, &[])),
            ],
            // An operation id used before (its first outcome comes back), beside a new one.
            vec![
                ("set-5", call("s/1", "debit", "dora", 10, &[])),
                ("set-6", call("s/11", "debit", "dora", 2, &[])),
            ],
        ];
        for batch in batches {
            // Per step, what the ledger answers alone; none for the run another host owns.
            let mut expected = Vec::new();
            for (run, case) in &batch {
                let case = case.clone();
                expected.push(if *run == "taken" {
                    None
                } else {
                    Some(
                        general
                            .write(move |tx| Box::pin(async move { ledger::apply(tx, &case).await }))
                            .await
                            .expect("db"),
                    )
                });
            }
            let owned: Vec<(String, LedgerCall)> = batch
                .iter()
                .map(|(run, case)| ((*run).to_owned(), case.clone()))
                .collect();
            let (commits, jobs) = batched.commit_stats();
            let answers = crate::server_steps::apply_batch_on_server(&batched, "parity-owner", &owned)
                .await
                .expect("db");
            // One commit per step reading its run's position, then the batch as one commit:
            // a batch the server failed would be written again one step per commit, with the
            // same answers, so only this shows that the set-wise statements ran.
            let n = batch.len() as u64;
            let (commits_after, jobs_after) = batched.commit_stats();
            assert_eq!(
                (commits_after - commits, jobs_after - jobs),
                (n + 1, 2 * n),
                "{batch:?} was not written as one batch"
            );
            for (((_, case), want), answer) in batch.iter().zip(expected).zip(answers) {
                match (want, answer) {
                    (None, answer) => assert!(
                        matches!(&answer, Err(JournalError::NotOwner { owner, .. }) if owner == "another-host"),
                        "{answer:?}"
                    ),
                    (Some(want), Ok(got)) => assert_eq!(got, want, "{case:?} in a set-wise batch"),
                    (Some(_), Err(e)) => panic!("{case:?} in a set-wise batch failed: {e}"),
                }
            }
            assert_eq!(tables("batched").await, tables("general").await);
        }
        // Every run's events, whichever way they were written: numbered from 1 up to the
        // run's position without a gap, each a journal event of the kind its row says.
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let runs: Vec<(String, i64)> =
            sqlx::query_as("SELECT run_id, next_seq FROM batched.runs ORDER BY run_id")
                .fetch_all(&mut conn)
                .await
                .expect("runs");
        assert!(runs.len() >= 20, "{runs:?}");
        for (run, next_seq) in runs {
            let events: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT seq, kind, body FROM batched.events WHERE run_id = $1 ORDER BY seq",
            )
            .bind(&run)
            .fetch_all(&mut conn)
            .await
            .expect("events");
            let seqs: Vec<i64> = events.iter().map(|(seq, _, _)| *seq).collect();
            assert_eq!(seqs, (1..next_seq).collect::<Vec<_>>(), "{run}");
            for (seq, kind, body) in &events {
                let event: Event = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("{run} event {seq} ({body}): {e}"));
                let json = serde_json::to_value(&event).expect("json");
                assert_eq!(json["kind"], kind.as_str(), "{run} event {seq}");
            }
            assert_eq!(events[0].1, "started", "{run}");
            assert!(events.iter().any(|(_, kind, _)| kind == "clock"), "{run}");
        }
        let balances = tables("batched").await.swap_remove(0);
        assert!(balances.contains(&"dora 87 0".to_owned()), "{balances:?}");
        assert!(balances.contains(&"erin 4 0".to_owned()), "{balances:?}");
    });
}

/// Installs a trigger that makes every change of `account`'s balance fail, counting each
/// attempt in the sequence `injected_failures` (a sequence is not rolled back with the
/// transaction that advanced it).
async fn refuse_changes_to(conn: &mut sqlx::PgConnection, account: &str) {
    let statements = format!(
        "CREATE SEQUENCE IF NOT EXISTS public.injected_failures;
         ALTER SEQUENCE public.injected_failures RESTART;
         CREATE OR REPLACE FUNCTION public.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('public.injected_failures');
             RAISE EXCEPTION 'injected failure changing %', OLD.account;
         END $$;
         DROP TRIGGER IF EXISTS refuse_change ON wasaga.ledger_accounts;
         CREATE TRIGGER refuse_change BEFORE UPDATE ON wasaga.ledger_accounts
             FOR EACH ROW WHEN (OLD.account = '{account}') EXECUTE FUNCTION public.refuse_change();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements))
        .execute(conn)
        .await
        .expect("install the failing trigger");
}

async fn injected_failures(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.injected_failures",
    )
    .fetch_one(conn)
    .await
    .expect("read the sequence")
}

async fn balance(conn: &mut sqlx::PgConnection, account: &str) -> i64 {
    sqlx::query_scalar("SELECT balance FROM wasaga.ledger_accounts WHERE account = $1")
        .bind(account)
        .fetch_one(conn)
        .await
        .expect("balance")
}

#[test]
fn a_step_the_database_keeps_failing_is_retried_to_its_limit_and_fails_only_itself() {
    use crate::guests::BENCH_TRANSFER;
    use wasaga_core::event::{CallFailure, RunStatus};
    use wasaga_participants::ledger::{self, LedgerCall};
    use wasaga_runtime::store::no_observer;
    let postgres = Postgres::start();
    let url = database(&postgres, "refusing", None);
    rt().block_on(async {
        let mut config = HostConfig::new(Location::parse(&url).expect("url"));
        config.limits.step_retries_max = 3;
        config.limits.retry_backoff_ms_min = 1;
        config.limits.retry_backoff_ms_max = 5;
        let host = Host::open(&config).await.expect("host opens");
        let db = host.ledger_db().clone();
        for (account, opening) in [("alice", 100), ("mallory", 100), ("bob", 0)] {
            ledger::open(&db, account, opening).await.expect("open");
        }
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        refuse_changes_to(&mut conn, "mallory").await;

        // Two runs' steps in one batch, one of which the database refuses: the batch fails as
        // a whole, and each step is written again alone, so alice's debit is not lost to
        // mallory's failure.
        let debit = |op_id: &str, account: &str| LedgerCall {
            op_id: op_id.to_owned(),
            undoes: None,
            action: "debit".to_owned(),
            payload: json!({ "account": account, "amount": 10 }).to_string(),
            fencing_tokens: Vec::new(),
        };
        let batch = [
            ("run-a".to_owned(), debit("run-a/debit", "alice")),
            ("run-m".to_owned(), debit("run-m/debit", "mallory")),
        ];
        let answers = crate::server_steps::apply_batch_on_server(&db, host.journal().owner(), &batch)
            .await
            .expect("steps formed");
        assert_eq!(
            answers[0].as_ref().expect("alice's step is written"),
            &Ok(r#"{"account":"alice","balance":90}"#.to_owned())
        );
        let refused = answers[1].as_ref().expect_err("mallory's step fails");
        assert!(
            refused.to_string().contains("injected failure changing mallory"),
            "{refused}"
        );
        assert_eq!(
            injected_failures(&mut conn).await,
            2,
            "once in the batch, once alone"
        );
        assert_eq!(balance(&mut conn, "alice").await, 90);
        assert_eq!(balance(&mut conn, "mallory").await, 100);
        let (runs, ops): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM wasaga.runs WHERE run_id = 'run-m'),
                    (SELECT count(*) FROM wasaga.ledger_ops WHERE op_id = 'run-m/debit')",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count");
        assert_eq!((runs, ops), (0, 0), "nothing of the failed step remains");

        // A run's step that keeps failing is tried step_retries_max times, then journaled as
        // unavailable; nothing was applied, so the run ends compensated with nothing to undo.
        let module = std::fs::read(BENCH_TRANSFER).expect("guest built");
        let hash = host
            .add_module("bench-transfer", &module)
            .await
            .expect("valid module");
        let input = json!({ "i": 1, "from": "mallory", "to": "bob", "amount": 10 }).to_string();
        let before = injected_failures(&mut conn).await;
        host.start(Some("pay-m".to_owned()), "bench-transfer", &hash, &input)
            .await
            .expect("start");
        let outcome = host.drive("pay-m", no_observer()).await.expect("drive");
        assert_eq!(outcome.status, RunStatus::Compensated, "{outcome:?}");
        assert_eq!(
            injected_failures(&mut conn).await - before,
            3,
            "step_retries_max attempts"
        );
        let events = host.journal().events("pay-m").await.expect("events");
        let failure = events
            .iter()
            .find_map(|stored| match &stored.event {
                Event::StepFailed { error, .. } => Some(error.clone()),
                _ => None,
            })
            .expect("the step's failure is journaled");
        assert!(
            matches!(&failure, CallFailure::Unavailable(reason) if reason.contains("injected failure changing mallory")),
            "{failure:?}"
        );
        assert!(
            !events.iter().any(|s| matches!(&s.event, Event::StepDone { .. })),
            "no step applied: {events:?}"
        );
        assert_eq!(balance(&mut conn, "mallory").await, 100);
        assert_eq!(balance(&mut conn, "bob").await, 0);

        // Once the database takes the change again, the same transfer goes through.
        sqlx::raw_sql("DROP TRIGGER refuse_change ON wasaga.ledger_accounts")
            .execute(&mut conn)
            .await
            .expect("drop the trigger");
        host.start(Some("pay-m-2".to_owned()), "bench-transfer", &hash, &input)
            .await
            .expect("start");
        let outcome = host.drive("pay-m-2", no_observer()).await.expect("drive");
        assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        assert_eq!(balance(&mut conn, "mallory").await, 90);
        assert_eq!(balance(&mut conn, "bob").await, 10);
    });
    assert_eq!(
        assert_ledger_consistent(&url),
        190,
        "alice 90, mallory 90, bob 10"
    );
}

/// A TCP proxy in front of PostgreSQL that, once armed with `n`, forwards each of the next
/// `n` executed statements (up to its `Sync`) to the server and then cuts that client off, so
/// the server runs and commits the statement but its answer never arrives: a lost reply.
struct LosingProxy {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicU32>,
    cut: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl LosingProxy {
    fn start(upstream: u16) -> LosingProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (armed_for, cut_for) = (armed.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (armed, cut) = (armed_for.clone(), cut_for.clone());
                let (mut from_server, mut to_client) = (
                    server.try_clone().expect("clone"),
                    client.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || relay(client, server, &armed, &cut));
                let _ = Ordering::SeqCst;
            }
        });
        LosingProxy { port, armed, cut }
    }

    fn arm(&self, n: u32) {
        self.armed.store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies the client's messages to the server one by one; once `armed`, after the `Sync` that
/// follows an `Execute`, it closes the client side and leaves the server to finish (reading
/// nothing more from the client), so the server commits what it was sent.
fn relay(
    mut client: std::net::TcpStream,
    mut server: std::net::TcpStream,
    armed: &std::sync::atomic::AtomicU32,
    cut: &std::sync::atomic::AtomicU32,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    // The startup message has no type byte: a length, then the rest.
    let mut first = [0u8; 4];
    if client.read_exact(&mut first).is_err() {
        return;
    }
    let length = u32::from_be_bytes(first) as usize;
    let mut rest = vec![0u8; length.saturating_sub(4)];
    if client.read_exact(&mut rest).is_err() {
        return;
    }
    let _ = server.write_all(&first);
    let _ = server.write_all(&rest);
    let mut executed = false;
    loop {
        let mut header = [0u8; 5];
        if client.read_exact(&mut header).is_err() {
            return;
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; length.saturating_sub(4)];
        if client.read_exact(&mut body).is_err() {
            return;
        }
        if server.write_all(&header).is_err() || server.write_all(&body).is_err() {
            return;
        }
        if armed.load(Ordering::SeqCst) > 0 {
            match header[0] {
                b'E' => executed = true,
                b'S' if executed
                    && armed
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok() =>
                {
                    cut.fetch_add(1, Ordering::SeqCst);
                    // The client loses the connection; the server has the whole statement.
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    return;
                }
                _ => {}
            }
        }
    }
}

/// A run's first write (it creates the run and debits) whose reply is lost after PostgreSQL
/// committed it is not reported "not started" (a caller would start it again under a new id
/// and pay twice): the host asks the journal, finds the run, and reports it unfinished; it
/// then resumes and moves the money once.
#[test]
fn a_first_write_whose_reply_is_lost_is_not_reported_as_not_started() {
    use crate::guests::MISBEHAVE;
    use wasaga_core::event::RunStatus;
    use wasaga_runtime::store::no_observer;
    let postgres = Postgres::start();
    let url = database(&postgres, "lost_reply", None);
    let proxy = LosingProxy::start(postgres.port);
    let proxied = url.replace(
        &format!(":{}/", postgres.port),
        &format!(":{}/", proxy.port),
    );
    rt().block_on(async {
        let mut config = HostConfig::new(Location::parse(&proxied).expect("url"));
        config.limits.run_lease_ms = 600_000;
        config.limits.step_retries_max = 1;
        let host = Host::open(&config).await.expect("host opens");
        let db = host.ledger_db().clone();
        for (account, opening) in [("alice", 1_000), ("bob", 0)] {
            wasaga_participants::ledger::open(&db, account, opening)
                .await
                .expect("open");
        }
        // A debit and a credit, no locks: the run's first write is its debit step.
        let module = std::fs::read(MISBEHAVE).expect("guest built");
        let hash = host
            .add_module("misbehave", &module)
            .await
            .expect("valid module");
        let input =
            json!({ "mode": "ok", "from": "alice", "to": "bob", "amount": 250 }).to_string();
        // The first write loses its reply; then (the second time) so does the host's writing
        // of the step's failure, which, had it landed, would find the run there.
        for (cuts, run_id) in [(1, "lost-1"), (2, "lost-2")] {
            let before = proxy.cut.load(std::sync::atomic::Ordering::SeqCst);
            proxy.arm(cuts);
            let outcome = host
                .start_and_drive(
                    Some(run_id.into()),
                    "misbehave",
                    &hash,
                    &input,
                    no_observer(),
                )
                .await;
            assert_eq!(
                proxy.cut.load(std::sync::atomic::Ordering::SeqCst) - before,
                cuts,
                "the proxy cut {cuts} replies off"
            );
            match outcome {
                Err(wasaga_runtime::HostError::Interrupted { reason, .. }) => {
                    assert!(reason.contains("did land"), "{reason}")
                }
                other => {
                    panic!("{run_id}: a write that landed must not be reported as not started or as another run: {other:?}")
                }
            }
        }
        let resumed = host
            .resume_unfinished(no_observer(), wasaga_journal::Takeover::Every)
            .await
            .expect("resume");
        assert!(resumed.unfinished.is_empty(), "{resumed:?}");
        assert_eq!(resumed.ended.len(), 2);
        assert!(resumed.ended.iter().all(|o| o.status == RunStatus::Completed), "{resumed:?}");
        let accounts = wasaga_participants::ledger::list(&db).await.expect("accounts");
        let balance = |name: &str| {
            accounts
                .iter()
                .find(|a| a.account == name)
                .map(|a| a.balance)
                .expect("account")
        };
        assert_eq!((balance("alice"), balance("bob")), (500, 500), "each moved once");
    });
}

/// First writes that meet in one batch whose reply is lost after PostgreSQL committed it are
/// made again alone, find their runs there, and must not be told "run exists" (a caller whose
/// run id was its own would take that for a clash, and one that let the host name the run
/// would start it again): each is told its run is unfinished, or how it ended, and after a
/// resume every run moved its money once.
#[test]
fn first_writes_of_a_batch_whose_reply_is_lost_are_not_told_their_runs_exist() {
    use crate::guests::MISBEHAVE;
    use wasaga_core::event::RunStatus;
    use wasaga_runtime::store::no_observer;
    const RUNS: usize = 24;
    let postgres = Postgres::start();
    let url = database(&postgres, "lost_batch", None);
    let proxy = LosingProxy::start(postgres.port);
    let proxied = url.replace(
        &format!(":{}/", postgres.port),
        &format!(":{}/", proxy.port),
    );
    rt().block_on(async {
        let mut config = HostConfig::new(Location::parse(&proxied).expect("url"));
        config.limits.run_lease_ms = 600_000;
        config.limits.step_retries_max = 1;
        let host = Host::open(&config).await.expect("host opens");
        let db = host.ledger_db().clone();
        for (account, opening) in [("alice", 100_000), ("bob", 0)] {
            wasaga_participants::ledger::open(&db, account, opening)
                .await
                .expect("open");
        }
        let module = std::fs::read(MISBEHAVE).expect("guest built");
        let hash = host
            .add_module("misbehave", &module)
            .await
            .expect("valid module");
        let input = json!({ "mode": "ok", "from": "alice", "to": "bob", "amount": 10 }).to_string();
        // The first statements the runs send: a lone first write, then the batch of the
        // first writes that arrived while it was on its way.
        proxy.arm(4);
        let starts: Vec<_> = (0..RUNS)
            .map(|i| {
                let (host, hash, input) = (host.clone(), hash.clone(), input.clone());
                tokio::spawn(async move {
                    host.start_first_write(
                        Some(format!("batch-{i}")),
                        "misbehave",
                        &hash,
                        &input,
                        no_observer(),
                        wasaga_runtime::NewRun::default(),
                    )
                    .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for start in starts {
            outcomes.push(start.await);
        }
        assert!(
            proxy.cut.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the proxy cut replies off"
        );
        let mut not_started = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome.expect("task") {
                Ok(_) | Err(wasaga_runtime::HostError::Interrupted { .. }) => {}
                Err(wasaga_runtime::HostError::NotStarted { run_id, .. }) => {
                    not_started.push(run_id)
                }
                Err(e @ wasaga_runtime::HostError::RunExists(_)) => {
                    panic!("run batch-{i} is its caller's own, not someone else's: {e}")
                }
                Err(e) => panic!("batch-{i}: {e}"),
            }
        }
        let resumed = host
            .resume_unfinished(no_observer(), wasaga_journal::Takeover::Every)
            .await
            .expect("resume");
        assert!(resumed.unfinished.is_empty(), "{resumed:?}");
        let mut completed = 0;
        for i in 0..RUNS {
            let run_id = format!("batch-{i}");
            match host.journal().run(&run_id).await {
                Ok(run) => {
                    assert!(
                        !not_started.contains(&run_id),
                        "{run_id} was told it never started, but it exists"
                    );
                    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
                    completed += 1;
                }
                Err(JournalError::UnknownRun(_)) => {
                    assert!(
                        not_started.contains(&run_id),
                        "{run_id} vanished without being told"
                    )
                }
                Err(e) => panic!("{e}"),
            }
        }
        let accounts = wasaga_participants::ledger::list(&db)
            .await
            .expect("accounts");
        let bob = accounts.iter().find(|a| a.account == "bob").expect("bob");
        assert_eq!(
            bob.balance,
            10 * completed,
            "each run that exists moved its money once"
        );
    });
}

/// Captures race the host's sweep of expired holds on PostgreSQL, where they run in
/// transactions of their own at once: each hold ends captured or voided, never both, and the
/// money adds up.
#[test]
fn captures_racing_the_sweep_of_expired_holds_move_each_hold_once() {
    use wasaga_participants::ledger::{self, LedgerCall};
    let postgres = Postgres::start();
    let url = database(&postgres, "hold_race", None);
    rt().block_on(async {
        let db = std::sync::Arc::new(
            wasaga_db::Database::open(
                &Location::parse(&url).expect("url"),
                Default::default(),
                Default::default(),
            )
            .await
            .expect("open"),
        );
        ledger::open(&db, "alice", 10_000).await.expect("alice");
        ledger::open(&db, "shop", 0).await.expect("shop");
        let call = |op_id: String, action: &str, payload: serde_json::Value| LedgerCall {
            op_id,
            undoes: None,
            action: action.to_owned(),
            payload: payload.to_string(),
            fencing_tokens: Vec::new(),
        };
        const HOLDS: usize = 60;
        for i in 0..HOLDS {
            let hold = call(
                format!("r/hold-{i}"),
                "hold",
                json!({ "hold_id": format!("h{i}"), "account": "alice", "amount": 100, "ttl_ms": 40 + (i % 20) }),
            );
            db.write(move |tx| Box::pin(async move { ledger::apply(tx, &hold).await }))
                .await
                .expect("db")
                .expect("hold");
        }
        let sweeper = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut voided = 0;
                for _ in 0..40 {
                    voided += ledger::void_expired(&db).await.expect("sweep");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                voided
            })
        };
        let mut captures = Vec::new();
        for i in 0..HOLDS {
            let db = db.clone();
            let capture = call(
                format!("r/capture-{i}"),
                "capture",
                json!({ "hold_id": format!("h{i}"), "to": "shop", "amount": 100 }),
            );
            captures.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30 + (i as u64 % 25))).await;
                db.write(move |tx| Box::pin(async move { ledger::apply(tx, &capture).await }))
                    .await
                    .expect("db")
                    .is_ok()
            }));
        }
        let mut captured = 0;
        for capture in captures {
            captured += usize::from(capture.await.expect("task"));
        }
        sweeper.await.expect("sweeper");
        ledger::void_expired(&db).await.expect("the last sweep");
        let accounts = ledger::list(&db).await.expect("accounts");
        let of = |name: &str| {
            accounts
                .iter()
                .find(|a| a.account == name)
                .map(|a| (a.balance, a.held))
                .expect("account")
        };
        let (alice, alice_held) = of("alice");
        let (shop, _) = of("shop");
        assert_eq!(alice_held, 0, "every hold ended");
        assert_eq!(shop, captured as i64 * 100, "the shop got exactly the captures");
        assert_eq!(alice + shop, 10_000, "money created or lost");
    });
    crate::postgres::assert_ledger_consistent(&url);
}

/// Calls on the co-located ledger that journal no event of their own (a commit-all's
/// prepares, commit and abort) commit with the run's fence on PostgreSQL as on SQLite: a
/// two-phase transfer completes or aborts, and a host killed at its commits leaves nothing
/// prepared.
#[test]
fn writes_that_journal_nothing_of_their_own_hold_the_fence_on_postgres() {
    use crate::guests::ATOMIC_TRANSFER;
    let postgres = Postgres::start();
    let url = database(&postgres, "silent", None);
    let s = Sandbox::new("pg-silent").on_postgres(&url);
    s.open("alice", 1_000);
    s.open("bob", 1_000);
    let transfer = |to: &str, amount: i64, extra: &[&str]| {
        let input = json!({ "from": "alice", "to": to, "amount": amount }).to_string();
        let mut args = vec![
            "--run-lease-ms",
            "300",
            "run",
            ATOMIC_TRANSFER,
            "--input",
            &input,
        ];
        args.extend_from_slice(extra);
        s.wasaga(&args)
    };
    let in_doubt = || {
        rt().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM wasaga.ledger_prepared WHERE state = 'prepared'",
            )
            .fetch_one(&mut conn)
            .await
            .expect("count prepared")
        })
    };

    let committed = transfer("bob", 300, &[]);
    assert_eq!(committed.status.code(), Some(0), "{}", text(&committed));
    assert_eq!((s.balances()["alice"], s.balances()["bob"]), (700, 1_300));
    let refused = transfer("nobody", 50, &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert_eq!(
        s.balances()["alice"],
        700,
        "the abort gave the reservation back"
    );
    assert_eq!(in_doubt(), 0);

    // Killed before and after each of its first commits, the transfer ends either way once
    // resumed, with nothing left prepared and no money created or lost.
    let mut killed = 0;
    for commit in 1..=8 {
        for point in [format!("before:{commit}"), format!("after:{commit}")] {
            let run_id = format!("crash-{}", point.replace(':', "-"));
            let out = transfer("bob", 10, &["--run-id", &run_id, "--crash-at", &point]);
            if out.status.signal() == Some(9) {
                killed += 1;
                // Nothing knows the killed process is dead: its run is taken over once its
                // lease has expired.
                std::thread::sleep(Duration::from_millis(400));
                let resumed = s.wasaga(&["--run-lease-ms", "300", "resume"]);
                assert!(
                    matches!(resumed.status.code(), Some(0) | Some(3)),
                    "{point}: {}",
                    text(&resumed)
                );
            } else {
                assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
            }
            assert_eq!(in_doubt(), 0, "{point}: a branch is still prepared");
            assert_eq!(
                s.balances().values().sum::<i64>(),
                2_000,
                "{point}: money created or lost"
            );
        }
    }
    assert!(killed >= 8, "only {killed} crash points were reached");
    let statuses: Vec<String> = s.runs().into_iter().map(|(_, status, _)| status).collect();
    assert!(
        statuses
            .iter()
            .all(|s| s == "completed" || s == "compensated"),
        "every run ended: {statuses:?}"
    );
}

/// A refused compensation journals nothing of its own either: on PostgreSQL, an undo that can
/// never succeed parks its run as stuck, as on SQLite, rather than leaving it unfinished for
/// ever.
#[test]
fn a_compensation_that_cannot_succeed_parks_the_run_as_stuck_on_postgres() {
    use crate::guests::MISBEHAVE;
    let postgres = Postgres::start();
    let url = database(&postgres, "stuck", None);
    let s = Sandbox::new("pg-stuck").on_postgres(&url);
    s.open("alice", 1_000);
    s.open("bob", 1_000);
    // The module credits bob, pays all of bob's money out with no compensation and fails:
    // the undo of the credit is refused every time, and the run is parked as stuck.
    let drain = json!({ "mode": "drain", "from": "alice", "to": "bob", "amount": 10 }).to_string();
    let stuck = s.wasaga(&[
        "run",
        MISBEHAVE,
        "--input",
        &drain,
        "--compensation-retries",
        "2",
    ]);
    assert_eq!(
        stuck.status.code(),
        Some(4),
        "stuck exits 4: {}",
        text(&stuck)
    );
    assert_eq!(s.runs()[0].1, "stuck");
    assert_eq!(s.balances().values().sum::<i64>(), 2_000);
    assert_eq!(assert_ledger_consistent(&url), 2_000);
}

#[test]
fn pruning_on_postgres_keeps_pruned_ids_taken_and_ledger_records_for_their_period() {
    let postgres = Postgres::start();
    let url = database(&postgres, "prune", None);
    let s = Sandbox::new("pg-prune").on_postgres(&url);
    s.open("alice", 1_000);
    s.open("bob", 1_000);
    s.open("shop", 0);
    let config = s.dir.join("wasaga.toml");
    std::fs::write(
        &config,
        "[retention]\nruns_days = 1\nledger_ops_days = 2\n\n\
         [workflows.payment-order]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
    )
    .expect("config");
    let config = config.display().to_string();
    for (id, customer, reference) in [("old", "alice", "inv-1"), ("recent", "bob", "inv-2")] {
        let out = s.wasaga(&[
            "--config",
            &config,
            "run",
            PAYMENT_ORDER,
            "--input",
            &order(id, customer, reference),
            "--run-id",
            id,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let day_ms: i64 = 86_400_000;
    let now = wasaga_core::clock::now_ms() as i64;
    let (old_ops, total_ops) = rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        // `old` ended a day and a half ago: past `runs_days`, within `ledger_ops_days`.
        sqlx::query(
            "UPDATE wasaga.runs SET created_at_ms = $1, updated_at_ms = $1 WHERE run_id = 'old'",
        )
        .bind(now - 3 * day_ms / 2)
        .execute(&mut conn)
        .await
        .expect("age the run");
        let old: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM wasaga.ledger_ops WHERE op_id LIKE 'old/%'")
                .fetch_one(&mut conn)
                .await
                .expect("count");
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wasaga.ledger_ops")
            .fetch_one(&mut conn)
            .await
            .expect("count");
        (old, total)
    });
    assert!(old_ops > 0, "the old run's ledger records exist");
    let prune = |label: &str| -> serde_json::Value {
        let out = s.wasaga(&["--config", &config, "--json", "runs", "prune"]);
        assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let first = prune("first");
    assert_eq!(
        (first["runs"].as_u64(), first["ledger_ops"].as_u64()),
        (Some(1), Some(0)),
        "{first}"
    );
    let events: i64 = rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_scalar("SELECT COUNT(*) FROM wasaga.events WHERE run_id = 'old'")
            .fetch_one(&mut conn)
            .await
            .expect("count")
    });
    assert_eq!(events, 0, "the pruned run's events are gone");
    let listed: Vec<String> = s.runs().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(listed, ["recent"], "pruned runs are not listed");
    // Its ledger records are kept, so its id is still taken.
    let again = s.wasaga(&[
        "--config",
        &config,
        "run",
        PAYMENT_ORDER,
        "--input",
        &order("o-3", "alice", "inv-3"),
        "--run-id",
        "old",
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("pruned"), "{}", text(&again));

    // Three days on, its records are old enough to go; the id stays taken.
    rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query("UPDATE wasaga.runs SET updated_at_ms = $1 WHERE run_id = 'old'")
            .bind(now - 3 * day_ms)
            .execute(&mut conn)
            .await
            .expect("age the emptied row");
        sqlx::query("UPDATE wasaga.ledger_ops SET at_ms = $1 WHERE op_id LIKE 'old/%'")
            .bind(now - 3 * day_ms)
            .execute(&mut conn)
            .await
            .expect("age the records");
    });
    let second = prune("second");
    assert_eq!(
        (second["runs"].as_u64(), second["ledger_ops"].as_u64()),
        (Some(0), Some(old_ops as u64)),
        "{second}"
    );
    let left: i64 = rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_scalar("SELECT COUNT(*) FROM wasaga.ledger_ops")
            .fetch_one(&mut conn)
            .await
            .expect("count")
    });
    assert_eq!(left, total_ops - old_ops, "only the old run's records went");
    let reused = s.wasaga(&[
        "--config",
        &config,
        "run",
        PAYMENT_ORDER,
        "--input",
        &order("o-3", "alice", "inv-3"),
        "--run-id",
        "old",
    ]);
    assert_eq!(reused.status.code(), Some(2), "{}", text(&reused));
    assert!(
        text(&reused).contains("never used twice"),
        "{}",
        text(&reused)
    );
    let balances = s.balances();
    assert_eq!(
        (balances["alice"], balances["bob"], balances["shop"]),
        (750, 750, 500)
    );
    assert_eq!(assert_ledger_consistent(&url), 2_000);
}

#[test]
fn deploys_of_one_workflow_from_two_hosts_at_once_each_get_a_version_of_their_own() {
    let postgres = Postgres::start();
    let url = database(&postgres, "deploys", None);
    rt().block_on(async {
        let open = |host_id: &str| {
            let mut config = HostConfig::new(Location::parse(&url).expect("url"));
            config.host_id = host_id.to_owned();
            config.cache_dir = std::env::temp_dir().join("wasaga-module-cache");
            async move { Host::open(&config).await.expect("host opens") }
        };
        let a = open("host-a").await;
        let b = open("host-b").await;
        // The journal's part of a deploy (the module is validated before it): two at once,
        // again and again, so their transactions overlap.
        let mut versions = Vec::new();
        for round in 0..20 {
            let (ha, hb) = (format!("module-a-{round}"), format!("module-b-{round}"));
            let (da, db) = tokio::join!(
                a.journal().deploy("contested", &ha, b"a"),
                b.journal().deploy("contested", &hb, b"b"),
            );
            let (da, db) = (da.expect("a's deploy lands"), db.expect("b's deploy lands"));
            assert!(da.new_version && db.new_version);
            versions.push(da.deployment.version);
            versions.push(db.deployment.version);
            // A rollback racing a deploy also takes its turn.
            let hc = format!("module-c-{round}");
            let (rolled, dc) = tokio::join!(
                a.journal().activate("contested", None),
                b.journal().deploy("contested", &hc, b"c"),
            );
            rolled.expect("the rollback lands");
            versions.push(dc.expect("c's deploy lands").deployment.version);
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=60).collect::<Vec<i64>>());
        let listed = a.journal().versions("contested").await.expect("versions");
        assert_eq!(listed.len(), 60);
        assert_eq!(listed.iter().filter(|v| v.active).count(), 1);
    });
}

#[test]
fn two_pruning_passes_exporting_to_one_file_take_turns_and_lose_no_journal() {
    let postgres = Postgres::start();
    let url = database(&postgres, "prunes", None);
    let s = Sandbox::new("pg-prunes").on_postgres(&url);
    s.open("alice", 100_000);
    s.open("shop", 0);
    let config = s.dir.join("wasaga.toml");
    std::fs::write(
        &config,
        "[workflows.payment-order]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let ids: Vec<String> = (0..24).map(|i| format!("p-{i}")).collect();
    for id in &ids {
        // Long references make long lines, written in many pieces if not whole.
        let reference = format!("{id}-{}", "r".repeat(6_000));
        let out = s.wasaga(&[
            "--config",
            &config,
            "run",
            PAYMENT_ORDER,
            "--input",
            &order(id, "alice", &reference),
            "--run-id",
            id,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query("UPDATE wasaga.runs SET updated_at_ms = updated_at_ms - 172800000")
            .execute(&mut conn)
            .await
            .expect("age the runs");
    });
    let archive = s.dir.join("archive.jsonl");
    let archive_arg = archive.display().to_string();
    let passes: Vec<_> = (0..2)
        .map(|_| {
            s.command(&[
                "--config",
                &config,
                "--json",
                "runs",
                "prune",
                "--older-than-days",
                "1",
                "--export",
                &archive_arg,
                "--yes",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("prune starts")
        })
        .collect();
    let mut pruned = 0;
    for pass in passes {
        let out = pass.wait_with_output().expect("prune ends");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        pruned += report["runs"].as_u64().expect("runs");
    }
    assert_eq!(pruned, 24, "each run pruned once, by one pass or the other");
    let text_of_archive = std::fs::read_to_string(&archive).expect("archive");
    let mut exported: Vec<String> = text_of_archive
        .lines()
        .map(|line| {
            let run: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            assert!(
                run["events"].as_array().is_some_and(|e| !e.is_empty()),
                "{run}"
            );
            run["run"]["run_id"].as_str().expect("run id").to_owned()
        })
        .collect();
    exported.sort();
    exported.dedup();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        exported, expected,
        "every pruned run has its journal in the archive"
    );
    assert_eq!(assert_ledger_consistent(&url), 100_000);
}
