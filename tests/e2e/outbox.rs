//! The outbox: every ledger change's record reaches the sinks after a sink outage and two
//! hosts killed with SIGKILL, each at least once under its event id (duplicates only with the
//! same id and body), in order per account; against a real webhook receiver (the card
//! processor's `/hooks`, checking signatures) and a real Redis.

use crate::card_payment::Processor;
use crate::guests::TRANSFER;
use crate::services::{Redis, SlowLink, free_port};
use crate::support::{Sandbox, Server, text};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use wasaga_participants::outbox::event_id;

const SECRET: &str = "outbox-test-secret-0123456789";

/// The records the ledger must have produced: every entry's event id.
fn expected(s: &Sandbox) -> BTreeSet<String> {
    let conn = crate::support::sql(&s.ledger_db());
    let mut statement = conn
        .prepare("SELECT op_id, account FROM ledger_entries")
        .expect("entries");
    statement
        .query_map([], |r| {
            Ok(event_id(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?))
        })
        .expect("entries")
        .collect::<Result<_, _>>()
        .expect("entries")
}

/// Checks what a sink received: exactly the expected ids, a duplicate only ever with the
/// same record, and each account's records in increasing `seq`.
fn check_received(received: &[(String, Value)], expected: &BTreeSet<String>) {
    let mut first: BTreeMap<&str, &Value> = BTreeMap::new();
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, record) in received {
        assert_eq!(
            record["event_id"],
            id.as_str(),
            "the id travels with its record"
        );
        match first.get(id.as_str()) {
            Some(earlier) => assert_eq!(*earlier, record, "a duplicate with another body"),
            None => {
                first.insert(id, record);
                order
                    .entry(record["account"].as_str().expect("account").to_owned())
                    .or_default()
                    .push(record["seq"].as_i64().expect("seq"));
            }
        }
    }
    let got: BTreeSet<String> = first.keys().map(|k| (*k).to_owned()).collect();
    let missing: Vec<&String> = expected.difference(&got).collect();
    let extra: Vec<&String> = got.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    for (account, seqs) in order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "account {account}'s records arrived out of order: {seqs:?}"
        );
    }
}

fn transfers(s: &Sandbox, config: &str, from: usize, count: usize) {
    let accounts = ["alice", "bob", "carol"];
    for i in from..from + count {
        let input =
            json!({ "from": accounts[i % 3], "to": accounts[(i + 1) % 3], "amount": 1 + i % 5 })
                .to_string();
        let out = s.wasaga(&["--config", config, "run", TRANSFER, "--input", &input]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}

fn outbox_state(server: &Server) -> Value {
    let (status, state) = server.get("/v1/outbox?status=failing");
    assert_eq!(status, 200, "{state}");
    state
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the scenario's sink is, and how to take it down and bring it back.
trait Sink {
    fn config(&self) -> String;
    fn down(&mut self);
    fn slow(&mut self);
    fn up(&mut self);
    fn received(&self) -> Vec<(String, Value)>;
}

/// Records pile up while the sink is down and the host is killed twice (once while failing,
/// once mid-delivery); after recovery the sink has every record, as [`check_received`] says.
fn survives_outage_and_two_kills(sink: &mut dyn Sink) {
    let s = Sandbox::new("outbox");
    for (account, balance) in [("alice", 1_000), ("bob", 1_000), ("carol", 1_000)] {
        s.open(account, balance);
    }
    let config_text = |sink: &dyn Sink| {
        format!(
            "journal = \"{}\"\n\n{}\n\n[workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
            s.db.display(),
            sink.config()
        )
    };
    let config = s.dir.join("cli.toml");
    std::fs::write(&config, config_text(sink)).expect("config");
    let config = config.display().to_string();
    transfers(&s, &config, 0, 12);

    sink.down();
    let mut server = Server::start(&s.dir, "outbox-1", &config_text(sink), &[]);
    wait_for("the first deliveries fail", || {
        outbox_state(&server)["failing"].as_i64().unwrap_or(0) > 0
    });
    let failing = outbox_state(&server);
    let reason = failing["records"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("sink "),
        "the failure names the sink: {failing}"
    );
    server.kill();

    // More changes while no host delivers.
    transfers(&s, &config, 12, 12);
    sink.slow();
    let mut server = Server::start(&s.dir, "outbox-2", &config_text(sink), &[]);
    wait_for("some records arrive", || sink.received().len() >= 3);
    server.kill();
    let before = sink.received().len();
    assert!(
        before < expected(&s).len(),
        "the second kill came after every record was delivered"
    );

    sink.up();
    let server = Server::start(&s.dir, "outbox-3", &config_text(sink), &[]);
    wait_for("nothing is pending", || {
        let (_, state) = server.get("/v1/outbox");
        state["pending"] == 0
    });
    check_received(&sink.received(), &expected(&s));
    let (_, delivered) = server.get("/v1/outbox?status=delivered&limit=1000");
    assert_eq!(
        delivered["records"].as_array().expect("records").len(),
        expected(&s).len()
    );
}

struct Webhook {
    processor: Processor,
}

impl Sink for Webhook {
    fn config(&self) -> String {
        format!(
            "[[outbox.sinks]]\nname = \"books\"\nkind = \"webhook\"\nurl = \"{}/hooks/books\"\nsecret = \"{SECRET}\"\ntimeout_ms = 1000\n",
            self.processor.url
        )
    }
    fn down(&mut self) {
        self.processor
            .faults(json!({ "action": "hook", "fail_500": 1_000_000 }));
    }
    fn slow(&mut self) {
        // Slow, and failing now and then: an account's later record must still wait for its
        // earlier one.
        self.processor
            .faults(json!({ "action": "hook", "slow_ms": 150, "fail_500": 3 }));
    }
    fn up(&mut self) {
        self.processor.faults(json!({}));
    }
    fn received(&self) -> Vec<(String, Value)> {
        let state = self.processor.state();
        assert_eq!(state["bad_signatures"], 0, "a delivery was badly signed");
        state["hooks"]
            .as_array()
            .expect("hooks")
            .iter()
            .map(|h| {
                (
                    h["event_id"].as_str().expect("event id header").to_owned(),
                    h["record"].clone(),
                )
            })
            .collect()
    }
}

#[test]
fn webhook_deliveries_survive_an_outage_and_two_killed_hosts() {
    let mut sink = Webhook {
        processor: Processor::start_with(&[], &["--webhook-secret", SECRET]),
    };
    survives_outage_and_two_kills(&mut sink);
}

/// A real Redis on a port of its own: down is not running; slow is reached through a link
/// that delays everything 40 ms each way (the sink's address changes with it, as an operator
/// would point it elsewhere between restarts).
struct Stream {
    port: u16,
    redis: Option<Redis>,
    link: Option<SlowLink>,
}

impl Sink for Stream {
    fn config(&self) -> String {
        let port = self.link.as_ref().map_or(self.port, |link| link.port);
        format!(
            "[[outbox.sinks]]\nname = \"warehouse\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nstream = \"wasaga:ledger\"\n"
        )
    }
    fn down(&mut self) {
        self.link = None;
        if let Some(mut redis) = self.redis.take() {
            redis.kill();
        }
    }
    fn slow(&mut self) {
        self.up();
        self.link = Some(SlowLink::start(self.port, Duration::from_millis(40)));
    }
    fn up(&mut self) {
        self.link = None;
        if self.redis.is_none() {
            self.redis = Some(Redis::start_on(self.port));
        }
    }
    fn received(&self) -> Vec<(String, Value)> {
        let Some(redis) = &self.redis else {
            return Vec::new();
        };
        let client = redis::Client::open(redis.url()).expect("redis url");
        let mut connection = client.get_connection().expect("redis connection");
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("wasaga:ledger")
            .arg("-")
            .arg("+")
            .query(&mut connection)
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, fields)| {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| panic!("entry without {name}"))
                };
                let record: Value = serde_json::from_str(&field("record")).expect("JSON record");
                assert_eq!(record["account"], field("account").as_str());
                (field("event_id"), record)
            })
            .collect()
    }
}

#[test]
fn redis_stream_deliveries_survive_an_outage_and_two_killed_hosts() {
    let mut sink = Stream {
        port: free_port(),
        redis: None,
        link: None,
    };
    survives_outage_and_two_kills(&mut sink);
}

/// Two hosts on one PostgreSQL journal share the delivery: with no failure and no kill, the
/// receiver gets every record exactly once (a record is leased by one host at a time), each
/// account's in order.
#[test]
fn two_hosts_on_postgres_deliver_each_record_once_in_order() {
    use sqlx::Connection;
    let postgres = crate::services::Postgres::start();
    let url = crate::postgres::database(&postgres, "outbox_two_hosts", None);
    let processor = Processor::start_with(&[], &["--webhook-secret", SECRET]);
    let mut sink = Webhook { processor };
    let s = Sandbox::new("outbox-pg").on_postgres(&url);
    for (account, balance) in [("alice", 1_000), ("bob", 1_000), ("carol", 1_000)] {
        s.open(account, balance);
    }
    let config_text = |host: &str| {
        format!(
            "journal = \"{url}\"\nhost_id = \"{host}\"\n\n{}\n\n[workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n",
            sink.config()
        )
    };
    let config = s.dir.join("cli.toml");
    std::fs::write(&config, config_text("cli")).expect("config");
    let config = config.display().to_string();
    // Slow deliveries, so that both hosts find work while the other delivers.
    sink.processor
        .faults(json!({ "action": "hook", "slow_ms": 20 }));
    let a = Server::start(&s.dir, "host-a", &config_text("host-a"), &[]);
    let _b = Server::start(&s.dir, "host-b", &config_text("host-b"), &[]);
    transfers(&s, &config, 0, 20);
    wait_for("nothing is pending", || {
        let (_, state) = a.get("/v1/outbox");
        state["pending"] == 0
    });
    let entries: Vec<(String, String)> = crate::support::rt().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_as("SELECT op_id, account FROM wasaga.ledger_entries")
            .fetch_all(&mut conn)
            .await
            .expect("entries")
    });
    let expected: BTreeSet<String> = entries
        .iter()
        .map(|(op, account)| event_id(op, account))
        .collect();
    sink.up();
    let received = sink.received();
    check_received(&received, &expected);
    assert_eq!(
        received.len(),
        expected.len(),
        "a record was delivered twice"
    );
}
