//! The ledger as a service: `wasaga ledger serve` in a process of its own, reached by a host
//! whose config says `ledger = "http://..."`. Transfers apply there exactly once, whatever
//! crashes the host; a wrong or missing token is refused with what to do.

use crate::guests::TRANSFER;
use crate::support::{Sandbox, at_every_crash_point, text};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};

const TOKEN: &str = "ledger-service-token-0123456789";

/// `wasaga ledger serve` on `db`, killed when dropped.
struct Service {
    child: Child,
    url: String,
}

impl Service {
    fn start(db: &std::path::Path, token: &str) -> Service {
        let mut child = Command::new(crate::support::wasaga_bin())
            .arg("--db")
            .arg(db)
            .args(["ledger", "serve", "--listen", "127.0.0.1:0"])
            .env("WASAGA_LEDGER_TOKEN", token)
            .stdout(Stdio::piped())
            .spawn()
            .expect("ledger serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("it says where it listens");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .to_owned();
        Service { child, url }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox whose ledger is `ledger.db` beside the journal, with alice and bob opened.
fn sandbox(name: &str) -> (Sandbox, std::path::PathBuf) {
    let s = Sandbox::new(name);
    let ledger = s.dir.join("ledger.db");
    let ledger_arg = ledger.display().to_string();
    for (account, balance) in [("alice", "1000"), ("bob", "0")] {
        let out = s.wasaga(&[
            "--ledger",
            &ledger_arg,
            "ledger",
            "open",
            account,
            "--balance",
            balance,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    (s, ledger)
}

fn config(s: &Sandbox, service: &Service) -> String {
    let path = s.dir.join("wasaga.toml");
    std::fs::write(
        &path,
        format!(
            "ledger = \"{}\"\n\n[workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
            service.url
        ),
    )
    .expect("config");
    path.display().to_string()
}

fn balances(s: &Sandbox, ledger: &std::path::Path) -> (i64, i64) {
    let shown = s.json(&["--ledger", &ledger.display().to_string(), "ledger", "list"]);
    let of = |name: &str| {
        shown["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .find(|a| a["account"] == name)
            .and_then(|a| a["balance"].as_i64())
            .expect("balance")
    };
    (of("alice"), of("bob"))
}

fn transfer(amount: i64) -> String {
    json!({ "from": "alice", "to": "bob", "amount": amount }).to_string()
}

/// A transfer applies at the service; one it cannot cover is compensated there; the host's
/// own database holds no ledger operation.
#[test]
fn transfers_apply_at_the_ledger_service() {
    let (s, ledger) = sandbox("ledger-service");
    let service = Service::start(&ledger, TOKEN);
    let config = config(&s, &service);
    let run = |input: String| {
        let mut command = s.command(&["--config", &config, "run", TRANSFER, "--input", &input]);
        command.env("WASAGA_LEDGER_TOKEN", TOKEN);
        command.output().expect("wasaga runs")
    };
    let out = run(transfer(300));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(transfer(5_000));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("insufficient funds"), "{}", text(&out));
    drop(service);
    assert_eq!(balances(&s, &ledger), (700, 300));
    let local: i64 = crate::support::scalar(&s.db, "SELECT COUNT(*) FROM ledger_ops");
    assert_eq!(
        local, 0,
        "a ledger operation was applied on the host's own database"
    );
}

/// A host killed before and after each of its commits, then resumed: every transfer applies
/// at the service exactly once.
#[test]
fn a_killed_host_moves_money_at_the_ledger_service_exactly_once() {
    let (s, ledger) = sandbox("ledger-service-crash");
    let service = Service::start(&ledger, TOKEN);
    let config = config(&s, &service);
    let mut moved = 0;
    let exercised = at_every_crash_point(30, |point| {
        let run_id = format!("t-{point}").replace(':', "-");
        let mut command = s.command(&[
            "--config",
            &config,
            "run",
            TRANSFER,
            "--input",
            &transfer(10),
            "--run-id",
            &run_id,
            "--crash-at",
            point,
        ]);
        let out = command
            .env("WASAGA_LEDGER_TOKEN", TOKEN)
            .output()
            .expect("runs");
        let killed = out.status.signal() == Some(9);
        if killed {
            let mut resume = s.command(&["--config", &config, "resume"]);
            let resumed = resume
                .env("WASAGA_LEDGER_TOKEN", TOKEN)
                .output()
                .expect("resumes");
            assert_eq!(
                resumed.status.code(),
                Some(0),
                "{point}: {}",
                text(&resumed)
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out));
        }
        if s.runs()
            .iter()
            .any(|(id, status, _)| *id == run_id && status == "completed")
        {
            moved += 10;
        }
        killed
    });
    assert!(exercised >= 4, "only {exercised} crash points exercised");
    drop(service);
    assert_eq!(balances(&s, &ledger), (1_000 - moved, moved));
    crate::support::assert_ledger_consistent(&ledger);
}

/// The service refuses a wrong token and starts without one only to say what it needs.
#[test]
fn the_ledger_service_needs_its_token() {
    let (s, ledger) = sandbox("ledger-service-token");
    let out = Command::new(crate::support::wasaga_bin())
        .arg("--db")
        .arg(&ledger)
        .args(["ledger", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("WASAGA_LEDGER_TOKEN")
        .output()
        .expect("wasaga runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("WASAGA_LEDGER_TOKEN"), "{}", text(&out));

    let service = Service::start(&ledger, TOKEN);
    let config = config(&s, &service);
    let mut command = s.command(&[
        "--config",
        &config,
        "run",
        TRANSFER,
        "--input",
        &transfer(1),
    ]);
    let out = command
        .env("WASAGA_LEDGER_TOKEN", "another-token-0123456789")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("Authorization: Bearer"),
        "{}",
        text(&out)
    );
    drop(service);
    assert_eq!(balances(&s, &ledger), (1_000, 0));
}
