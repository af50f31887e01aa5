//! Card payments through an `http` participant, against a real card processor in a process of
//! its own (`tests/processor`): every fault it can be switched to, a host SIGKILLed at every
//! journal point, 64 runs at once under the service's concurrency and rate limits, and bad
//! configs. The processor's own record of what it applied is what the tests check: each
//! operation exactly once, and every refused payment voided or refunded.

use crate::crash::copy_of;
use crate::guests::CARD_PAYMENT;
use crate::support::{Sandbox, agent, at_every_crash_point, last_error_line, request, text};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use wasaga_core::event::RunStatus;
use wasaga_db::Location;
use wasaga_runtime::store::no_observer;
use wasaga_runtime::{Host, HostConfig};

/// The card processor, killed when dropped.
pub struct Processor {
    child: Child,
    pub url: String,
}

impl Processor {
    pub fn start(cards: &[(&str, i64)]) -> Processor {
        Processor::start_with(cards, &[])
    }

    /// [`Processor::start`] with more arguments (`--webhook-secret`).
    pub fn start_with(cards: &[(&str, i64)], extra: &[&str]) -> Processor {
        let mut command = Command::new(env!("CARGO_BIN_EXE_card-processor"));
        command.args(["--listen", "127.0.0.1:0"]).args(extra);
        for (card, limit) in cards {
            command.arg("--card").arg(format!("{card}={limit}"));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("the card processor starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the processor says where it listens");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Processor { child, url }
    }

    pub fn state(&self) -> Value {
        let (status, state) = request(agent().get(&format!("{}/admin/state", self.url)).call());
        assert_eq!(status, 200, "{state}");
        state
    }

    pub fn faults(&self, faults: Value) {
        let (status, reply) = request(
            agent()
                .post(&format!("{}/admin/faults", self.url))
                .send(faults.to_string().as_bytes()),
        );
        assert_eq!(status, 204, "{reply}");
    }

    /// `(action, key)` of what it applied for run `run_id`, in order.
    pub fn applied(&self, run_id: &str) -> Vec<(String, String)> {
        self.state()["applied"]
            .as_array()
            .expect("applied")
            .iter()
            .filter(|op| op["run"] == run_id)
            .map(|op| {
                (
                    op["action"].as_str().expect("action").to_owned(),
                    op["key"].as_str().expect("key").to_owned(),
                )
            })
            .collect()
    }

    pub fn card(&self, card: &str) -> (i64, i64) {
        let state = self.state();
        let card = &state["cards"][card];
        (
            card["held"].as_i64().expect("held"),
            card["captured"].as_i64().expect("captured"),
        )
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config granting `card-payment` the processor (as `psp`) and the ledger.
fn config(s: &Sandbox, processor: &Processor, extra: &str) -> std::path::PathBuf {
    let path = s.dir.join("wasaga.toml");
    let text = format!(
        "[participants.psp]\nkind = \"http\"\nurl = \"{}/v1\"\ntimeout_ms = 700\n{extra}\n\n\
         [workflows.card-payment]\nparticipants = [\"psp\", \"ledger\"]\nlock_prefixes = [\"order/\"]\n",
        processor.url
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn payment(order: &str, card: &str, amount: i64) -> String {
    json!({ "order_id": order, "card": card, "merchant": "shop", "amount": amount }).to_string()
}

/// `wasaga run card-payment` with the config; returns the process's output.
fn pay(s: &Sandbox, config: &std::path::Path, run_id: &str, input: &str) -> std::process::Output {
    s.wasaga(&[
        "--config",
        &config.display().to_string(),
        "run",
        CARD_PAYMENT,
        "--input",
        input,
        "--run-id",
        run_id,
    ])
}

fn actions(applied: &[(String, String)]) -> Vec<&str> {
    applied.iter().map(|(a, _)| a.as_str()).collect()
}

/// A payment authorizes, captures and credits the merchant, once each; the processor saw the
/// operation's key, the run, and the order lock's fencing token.
#[test]
fn a_card_payment_authorizes_captures_and_credits_once() {
    let processor = Processor::start(&[("alice", 1_000)]);
    let s = Sandbox::new("card-ok");
    s.open("shop", 0);
    let config = config(&s, &processor, "");
    let out = pay(&s, &config, "pay-1", &payment("o-1", "alice", 250));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let applied = processor.applied("pay-1");
    assert_eq!(
        applied,
        [
            ("authorize".to_owned(), "pay-1/authorize".to_owned()),
            ("capture".to_owned(), "pay-1/capture".to_owned())
        ]
    );
    assert_eq!(processor.card("alice"), (0, 250));
    assert_eq!(s.balances()["shop"], 250);
    // Run again under the same id: nothing new reaches the processor.
    let again = pay(&s, &config, "pay-1", &payment("o-1", "alice", 250));
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(processor.applied("pay-1").len(), 2);
    assert_eq!(processor.card("alice"), (0, 250));
}

/// Two hosts with journals of their own share the processor and happen to use one run id:
/// with the same keys the second would be answered with the first's outcome (and credit its
/// merchant for a capture it never made); each journal's `key_prefix` keeps them apart.
#[test]
fn journals_sharing_a_service_keep_their_keys_apart_by_prefix() {
    let processor = Processor::start(&[("ivy", 1_000)]);
    for (journal, prefix) in [("eu", "eu-1/"), ("us", "us-1/")] {
        let s = Sandbox::new(&format!("card-prefix-{journal}"));
        s.open("shop", 0);
        let config = config(&s, &processor, &format!("key_prefix = \"{prefix}\""));
        let out = pay(&s, &config, "same-run", &payment("o-p", "ivy", 100));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let applied = processor.applied("same-run");
        assert!(
            applied.contains(&("capture".to_owned(), format!("{prefix}same-run/capture"))),
            "{applied:?}"
        );
    }
    // Two payments, two captures: the card was charged for each merchant credit.
    assert_eq!(processor.card("ivy"), (0, 200));
}

/// A declined card fails the payment with the processor's own words; nothing is held.
#[test]
fn a_declined_card_compensates_with_the_processors_reason() {
    let processor = Processor::start(&[("bob", 100)]);
    let s = Sandbox::new("card-declined");
    s.open("shop", 0);
    let config = config(&s, &processor, "");
    let out = pay(&s, &config, "pay-2", &payment("o-2", "bob", 250));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("card bob declined: insufficient funds"),
        "{}",
        text(&out)
    );
    assert!(processor.applied("pay-2").is_empty());
    assert_eq!(processor.card("bob"), (0, 0));
    assert_eq!(s.balances()["shop"], 0);
}

/// A payment refused after its capture (the merchant has no ledger account) is refunded, and
/// one whose capture is declined is voided: the card holds and owes nothing afterwards.
#[test]
fn refused_payments_are_refunded_or_voided() {
    let processor = Processor::start(&[("carol", 1_000)]);
    let s = Sandbox::new("card-refused");
    let config = config(&s, &processor, "");
    // No account "shop" yet: crediting the merchant is refused.
    let out = pay(&s, &config, "pay-3", &payment("o-3", "carol", 300));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let applied = processor.applied("pay-3");
    assert_eq!(actions(&applied), ["authorize", "capture", "refund"]);
    assert_eq!(applied[2].1, "pay-3/capture#undo");
    let state = processor.state();
    let refund = state["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .find(|op| op["key"] == "pay-3/capture#undo")
        .expect("refund")
        .clone();
    assert_eq!(
        refund["undoes"], "pay-3/capture",
        "the refund names what it undoes"
    );
    assert_eq!(processor.card("carol"), (0, 0));

    s.open("shop", 0);
    processor.faults(json!({ "action": "capture", "decline": 1 }));
    let out = pay(&s, &config, "pay-4", &payment("o-4", "carol", 300));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("declined by the issuer"),
        "{}",
        text(&out)
    );
    assert_eq!(actions(&processor.applied("pay-4")), ["authorize", "void"]);
    assert_eq!(processor.card("carol"), (0, 0));
    assert_eq!(s.balances()["shop"], 0);
}

/// Each fault the processor can be switched to ends in exactly one authorize and one capture.
#[test]
fn every_fault_switch_ends_in_exactly_once() {
    let processor = Processor::start(&[("dave", 100_000)]);
    let s = Sandbox::new("card-faults");
    s.open("shop", 0);
    let config = config(&s, &processor, "");
    let cases = [
        ("fail-500", json!({ "action": "authorize", "fail_500": 3 })),
        // Applied, then no answer within timeout_ms: retried under the same key.
        (
            "hang",
            json!({ "action": "capture", "hang_after_apply": 1, "hang_ms": 1_500 }),
        ),
        (
            "close",
            json!({ "action": "authorize", "close_after_apply": 2 }),
        ),
        ("html", json!({ "action": "capture", "garbage": 1 })),
        ("slow", json!({ "slow_ms": 300 })),
        // A Retry-After of days is cut short (to 5 s): the payment still goes through.
        (
            "retry-after-days",
            json!({ "action": "capture", "throttle_429": 1, "retry_after_s": 900_000 }),
        ),
        (
            "throttled",
            json!({ "action": "authorize", "throttle_429": 1, "retry_after_s": 1 }),
        ),
    ];
    let mut paid = 0;
    for (name, faults) in cases {
        processor.faults(faults);
        let run_id = format!("fault-{name}");
        let out = pay(&s, &config, &run_id, &payment(&run_id, "dave", 10));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        paid += 10;
        assert_eq!(
            actions(&processor.applied(&run_id)),
            ["authorize", "capture"],
            "{name}"
        );
        assert_eq!(processor.card("dave"), (0, paid), "{name}");
    }
    assert_eq!(s.balances()["shop"], paid);
    // The throttled authorize was retried no sooner than its Retry-After.
    let state = processor.state();
    let arrivals: Vec<u64> = state["arrivals"]
        .as_array()
        .expect("arrivals")
        .iter()
        .filter(|a| a[1] == "authorize")
        .map(|a| a[0].as_u64().expect("ms"))
        .collect();
    let last_two = &arrivals[arrivals.len() - 2..];
    assert!(
        last_two[1] - last_two[0] >= 1_000,
        "Retry-After: 1 was not honoured: {arrivals:?}"
    );
}

/// A processor that answers 500 to every capture: the capture's outcome stays unknown, so the
/// payment compensates by refunding under the capture's key (which fences it at the processor)
/// and voiding the authorization; a capture arriving late is refused.
#[test]
fn a_capture_that_never_answers_is_fenced_and_the_authorization_voided() {
    let processor = Processor::start(&[("erin", 1_000)]);
    let s = Sandbox::new("card-unknown");
    s.open("shop", 0);
    let config = config(&s, &processor, "");
    processor.faults(json!({ "action": "capture", "fail_500": 1_000 }));
    let out = pay(&s, &config, "pay-5", &payment("o-5", "erin", 400));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(actions(&processor.applied("pay-5")), ["authorize", "void"]);
    assert_eq!(processor.card("erin"), (0, 0));
    processor.faults(json!({}));
    let (status, late) = request(
        agent()
            .post(&format!("{}/v1/capture", processor.url))
            .header("Idempotency-Key", "pay-5/capture")
            .send(
                json!({ "authorization": "pay-5/authorize", "amount": 400 })
                    .to_string()
                    .as_bytes(),
            ),
    );
    assert_eq!(status, 409, "a late capture must be refused: {late}");
}

/// A processor that applies every capture and then answers 500: a server error may follow
/// applied work, so the capture is unknown, not failed, and compensation refunds it under its
/// key. Taking a 500 for "not applied" would leave the card charged for a refused payment.
#[test]
fn a_capture_applied_behind_a_500_is_refunded() {
    let processor = Processor::start(&[("fay", 1_000)]);
    let s = Sandbox::new("card-500-applied");
    let config = config(&s, &processor, "");
    processor.faults(json!({ "action": "capture", "fail_after_apply": 1_000 }));
    // No merchant account: the payment cannot complete whatever the capture answered.
    let out = pay(&s, &config, "pay-6", &payment("o-6", "fay", 400));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        actions(&processor.applied("pay-6")),
        ["authorize", "capture", "refund"]
    );
    assert_eq!(processor.card("fay"), (0, 0), "the card was left charged");
}

/// The host is SIGKILLed before and after each of its commits during a card payment, then
/// resumed: the payment ends completed (or, when the merchant has no account, compensated),
/// and the processor applied each operation exactly once.
#[test]
fn kill_the_host_at_every_journal_point_of_a_card_payment() {
    let processor = Processor::start(&[("frank", 10_000_000)]);
    for completing in [true, false] {
        let template = Sandbox::new("card-crash-template");
        if completing {
            template.open("shop", 0);
        }
        let config_text =
            std::fs::read_to_string(config(&template, &processor, "")).expect("config");
        let exercised = at_every_crash_point(60, |point| {
            let s = copy_of(&template, false);
            let config = s.dir.join("wasaga.toml");
            std::fs::write(&config, &config_text).expect("config");
            let run_id = format!("crash-{completing}-{point}").replace(':', "-");
            let input = payment(&run_id, "frank", 100);
            let config_arg = config.display().to_string();
            let out = s.wasaga(&[
                "--config",
                &config_arg,
                "run",
                CARD_PAYMENT,
                "--input",
                &input,
                "--run-id",
                &run_id,
                "--crash-at",
                point,
            ]);
            let killed = out.status.signal() == Some(9);
            if killed {
                let resumed = s.wasaga(&["--config", &config_arg, "resume"]);
                assert!(
                    matches!(resumed.status.code(), Some(0) | Some(3)),
                    "{point}: {}",
                    text(&resumed)
                );
            } else {
                let code = if completing { 0 } else { 3 };
                assert_eq!(out.status.code(), Some(code), "{point}: {}", text(&out));
            }
            let runs = s.runs();
            let applied = processor.applied(&run_id);
            let Some((_, status, error)) = runs.iter().find(|(id, _, _)| *id == run_id) else {
                assert!(applied.is_empty(), "{point}: no run, yet {applied:?}");
                return killed;
            };
            let mut keys: Vec<&String> = applied.iter().map(|(_, k)| k).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(
                keys.len(),
                applied.len(),
                "{point}: applied twice: {applied:?}"
            );
            if completing {
                assert_eq!(status, "completed", "{point}: {error:?}");
                assert_eq!(actions(&applied), ["authorize", "capture"], "{point}");
                assert_eq!(s.balances()["shop"], 100, "{point}");
            } else {
                assert_eq!(status, "compensated", "{point}: {error:?}");
                // Authorized and captured, then refunded; or stopped before the capture
                // applied, then voided; or nothing reached the processor.
                let done = actions(&applied);
                assert!(
                    matches!(
                        done.as_slice(),
                        ["authorize", "capture", "refund"] | ["authorize", "void"] | []
                    ),
                    "{point}: {done:?}"
                );
            }
            killed
        });
        assert!(exercised >= 10, "only {exercised} crash points exercised");
    }
    // Whatever each run did, the card owes exactly what the completed runs captured.
    let (held, _) = processor.card("frank");
    assert_eq!(held, 0, "an authorization was left holding money");
}

/// 64 payments at once on one host: the processor never has more than `concurrency_max` calls
/// in flight, and calls start no faster than `rate_per_s` allows; every payment completes.
#[test]
fn concurrency_and_rate_limits_hold_under_64_runs() {
    let processor = Processor::start(&[("gina", 1_000_000)]);
    processor.faults(json!({ "slow_ms": 40 }));
    let s = Sandbox::new("card-limits");
    let mut config = HostConfig::new(Location::Sqlite(s.db.clone()));
    let mut psp =
        wasaga_participants::http::HttpConfig::new("psp", &format!("{}/v1", processor.url));
    psp.concurrency_max = 4;
    psp.rate_per_s = Some(50.0);
    config.http = vec![psp];
    config.limits.concurrent_runs_max = 64;
    wasaga_testkit::rt().block_on(async {
        let host = Arc::new(Host::open(&config).await.expect("host opens"));
        wasaga_participants::ledger::open(host.ledger_db(), "shop", 0)
            .await
            .expect("shop");
        let module = std::fs::read(CARD_PAYMENT).expect("guest built");
        let hash = host
            .add_module("card-payment", &module)
            .await
            .expect("valid module");
        let runs: Vec<_> = (0..64)
            .map(|i| {
                let host = host.clone();
                let hash = hash.clone();
                tokio::spawn(async move {
                    let id = format!("many-{i}");
                    host.start_and_drive(
                        Some(id.clone()),
                        "card-payment",
                        &hash,
                        &payment(&id, "gina", 5),
                        no_observer(),
                    )
                    .await
                    .expect("drive")
                })
            })
            .collect();
        for run in runs {
            let outcome = run.await.expect("run");
            assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        }
    });
    let state = processor.state();
    let in_flight_max = state["in_flight_max"].as_u64().expect("in flight");
    assert!(
        (2..=4).contains(&in_flight_max),
        "concurrency_max = 4, the processor saw {in_flight_max} in flight"
    );
    let mut arrivals: Vec<u64> = state["arrivals"]
        .as_array()
        .expect("arrivals")
        .iter()
        .map(|a| a[0].as_u64().expect("ms"))
        .collect();
    arrivals.sort();
    assert_eq!(
        arrivals.len(),
        128,
        "each payment authorizes and captures once"
    );
    // A bucket of 5 (a tenth of a second at 50/s): no second holds more than 55 starts.
    for (k, first) in arrivals.iter().enumerate() {
        let within = arrivals[k..]
            .iter()
            .take_while(|a| **a < first + 1_000)
            .count();
        assert!(
            within <= 55,
            "{within} calls started within one second of {first} ms"
        );
    }
    assert_eq!(processor.card("gina"), (0, 64 * 5));
}

/// Bad configs and grants: each is refused before anything runs, naming the participant and
/// what to change; a service that is down is warned of and its payments fail cleanly.
#[test]
fn bad_configs_name_the_participant_and_what_to_do() {
    let processor = Processor::start(&[("hal", 1_000)]);
    let s = Sandbox::new("card-bad-config");
    s.open("shop", 0);
    let run_with = |extra: &str| {
        let config = config(&s, &processor, extra);
        let out = pay(&s, &config, "bad-1", &payment("o-bad", "hal", 10));
        assert_eq!(out.status.code(), Some(2), "{extra}: {}", text(&out));
        last_error_line(&out)
    };
    let missing =
        run_with("headers = { Authorization = { env = \"WASAGA_TEST_NO_SUCH_SECRET\" } }");
    assert!(
        missing.contains("[participants.psp]")
            && missing.contains("WASAGA_TEST_NO_SUCH_SECRET, which is not set"),
        "{missing}"
    );
    let unknown = run_with("retries = 3");
    assert!(unknown.contains("unknown field `retries`"), "{unknown}");
    let ca = run_with("ca_file = \"no-such.pem\"");
    assert!(ca.contains("cannot read ca_file"), "{ca}");
    // Credentials in a URL would be kept in the journal's messages: refused, and not echoed.
    let config = s.dir.join("password.toml");
    std::fs::write(
        &config,
        "[participants.psp]\nkind = \"http\"\nurl = \"http://admin:TOPSECRET@127.0.0.1:9/v1\"\n\n\
         [[outbox.sinks]]\nname = \"books\"\nkind = \"webhook\"\nurl = \"http://u:PWLEAK@127.0.0.1:9/h\"\nsecret = \"0123456789abcdef\"\n",
    )
    .expect("config");
    let out = pay(&s, &config, "bad-2", &payment("o-bad", "hal", 10));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("must not hold a user or password"), "{said}");
    assert!(!said.contains("TOPSECRET"), "{said}");
    let config_text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, config_text.replace("admin:TOPSECRET@", "")).expect("config");
    let out = pay(&s, &config, "bad-3", &payment("o-bad", "hal", 10));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(last_error_line(&out).contains("sink books: url must not hold a user or password"));
    assert!(!text(&out).contains("PWLEAK"));
    assert!(
        processor.state()["arrivals"]
            .as_array()
            .expect("arrivals")
            .is_empty()
    );

    // A grant of one action only: the capture is refused before anything reaches the
    // processor beyond the authorization, which is then voided.
    let config = s.dir.join("granted.toml");
    std::fs::write(
        &config,
        format!(
            "[participants.psp]\nkind = \"http\"\nurl = \"{}/v1\"\n\n[workflows.card-payment]\nparticipants = [\"psp.authorize\", \"psp.void\", \"ledger\"]\nlock_prefixes = [\"order/\"]\n",
            processor.url
        ),
    )
    .expect("config");
    let out = pay(&s, &config, "grant-1", &payment("o-g", "hal", 10));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("not granted psp.capture"),
        "{}",
        text(&out)
    );
    assert_eq!(
        actions(&processor.applied("grant-1")),
        ["authorize", "void"]
    );

    // A service that is down: a warning at start, then the payment fails and nothing is
    // half-applied.
    let down = s.dir.join("down.toml");
    std::fs::write(
        &down,
        "[participants.psp]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/v1\"\n\n[workflows.card-payment]\nparticipants = [\"psp\", \"ledger\"]\nlock_prefixes = [\"order/\"]\n",
    )
    .expect("config");
    let out = pay(&s, &down, "down-1", &payment("o-d", "hal", 10));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("warning: participant psp"), "{all}");
    assert!(all.contains("cannot connect"), "{all}");
    assert_eq!(s.balances()["shop"], 0);
}
