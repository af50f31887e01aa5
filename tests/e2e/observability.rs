//! What a host tells about itself: `/metrics` counts exactly the runs it drove (and passes
//! `promtool check metrics`), and a traced run's spans reach an OTLP/HTTP collector, one per
//! step parented to the run's span, inside the trace its starter named, with that trace
//! passed on to the HTTP services the run calls.

use crate::guests::{CARD_PAYMENT, MISBEHAVE, TRANSFER, WAITER};
use crate::support::{Sandbox, Server, TOKEN, agent, request};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn deploy(server: &Server, workflow: &str, path: &str) {
    let bytes = std::fs::read(path).expect("guest built by tests/build.rs");
    let (status, reply) = server.upload(&format!("/v1/workflows/{workflow}/versions"), &bytes);
    assert!(status == 200 || status == 201, "deploy {workflow}: {reply}");
}

fn open(s: &Sandbox, config: &str, accounts: &[(&str, i64)]) {
    std::fs::write(s.dir.join("accounts.toml"), config).expect("config");
    let path = s.dir.join("accounts.toml").display().to_string();
    for (account, balance) in accounts {
        let out = s.wasaga(&[
            "--config",
            &path,
            "ledger",
            "open",
            account,
            "--balance",
            &balance.to_string(),
        ]);
        assert!(out.status.success(), "{}", crate::support::text(&out));
    }
}

/// `promtool`: `WASAGA_PROMTOOL`, else on PATH, else where scripts/test unpacks it.
fn promtool() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("WASAGA_PROMTOOL") {
        return path.into();
    }
    let unpacked = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target/tools/prometheus/usr/bin/promtool");
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| unpacked.is_file().then_some(unpacked)).unwrap_or_else(|| {
        panic!(
            "the metrics test needs promtool (Debian's `prometheus` package): run scripts/test, which unpacks it into target/tools, or set WASAGA_PROMTOOL"
        )
    })
}

/// The value of the sample `series` (name and labels exactly as printed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_exactly_the_runs_a_host_drove_and_pass_promtool() {
    let s = Sandbox::new("metrics");
    let config = "journal = \"wasaga.db\"\n\n[limits]\ncompensation_retries_max = 2\n\n\
        [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n\n\
        [workflows.misbehave]\nparticipants = [\"ledger\"]\n\n\
        [workflows.waiter]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"acct/\"]\nchildren = [\"waiter\"]\n";
    open(&s, config, &[("alice", 1_000), ("bob", 0)]);
    let metrics_port = crate::services::free_port();
    let server = Server::start_serving(
        &s.dir,
        "metrics",
        config,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        &[],
    );
    deploy(&server, "transfer", TRANSFER);
    // Three transfers complete; two go to an account that does not exist, and compensate.
    for (i, to) in ["bob", "bob", "bob", "nobody", "nobody"].iter().enumerate() {
        let (status, reply) = server.post(
            "/v1/workflows/transfer/runs?wait_ms=20000",
            &json!({ "run_id": format!("m-{i}"), "input": { "from": "alice", "to": to, "amount": 10 } }),
        );
        assert_eq!(status, 201, "{reply}");
        assert!(
            reply["status"] == "completed" || reply["status"] == "compensated",
            "{reply}"
        );
    }
    // On the main listener the metrics need the token.
    let (status, _) = request(agent().get(&format!("{}/metrics", server.url())).call());
    assert_eq!(status, 401);
    let scrape = |url: &str, bearer: bool, accept: &str| {
        let mut get = agent().get(url).header("Accept", accept);
        if bearer {
            get = get.header("Authorization", &format!("Bearer {TOKEN}"));
        }
        let mut response = get.call().expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        response.body_mut().read_to_string().expect("text")
    };
    // The metrics are read from the databases at most once a second.
    std::thread::sleep(Duration::from_millis(1_100));
    let text = scrape(&format!("{}/metrics", server.url()), true, "text/plain");
    let expect = [
        (r#"wasaga_runs_started_total{workflow="transfer"}"#, 5.0),
        (
            r#"wasaga_runs_ended_total{workflow="transfer",status="completed"}"#,
            3.0,
        ),
        (
            r#"wasaga_runs_ended_total{workflow="transfer",status="compensated"}"#,
            2.0,
        ),
        (
            r#"wasaga_step_duration_seconds_count{participant="ledger",action="debit",outcome="done"}"#,
            5.0,
        ),
        (
            r#"wasaga_step_duration_seconds_count{participant="ledger",action="credit",outcome="done"}"#,
            3.0,
        ),
        (
            r#"wasaga_step_duration_seconds_count{participant="ledger",action="credit",outcome="rejected"}"#,
            2.0,
        ),
        // Each refused transfer's debit is undone by a credit.
        (
            r#"wasaga_compensation_duration_seconds_count{participant="ledger",action="credit",outcome="done"}"#,
            2.0,
        ),
        // Every transfer locks both its accounts.
        (
            r#"wasaga_lock_acquire_wait_seconds_count{backend="journal",outcome="granted"}"#,
            10.0,
        ),
        ("wasaga_runs_stuck", 0.0),
        ("wasaga_runs_live", 0.0),
        ("wasaga_runs_waiting", 0.0),
        ("wasaga_outbox_failing", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    // Seven ledger changes (five debits, three credits, two undone... as records: one each).
    let undelivered = sample(&text, "wasaga_outbox_undelivered").expect("the outbox backlog");
    assert!(undelivered >= 0.0, "{text}");
    let commits = sample(
        &text,
        r#"wasaga_db_commit_duration_seconds_count{database="journal"}"#,
    )
    .expect("journal commits are timed");
    assert!(
        commits >= 5.0,
        "at least a commit per run: {commits}\n{text}"
    );
    assert!(
        sample(&text, r#"wasaga_step_duration_seconds_count{participant="ledger",action="debit",outcome="rejected"}"#).is_none(),
        "no series for what did not happen"
    );

    // A run that ends stuck, and a parent that starts a child: each run counted once.
    deploy(&server, "misbehave", MISBEHAVE);
    deploy(&server, "waiter", WAITER);
    let (status, reply) = server.post(
        "/v1/workflows/misbehave/runs?wait_ms=20000",
        &json!({ "run_id": "m-stuck", "input": { "mode": "drain", "from": "alice", "to": "bob", "amount": 10 } }),
    );
    assert_eq!(
        (status, reply["status"].as_str()),
        (201, Some("stuck")),
        "{reply}"
    );
    let (status, reply) = server.post(
        "/v1/workflows/waiter/runs",
        &json!({ "run_id": "m-parent", "input": { "waits": [{ "child": { "workflow": "waiter", "input": { "waits": [] } } }] } }),
    );
    assert_eq!(status, 201, "{reply}");
    let ended = server.settled("workflow=waiter", 2, Duration::from_secs(30));
    assert!(
        ended.values().all(|r| r["status"] == "completed"),
        "{ended:?}"
    );
    std::thread::sleep(Duration::from_millis(1_100));
    let text = scrape(&format!("{}/metrics", server.url()), true, "text/plain");
    for (series, value) in [
        (r#"wasaga_runs_started_total{workflow="waiter"}"#, 2.0),
        (
            r#"wasaga_runs_ended_total{workflow="waiter",status="completed"}"#,
            2.0,
        ),
        (r#"wasaga_runs_started_total{workflow="misbehave"}"#, 1.0),
        (
            r#"wasaga_runs_ended_total{workflow="misbehave",status="stuck"}"#,
            1.0,
        ),
        ("wasaga_runs_stuck", 1.0),
        (r#"wasaga_runs_started_total{workflow="transfer"}"#, 5.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }

    let checked = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A scraper that asks for OpenMetrics gets it; the private listener needs no token.
    let openmetrics = scrape(
        &format!("http://127.0.0.1:{metrics_port}/metrics"),
        false,
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert_eq!(
        sample(
            &openmetrics,
            r#"wasaga_runs_started_total{workflow="transfer"}"#
        ),
        Some(5.0)
    );
}

/// An OTLP/HTTP collector and a card processor in one: it keeps the spans it is sent and the
/// headers of the calls the host makes to it as the `psp` participant.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

/// A call the host made to the `psp` participant: its action and `traceparent` header.
type Call = (String, Option<String>);

impl Collector {
    /// Serves on a free port in a thread of its own; returns its base URL.
    fn serve(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = self.clone();
        std::thread::spawn(move || {
            let runtime = crate::support::rt();
            runtime.block_on(async move {
                let router = Router::new()
                    .route("/v1/traces", post(traces))
                    .route("/psp/{action}", post(psp))
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                axum::serve(listener, router)
                    .await
                    .expect("collector serves");
            });
        });
        url
    }
}

async fn traces(State(collector): State<Collector>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut spans = collector.spans.lock().expect("spans");
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            spans.extend(scope.spans);
        }
    }
    ""
}

async fn psp(
    State(collector): State<Collector>,
    Path(action): Path<String>,
    headers: HeaderMap,
) -> axum::Json<Value> {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    collector
        .calls
        .lock()
        .expect("calls")
        .push((action, traceparent));
    axum::Json(json!({ "authorization": "auth-1" }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some(s.clone()),
            Any::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[test]
fn a_traced_run_sends_a_span_per_step_parented_to_the_run_inside_the_callers_trace() {
    let collector = Collector::default();
    let url = collector.serve();
    let s = Sandbox::new("tracing");
    let config = format!(
        "journal = \"wasaga.db\"\n\n[tracing]\notlp_endpoint = \"{url}\"\nservice_name = \"wasaga-test\"\n\n\
         [participants.psp]\nkind = \"http\"\nurl = \"{url}/psp\"\n\n\
         [workflows.card-payment]\nparticipants = [\"psp\", \"ledger\"]\nlock_prefixes = [\"order/\"]\n\n\
         [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n"
    );
    open(&s, &config, &[("alice", 1_000), ("shop", 0)]);
    let mut server = Server::start(&s.dir, "traced", &config, &[]);
    deploy(&server, "card-payment", CARD_PAYMENT);
    deploy(&server, "transfer", TRANSFER);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let start = |workflow: &str, run_id: &str, input: Value| {
        let (status, reply) = request(
            agent()
                .post(&format!(
                    "{}/v1/workflows/{workflow}/runs?wait_ms=20000",
                    server.url()
                ))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("traceparent", &format!("00-{trace_id}-{parent_id}-01"))
                .send(
                    json!({ "run_id": run_id, "input": input })
                        .to_string()
                        .as_bytes(),
                ),
        );
        assert_eq!(status, 201, "{reply}");
        reply
    };
    let paid = start(
        "card-payment",
        "pay-1",
        json!({ "order_id": "o-1", "card": "4111", "merchant": "shop", "amount": 25 }),
    );
    assert_eq!(paid["status"], "completed", "{paid}");
    let refused = start(
        "transfer",
        "refused-1",
        json!({ "from": "alice", "to": "nobody", "amount": 5 }),
    );
    assert_eq!(refused["status"], "compensated", "{refused}");
    // Stopping the server sends what its exporter still holds.
    assert_eq!(server.stop(), Some(0), "{}", server.log_text());

    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = collector.spans.lock().expect("spans").clone();
        let runs = spans.iter().filter(|s| s.name == "run").count();
        if runs >= 2 || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run_of = |run_id: &str| {
        spans
            .iter()
            .find(|s| s.name == "run" && attribute(s, "run_id").as_deref() == Some(run_id))
            .unwrap_or_else(|| panic!("no run span for {run_id} among {:?}", names(&spans)))
    };
    let children_of = |run: &Span, name: &str| -> Vec<String> {
        let mut found: Vec<(u64, String)> = spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == run.span_id)
            .map(|s| {
                (
                    s.start_time_unix_nano,
                    attribute(s, "step").unwrap_or_default(),
                )
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, step)| step).collect()
    };
    for run_id in ["pay-1", "refused-1"] {
        let run = run_of(run_id);
        assert_eq!(
            hex(&run.trace_id),
            trace_id,
            "{run_id} joins the caller's trace"
        );
        assert_eq!(
            hex(&run.parent_span_id),
            parent_id,
            "{run_id}'s parent is the caller"
        );
        assert_eq!(
            attribute(run, "status").as_deref(),
            Some(if run_id == "pay-1" {
                "completed"
            } else {
                "compensated"
            })
        );
    }
    let paid = run_of("pay-1");
    assert_eq!(
        children_of(paid, "step"),
        ["authorize", "capture", "credit-merchant"],
        "one span per step, parented to the run"
    );
    let refused = run_of("refused-1");
    assert_eq!(children_of(refused, "step"), ["debit", "credit"]);
    assert_eq!(children_of(refused, "compensation"), ["debit"]);
    let service = spans.iter().all(|s| s.trace_id == paid.trace_id);
    assert!(service, "every span is in the caller's trace");

    // The processor was called inside the step's span.
    let calls = collector.calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (action, traceparent) in &calls {
        let step = spans
            .iter()
            .find(|s| s.name == "step" && attribute(s, "action").as_deref() == Some(action))
            .expect("the call's step span");
        assert_eq!(
            traceparent.as_deref(),
            Some(format!("00-{trace_id}-{}-01", hex(&step.span_id)).as_str()),
            "{action} carries its step's span as the parent"
        );
    }
}

fn names(spans: &[Span]) -> Vec<(String, Option<String>)> {
    spans
        .iter()
        .map(|s| (s.name.clone(), attribute(s, "run_id")))
        .collect()
}

#[test]
fn a_run_started_without_a_trace_keeps_one_across_its_waits_and_a_dead_collector_is_reported() {
    let collector = Collector::default();
    let url = collector.serve();
    let s = Sandbox::new("tracing-waits");
    let config = format!(
        "journal = \"wasaga.db\"\n\n[tracing]\notlp_endpoint = \"{url}\"\n\n\
         [workflows.waiter]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"acct/\"]\n"
    );
    let mut server = Server::start(&s.dir, "traced", &config, &[]);
    deploy(&server, "waiter", WAITER);
    // No traceparent: the host gives the run a trace of its own, kept in its journal.
    let (status, reply) = server.post(
        "/v1/workflows/waiter/runs",
        &json!({ "run_id": "napper", "input": { "waits": [{ "sleep": { "ms": 300 } }, { "sleep": { "ms": 300 } }] } }),
    );
    assert_eq!(status, 201, "{reply}");
    let done = server.settled("workflow=waiter", 1, Duration::from_secs(30));
    assert_eq!(done["napper"]["status"], "completed");
    assert_eq!(server.stop(), Some(0), "{}", server.log_text());
    let deadline = Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let runs: Vec<Span> = collector
            .spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s.name == "run" && attribute(s, "run_id").as_deref() == Some("napper"))
            .cloned()
            .collect();
        if runs.len() >= 3 || Instant::now() > deadline {
            break runs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        runs.len(),
        3,
        "one span per drive: to each sleep, then to the end"
    );
    assert!(
        runs.iter().all(|r| r.trace_id == runs[0].trace_id),
        "every drive in one trace"
    );
    let statuses: Vec<String> = runs.iter().filter_map(|r| attribute(r, "status")).collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "waiting").count(),
        2,
        "{statuses:?}"
    );

    // A collector that is not there: the runs go on, and the log says spans are lost.
    let dead = format!("http://127.0.0.1:{}", crate::services::free_port());
    let config = config.replace(&url, &dead);
    let s = Sandbox::new("tracing-dead");
    let mut server = Server::start(&s.dir, "dead", &config, &[]);
    deploy(&server, "waiter", WAITER);
    let (status, reply) = server.post(
        "/v1/workflows/waiter/runs?wait_ms=10000",
        &json!({ "run_id": "quick", "input": { "waits": [] } }),
    );
    assert_eq!(
        (status, reply["status"].as_str()),
        (201, Some("completed")),
        "{reply}"
    );
    assert_eq!(server.stop(), Some(0), "{}", server.log_text());
    assert!(
        server.log_text().contains("ExportError"),
        "the failed export is in the log:\n{}",
        server.log_text()
    );
}
