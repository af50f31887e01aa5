//! The HTTP client of the commands given `--server`: a request with the server's token, its
//! JSON answer, and a non-2xx answer turned into the command's failure with the server's
//! reason; and path segments encoded so that any run id or name reaches the server as itself.

use super::args::Remote;
use super::failure::{EXIT_USAGE, Failure, usage};
use super::settings::Settings;
use anyhow::anyhow;
use serde_json::Value;
use std::time::Duration;

/// One request to a server; the reply's JSON, or a failure carrying the server's reason.
pub(crate) async fn remote(
    g: &Settings,
    remote: &Remote,
    method: &'static str,
    url: &str,
    body: Vec<u8>,
    content_type: &'static str,
) -> Result<Value, Failure> {
    let token = remote
        .token
        .clone()
        .or_else(|| g.server.token.clone())
        .ok_or_else(|| {
            usage(anyhow!(
                "the server needs its bearer token: give --token, set WASAGA_TOKEN, or --config a file with [server] token"
            ))
        })?;
    let url = url.to_owned();
    let shown = url.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let authorization = format!("Bearer {token}");
        let response = match method {
            "GET" => agent
                .get(&url)
                .header("Authorization", &authorization)
                .call(),
            _ => agent
                .post(&url)
                .header("Authorization", &authorization)
                .header("Content-Type", content_type)
                .send(&body[..]),
        };
        let mut response = response?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok::<_, ureq::Error>((status, text))
    })
    .await
    .map_err(|e| anyhow!("the request failed: {e}"))?;
    let (status, text) = answer.map_err(|e| {
        Failure::from(anyhow!(
            "cannot reach the server at {shown}: {e}; check --server and that it is running"
        ))
    })?;
    let reply: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !(200..300).contains(&status) {
        let reason = reply["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| reply.to_string());
        return Err(Failure {
            code: if status < 500 {
                EXIT_USAGE
            } else {
                super::failure::EXIT_FAILURE
            },
            error: anyhow!("the server refused ({status}): {reason}"),
        });
    }
    Ok(reply)
}

/// `text` as one segment of a URL's path: everything but unreserved characters
/// percent-encoded, so that run ids with `/` and signal names with `?` or spaces reach the
/// server as themselves.
pub(crate) fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn path_segments_keep_only_unreserved_characters() {
        assert_eq!(path_segment("pay-1"), "pay-1");
        assert_eq!(path_segment("sl/1"), "sl%2F1");
        assert_eq!(path_segment("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
