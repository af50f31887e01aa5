//! The web console in a real browser (headless Chromium over the DevTools protocol) against a
//! real `wasaga serve` holding runs in every state: the runs page lists them, a compensated
//! run's timeline shows its undo steps in the order they ran, Retry on a stuck run whose cause
//! was fixed makes it end, and a browser without the right token sees nothing. Screenshots of
//! each page are kept under `target/console-screenshots/`.

use crate::browser::Browser;
use crate::guests::{MISBEHAVE, TRANSFER, WAITER};
use crate::support::{Sandbox, Server, TOKEN, agent, request};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const CONFIG: &str = "journal = \"wasaga.db\"\n\n[limits]\ncompensation_retries_max = 2\n\n\
    [workflows.transfer]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"account/\"]\n\n\
    [workflows.misbehave]\nparticipants = [\"ledger\"]\n\n\
    [workflows.waiter]\nparticipants = [\"ledger\"]\nlock_prefixes = [\"acct/\"]\n";

const PAGE: Duration = Duration::from_secs(20);

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target")
        .join("console-screenshots")
}

fn deploy(server: &Server, workflow: &str, path: &str) {
    let bytes = std::fs::read(path).expect("guest built by tests/build.rs");
    let (status, reply) = server.upload(&format!("/v1/workflows/{workflow}/versions"), &bytes);
    assert!(status == 200 || status == 201, "deploy {workflow}: {reply}");
}

fn start(server: &Server, workflow: &str, run_id: &str, input: Value) -> Value {
    let (status, reply) = server.post(
        &format!("/v1/workflows/{workflow}/runs?wait_ms=20000"),
        &json!({ "input": input, "run_id": run_id }),
    );
    assert!(status == 201 || status == 200, "start {run_id}: {reply}");
    reply
}

/// A server with a completed, a compensated, a stuck and a waiting run.
fn server_with_runs(s: &Sandbox) -> Server {
    std::fs::write(s.dir.join("wasaga.toml"), CONFIG).expect("config");
    let config = s.dir.join("wasaga.toml").display().to_string();
    for (account, balance) in [("alice", 1_000), ("bob", 500)] {
        let out = s.wasaga(&[
            "--config",
            &config,
            "ledger",
            "open",
            account,
            "--balance",
            &balance.to_string(),
        ]);
        assert!(out.status.success(), "{}", crate::support::text(&out));
    }
    let server = Server::start(&s.dir, "console", CONFIG, &[]);
    deploy(&server, "transfer", TRANSFER);
    deploy(&server, "misbehave", MISBEHAVE);
    deploy(&server, "waiter", WAITER);
    let done = start(
        &server,
        "transfer",
        "pay-done",
        json!({ "from": "alice", "to": "bob", "amount": 10 }),
    );
    assert_eq!(done["status"], "completed", "{done}");
    let refused = start(
        &server,
        "transfer",
        "pay-refused",
        json!({ "from": "alice", "to": "nobody", "amount": 10 }),
    );
    assert_eq!(refused["status"], "compensated", "{refused}");
    // Credits bob, pays all of bob's money out with no compensation, and fails: the undo of
    // the credit cannot succeed until bob is funded again.
    let stuck = start(
        &server,
        "misbehave",
        "pay-stuck",
        json!({ "mode": "drain", "from": "alice", "to": "bob", "amount": 10 }),
    );
    assert_eq!(stuck["status"], "stuck", "{stuck}");
    let waiting = start(
        &server,
        "waiter",
        "pay-waiting",
        json!({ "waits": [{ "signal": { "name": "3ds", "timeout_ms": 600_000 } }] }),
    );
    assert!(waiting["waiting"].is_object(), "{waiting}");
    server
}

fn signed_in(browser: &mut Browser, server: &Server) {
    browser.goto(&format!("{}/ui", server.url()));
    browser.wait_for("document.querySelector('#login-token')", PAGE);
    browser.type_into("#login-token", TOKEN);
    browser.click("#login-submit");
    browser.wait_for("document.body.dataset.loaded === 'runs'", PAGE);
}

/// The runs the runs table shows, as `(run id, status)`.
fn listed(browser: &mut Browser) -> Vec<(String, String)> {
    let rows = browser.eval(
        "[...document.querySelectorAll('#runs-table tr[data-run-id]')].map(r => [r.dataset.runId, r.dataset.status])",
    );
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[0].as_str().expect("id").to_owned(),
                r[1].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_console_lists_runs_draws_timelines_and_retries_a_stuck_run_in_a_real_browser() {
    let s = Sandbox::new("console");
    let server = server_with_runs(&s);
    let mut browser = Browser::start();
    let shots = screenshots();

    // The runs page lists every run, with what it is doing.
    signed_in(&mut browser, &server);
    let mut runs = listed(&mut browser);
    runs.sort();
    assert_eq!(
        runs,
        [
            ("pay-done".to_owned(), "completed".to_owned()),
            ("pay-refused".to_owned(), "compensated".to_owned()),
            ("pay-stuck".to_owned(), "stuck".to_owned()),
            ("pay-waiting".to_owned(), "waiting".to_owned()),
        ]
    );
    browser.screenshot(&shots.join("runs.png"));

    // A completed transfer's timeline shows the two locks it held, with their tokens.
    browser.goto(&format!("{}/ui#/runs/pay-done", server.url()));
    browser.wait_for("document.body.dataset.loaded === 'run'", PAGE);
    let locks = browser
        .eval("[...document.querySelectorAll('#timeline .timeline-lock')].map(r => r.innerText)");
    let locks = locks.as_array().expect("lock rows");
    assert_eq!(locks.len(), 2, "{locks:?}");
    assert!(
        locks.iter().all(|l| l
            .as_str()
            .is_some_and(|t| t.contains("account/") && t.contains("token"))),
        "each lock with its key and fencing token: {locks:?}"
    );

    // The waiting run shows its wait; Cancel stops it, and it compensates.
    browser.goto(&format!("{}/ui#/runs/pay-waiting", server.url()));
    browser.wait_for("document.body.dataset.loaded === 'run'", PAGE);
    let waits = browser.eval("document.querySelectorAll('#timeline .timeline-wait').length");
    assert_eq!(waits, json!(1));
    browser.click("#run-cancel");
    browser.type_into("#cancel-reason", "customer left");
    browser.click("#cancel-confirm");
    let deadline = std::time::Instant::now() + PAGE;
    let cancelled = loop {
        let (_, run) = server.get("/v1/runs/pay-waiting");
        if run["status"] == "compensated" {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Cancel did not end the run: {run}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        cancelled["error"]
            .as_str()
            .is_some_and(|e| e.contains("customer left")),
        "{cancelled}"
    );

    // A compensated run's timeline: its steps, then the undo of the debit.
    browser.goto(&format!("{}/ui#/runs/pay-refused", server.url()));
    browser.wait_for("document.body.dataset.loaded === 'run'", PAGE);
    let steps = browser.eval(
        "[...document.querySelectorAll('#timeline .timeline-step')].map(r => r.dataset.step)",
    );
    assert_eq!(steps, json!(["debit", "credit"]), "forward steps");
    let undone = browser.eval(
        "[...document.querySelectorAll('#timeline .timeline-undo')].map(r => r.dataset.step)",
    );
    assert_eq!(undone, json!(["debit"]), "the debit was undone");

    // The stuck run: its reason, and Retry once its cause is fixed.
    browser.goto(&format!("{}/ui#/stuck", server.url()));
    browser.wait_for("document.body.dataset.loaded === 'stuck'", PAGE);
    let stuck = browser.eval(
        "[...document.querySelectorAll('#stuck-table tr[data-run-id]')].map(r => [r.dataset.runId, r.innerText])",
    );
    assert_eq!(stuck[0][0], "pay-stuck", "{stuck}");
    assert!(
        stuck[0][1]
            .as_str()
            .is_some_and(|t| t.contains("insufficient funds")),
        "the reason is shown: {stuck}"
    );
    browser.screenshot(&shots.join("stuck.png"));
    // An operator refunds bob, so the undo of the credit can go through now.
    let refund = start(
        &server,
        "transfer",
        "refund-bob",
        json!({ "from": "alice", "to": "bob", "amount": 10 }),
    );
    assert_eq!(refund["status"], "completed", "{refund}");
    browser.click("#stuck-table tr[data-run-id='pay-stuck'] button.retry");
    let deadline = std::time::Instant::now() + PAGE;
    loop {
        let (_, run) = server.get("/v1/runs/pay-stuck");
        if run["status"] == "compensated" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Retry did not end the run: {run}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Its timeline: both undos, the credit's before the debit's, as they ran.
    browser.goto(&format!("{}/ui#/runs/pay-stuck", server.url()));
    browser.wait_for(
        "document.body.dataset.loaded === 'run' && document.querySelectorAll('#timeline .timeline-undo').length >= 2",
        PAGE,
    );
    let undone = browser.eval(
        "[...document.querySelectorAll('#timeline .timeline-undo')].map(r => r.dataset.step)",
    );
    assert_eq!(undone, json!(["credit", "debit"]), "undone newest first");
    browser.click("#timeline .timeline-undo");
    browser.wait_for(
        "document.querySelector('#timeline-detail') && document.querySelector('#timeline-detail').innerText.includes('credit')",
        PAGE,
    );
    browser.screenshot(&shots.join("run-timeline.png"));

    for (page, loaded) in [("workflows", "workflows"), ("accounts", "accounts")] {
        browser.goto(&format!("{}/ui#/{page}", server.url()));
        browser.wait_for(
            &format!("document.body.dataset.loaded === '{loaded}'"),
            PAGE,
        );
        browser.screenshot(&shots.join(format!("{page}.png")));
    }
    let shown = browser.eval("document.querySelector('#accounts-table').innerText");
    assert!(
        shown
            .as_str()
            .is_some_and(|t| t.contains("alice") && t.contains("bob")),
        "{shown}"
    );
}

#[test]
fn a_browser_without_the_token_sees_nothing_and_cannot_act() {
    let s = Sandbox::new("console-denied");
    let server = server_with_runs(&s);
    let mut browser = Browser::start();
    browser.goto(&format!("{}/ui", server.url()));
    browser.wait_for("document.querySelector('#login-token')", PAGE);
    browser.type_into("#login-token", "not-the-token-at-all");
    browser.click("#login-submit");
    browser.wait_for(
        "document.querySelector('#login-error') && document.querySelector('#login-error').innerText.length > 0",
        PAGE,
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#runs-table tr[data-run-id]').length"),
        json!(0),
        "no run is shown"
    );
    browser.screenshot(&screenshots().join("login-refused.png"));
    // The page's own requests get nothing either.
    let asked = browser.eval("fetch('/v1/runs', {credentials: 'same-origin'}).then(r => r.status)");
    assert_eq!(asked, json!(401));
    let retried = browser.eval(
        "fetch('/v1/runs/pay-stuck/retry', {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)",
    );
    assert_eq!(retried, json!(401));
    let (_, run) = server.get("/v1/runs/pay-stuck");
    assert_eq!(run["status"], "stuck", "nothing was retried");

    // Signed in, a request without the CSRF header (as another site's form would send it)
    // is refused, and one from another origin too.
    browser.type_into("#login-token", TOKEN);
    browser.click("#login-submit");
    browser.wait_for("document.body.dataset.loaded === 'runs'", PAGE);
    let forged = browser.eval(
        "fetch('/v1/runs/pay-waiting/cancel', {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)",
    );
    assert_eq!(forged, json!(403), "no CSRF header");
    let session = browser.eval("document.cookie");
    let csrf = session
        .as_str()
        .and_then(|c| c.split("; ").find_map(|p| p.strip_prefix("wasaga_csrf=")))
        .expect("the CSRF cookie is readable")
        .to_owned();
    let (status, _) = request(
        agent()
            .post(&format!("{}/v1/runs/pay-waiting/cancel", server.url()))
            .header("Cookie", &format!("wasaga_csrf={csrf}"))
            .header("X-Wasaga-CSRF", &csrf)
            .header("Content-Type", "application/json")
            .send("{}".as_bytes()),
    );
    assert_eq!(status, 401, "the CSRF cookie alone is no session");
    let (_, run) = server.get("/v1/runs/pay-waiting");
    assert!(run["waiting"].is_object(), "still waiting: {run}");
    // Signed out, the session is gone.
    browser.click("#logout");
    browser.wait_for("document.querySelector('#login-token')", PAGE);
    let after = browser.eval("fetch('/v1/runs', {credentials: 'same-origin'}).then(r => r.status)");
    assert_eq!(after, json!(401));
}

#[test]
fn sign_ins_have_a_budget_and_a_signed_out_session_stays_out() {
    let s = Sandbox::new("console-sessions");
    let server = server_with_runs(&s);
    let sign_in = |token: &str| {
        agent()
            .post(&format!("{}/ui/login", server.url()))
            .header("Content-Type", "application/json")
            .send(json!({ "token": token }).to_string().as_bytes())
            .expect("the server answers")
    };
    // Wrong tokens: refused at once, a few a second with 401, then 429; no request slot is
    // held, and the probes answer meanwhile.
    let statuses: Vec<u16> = (0..40)
        .map(|_| sign_in("wrong-token-guess").status().as_u16())
        .collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&429),
        "{statuses:?}"
    );
    let (status, _) = request(agent().get(&format!("{}/healthz", server.url())).call());
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(1_100));
    let response = sign_in(TOKEN);
    assert_eq!(response.status().as_u16(), 204);
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("wasaga_session="))
        .expect("a session cookie")
        .clone();
    let csrf = cookies
        .iter()
        .find_map(|c| c.strip_prefix("wasaga_csrf="))
        .expect("a csrf cookie")
        .to_owned();
    let with_session = |cookie: &str| {
        request(
            agent()
                .get(&format!("{}/v1/runs?limit=1", server.url()))
                .header("Cookie", cookie)
                .call(),
        )
        .0
    };
    assert_eq!(with_session(&session), 200);
    // A junk session cookie set first (by another site on this host) hides nothing.
    assert_eq!(
        with_session(&format!("wasaga_session=junk.00; {session}")),
        200
    );
    // Behind a proxy that says which host the browser asked for, actions are allowed.
    let (status, reply) = request(
        agent()
            .post(&format!("{}/v1/runs/pay-waiting/cancel", server.url()))
            .header("Cookie", &session)
            .header("X-Wasaga-CSRF", &csrf)
            .header("Origin", "https://ops.example")
            .header("X-Forwarded-Host", "ops.example")
            .header("Content-Type", "application/json")
            .send(json!({ "reason": "via the proxy" }).to_string().as_bytes()),
    );
    assert_eq!(status, 202, "{reply}");
    // Signed out, the same cookie is refused by this server.
    let (status, _) = request(
        agent()
            .post(&format!("{}/ui/logout", server.url()))
            .header("Cookie", &session)
            .header("X-Wasaga-CSRF", &csrf)
            .header("Content-Type", "application/json")
            .send("{}".as_bytes()),
    );
    assert_eq!(status, 204);
    assert_eq!(with_session(&session), 401);
}

#[test]
fn listings_and_retries_hold_against_hostile_callers() {
    let s = Sandbox::new("console-hostile");
    let server = server_with_runs(&s);
    // Eighty runs with inputs of 60 KB each: a page of them stops at the listing's byte
    // bound, and the pages together list every run once.
    let blob = "x".repeat(60 << 10);
    for i in 0..80 {
        let (status, reply) = server.post(
            "/v1/workflows/waiter/runs",
            &json!({ "run_id": format!("big-{i:02}"), "input": { "debit": "alice", "amount": 1, "waits": [{ "child": { "workflow": "nope", "input": { "blob": blob } } }] } }),
        );
        assert_eq!(status, 201, "{reply}");
    }
    let (mut seen, mut query, mut pages) = (Vec::new(), "/v1/runs?limit=1000".to_owned(), 0);
    loop {
        let (status, page) = server.get(&query);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let runs = page["runs"].as_array().expect("runs");
        seen.extend(
            runs.iter()
                .filter_map(|r| r["run_id"].as_str().map(str::to_owned)),
        );
        match page["next"].as_object() {
            Some(next) => {
                query = format!(
                    "/v1/runs?limit=1000&before_ms={}&before_id={}",
                    next["before_ms"],
                    crate::support::encoded(next["before_id"].as_str().expect("id"))
                );
            }
            None => break,
        }
    }
    assert!(pages >= 2, "a page stops at its byte bound");
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(
        (seen.len(), total),
        (84, 84),
        "each run once over the pages"
    );
    let (status, reply) = server.get("/v1/runs?since_ms=9223372036854775808");
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = server.get("/v1/run-counts?until_ms=18446744073709551615");
    assert_eq!(status, 400, "{reply}");
    // A cancellation's reason may not reverse how it reads.
    let (status, reply) = server.post(
        "/v1/runs/pay-waiting/cancel",
        &json!({ "reason": "refund \u{202e}000,1 of" }),
    );
    assert_eq!(status, 400, "{reply}");
    // Two retries of one stuck run at once: one takes it, the other is told so, and the
    // money moves once.
    let stuck = || {
        let url = format!("{}/v1/runs/pay-stuck/retry", server.url());
        std::thread::spawn(move || {
            request(
                agent()
                    .post(&url)
                    .header("Authorization", &format!("Bearer {TOKEN}"))
                    .header("Content-Type", "application/json")
                    .send("{}".as_bytes()),
            )
        })
    };
    let (a, b) = (stuck(), stuck());
    let (a, b) = (a.join().expect("a"), b.join().expect("b"));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert!(
        statuses == [200, 409] || statuses == [200, 200],
        "{a:?} {b:?}"
    );
    for (status, reply) in [&a, &b] {
        if *status == 409 {
            assert!(
                reply["error"].as_str().is_some_and(
                    |e| e.contains("being retried on this host") || e.contains("not stuck")
                ),
                "{reply}"
            );
        }
    }
    let (_, run) = server.get("/v1/runs/pay-stuck");
    assert_eq!(run["status"], "stuck", "its cause is not fixed: {run}");
    assert_eq!(s.balances().values().sum::<i64>(), 1_500);
}
