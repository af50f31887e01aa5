//! `wasaga signal` and `wasaga runs cancel`: what reaches a run from outside while it runs or
//! waits, on the journal or through a server.

use super::args::{Remote, SignalArgs};
use super::failure::{Failure, host_failure, usage};
use super::host::open;
use super::remote::{path_segment, remote};
use super::settings::Settings;
use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use wasaga_journal::{Cancelled, Signalled};

pub(crate) async fn signal(g: &Settings, args: &SignalArgs) -> Result<u8, Failure> {
    let payload = match args.payload.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read payload file {path}"))
            .map_err(usage)?,
        None => args.payload.clone(),
    };
    let payload: Value = serde_json::from_str(&payload)
        .map_err(|e| usage(anyhow!("the payload is not valid JSON: {e}")))?;
    let (run_id, name) = (&args.run_id, &args.name);
    let duplicate = match &args.remote.server {
        Some(server) => {
            let body = json!({ "payload": payload, "signal_id": args.signal_id });
            let url = format!(
                "{}/v1/runs/{}/signals/{}",
                server.trim_end_matches('/'),
                path_segment(run_id),
                path_segment(name)
            );
            let reply = remote(
                g,
                &args.remote,
                "POST",
                &url,
                body.to_string().into_bytes(),
                "application/json",
            )
            .await?;
            reply["duplicate"].as_bool().unwrap_or(false)
        }
        None => {
            let host = open(g).await?;
            let sent_by = format!("cli:{}", whoami());
            let sent = host
                .signal(
                    run_id,
                    name,
                    args.signal_id.as_deref(),
                    &payload.to_string(),
                    &sent_by,
                )
                .await
                .map_err(host_failure)?;
            match sent {
                Signalled::Accepted => false,
                Signalled::Duplicate => true,
                Signalled::Finished(status) => {
                    return Err(usage(anyhow!(
                        "run {run_id} has ended ({status}): nothing will receive signal '{name}'"
                    )));
                }
                Signalled::Conflict => {
                    return Err(usage(anyhow!(
                        "signal id {} was sent to run {run_id} before with another name or payload; use a new signal id",
                        args.signal_id.as_deref().unwrap_or_default()
                    )));
                }
                Signalled::TooMany(max) => {
                    return Err(usage(anyhow!(
                        "run {run_id} holds {max} signals it has not taken yet (signals_per_run_max): it takes a signal only at a wait for its name"
                    )));
                }
            }
        }
    };
    if g.json {
        println!(
            "{}",
            json!({ "run_id": run_id, "signal": name, "duplicate": duplicate })
        );
    } else if duplicate {
        println!(
            "signal '{name}' with this signal id was sent to {run_id} before; it is delivered once"
        );
    } else {
        println!("signal '{name}' kept for {run_id}; it is delivered at the run's wait for it");
    }
    Ok(0)
}

pub(crate) async fn cancel(
    g: &Settings,
    run_id: &str,
    reason: &str,
    by: Option<&str>,
    remote_server: &Remote,
) -> Result<u8, Failure> {
    let by = by.map_or_else(|| format!("cli:{}", whoami()), str::to_owned);
    let (children, already) = match &remote_server.server {
        Some(server) => {
            let url = format!(
                "{}/v1/runs/{}/cancel",
                server.trim_end_matches('/'),
                path_segment(run_id)
            );
            let body = json!({ "reason": reason, "by": by });
            let reply = remote(
                g,
                remote_server,
                "POST",
                &url,
                body.to_string().into_bytes(),
                "application/json",
            )
            .await?;
            let children: Vec<String> =
                serde_json::from_value(reply["children"].clone()).unwrap_or_default();
            (children, reply["already"].as_str().map(str::to_owned))
        }
        None => {
            let host = open(g).await?;
            match host
                .cancel(run_id, &by, reason)
                .await
                .map_err(host_failure)?
            {
                Cancelled::Requested { children } => (children, None),
                Cancelled::AlreadyRequested(asked) => (Vec::new(), Some(asked)),
                Cancelled::Finished(status) => {
                    return Err(usage(anyhow!(
                        "run {run_id} is {status}: there is nothing to cancel"
                    )));
                }
            }
        }
    };
    if g.json {
        println!(
            "{}",
            json!({ "run_id": run_id, "children": children, "already": already })
        );
    } else if let Some(asked) = already {
        println!("run {run_id} was cancelled before ({asked})");
    } else {
        println!(
            "run {run_id} is cancelled{}; it compensates at its next journal point (a waiting run at once, on the host that serves it)",
            if children.is_empty() {
                String::new()
            } else {
                format!(" with its children {}", children.join(", "))
            }
        );
    }
    Ok(0)
}

/// Who runs the command, for the record of who sent or cancelled.
/// Who asks, by default, for a cancellation from the command line.
pub(crate) fn asked_by() -> String {
    format!("cli:{}", whoami())
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}
