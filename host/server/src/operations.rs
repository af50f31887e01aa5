//! What an operator asks of the server beside starting runs: how many runs there are of each
//! status, taking a stuck run up again once its cause is fixed, and the ledger's accounts. The
//! console uses these, through the same token-protected `/v1` API as any client.

use crate::responses::{error, host_error, journal_error, run_json};
use crate::state::{AppState, InFlightGuard, LIST_LIMIT_MAX, WAIT_MS_MAX};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wasaga_core::event::RunStatus;
use wasaga_participants::outbox;
use wasaga_runtime::bulk::{BULK_CONFIRM_OVER, BulkAction, BulkSelect};
use wasaga_runtime::executor::HostError;
use wasaga_runtime::store::no_observer;

/// How long a retry request waits for the run's end unless told (`?wait_ms=`).
const RETRY_WAIT_MS: u64 = 5_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CountsQuery {
    workflow: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

/// `GET /v1/run-counts?workflow=&since_ms=&until_ms=`: runs of each status, over at most the
/// newest [`wasaga_journal::COUNTED_RUNS_MAX`] (`capped` says whether there were more).
pub(crate) async fn run_counts(
    State(state): State<AppState>,
    Query(query): Query<CountsQuery>,
) -> Response {
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
    let counted = state
        .host
        .journal()
        .run_counts(query.workflow, query.since_ms, query.until_ms)
        .await;
    match counted {
        Ok(counts) => Json(json!(counts)).into_response(),
        Err(e) => journal_error(&e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryQuery {
    wait_ms: Option<u64>,
}

/// `POST /v1/runs/{id}/retry`: takes a stuck run up again where its compensation stopped (after
/// its cause was fixed), on this host. Answers with the run once it ends, or 202 with the run
/// as it is if that takes longer than `wait_ms` (it goes on in the background); 409 if the run
/// is not stuck or another host is retrying it.
pub(crate) async fn retry_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<RetryQuery>,
) -> Response {
    if state.host.is_stopping() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; retry the run on another host".to_owned(),
        );
    }
    let record = match state.host.journal().run(&id).await {
        Ok(record) => record,
        Err(e) => return journal_error(&e),
    };
    if record.status != RunStatus::Stuck {
        return error(
            StatusCode::CONFLICT,
            format!(
                "run {id} is {}, not stuck: only a stuck run can be retried",
                record.status
            ),
        );
    }
    // Driven in a task of its own, so that a client that stops waiting does not stop the
    // compensation half-way.
    state.in_flight.count.fetch_add(1, Ordering::SeqCst);
    let guard = InFlightGuard(state.in_flight.clone());
    let (host, run_id) = (state.host.clone(), id.clone());
    let mut retried = tokio::spawn(async move {
        let _guard = guard;
        let outcome = host.retry_stuck(&run_id, no_observer()).await;
        match &outcome {
            Ok(outcome) => tracing::info!(run_id, status = %outcome.status, "retried a stuck run"),
            Err(e) => tracing::warn!(run_id, "retrying a stuck run stopped: {e}"),
        }
        outcome
    });
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(RETRY_WAIT_MS).min(WAIT_MS_MAX));
    let status = match tokio::time::timeout(wait, &mut retried).await {
        Ok(Ok(Ok(_))) => StatusCode::OK,
        Ok(Ok(Err(HostError::Input(reason)))) => return error(StatusCode::CONFLICT, reason),
        Ok(Ok(Err(e))) => return host_error(e),
        Ok(Err(panicked)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the retry failed: {panicked}"),
            );
        }
        Err(_) => StatusCode::ACCEPTED,
    };
    match state.host.journal().run(&id).await {
        Ok(record) => (status, Json(run_json(&record))).into_response(),
        Err(e) => journal_error(&e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountsQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/ledger/accounts?prefix=&after=&limit=`: the built-in ledger's accounts by name, a
/// page at a time (`next` is the `after` of the next page).
pub(crate) async fn list_accounts(
    State(state): State<AppState>,
    Query(query): Query<AccountsQuery>,
) -> Response {
    let limit = query
        .limit
        .unwrap_or(100)
        .clamp(1, wasaga_participants::ledger::ACCOUNTS_PAGE_MAX);
    let page = wasaga_participants::ledger::accounts_page(
        state.host.ledger_db(),
        query.prefix.filter(|p| !p.is_empty()),
        query.after,
        limit,
    )
    .await;
    match page {
        Ok(accounts) => {
            let next = (accounts.len() == limit as usize)
                .then(|| accounts.last().map(|a| a.account.clone()))
                .flatten();
            Json(json!({ "accounts": accounts, "next": next })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger's database: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutboxQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/outbox?status=pending|failing|delivered&limit=N`: the ledger's transaction records
/// on their way to the sinks, with how many are pending and failing.
pub(crate) async fn list_outbox(
    State(state): State<AppState>,
    Query(query): Query<OutboxQuery>,
) -> Response {
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
pub(crate) async fn retry_outbox(State(state): State<AppState>) -> Response {
    match outbox::retry(state.host.ledger_db()).await {
        Ok(due) => Json(json!({ "due": due })).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger's database: {e}"),
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkRequest {
    status: Option<String>,
    workflow: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    /// For a cancellation: who asks, and why.
    by: Option<String>,
    #[serde(default)]
    reason: String,
    /// Only say which runs match.
    #[serde(default)]
    dry_run: bool,
    /// The `selection` a dry run answered: the runs the caller confirms (needed past
    /// `BULK_CONFIRM_OVER`).
    confirm: Option<String>,
}

/// `POST /v1/bulk/retry` and `/v1/bulk/cancel` with `{"status", "workflow", "since_ms",
/// "until_ms", "dry_run", "confirm"}` (and `"reason"`, `"by"` to cancel): the matching runs
/// (`dry_run`, with their `selection`), or each one's outcome. Past `BULK_CONFIRM_OVER` runs,
/// 409 with how many match unless `confirm` is the selection of exactly these runs.
async fn bulk(state: AppState, action: BulkAction, body: Bytes) -> Response {
    let request: BulkRequest = if body.is_empty() {
        BulkRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body must be {{\"status\", \"workflow\", \"since_ms\", \"until_ms\", \"dry_run\", \"confirm\"}}: {e}"
                    ),
                );
            }
        }
    };
    let select = BulkSelect {
        status: request.status,
        workflow: request.workflow,
        since_ms: request.since_ms,
        until_ms: request.until_ms,
    };
    let (run_ids, capped) = match state.host.bulk_matches(action, &select).await {
        Ok(matched) => matched,
        Err(e) => return host_error(e),
    };
    let shown: Vec<&String> = run_ids.iter().take(100).collect();
    let selection = wasaga_runtime::bulk::selection(&run_ids);
    if request.dry_run {
        return Json(json!({
            "matching": run_ids.len(), "capped": capped, "selection": selection, "run_ids": shown,
        }))
        .into_response();
    }
    if !wasaga_runtime::bulk::confirmed(&run_ids, request.confirm.as_deref()) {
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!(
                    "{} runs match: send \"confirm\": \"{selection}\" (their selection) to act on exactly them (more than {BULK_CONFIRM_OVER} need it); a selection that no longer matches means the runs changed meanwhile",
                    run_ids.len()
                ),
                "matching": run_ids.len(),
                "capped": capped,
                "selection": selection,
                "run_ids": shown,
            })),
        )
            .into_response();
    }
    let by = request.by.unwrap_or_else(|| "api".to_owned());
    // In a task of its own: a client that stops waiting does not stop the retries half-way.
    state.in_flight.count.fetch_add(1, Ordering::SeqCst);
    let guard = InFlightGuard(state.in_flight.clone());
    let (host, reason) = (state.host.clone(), request.reason);
    let done = tokio::spawn(async move {
        let _guard = guard;
        match action {
            BulkAction::Retry => host.retry_many(run_ids).await,
            BulkAction::Cancel => host.cancel_many(run_ids, &by, &reason).await,
        }
    })
    .await;
    match done {
        Ok(outcomes) => {
            state.wake.notify_one();
            Json(json!({ "matching": outcomes.len(), "capped": capped, "outcomes": outcomes }))
                .into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the bulk action failed: {e}"),
        ),
    }
}

pub(crate) async fn bulk_retry(State(state): State<AppState>, body: Bytes) -> Response {
    bulk(state, BulkAction::Retry, body).await
}

pub(crate) async fn bulk_cancel(State(state): State<AppState>, body: Bytes) -> Response {
    bulk(state, BulkAction::Cancel, body).await
}
