//! Who may ask: at most `REQUESTS_CONCURRENT_MAX` requests at once, the bearer token (or
//! the console's session cookie) before any body of a `/v1` request is read, and the
//! console's sign-in and sign-out.

use crate::console;
use crate::responses::{closing, error, same_secret};
use crate::state::{
    AppState, REQUESTS_CONCURRENT_MAX, UNAUTHORIZED_DRAIN_BYTES_MAX, UNAUTHORIZED_DRAIN_MS_MAX,
};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use std::time::Duration;

/// Serves at most `REQUESTS_CONCURRENT_MAX` requests at once: one more is refused before
/// anything of it is read, so no flood of requests can grow the server without bound.
pub(crate) async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
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
pub(crate) async fn drain(mut body: axum::body::Body, bytes_max: usize) {
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

pub(crate) async fn authorize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
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
                &state.revoked,
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
pub(crate) async fn unauthorized(request: Request) -> Response {
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
pub(crate) struct SignIn {
    token: String,
}

/// `POST /ui/login` with `{"token": "..."}`: the console's session cookies for the server's
/// token; 401 for any other, and 429 once `console::SIGN_IN_REFUSALS_PER_S` were refused in
/// the last second (so guessing is slow, without holding a request slot to make it so).
pub(crate) async fn sign_in(State(state): State<AppState>, body: Bytes) -> Response {
    let presented = serde_json::from_slice::<SignIn>(&body).map(|s| s.token);
    match presented {
        Ok(token) if same_secret(token.as_bytes(), state.token.as_bytes()) => {
            console::signed_in(&state.token, wasaga_core::clock::now_ms())
        }
        Ok(_) if !state.refusals.refuse() => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong sign-ins in the last second; wait a second and sign in with the server's token".to_owned(),
        ),
        Ok(_) => {
            tracing::warn!("console: a sign-in with a wrong token was refused");
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

/// `POST /ui/logout`: the console's cookies cleared, and the session refused from now on by
/// this server (a copy of the cookie elsewhere stops working here).
pub(crate) async fn sign_out(State(state): State<AppState>, request: Request) -> Response {
    let now = wasaga_core::clock::now_ms();
    for session in console::cookies(request.headers(), console::SESSION_COOKIE) {
        if console::valid_session(&state.token, session, now) {
            state.revoked.revoke(session, now);
        }
    }
    console::signed_out()
}
