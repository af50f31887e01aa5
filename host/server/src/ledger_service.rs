//! `wasaga ledger serve`: the built-in ledger as a service, over the `http` participant's
//! protocol (`participants/src/http.rs`), for hosts that reach their ledger over HTTP
//! (`--ledger http://...`) and for the benchmark that compares with engines whose ledger is a
//! service. `POST /{action}` applies a ledger action under the request's `Idempotency-Key`
//! (`Wasaga-Undoes` and `Wasaga-Fencing-Tokens` as the ledger takes them); `POST /prepare`,
//! `/commit`, `/abort` and `GET /prepared` are its two-phase endpoints. Answers: 200 with the
//! ledger's reply, 409 with the reason of a refusal, 503 when its database fails (the caller
//! retries under the same key). Every request needs the bearer token.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use wasaga_db::Database;
use wasaga_participants::http::{fencing_tokens_of, from_header_text};
use wasaga_participants::ledger::{self, LedgerCall};

/// The largest request body taken.
const BODY_BYTES_MAX: usize = 1 << 20;

#[derive(Clone)]
struct Service {
    db: Arc<Database>,
    token: Arc<str>,
}

/// Serves the ledger in `db` on `listener` until `shutdown` completes.
pub async fn serve(
    db: Arc<Database>,
    token: String,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = Service {
        db,
        token: token.into(),
    };
    let router = Router::new()
        .route("/prepared", get(prepared))
        .route("/{action}", post(call))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            authorize,
        ))
        .with_state(service);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn authorize(State(service): State<Service>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    if given.is_none_or(|given| {
        !crate::responses::same_secret(given.as_bytes(), service.token.as_bytes())
    }) {
        return (
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <the ledger service's token>",
        )
            .into_response();
    }
    next.run(request).await
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn bad(reason: &str) -> Response {
    (StatusCode::BAD_REQUEST, reason.to_owned()).into_response()
}

async fn call(
    State(service): State<Service>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(op_id) = header(&headers, "idempotency-key").and_then(|k| from_header_text(&k)) else {
        return bad("Idempotency-Key is required (percent-encoded UTF-8)");
    };
    let undoes = match header(&headers, "wasaga-undoes") {
        Some(text) => match from_header_text(&text) {
            Some(undoes) => Some(undoes),
            None => return bad("Wasaga-Undoes is not percent-encoded UTF-8"),
        },
        None => None,
    };
    let Some(fencing_tokens) =
        fencing_tokens_of(&header(&headers, "wasaga-fencing-tokens").unwrap_or_default())
    else {
        return bad("Wasaga-Fencing-Tokens must be lock=token pairs, comma-separated");
    };
    let Ok(payload) = String::from_utf8(body.to_vec()) else {
        return bad("the body must be UTF-8 JSON");
    };
    let action = match action.as_str() {
        "commit" => "commit-prepared".to_owned(),
        "abort" => "abort-prepared".to_owned(),
        other => other.to_owned(),
    };
    let call = LedgerCall {
        op_id,
        undoes,
        action,
        payload,
        fencing_tokens,
    };
    let applied = service
        .db
        .write(move |tx| Box::pin(async move { ledger::apply(tx, &call).await }))
        .await;
    match applied {
        Ok(Ok(reply)) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            reply,
        )
            .into_response(),
        Ok(Err(reason)) => (StatusCode::CONFLICT, reason).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger's database: {e}"),
        )
            .into_response(),
    }
}

async fn prepared(State(service): State<Service>) -> Response {
    let listed = service
        .db
        .read(|tx| Box::pin(async move { ledger::prepared_xids(tx).await }))
        .await;
    match listed {
        Ok(xids) => axum::Json(json!({ "xids": xids })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger's database: {e}"),
        )
            .into_response(),
    }
}
