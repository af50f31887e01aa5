//! How the API answers: errors as `{"error": reason}` with the status the failure means, a
//! run as JSON, and the comparison of secrets.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wasaga_journal::{JournalError, RunRecord};
use wasaga_runtime::executor::HostError;

/// Marks `response` as the connection's last, so the server does not read what the client
/// may still be sending.
pub(crate) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An error response: `{"error": reason}`.
pub(crate) fn error(status: StatusCode, reason: String) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

/// Maps a host error onto an HTTP status, keeping the host's message (which says what to do).
pub(crate) fn host_error(e: HostError) -> Response {
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

pub(crate) fn journal_error(e: &JournalError) -> Response {
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
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A run as the API shows it: output parsed back into JSON.
pub(crate) fn run_json(record: &RunRecord) -> Value {
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
        "pruned_at_ms": record.pruned_at_ms,
    })
}

pub(crate) fn same_json(text: &str, value: &Value) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v == *value)
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
}
