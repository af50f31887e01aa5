//! Runs over HTTP: start one (idempotent by run id, optionally waiting for its end), look
//! one up or list them, read its journal, signal or cancel it.

use crate::responses::{closing, error, host_error, journal_error, run_json, same_json};
use crate::state::{
    AppState, CANCEL_BYTES_MAX, InFlightGuard, LIST_BYTES_MAX, LIST_CHUNK, LIST_LIMIT_MAX,
    LISTING_WAIT_MS, LISTINGS_CONCURRENT_MAX, WAIT_MS_MAX,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasaga_core::event::RunStatus;
use wasaga_journal::{Cancelled, JournalError, RunFilter, RunRecord, Signalled};
use wasaga_runtime::executor::{Host, HostError, NewRun};
use wasaga_runtime::store::no_observer;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// The workflow's input (any JSON).
    input: Value,
    /// An idempotency key: starting the same run id again returns the first run.
    run_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    /// Wait this long for the run to end before answering.
    wait_ms: Option<u64>,
}

pub(crate) async fn start_run(
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
    // Two `traceparent` headers make neither valid (W3C Trace Context).
    let mut given = headers.get_all("traceparent").iter();
    let traceparent = match (given.next(), given.next()) {
        (Some(one), None) => one.to_str().ok().map(str::to_owned),
        _ => None,
    };
    let (record, created) =
        match start_or_find(&state, &name, request.run_id, &input, traceparent).await {
            Ok(started) => started,
            Err(response) => return response,
        };
    if !created && let Some(pruned_at_ms) = record.pruned_at_ms {
        return error(
            StatusCode::CONFLICT,
            format!(
                "run id {} belonged to a run pruned at {pruned_at_ms} ms: a run id is never used twice (the ledger's entries are keyed by it); use a new run id",
                record.run_id
            ),
        );
    }
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
pub(crate) async fn start_or_find(
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
    let (host, waker) = (state.host.clone(), state.clone());
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
                "run {id} is stuck: {:?}",
                outcome.error.clone().unwrap_or_default()
            ),
            Ok(outcome) => waker.wake_for(outcome),
            Err(HostError::Rejected { .. } | HostError::RunExists(_)) => {}
            Err(e) => tracing::warn!("run {id} stopped: {:?}", e.to_string()),
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

/// Polls the run until it ends, the wait is over, or the server stops.
pub(crate) async fn wait_for_end(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalRequest {
    #[serde(default)]
    payload: Value,
    signal_id: Option<String>,
}

/// `POST /v1/runs/{id}/signals/{name}` with `{"payload": <json>, "signal_id": "..."}`: keeps
/// the signal for the run, which gets it at its wait for `name` (at once if it waits now).
/// 202 when accepted, 200 for a `signal_id` accepted before, 404 for an unknown run, 409 for
/// a run that has ended or has too many signals.
pub(crate) async fn send_signal(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return unread_body(e, "a signal's body", state.host.limits().payload_bytes_max),
    };
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
        Ok(Signalled::Conflict) => error(
            StatusCode::CONFLICT,
            format!(
                "signal_id was sent to run {id} before with another name or payload; a signal id names one signal: use a new one"
            ),
        ),
        Ok(Signalled::TooMany(max)) => error(
            StatusCode::CONFLICT,
            format!(
                "run {id} holds {max} signals it has not taken yet (signals_per_run_max): it takes a signal only at a wait for its name"
            ),
        ),
        Err(e) => host_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelRequest {
    #[serde(default)]
    reason: String,
    by: Option<String>,
}

/// `POST /v1/runs/{id}/cancel` with `{"reason": "...", "by": "..."}` (both optional): the run
/// and its unfinished children stop and compensate. 202 when asked now, 200 if asked before,
/// 404 for an unknown run, 409 for one that has ended or compensates already.
pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return unread_body(e, "a cancellation's body", CANCEL_BYTES_MAX),
    };
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
pub(crate) struct ListQuery {
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
pub(crate) async fn list_runs(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Response {
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
    for (name, ms) in [("since_ms", query.since_ms), ("until_ms", query.until_ms)] {
        if ms.is_some_and(|ms| ms > i64::MAX as u64) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{name} must be milliseconds since the epoch, at most {}",
                    i64::MAX
                ),
            );
        }
    }
    if before.as_ref().is_some_and(|(ms, _)| *ms > i64::MAX as u64) {
        return error(
            StatusCode::BAD_REQUEST,
            "before_ms is out of range".to_owned(),
        );
    }
    let filter = RunFilter {
        workflow: query.workflow,
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        before,
        limit: limit.min(LIST_CHUNK),
        ..RunFilter::default()
    };
    let mut filter = match query.status.as_deref() {
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
    let wait = Duration::from_millis(LISTING_WAIT_MS);
    let Ok(Ok(_turn)) = tokio::time::timeout(wait, state.listings.acquire()).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{LISTINGS_CONCURRENT_MAX} listings of runs are being served; retry shortly"),
        );
    };
    // Read a chunk at a time, so that a page of large runs stops at `LIST_BYTES_MAX` rather
    // than holding a thousand inputs at once.
    let (mut page, mut bytes, mut full) = (Vec::new(), 0, false);
    while page.len() < limit as usize && !full {
        let chunk = match state.host.journal().runs(filter.clone()).await {
            Ok(chunk) => chunk,
            Err(e) => return journal_error(&e),
        };
        let last_chunk = chunk.len() < filter.limit as usize;
        for run in chunk {
            bytes += run.input.len()
                + run.output.as_ref().map_or(0, String::len)
                + run.error.as_ref().map_or(0, String::len);
            page.push(run);
            if page.len() >= limit as usize || (bytes > LIST_BYTES_MAX) {
                full = true;
                break;
            }
        }
        if last_chunk {
            break;
        }
        let last = page.last().expect("a full chunk was read");
        filter.before = Some((last.created_at_ms, last.run_id.clone()));
        filter.limit = (limit as usize - page.len()).min(LIST_CHUNK as usize) as u32;
    }
    let next = full
        .then(|| page.last())
        .flatten()
        .map(|last| json!({ "before_ms": last.created_at_ms, "before_id": last.run_id }));
    Json(json!({
        "runs": page.iter().map(run_json).collect::<Vec<_>>(),
        "next": next,
    }))
    .into_response()
}

pub(crate) async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.host.journal().run(&id).await {
        Ok(record) => Json(run_json(&record)).into_response(),
        Err(e) => journal_error(&e),
    }
}

pub(crate) async fn get_journal(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.host.journal().run_with_events(&id).await {
        Ok((record, events)) => {
            Json(json!({ "run": run_json(&record), "events": events })).into_response()
        }
        Err(e) => journal_error(&e),
    }
}

/// The answer to a body that could not be read (too large, most often), as JSON naming the
/// bound, on a connection that closes (the rest of the body is not read).
fn unread_body(e: BytesRejection, what: &str, bytes_max: usize) -> Response {
    closing(error(
        e.status(),
        format!(
            "{what} could not be read ({}); it is at most about {bytes_max} bytes",
            e.body_text()
        ),
    ))
}
