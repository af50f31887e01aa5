//! `wasaga serve`: a long-running host that payment services call over HTTP.
//!
//! Runs are started by workflow name and get the version active at that moment; deploys (by
//! this API, by `wasaga deploy` on the database, or by another host) take effect for the next
//! start without a restart. Runs this host starts, and runs it takes over from hosts whose
//! lease expired, are driven in the background. On shutdown the server stops taking work,
//! lets every live run reach its next journal point, and gives up its leases so that the next
//! start (here or on another host) resumes those runs at once.
//!
//! Every `/v1` endpoint needs `Authorization: Bearer <token>`; `/healthz` and `/readyz` do not.

mod console;
pub mod ledger_service;
mod metrics;
mod operations;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use wasaga_core::event::RunStatus;
use wasaga_journal::{Cancelled, JournalError, RunFilter, RunRecord, Signalled};
use wasaga_participants::outbox::{self, Outbox};
use wasaga_runtime::engine::MODULE_BYTES_MAX;
use wasaga_runtime::executor::{Host, HostError, NewRun};
use wasaga_runtime::store::no_observer;

/// How long a start request may wait for its run's outcome (`?wait_ms=`).
pub const WAIT_MS_MAX: u64 = 60_000;
/// Runs listed by one request at most.
pub const LIST_LIMIT_MAX: u32 = 1_000;
/// Runs one claim takes over at most.
const CLAIM_BATCH_MAX: u32 = 64;
/// Requests served at once; one more is answered 503 at once, before its body is read.
pub const REQUESTS_CONCURRENT_MAX: usize = 512;
/// Module uploads read at once (each may buffer up to `MODULE_BYTES_MAX`).
pub const UPLOADS_CONCURRENT_MAX: usize = 2;
/// A start request's body beyond the run input it carries (`run_id`, the JSON around it).
const START_ENVELOPE_BYTES_MAX: usize = 4 << 10;
/// The body of a cancel request (`{"reason": "...", "by": "..."}`).
const CANCEL_BYTES_MAX: usize = 4 << 10;
/// The body of a rollback request (`{"version": N}`).
const ROLLBACK_BYTES_MAX: usize = 1 << 10;
/// How much of an unauthenticated request's body is read (and dropped as it arrives, so it
/// costs no memory) before answering 401, so that an upload of that size gets its answer
/// rather than a broken pipe; anything larger is cut off.
const UNAUTHORIZED_DRAIN_BYTES_MAX: usize = 256 << 10;
/// How long that reading may take.
const UNAUTHORIZED_DRAIN_MS_MAX: u64 = 2_000;
/// How long `/readyz` answers from its last journal check.
const READY_CHECK_MS: u64 = 1_000;

/// What `serve` needs besides the host.
pub struct ServerSettings {
    /// The bearer token every `/v1` request must carry.
    pub token: String,
    /// How often the server looks for unfinished runs no live host holds.
    pub claim_interval_ms: u64,
    /// How long shutdown waits for live runs to reach a journal point.
    pub shutdown_grace_ms: u64,
    /// Redeploy `*.wasm` files in this directory when they change (local development).
    pub watch: Option<PathBuf>,
    /// The ledger's transaction records to deliver while serving.
    pub outbox: Option<Arc<Outbox>>,
    /// A second listener that serves `/metrics` without the token (for a Prometheus on a
    /// private network); on the main listener `/metrics` needs the token like `/v1`.
    pub metrics_listener: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("claim_interval_ms", &self.claim_interval_ms)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("watch", &self.watch)
            .finish()
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Background drives in flight, so shutdown can wait for them.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// When `/readyz` last reached the journal, and what it found.
type ReadyCheck = (Instant, Result<(), String>);

#[derive(Clone)]
struct AppState {
    host: Host,
    token: Arc<str>,
    in_flight: Arc<InFlight>,
    /// Bounds the requests served at once (`REQUESTS_CONCURRENT_MAX`).
    requests: Arc<tokio::sync::Semaphore>,
    /// Bounds the module uploads read at once (`UPLOADS_CONCURRENT_MAX`).
    uploads: Arc<tokio::sync::Semaphore>,
    /// When `/readyz` last reached the journal, and what it found.
    ready: Arc<tokio::sync::Mutex<Option<ReadyCheck>>>,
    /// Tells the claim loop to look now: a signal or a cancellation woke a waiting run.
    wake: Arc<Notify>,
    /// What `/metrics` encodes.
    scrapes: Arc<metrics::Scrapes>,
}

impl AppState {
    /// Drives `run_id` in the background.
    fn spawn_drive(&self, run_id: String) {
        self.in_flight.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(self.in_flight.clone());
        let host = self.host.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match host.drive(&run_id, no_observer()).await {
                Ok(outcome) if outcome.status == RunStatus::Stuck => tracing::warn!(
                    "run {run_id} is stuck: {}",
                    outcome.error.unwrap_or_default()
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("run {run_id} stopped: {e}"),
            }
        });
    }
}

/// Serves the API on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn serve(
    host: Host,
    listener: tokio::net::TcpListener,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = AppState {
        host: host.clone(),
        token: settings.token.clone().into(),
        in_flight: Arc::new(InFlight::default()),
        requests: Arc::new(tokio::sync::Semaphore::new(REQUESTS_CONCURRENT_MAX)),
        uploads: Arc::new(tokio::sync::Semaphore::new(UPLOADS_CONCURRENT_MAX)),
        ready: Arc::new(tokio::sync::Mutex::new(None)),
        wake: Arc::new(Notify::new()),
        scrapes: Arc::new(metrics::Scrapes::new(&host)),
    };
    let (stop, stopped) = watch::channel(false);
    let claims = tokio::spawn(claim_loop(
        state.clone(),
        settings.claim_interval_ms,
        stopped.clone(),
    ));
    let delivery = settings
        .outbox
        .clone()
        .map(|outbox| tokio::spawn(outbox.run(stopped.clone())));
    let metrics_server = settings.metrics_listener.map(|listener| {
        let router = Router::new()
            .route("/metrics", get(scrape))
            .with_state(state.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!("the metrics listener failed: {e}");
            }
        })
    });
    let watcher = settings
        .watch
        .clone()
        .map(|dir| tokio::spawn(watch_modules(host.clone(), dir, stopped.clone())));
    let signal = {
        let host = host.clone();
        async move {
            shutdown.await;
            // Live runs stop at their next journal point; waiting requests answer now.
            host.stop_runs();
            let _ = stop.send(true);
        }
    };
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .await;
    claims.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Some(delivery) = delivery {
        // Stopped at its pause; a pass cut short leaves leases that lapse, and its records
        // are delivered again under their ids.
        delivery.abort();
    }
    let deadline = Instant::now() + Duration::from_millis(settings.shutdown_grace_ms);
    while state.in_flight.count.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        let idle = state.in_flight.idle.notified();
        let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
    }
    let still = state.in_flight.count.load(Ordering::SeqCst);
    if still > 0 {
        tracing::warn!(
            "{still} runs did not reach a journal point within {} ms; they resume once their leases expire",
            settings.shutdown_grace_ms
        );
    }
    match host.release_runs().await {
        Ok(released) if released > 0 => tracing::info!(
            "released {released} unfinished runs; the next host to start resumes them"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "could not release this host's leases ({e}); its runs resume once the leases expire"
        ),
    }
    served.map_err(ServerError::Http)
}

fn router(state: AppState) -> Router {
    let input_bytes_max = state.host.limits().payload_bytes_max + START_ENVELOPE_BYTES_MAX;
    // Layers run outside in: the token is checked (authorize) before any body is read, and
    // each endpoint reads at most its own kind of body.
    let v1 = Router::new()
        .route("/workflows", get(list_workflows))
        .route(
            "/workflows/{name}/versions",
            get(list_versions)
                .post(deploy)
                .layer(DefaultBodyLimit::max(MODULE_BYTES_MAX)),
        )
        .route(
            "/workflows/{name}/rollback",
            post(rollback).layer(DefaultBodyLimit::max(ROLLBACK_BYTES_MAX)),
        )
        .route(
            "/workflows/{name}/runs",
            post(start_run).layer(DefaultBodyLimit::max(input_bytes_max)),
        )
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/journal", get(get_journal))
        .route(
            "/runs/{id}/signals/{name}",
            post(send_signal).layer(DefaultBodyLimit::max(input_bytes_max)),
        )
        .route(
            "/runs/{id}/cancel",
            post(cancel_run).layer(DefaultBodyLimit::max(CANCEL_BYTES_MAX)),
        )
        .route("/outbox", get(list_outbox))
        .route("/outbox/retry", post(retry_outbox))
        .route("/run-counts", get(operations::run_counts))
        .route(
            "/runs/{id}/retry",
            post(operations::retry_run).layer(DefaultBodyLimit::max(ROLLBACK_BYTES_MAX)),
        )
        .route("/ledger/accounts", get(operations::list_accounts))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    // Behind the token (or the console's session) like `/v1`.
    let guarded = Router::new()
        .route("/metrics", get(scrape))
        .route("/ui/logout", post(sign_out))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/ui", get(|| async { console::asset("") }))
        .route("/ui/", get(|| async { console::asset("") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { console::asset(&file) }),
        )
        .route(
            "/ui/login",
            post(sign_in).layer(DefaultBodyLimit::max(ROLLBACK_BYTES_MAX)),
        )
        .merge(guarded)
        .nest("/v1", v1)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see the README for the API".to_owned(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit))
        .with_state(state)
}

/// Serves at most `REQUESTS_CONCURRENT_MAX` requests at once: one more is refused before
/// anything of it is read, so no flood of requests can grow the server without bound.
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.requests.clone().try_acquire_owned() else {
        return closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is serving {REQUESTS_CONCURRENT_MAX} requests already; retry shortly"
            ),
        ));
    };
    next.run(request).await
}

/// Reads and drops up to `bytes_max` of `body`, a frame at a time.
async fn drain(mut body: axum::body::Body, bytes_max: usize) {
    use axum::body::HttpBody;
    let mut read = 0;
    while read < bytes_max {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
            _ => return,
        }
    }
}

/// Marks `response` as the connection's last, so the server does not read what the client
/// may still be sending.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An error response: `{"error": reason}`.
fn error(status: StatusCode, reason: String) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

/// Maps a host error onto an HTTP status, keeping the host's message (which says what to do).
fn host_error(e: HostError) -> Response {
    let status = match &e {
        HostError::Module(_) | HostError::Input(_) | HostError::Rejected { .. } => {
            StatusCode::BAD_REQUEST
        }
        HostError::NotGranted(_) => StatusCode::FORBIDDEN,
        HostError::Journal(j) => return journal_error(j),
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

fn journal_error(e: &JournalError) -> Response {
    let status = match e {
        JournalError::UnknownRun(_)
        | JournalError::UnknownWorkflow(_)
        | JournalError::UnknownVersion { .. }
        | JournalError::UnknownModule(_) => StatusCode::NOT_FOUND,
        JournalError::NothingToRollBack { .. } => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110); the token is not.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    match presented {
        Some(token) if same_secret(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        // No bearer header: the console's session cookie may stand for it.
        None if request.headers().get(header::AUTHORIZATION).is_none() => {
            let checked = console::check_session(
                &state.token,
                request.method(),
                request.headers(),
                wasaga_core::clock::now_ms(),
            );
            match checked {
                Ok(_) => next.run(request).await,
                Err(console::Refused::Forgery(why)) => error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "refused: {why}; a request made with the console's session must come from the console's own page"
                    ),
                ),
                Err(console::Refused::NoSession) => unauthorized(request).await,
            }
        }
        _ => unauthorized(request).await,
    }
}

/// 401, once a small body has been read and dropped.
async fn unauthorized(request: Request) -> Response {
    // A small body is read (and dropped) first, so its sender gets this answer rather than a
    // broken pipe; a large one is not read: an unauthenticated client gets no more of the
    // server's memory or time than this.
    let _ = tokio::time::timeout(
        Duration::from_millis(UNAUTHORIZED_DRAIN_MS_MAX),
        drain(request.into_body(), UNAUTHORIZED_DRAIN_BYTES_MAX),
    )
    .await;
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send `Authorization: Bearer <token>` with the token from the server's config (the console signs in at /ui)".to_owned(),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    closing(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /ui/login` with `{"token": "..."}`: the console's session cookies for the server's
/// token; 401 (slowly) for any other.
async fn sign_in(State(state): State<AppState>, body: Bytes) -> Response {
    let presented = serde_json::from_slice::<SignIn>(&body).map(|s| s.token);
    match presented {
        Ok(token) if same_secret(token.as_bytes(), state.token.as_bytes()) => {
            console::signed_in(&state.token, wasaga_core::clock::now_ms())
        }
        Ok(_) => {
            tokio::time::sleep(Duration::from_millis(console::REFUSED_SIGN_IN_MS)).await;
            error(
                StatusCode::UNAUTHORIZED,
                "wrong token: sign in with the token of the server's config ([server] token or token_env)".to_owned(),
            )
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"token\": \"...\"}}: {e}"),
        ),
    }
}

/// `POST /ui/logout`: the console's cookies cleared.
async fn sign_out() -> Response {
    console::signed_out()
}

/// `GET /metrics`: OpenMetrics if the scraper asks for it, else the Prometheus text format.
async fn scrape(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match state.scrapes.encode(&state.host).await {
        Ok(text) if metrics::wants_openmetrics(accept) => {
            ([(header::CONTENT_TYPE, metrics::OPENMETRICS)], text).into_response()
        }
        Ok(text) => (
            [(header::CONTENT_TYPE, metrics::PROMETHEUS_TEXT)],
            metrics::prometheus_text(&text),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the metrics could not be read: {e}"),
        ),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.host.is_stopping() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    // Anyone may ask, so the journal is asked at most once a `READY_CHECK_MS`, whoever asks.
    let checked = {
        let mut last = state.ready.lock().await;
        match &*last {
            Some((at, found)) if at.elapsed() < Duration::from_millis(READY_CHECK_MS) => {
                found.clone()
            }
            _ => {
                let found = state
                    .host
                    .journal()
                    .workflows()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                *last = Some((Instant::now(), found.clone()));
                found
            }
        }
    };
    match checked {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the journal is not reachable: {e}"),
        ),
    }
}

async fn list_workflows(State(state): State<AppState>) -> Response {
    match state.host.journal().workflows().await {
        Ok(workflows) => Json(json!({ "workflows": workflows })).into_response(),
        Err(e) => journal_error(&e),
    }
}

async fn list_versions(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.host.journal().versions(&name).await {
        Ok(versions) => Json(json!({ "workflow": name, "versions": versions })).into_response(),
        Err(e) => journal_error(&e),
    }
}

async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    // Only a few uploads are read at once: each can buffer a whole module.
    let Ok(_upload) = state.uploads.clone().try_acquire_owned() else {
        return closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{UPLOADS_CONCURRENT_MAX} module uploads are being read already; retry shortly"
            ),
        ));
    };
    let body = match axum::body::to_bytes(request.into_body(), MODULE_BYTES_MAX).await {
        Ok(body) => body,
        Err(e) => {
            return closing(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the module could not be read ({e}); a module is at most {MODULE_BYTES_MAX} bytes"
                ),
            ));
        }
    };
    match state.host.deploy(&name, &body).await {
        Ok(deployed) => {
            let d = &deployed.deployment;
            let what = if deployed.new_version {
                "deployed"
            } else if deployed.previous == Some(d.version) {
                "redeployed (unchanged, already active)"
            } else {
                "made active again"
            };
            tracing::info!(
                "{} version {} (module {}) {what}",
                d.workflow,
                d.version,
                &d.hash[..12]
            );
            let status = if deployed.new_version {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(json!(deployed))).into_response()
        }
        Err(e) => host_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The version to activate; the one before the active one if absent.
    version: Option<i64>,
}

async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be empty or {{\"version\": N}}: {e}"),
                );
            }
        }
    };
    match state.host.journal().activate(&name, request.version).await {
        Ok(deployment) => {
            tracing::info!(
                "rolled {name} back: version {} (module {}) is active",
                deployment.version,
                &deployment.hash[..12]
            );
            Json(json!(deployment)).into_response()
        }
        Err(e) => journal_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    /// The workflow's input (any JSON).
    input: Value,
    /// An idempotency key: starting the same run id again returns the first run.
    run_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Wait this long for the run to end before answering.
    wait_ms: Option<u64>,
}

async fn start_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(wait): Query<WaitQuery>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            return closing(error(
                e.status(),
                format!(
                    "the request body could not be read ({}); a run's input is at most payload_bytes_max = {} bytes",
                    e.body_text(),
                    state.host.limits().payload_bytes_max
                ),
            ));
        }
    };
    if state.host.is_stopping() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; start the run on another host or retry".to_owned(),
        );
    }
    let request: StartRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"input\": <json>, \"run_id\": \"optional id\"}}: {e}"),
            );
        }
    };
    let input = request.input.to_string();
    // The caller's trace: the run's spans join it (an ill-formed header is ignored).
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (record, created) =
        match start_or_find(&state, &name, request.run_id, &input, traceparent).await {
            Ok(started) => started,
            Err(response) => return response,
        };
    if !created && (record.workflow != name || !same_json(&record.input, &request.input)) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "run id {} was already used for a run of '{}' with a different input; use a new run id",
                record.run_id, record.workflow
            ),
        );
    }
    let record = match wait.wait_ms {
        Some(wait_ms) => match wait_for_end(&state.host, record, wait_ms.min(WAIT_MS_MAX)).await {
            Ok(record) => record,
            Err(e) => return journal_error(&e),
        },
        None => record,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(run_json(&record))).into_response()
}

/// The run `run_id` names if it exists (`false`), or a new run of the active version of
/// `workflow` (`true`), driven in the background. A new run exists once its first write is
/// durable; a module that refuses its input before making one leaves no run, and the request
/// is answered 400 with the module's reason (the id stays free).
async fn start_or_find(
    state: &AppState,
    workflow: &str,
    run_id: Option<String>,
    input: &str,
    traceparent: Option<String>,
) -> Result<(RunRecord, bool), Response> {
    let journal = state.host.journal();
    if let Some(id) = &run_id {
        match journal.run(id).await {
            Ok(record) => return Ok((record, false)),
            Err(JournalError::UnknownRun(_)) => {}
            Err(e) => return Err(journal_error(&e)),
        }
    }
    let run_id = run_id.unwrap_or_else(wasaga_runtime::executor::new_run_id);
    let hash = journal
        .active(workflow)
        .await
        .map_err(|e| journal_error(&e))?
        .hash;
    state
        .host
        .check_new_run(Some(&run_id), workflow, input)
        .map_err(host_error)?;
    let (created_tx, created) = tokio::sync::oneshot::channel();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    state.in_flight.count.fetch_add(1, Ordering::SeqCst);
    let guard = InFlightGuard(state.in_flight.clone());
    let host = state.host.clone();
    let (id, workflow_name, input_text) = (run_id.clone(), workflow.to_owned(), input.to_owned());
    tokio::spawn(async move {
        let _guard = guard;
        let outcome = host
            .start_first_write(
                Some(id.clone()),
                &workflow_name,
                &hash,
                &input_text,
                no_observer(),
                NewRun {
                    created: Some(created_tx),
                    traceparent,
                },
            )
            .await;
        match &outcome {
            Ok(outcome) if outcome.status == RunStatus::Stuck => tracing::warn!(
                "run {id} is stuck: {}",
                outcome.error.clone().unwrap_or_default()
            ),
            Ok(_) | Err(HostError::Rejected { .. } | HostError::RunExists(_)) => {}
            Err(e) => tracing::warn!("run {id} stopped: {e}"),
        }
        let _ = ended_tx.send(outcome);
    });
    if created.await.is_ok() {
        return journal
            .run(&run_id)
            .await
            .map(|record| (record, true))
            .map_err(|e| journal_error(&e));
    }
    // The run ended, or stopped, before its first write.
    match ended.await {
        Ok(Err(HostError::RunExists(_))) => journal
            .run(&run_id)
            .await
            .map(|record| (record, false))
            .map_err(|e| journal_error(&e)),
        Ok(Err(e)) => Err(host_error(e)),
        Ok(Ok(_)) | Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("run {run_id} ended before it was written; start it again"),
        )),
    }
}

fn same_json(text: &str, value: &Value) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v == *value)
}

/// Polls the run until it ends, the wait is over, or the server stops.
async fn wait_for_end(
    host: &Host,
    mut record: RunRecord,
    wait_ms: u64,
) -> Result<RunRecord, JournalError> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut pause_ms = 5;
    let sleeping = |r: &RunRecord| {
        r.waiting
            .as_ref()
            .is_some_and(|w| w.wake_at_ms > wasaga_core::clock::now_ms())
    };
    while !record.status.is_terminal()
        && !sleeping(&record)
        && Instant::now() < deadline
        && !host.is_stopping()
    {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        pause_ms = (pause_ms * 2).min(100);
        record = host.journal().run(&record.run_id).await?;
    }
    Ok(record)
}

/// A run as the API shows it: output parsed back into JSON.
fn run_json(record: &RunRecord) -> Value {
    let parse = |text: &str| serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()));
    json!({
        "run_id": record.run_id,
        "workflow": record.workflow,
        "version": record.version,
        "module_hash": record.module_hash,
        "status": record.status,
        "input": parse(&record.input),
        "output": record.output.as_deref().map(parse),
        "error": record.error,
        "created_at_ms": record.created_at_ms,
        "updated_at_ms": record.updated_at_ms,
        "owner": record.owner,
        "waiting": record.waiting,
        "parent_run_id": record.parent_run_id,
        "cancel_reason": record.cancel_reason,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRequest {
    #[serde(default)]
    payload: Value,
    signal_id: Option<String>,
}

/// `POST /v1/runs/{id}/signals/{name}` with `{"payload": <json>, "signal_id": "..."}`: keeps
/// the signal for the run, which gets it at its wait for `name` (at once if it waits now).
/// 202 when accepted, 200 for a `signal_id` accepted before, 404 for an unknown run, 409 for
/// a run that has ended or has too many signals.
async fn send_signal(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request: SignalRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"payload\": <json>, \"signal_id\": \"optional id, for idempotency\"}}: {e}"
                ),
            );
        }
    };
    let payload = request.payload.to_string();
    let sent = state
        .host
        .signal(&id, &name, request.signal_id.as_deref(), &payload, "api")
        .await;
    match sent {
        Ok(Signalled::Accepted) => {
            state.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": id, "signal": name, "duplicate": false })),
            )
                .into_response()
        }
        Ok(Signalled::Duplicate) => {
            Json(json!({ "run_id": id, "signal": name, "duplicate": true })).into_response()
        }
        Ok(Signalled::Finished(status)) => error(
            StatusCode::CONFLICT,
            format!("run {id} has ended ({status}): nothing will receive signal '{name}'"),
        ),
        Ok(Signalled::TooMany(max)) => error(
            StatusCode::CONFLICT,
            format!(
                "run {id} has {max} signals already (signals_per_run_max): it is not waiting for them"
            ),
        ),
        Err(e) => host_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    #[serde(default)]
    reason: String,
    by: Option<String>,
}

/// `POST /v1/runs/{id}/cancel` with `{"reason": "...", "by": "..."}` (both optional): the run
/// and its unfinished children stop and compensate. 202 when asked now, 200 if asked before,
/// 404 for an unknown run, 409 for one that has ended or compensates already.
async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body must be {{\"reason\": \"...\", \"by\": \"...\"}} (both optional): {e}"
                    ),
                );
            }
        }
    };
    let by = request.by.unwrap_or_else(|| "api".to_owned());
    match state.host.cancel(&id, &by, &request.reason).await {
        Ok(Cancelled::Requested { children }) => {
            state.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": id, "cancelled": true, "children": children })),
            )
                .into_response()
        }
        Ok(Cancelled::AlreadyRequested(reason)) => {
            Json(json!({ "run_id": id, "cancelled": true, "already": reason })).into_response()
        }
        Ok(Cancelled::Finished(status)) => error(
            StatusCode::CONFLICT,
            format!("run {id} is {status}: there is nothing to cancel"),
        ),
        Err(e) => host_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    workflow: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    /// The page after the run `(before_ms, before_id)`: the `next` of the page before.
    before_ms: Option<u64>,
    before_id: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/runs`: runs, newest first, filtered, a page at a time (`next` names the page after).
async fn list_runs(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, LIST_LIMIT_MAX);
    let before = match (query.before_ms, query.before_id) {
        (Some(ms), Some(id)) => Some((ms, id)),
        (None, None) => None,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "before_ms and before_id go together: pass both from the `next` of the page before"
                    .to_owned(),
            );
        }
    };
    let filter = RunFilter {
        workflow: query.workflow,
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        before,
        limit,
        ..RunFilter::default()
    };
    let filter = match query.status.as_deref() {
        Some(name) => match filter.with_status(name) {
            Some(filter) => filter,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("status must be {}", wasaga_journal::STATUS_NAMES),
                );
            }
        },
        None => filter,
    };
    match state.host.journal().runs(filter).await {
        Ok(runs) => {
            let next = (runs.len() == limit as usize)
                .then(|| runs.last())
                .flatten()
                .map(|last| json!({ "before_ms": last.created_at_ms, "before_id": last.run_id }));
            Json(json!({
                "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
                "next": next,
            }))
            .into_response()
        }
        Err(e) => journal_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/outbox?status=pending|failing|delivered&limit=N`: the ledger's transaction records
/// on their way to the sinks, with how many are pending and failing.
async fn list_outbox(State(state): State<AppState>, Query(query): Query<OutboxQuery>) -> Response {
    let status = match query.status.as_deref().unwrap_or("pending") {
        "pending" => outbox::Status::Pending,
        "failing" => outbox::Status::Failing,
        "delivered" => outbox::Status::Delivered,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "status must be pending, failing or delivered".to_owned(),
            );
        }
    };
    let limit = query.limit.unwrap_or(100).clamp(1, LIST_LIMIT_MAX as i64);
    let db = state.host.ledger_db();
    let listed = outbox::list(db, status, limit).await;
    let counts = outbox::counts(db).await;
    match (listed, counts) {
        (Ok(records), Ok((pending, failing))) => {
            Json(json!({ "records": records, "pending": pending, "failing": failing }))
                .into_response()
        }
        (Err(e), _) | (_, Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger's database: {e}"),
        ),
    }
}

/// `POST /v1/outbox/retry`: every undelivered record is due now.
async fn retry_outbox(State(state): State<AppState>) -> Response {
    match outbox::retry(state.host.ledger_db()).await {
        Ok(due) => Json(json!({ "due": due })).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger's database: {e}"),
        ),
    }
}

async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.host.journal().run(&id).await {
        Ok(record) => Json(run_json(&record)).into_response(),
        Err(e) => journal_error(&e),
    }
}

async fn get_journal(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.host.journal().run_with_events(&id).await {
        Ok((record, events)) => {
            Json(json!({ "run": run_json(&record), "events": events })).into_response()
        }
        Err(e) => journal_error(&e),
    }
}

/// Takes over unfinished runs that no live host holds (a host died, or shut down) and drives
/// them, as capacity allows.
async fn claim_loop(state: AppState, interval_ms: u64, mut stopped: watch::Receiver<bool>) {
    let capacity = state.host.limits().concurrent_runs_max as usize;
    loop {
        if *stopped.borrow() {
            return;
        }
        let busy = state.in_flight.count.load(Ordering::SeqCst);
        let room = capacity.saturating_sub(busy).min(CLAIM_BATCH_MAX as usize) as u32;
        let mut full = false;
        if room > 0 {
            match state.host.claim(room).await {
                Ok(claimed) => {
                    // A full batch: more may be due (many timers at once); look again now.
                    full = claimed.len() >= room as usize;
                    if !claimed.is_empty() {
                        let shown = claimed.len().min(5);
                        tracing::info!(
                            "took up {} runs (due waits, or leases that lapsed): {}{}",
                            claimed.len(),
                            claimed[..shown].join(", "),
                            if claimed.len() > shown { ", ..." } else { "" }
                        );
                    }
                    for run_id in claimed {
                        // A run whose lease lapsed while this host still drives it (its
                        // renewal failed for a while) is taken back, not driven twice.
                        if !state.host.is_live(&run_id) {
                            state.spawn_drive(run_id);
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot look for unfinished runs: {e}"),
            }
        }
        // Holds past their expiry go back to their accounts.
        match wasaga_participants::ledger::void_expired(state.host.ledger_db()).await {
            Ok(0) => {}
            Ok(voided) => tracing::info!("voided {voided} expired holds"),
            Err(e) => tracing::warn!("cannot void expired holds: {e}"),
        }
        if full {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = state.wake.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}

/// The workflow name a module file deploys as: its stem, with `_` read as `-`.
pub fn workflow_name_of(path: &std::path::Path) -> Option<String> {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().replace('_', "-"))
}

/// Deploys every `*.wasm` file in `dir` now and again whenever it changes; a module that does
/// not validate is reported and the previous version keeps serving.
async fn watch_modules(host: Host, dir: PathBuf, mut stopped: watch::Receiver<bool>) {
    let mut seen: std::collections::HashMap<PathBuf, (std::time::SystemTime, u64)> =
        std::collections::HashMap::new();
    tracing::info!("watching {} for *.wasm changes", dir.display());
    loop {
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_none_or(|e| e != "wasm") {
                        continue;
                    }
                    let Ok(meta) = entry.metadata() else { continue };
                    let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
                    if seen.get(&path) == Some(&stamp) {
                        continue;
                    }
                    seen.insert(path.clone(), stamp);
                    let Some(name) = workflow_name_of(&path) else {
                        continue;
                    };
                    let deployed = match std::fs::read(&path) {
                        Ok(bytes) => host.deploy(&name, &bytes).await,
                        Err(e) => Err(HostError::Input(format!(
                            "cannot read {}: {e}",
                            path.display()
                        ))),
                    };
                    match deployed {
                        Ok(d) if d.new_version || d.previous != Some(d.deployment.version) => {
                            tracing::info!(
                                "watch: deployed {} version {} from {}",
                                name,
                                d.deployment.version,
                                path.display()
                            )
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            "watch: {} was not deployed, the previous version keeps serving: {e}",
                            path.display()
                        ),
                    }
                }
            }
            Err(e) => tracing::warn!("watch: cannot read {}: {e}", dir.display()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cret", b"s3cret!"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn module_files_name_their_workflow() {
        assert_eq!(
            workflow_name_of(std::path::Path::new("dir/payment_order.wasm")),
            Some("payment-order".to_owned())
        );
    }
}
