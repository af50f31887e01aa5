//! `card-processor`: a card processor to test wasaga's `http` participants against, in a
//! process of its own. It keeps cards with a limit, and applies each operation at most once by
//! its `Idempotency-Key`, answering a repeated key as the first time:
//!
//! - `POST /v1/authorize {card, amount, order}` holds `amount` of the card's limit;
//! - `POST /v1/capture {authorization, amount}` takes what was held;
//! - `POST /v1/void {}` releases the authorization named by `Wasaga-Undoes` (or the body's
//!   `authorization`); one that never arrived is fenced, so a late authorize is refused;
//! - `POST /v1/refund {}` gives back the capture named the same way, fenced likewise;
//! - `POST /v1/prepare`, `/v1/commit`, `/v1/abort`, `GET /v1/prepared`: two-phase debits and
//!   credits of a card's limit, as the `http` participant's protocol says.
//!
//! Stale fencing tokens (lower than one seen for the same lock) are refused. Fault switches
//! (`POST /admin/faults`) make the next calls of an action answer 500 (before or after
//! applying), decline with 402, answer 429 with `Retry-After`, apply and then hang, close the connection or answer HTML, or answer
//! slowly.
//! `GET /admin/state` shows the cards, every applied operation, the calls' arrival times and
//! the most calls ever in flight at once; `GET /admin/report` the same for a person.
//!
//! It is also a webhook receiver for the outbox (`POST /hooks/{sink}`): it checks each
//! delivery's signature against `--webhook-secret` and keeps every delivery it gets.
//!
//! `card-processor [--listen 127.0.0.1:0] [--card NAME=LIMIT]... [--webhook-secret S]` prints
//! `listening on http://ADDR` once it accepts connections.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Card {
    limit: i64,
    held: i64,
    captured: i64,
}

impl Card {
    fn available(&self) -> i64 {
        self.limit - self.held - self.captured
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Authorization {
    card: String,
    amount: i64,
    /// `authorized`, `captured`, `voided`, `refunded`.
    state: String,
    /// The capture's key, once captured.
    capture: Option<String>,
}

/// What the next calls of an action do instead of answering at once.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
struct Faults {
    /// The action they apply to; every action if none.
    action: Option<String>,
    fail_500: u32,
    /// Apply, then answer 500 anyway.
    fail_after_apply: u32,
    /// Refuse with 402 without applying.
    decline: u32,
    throttle_429: u32,
    retry_after_s: u64,
    /// Apply, then wait this long before answering, for the next `hang_after_apply` calls.
    hang_after_apply: u32,
    hang_ms: u64,
    close_after_apply: u32,
    /// Apply, then answer 200 with a body that is not JSON (a proxy's error page, say).
    garbage: u32,
    /// Every call waits this long before it is handled.
    slow_ms: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    cards: BTreeMap<String, Card>,
    authorizations: HashMap<String, Authorization>,
    /// Answers by idempotency key: the request body and the answer.
    answers: HashMap<String, (String, u16, Value)>,
    /// Keys a compensation fenced before their action arrived.
    fenced: HashSet<String>,
    /// Applied operations in order: `{key, action, card, amount}`.
    applied: Vec<Value>,
    /// Prepared two-phase branches by `(xid, branch)`: `(card, signed amount)`.
    prepared: BTreeMap<(String, i64), (String, i64)>,
    committed: HashSet<(String, i64)>,
    aborted: HashSet<String>,
    /// The highest fencing token seen per lock.
    tokens: HashMap<String, u64>,
    faults: Faults,
    /// Arrival of each `/v1` call, in ms since start, with its action.
    arrivals: Vec<(u64, String)>,
    /// Webhook deliveries received, in order, duplicates included.
    hooks: Vec<Value>,
    bad_signatures: u64,
}

#[derive(Debug)]
struct Shared {
    ledger: Mutex<Ledger>,
    webhook_secret: Option<String>,
    started: Instant,
    in_flight: AtomicU64,
    in_flight_max: AtomicU64,
}

type App = Arc<Shared>;

fn answer(status: u16, body: Value) -> (u16, Value) {
    (status, body)
}

fn refuse(status: u16, error: impl Into<String>) -> (u16, Value) {
    (status, json!({ "error": error.into() }))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A body that fails at once: the connection is dropped instead of an answer.
struct Broken;

impl futures_core::Stream for Broken {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(Some(Err(std::io::Error::other("closed after applying"))))
    }
}

/// Counts the call in flight while it lives.
struct InFlight(App);

impl InFlight {
    fn new(app: &App) -> Self {
        let now = app.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        app.in_flight_max.fetch_max(now, Ordering::SeqCst);
        InFlight(app.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes one of `count` if the faults apply to `action`.
fn take(count: &mut u32, applies: bool) -> bool {
    if applies && *count > 0 {
        *count -= 1;
        true
    } else {
        false
    }
}

async fn call(
    State(app): State<App>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _counted = InFlight::new(&app);
    let (slow, fail, decline, throttle, hang, close, garbage, fail_after) = {
        let mut ledger = app.ledger.lock().expect("lock");
        let at = app.started.elapsed().as_millis() as u64;
        ledger.arrivals.push((at, action.clone()));
        let faults = &mut ledger.faults;
        let applies = faults.action.as_deref().is_none_or(|a| a == action);
        let slow = if applies { faults.slow_ms } else { 0 };
        let fail = take(&mut faults.fail_500, applies);
        let decline = take(&mut faults.decline, applies && !fail);
        let throttle =
            take(&mut faults.throttle_429, applies && !fail).then_some(faults.retry_after_s);
        let hang = take(&mut faults.hang_after_apply, applies && !fail).then_some(faults.hang_ms);
        let close = take(
            &mut faults.close_after_apply,
            applies && !fail && hang.is_none(),
        );
        let garbage = take(&mut faults.garbage, applies && !fail);
        let fail_after = take(&mut faults.fail_after_apply, applies && !fail);
        (
            slow, fail, decline, throttle, hang, close, garbage, fail_after,
        )
    };
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response();
    }
    if decline {
        return (
            StatusCode::PAYMENT_REQUIRED,
            r#"{"error":"declined by the issuer"}"#,
        )
            .into_response();
    }
    if let Some(seconds) = throttle {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", seconds.to_string())],
            "slow down",
        )
            .into_response();
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let (status, reply) = apply(&app, &action, &headers, &text);
    if let Some(ms) = hang {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fail_after {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failed after applying").into_response();
    }
    if garbage {
        return (StatusCode::OK, "<html>502 Bad Gateway</html>").into_response();
    }
    if close {
        return Response::builder()
            .status(200)
            .body(Body::from_stream(Broken))
            .expect("a response");
    }
    let status = StatusCode::from_u16(status).expect("a status");
    (status, reply.to_string()).into_response()
}

/// Applies one call under the lock, at most once per key.
fn apply(app: &App, action: &str, headers: &HeaderMap, body: &str) -> (u16, Value) {
    let mut ledger = app.ledger.lock().expect("lock");
    let two_phase = matches!(action, "prepare" | "commit" | "abort");
    let Some(key) = header(headers, "idempotency-key") else {
        return refuse(400, "Idempotency-Key is required");
    };
    if let Some((first, status, reply)) = ledger.answers.get(&key) {
        if first != body {
            return refuse(422, format!("key {key} was used for another request"));
        }
        return answer(*status, reply.clone());
    }
    if ledger.fenced.contains(&key) {
        return refuse(409, format!("{key} was cancelled before it arrived"));
    }
    for pair in header(headers, "wasaga-fencing-tokens")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let Some((lock, token)) = pair.split_once('=') else {
            return refuse(400, "malformed Wasaga-Fencing-Tokens");
        };
        let Ok(token) = token.parse::<u64>() else {
            return refuse(400, "malformed fencing token");
        };
        let seen = ledger.tokens.entry(lock.to_owned()).or_default();
        if token < *seen {
            return refuse(409, format!("stale fencing token {token} for {lock}"));
        }
        *seen = token;
    }
    let Ok(request) = serde_json::from_str::<Value>(body) else {
        return refuse(400, "the body must be JSON");
    };
    let undoes = header(headers, "wasaga-undoes");
    let applied_before = ledger.applied.len();
    let (status, reply) = match action {
        "authorize" => authorize(&mut ledger, &key, &request),
        "capture" => capture(&mut ledger, &key, &request),
        "void" => void(&mut ledger, &key, undoes.clone(), &request),
        "refund" => refund(&mut ledger, &key, undoes.clone(), &request),
        "prepare" => prepare(&mut ledger, &key, &request),
        "commit" | "abort" => decide(&mut ledger, &key, action == "commit", &request),
        other => refuse(404, format!("no action {other}")),
    };
    // What was applied says for which run, and what it undid.
    let run = header(headers, "wasaga-run-id");
    for entry in &mut ledger.applied[applied_before..] {
        entry["run"] = json!(run);
        entry["undoes"] = json!(undoes);
    }
    // A commit that is not complete yet may be asked again and answer otherwise.
    if !(two_phase && status >= 400) {
        ledger
            .answers
            .insert(key, (body.to_owned(), status, reply.clone()));
    }
    (status, reply)
}

fn field<'a>(request: &'a Value, name: &str) -> Option<&'a Value> {
    request.get(name)
}

fn authorize(ledger: &mut Ledger, key: &str, request: &Value) -> (u16, Value) {
    let (Some(card), Some(amount)) = (
        field(request, "card").and_then(Value::as_str),
        field(request, "amount").and_then(Value::as_i64),
    ) else {
        return refuse(400, "authorize needs card and amount");
    };
    if amount <= 0 {
        return refuse(400, "amount must be positive");
    }
    let Some(account) = ledger.cards.get_mut(card) else {
        return refuse(404, format!("no card {card}"));
    };
    if account.available() < amount {
        return refuse(402, format!("card {card} declined: insufficient funds"));
    }
    account.held += amount;
    // The authorization is named by its key: that is also what a compensation names.
    ledger.authorizations.insert(
        key.to_owned(),
        Authorization {
            card: card.to_owned(),
            amount,
            state: "authorized".to_owned(),
            capture: None,
        },
    );
    ledger
        .applied
        .push(json!({"key": key, "action": "authorize", "card": card, "amount": amount}));
    answer(200, json!({ "authorization": key, "amount": amount }))
}

/// The authorization `name`, if it exists.
fn authorization_id(ledger: &Ledger, name: &str) -> Option<String> {
    ledger
        .authorizations
        .contains_key(name)
        .then(|| name.to_owned())
}

fn capture(ledger: &mut Ledger, key: &str, request: &Value) -> (u16, Value) {
    let (Some(name), Some(amount)) = (
        field(request, "authorization").and_then(Value::as_str),
        field(request, "amount").and_then(Value::as_i64),
    ) else {
        return refuse(400, "capture needs authorization and amount");
    };
    let Some(id) = authorization_id(ledger, name) else {
        return refuse(404, format!("no authorization {name}"));
    };
    let auth = ledger.authorizations[&id].clone();
    if auth.state != "authorized" {
        return refuse(409, format!("authorization {id} is {}", auth.state));
    }
    if amount != auth.amount {
        return refuse(
            422,
            format!("capture of {amount} but {} was authorized", auth.amount),
        );
    }
    let card = ledger
        .cards
        .get_mut(&auth.card)
        .expect("authorized on a card");
    card.held -= amount;
    card.captured += amount;
    let entry = ledger.authorizations.get_mut(&id).expect("found");
    entry.state = "captured".to_owned();
    entry.capture = Some(key.to_owned());
    ledger.applied.push(
        json!({"key": key, "action": "capture", "card": auth.card, "amount": amount, "authorization": id}),
    );
    answer(
        200,
        json!({ "capture": key, "authorization": id, "amount": amount }),
    )
}

/// The authorization a compensation names: the body's, or the one the undone key created.
/// `None` when the undone key never arrived: it is fenced then.
fn undone(
    ledger: &mut Ledger,
    undoes: Option<String>,
    request: &Value,
) -> Result<Option<String>, (u16, Value)> {
    if let Some(name) = field(request, "authorization").and_then(Value::as_str) {
        return authorization_id(ledger, name)
            .map(Some)
            .ok_or_else(|| refuse(404, format!("no authorization {name}")));
    }
    let Some(undoes) = undoes else {
        return Err(refuse(400, "name the authorization, or send Wasaga-Undoes"));
    };
    if let Some(id) = authorization_id(ledger, &undoes) {
        return Ok(Some(id));
    }
    // A capture key names the authorization it captured.
    let captured = ledger
        .authorizations
        .iter()
        .find(|(_, a)| a.capture.as_deref() == Some(undoes.as_str()))
        .map(|(id, _)| id.clone());
    if captured.is_none() {
        ledger.fenced.insert(undoes);
    }
    Ok(captured)
}

fn void(ledger: &mut Ledger, key: &str, undoes: Option<String>, request: &Value) -> (u16, Value) {
    let id = match undone(ledger, undoes, request) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return answer(
                200,
                json!({ "voided": false, "reason": "never authorized" }),
            );
        }
        Err(refusal) => return refusal,
    };
    let auth = ledger.authorizations[&id].clone();
    if auth.state != "authorized" {
        // Captured (a refund gives it back) or voided already: nothing is held.
        return answer(200, json!({ "voided": false, "reason": auth.state }));
    }
    ledger.cards.get_mut(&auth.card).expect("card").held -= auth.amount;
    ledger.authorizations.get_mut(&id).expect("found").state = "voided".to_owned();
    ledger.applied.push(
        json!({"key": key, "action": "void", "card": auth.card, "amount": auth.amount, "authorization": id}),
    );
    answer(200, json!({ "voided": true, "authorization": id }))
}

fn refund(ledger: &mut Ledger, key: &str, undoes: Option<String>, request: &Value) -> (u16, Value) {
    let id = match undone(ledger, undoes, request) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return answer(
                200,
                json!({ "refunded": false, "reason": "never captured" }),
            );
        }
        Err(refusal) => return refusal,
    };
    let auth = ledger.authorizations[&id].clone();
    if auth.state != "captured" {
        return answer(200, json!({ "refunded": false, "reason": auth.state }));
    }
    let card = ledger.cards.get_mut(&auth.card).expect("card");
    card.captured -= auth.amount;
    ledger.authorizations.get_mut(&id).expect("found").state = "refunded".to_owned();
    ledger.applied.push(
        json!({"key": key, "action": "refund", "card": auth.card, "amount": auth.amount, "authorization": id}),
    );
    answer(200, json!({ "refunded": true, "authorization": id }))
}

fn prepare(ledger: &mut Ledger, key: &str, request: &Value) -> (u16, Value) {
    let get = |name: &str| field(request, name);
    let (Some(xid), Some(branch), Some(card), Some(action), Some(amount)) = (
        get("xid").and_then(Value::as_str),
        get("branch").and_then(Value::as_i64),
        get("account").and_then(Value::as_str),
        get("action").and_then(Value::as_str),
        get("amount").and_then(Value::as_i64),
    ) else {
        return refuse(400, "prepare needs xid, branch, account, action and amount");
    };
    if ledger.aborted.contains(xid) {
        return refuse(409, format!("transaction {xid} was aborted"));
    }
    let slot = (xid.to_owned(), branch);
    if ledger.prepared.contains_key(&slot) || ledger.committed.contains(&slot) {
        return answer(200, json!({ "prepared": true }));
    }
    let Some(account) = ledger.cards.get_mut(card) else {
        return refuse(404, format!("no card {card}"));
    };
    let signed = match action {
        "debit" if account.available() >= amount => {
            account.held += amount;
            -amount
        }
        "debit" => return refuse(402, format!("card {card}: insufficient funds")),
        "credit" => amount,
        other => return refuse(400, format!("cannot prepare {other}")),
    };
    ledger.prepared.insert(slot, (card.to_owned(), signed));
    ledger
        .applied
        .push(json!({"key": key, "action": "prepare", "card": card, "amount": signed}));
    answer(200, json!({ "prepared": true }))
}

fn decide(ledger: &mut Ledger, key: &str, commit: bool, request: &Value) -> (u16, Value) {
    let Some(xid) = field(request, "xid").and_then(Value::as_str) else {
        return refuse(400, "a decision needs xid");
    };
    if !commit {
        ledger.aborted.insert(xid.to_owned());
    }
    let branches: Vec<(String, i64)> = ledger
        .prepared
        .keys()
        .filter(|(x, _)| x == xid)
        .cloned()
        .collect();
    for slot in branches {
        let (card, signed) = ledger.prepared.remove(&slot).expect("listed");
        let account = ledger.cards.get_mut(&card).expect("card");
        match (commit, signed < 0) {
            (true, true) => {
                account.held += signed;
                account.limit += signed;
            }
            (true, false) => account.limit += signed,
            (false, true) => account.held += signed,
            (false, false) => {}
        }
        ledger.applied.push(json!({"key": key, "action": if commit {"commit"} else {"abort"}, "card": card, "amount": signed}));
        if commit {
            ledger.committed.insert(slot);
        }
    }
    if commit && let Some(expected) = field(request, "branches").and_then(Value::as_array) {
        let missing: Vec<i64> = expected
            .iter()
            .filter_map(Value::as_i64)
            .filter(|b| !ledger.committed.contains(&(xid.to_owned(), *b)))
            .collect();
        if !missing.is_empty() {
            return refuse(
                409,
                format!("branches {missing:?} of {xid} are not prepared"),
            );
        }
    }
    answer(200, json!({ "xid": xid, "committed": commit }))
}

/// `POST /hooks/{sink}`: a webhook receiver for the outbox. Checks the signature with the
/// secret given by `--webhook-secret` and keeps every delivery, duplicates included. The
/// `hook` action's faults apply (`fail_500`, `slow_ms`).
async fn hook(
    State(app): State<App>,
    Path(sink): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _counted = InFlight::new(&app);
    let (slow, fail) = {
        let mut ledger = app.ledger.lock().expect("lock");
        let faults = &mut ledger.faults;
        let applies = faults.action.as_deref() == Some("hook");
        let slow = if applies { faults.slow_ms } else { 0 };
        (slow, take(&mut faults.fail_500, applies))
    };
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "receiver down").into_response();
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let signed = match (
        &app.webhook_secret,
        header(&headers, "wasaga-timestamp"),
        header(&headers, "wasaga-signature"),
    ) {
        (Some(secret), Some(timestamp), Some(signature)) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
            mac.update(format!("{timestamp}.{text}").as_bytes());
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            signature == format!("sha256={hex}")
        }
        _ => false,
    };
    let mut ledger = app.ledger.lock().expect("lock");
    if !signed {
        ledger.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let record: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    ledger.hooks.push(json!({
        "sink": sink,
        "event_id": header(&headers, "wasaga-event-id"),
        "record": record,
    }));
    StatusCode::NO_CONTENT.into_response()
}

async fn prepared(State(app): State<App>) -> Response {
    let ledger = app.ledger.lock().expect("lock");
    let mut xids: Vec<&String> = ledger.prepared.keys().map(|(x, _)| x).collect();
    xids.dedup();
    axum::Json(json!({ "xids": xids })).into_response()
}

async fn state(State(app): State<App>) -> Response {
    let ledger = app.ledger.lock().expect("lock");
    axum::Json(json!({
        "cards": ledger.cards,
        "applied": ledger.applied,
        "arrivals": ledger.arrivals,
        "in_flight_max": app.in_flight_max.load(Ordering::SeqCst),
        "hooks": ledger.hooks,
        "bad_signatures": ledger.bad_signatures,
        "aborted": ledger.aborted.iter().collect::<std::collections::BTreeSet<_>>(),
        "authorizations": ledger.authorizations.iter().collect::<BTreeMap<_, _>>(),
    }))
    .into_response()
}

/// What was applied and the cards, as text for a person.
async fn report(State(app): State<App>) -> String {
    let ledger = app.ledger.lock().expect("lock");
    let mut text = String::new();
    for op in &ledger.applied {
        text.push_str(&format!(
            "  {:<10} {:>6}  key {}\n",
            op["action"].as_str().unwrap_or_default(),
            op["amount"].as_i64().unwrap_or_default(),
            op["key"].as_str().unwrap_or_default()
        ));
    }
    for (name, card) in &ledger.cards {
        text.push_str(&format!(
            "  card {name}: limit {}, held {}, captured {}\n",
            card.limit, card.held, card.captured
        ));
    }
    text
}

async fn faults(State(app): State<App>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            app.ledger.lock().expect("lock").faults = faults;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn open_card(State(app): State<App>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "JSON please").into_response();
    };
    let (Some(card), Some(limit)) = (
        request.get("card").and_then(Value::as_str),
        request.get("limit").and_then(Value::as_i64),
    ) else {
        return (StatusCode::BAD_REQUEST, "card and limit").into_response();
    };
    app.ledger.lock().expect("lock").cards.insert(
        card.to_owned(),
        Card {
            limit,
            ..Card::default()
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

fn usage(message: &str) -> ! {
    eprintln!(
        "card-processor: {message}\nusage: card-processor [--listen 127.0.0.1:0] [--card NAME=LIMIT]... [--webhook-secret S]"
    );
    std::process::exit(2);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut cards = BTreeMap::new();
    let mut webhook_secret = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .unwrap_or_else(|| usage("--listen needs an address"))
            }
            "--card" => {
                let spec = args
                    .next()
                    .unwrap_or_else(|| usage("--card needs NAME=LIMIT"));
                let Some((name, limit)) = spec.split_once('=') else {
                    usage("--card needs NAME=LIMIT");
                };
                let limit = limit
                    .parse()
                    .unwrap_or_else(|_| usage("the limit must be a number"));
                cards.insert(
                    name.to_owned(),
                    Card {
                        limit,
                        ..Card::default()
                    },
                );
            }
            "--webhook-secret" => {
                webhook_secret = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--webhook-secret needs a value")),
                );
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let app: App = Arc::new(Shared {
        ledger: Mutex::new(Ledger {
            cards,
            ..Ledger::default()
        }),
        webhook_secret,
        started: Instant::now(),
        in_flight: AtomicU64::new(0),
        in_flight_max: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/v1/prepared", get(prepared))
        .route("/v1/{action}", post(call))
        .route("/hooks/{sink}", post(hook))
        .route("/admin/state", get(state))
        .route("/admin/report", get(report))
        .route("/admin/faults", post(faults))
        .route("/admin/cards", post(open_card))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| usage(&format!("cannot listen on {listen}: {e}")));
    let address = listener.local_addr().expect("bound");
    println!("listening on http://{address}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, router).await.expect("serve");
}
