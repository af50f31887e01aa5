//! Deployed workflows: list them and their versions, deploy a module, roll back.

use crate::responses::{closing, error, host_error, journal_error};
use crate::state::{AppState, UPLOADS_CONCURRENT_MAX};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use wasaga_runtime::engine::MODULE_BYTES_MAX;
use wasaga_runtime::upgrade::DeployOptions;

pub(crate) async fn list_workflows(State(state): State<AppState>) -> Response {
    match state.host.journal().workflows().await {
        Ok(workflows) => Json(json!({ "workflows": workflows })).into_response(),
        Err(e) => journal_error(&e),
    }
}

pub(crate) async fn list_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    match state.host.journal().versions(&name).await {
        Ok(versions) => Json(json!({ "workflow": name, "versions": versions })).into_response(),
        Err(e) => journal_error(&e),
    }
}

/// How a deploy request checks the module: `?force=true`, `?upgrade_in_flight=true|false`,
/// `?check_completed=N` (else the server's `[deploy]` defaults).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployQuery {
    force: Option<bool>,
    upgrade_in_flight: Option<bool>,
    check_completed: Option<u32>,
}

pub(crate) async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DeployQuery>,
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
    let options = DeployOptions {
        completed: query
            .check_completed
            .unwrap_or(state.deploy.completed)
            .min(wasaga_runtime::upgrade::CHECKED_COMPLETED_MAX),
        force: query.force.unwrap_or(false),
        upgrade_in_flight: query
            .upgrade_in_flight
            .unwrap_or(state.deploy.upgrade_in_flight),
    };
    match state.host.deploy_checked(&name, &body, options).await {
        Ok(report) if report.deployed.is_none() => {
            tracing::warn!(
                "{name}: a new version was refused: {}",
                report.refused.as_deref().unwrap_or_default()
            );
            (StatusCode::CONFLICT, Json(report.to_json())).into_response()
        }
        Ok(report) => {
            let deployed = report.deployed.as_ref().expect("checked above");
            let d = &deployed.deployment;
            let what = if deployed.new_version {
                "deployed"
            } else if deployed.previous == Some(d.version) {
                "redeployed (unchanged, already active)"
            } else {
                "made active again"
            };
            tracing::info!(
                "{} version {} (module {}) {what}; {} recorded runs replay on it, {} runs in flight moved to it",
                d.workflow,
                d.version,
                &d.hash[..12],
                report.verified.checked.len(),
                report.upgraded.len()
            );
            let status = if deployed.new_version {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(report.to_json())).into_response()
        }
        Err(e) => host_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackRequest {
    /// The version to activate; the one before the active one if absent.
    version: Option<i64>,
}

pub(crate) async fn rollback(
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
