//! `/readyz` and `/metrics`: what the server says of itself.

use crate::metrics;
use crate::responses::error;
use crate::state::{AppState, READY_CHECK_MS};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};

/// `GET /metrics`: OpenMetrics if the scraper asks for it, else the Prometheus text format.
pub(crate) async fn scrape(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
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

pub(crate) async fn ready(State(state): State<AppState>) -> Response {
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
