//! `wasaga runs retry|cancel` by filter, and `wasaga runs prune`: acting on many runs at once,
//! on the journal or through a server. A bulk action over more than a few runs shows how many
//! match and goes ahead only with `--yes`; each run's outcome is reported.

use super::args::{Remote, RunSelect};
use super::failure::{EXIT_FAILURE, Failure, host_failure, usage};
use super::host::{lock_executor, open};
use super::remote::remote;
use super::settings::Settings;
use anyhow::anyhow;
use serde_json::{Value, json};
use wasaga_runtime::bulk::{BULK_CONFIRM_OVER, BulkAction, BulkOutcome, BulkSelect};

fn select_of(select: &RunSelect) -> BulkSelect {
    BulkSelect {
        status: select.status.clone(),
        workflow: select.workflow.clone(),
        since_ms: select.since,
        until_ms: select.until,
    }
}

/// Retries (or cancels, with `cancel`'s `by` and `reason`) every run `select` matches.
pub(crate) async fn bulk(
    g: &Settings,
    action: BulkAction,
    select: &RunSelect,
    cancel: Option<(&str, &str)>,
    remote_server: &Remote,
) -> Result<u8, Failure> {
    let capped;
    let outcomes = match &remote_server.server {
        Some(server) => {
            let path = match action {
                BulkAction::Retry => "retry",
                BulkAction::Cancel => "cancel",
            };
            let url = format!("{}/v1/bulk/{path}", server.trim_end_matches('/'));
            let mut body = json!({
                "status": select.status, "workflow": select.workflow,
                "since_ms": select.since, "until_ms": select.until, "dry_run": true,
            });
            if let Some((by, reason)) = cancel {
                body["by"] = json!(by);
                body["reason"] = json!(reason);
            }
            let asked = remote(
                g,
                remote_server,
                "POST",
                &url,
                body.to_string().into_bytes(),
                "application/json",
            )
            .await?;
            let matching = asked["matching"].as_u64().unwrap_or(0) as usize;
            capped = asked["capped"].as_bool().unwrap_or(false);
            confirm(g, action, matching, select.yes, &asked["run_ids"])?;
            if matching == 0 {
                Vec::new()
            } else {
                // Exactly the runs the dry run found: if they changed meanwhile, the server
                // refuses, and nothing is done to runs nobody looked at.
                body["dry_run"] = json!(false);
                body["confirm"] = asked["selection"].clone();
                let done = remote(
                    g,
                    remote_server,
                    "POST",
                    &url,
                    body.to_string().into_bytes(),
                    "application/json",
                )
                .await?;
                serde_json::from_value::<Vec<Value>>(done["outcomes"].clone()).unwrap_or_default()
            }
        }
        None => {
            let _lock = lock_executor(&g.host.journal, true)?;
            let host = open(g).await?;
            let (run_ids, more) = host
                .bulk_matches(action, &select_of(select))
                .await
                .map_err(host_failure)?;
            capped = more;
            let shown: Vec<Value> = run_ids.iter().take(100).map(|id| json!(id)).collect();
            confirm(g, action, run_ids.len(), select.yes, &json!(shown))?;
            let outcomes: Vec<BulkOutcome> = match (action, cancel) {
                (BulkAction::Retry, _) => host.retry_many(run_ids).await,
                (BulkAction::Cancel, Some((by, reason))) => {
                    host.cancel_many(run_ids, by, reason).await
                }
                (BulkAction::Cancel, None) => unreachable!("a cancellation says who asks"),
            };
            outcomes.iter().map(|o| json!(o)).collect()
        }
    };
    let failed = outcomes
        .iter()
        .filter(|o| o["error"].is_string() && o["status"].is_null())
        .count();
    if g.json {
        println!(
            "{}",
            json!({ "matching": outcomes.len(), "capped": capped, "outcomes": outcomes })
        );
    } else {
        if outcomes.is_empty() {
            println!("no run matches");
        }
        if capped {
            println!(
                "more than {} runs matched: these were the newest; run the command again for the others",
                wasaga_runtime::bulk::BULK_RUNS_MAX
            );
        }
        for outcome in &outcomes {
            let run_id = outcome["run_id"].as_str().unwrap_or_default();
            match (outcome["status"].as_str(), outcome["error"].as_str()) {
                (Some(status), None) => println!("run {run_id}: {status}"),
                (Some(status), Some(error)) => println!("run {run_id}: {status} ({error})"),
                (None, error) => println!("run {run_id}: failed: {}", error.unwrap_or_default()),
            }
        }
    }
    Ok(if failed > 0 { EXIT_FAILURE } else { 0 })
}

/// Goes ahead over `matching` runs only with `--yes` when there are more than a few.
fn confirm(
    g: &Settings,
    action: BulkAction,
    matching: usize,
    yes: bool,
    run_ids: &Value,
) -> Result<(), Failure> {
    if matching <= BULK_CONFIRM_OVER || yes {
        return Ok(());
    }
    let what = match action {
        BulkAction::Retry => "retry",
        BulkAction::Cancel => "cancel",
    };
    if !g.json {
        let ids: Vec<&str> = run_ids
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).take(10).collect())
            .unwrap_or_default();
        println!("{matching} runs match, among them: {}", ids.join(", "));
    }
    Err(usage(anyhow!(
        "{matching} runs match: add --yes to {what} them all (more than {BULK_CONFIRM_OVER} need it)"
    )))
}

/// `wasaga runs prune`: finished runs past the retention period, exported first if asked.
pub(crate) async fn prune(
    g: &Settings,
    older_than_days: Option<u32>,
    export: Option<&std::path::Path>,
    yes: bool,
) -> Result<u8, Failure> {
    let days = older_than_days.or(g.retention.runs_days).ok_or_else(|| {
        usage(anyhow!(
            "how long to keep finished runs: give --older-than-days N, or [retention] runs_days = N in the config"
        ))
    })?;
    let export = export
        .map(std::path::Path::to_owned)
        .or_else(|| g.retention.export.clone());
    let host = open(g).await?;
    let cutoff_ms = wasaga_core::clock::now_ms().saturating_sub(u64::from(days) * 86_400_000);
    let matching = host
        .journal()
        .prunable_runs(cutoff_ms, u32::MAX)
        .await
        .map_err(|e| anyhow!(e))?;
    if matching.len() > BULK_CONFIRM_OVER && !yes {
        return Err(usage(anyhow!(
            "{} finished runs are older than {days} days: add --yes to delete them{}",
            matching.len(),
            if export.is_some() {
                " (after exporting them)"
            } else {
                ""
            }
        )));
    }
    let pruned =
        super::retention::prune_pass(&host, cutoff_ms, export.as_deref(), &g.retention).await?;
    if g.json {
        println!("{}", json!(pruned));
    } else {
        println!(
            "pruned {} runs finished more than {days} days ago{}, {} module versions no run needs, {} ledger operation records",
            pruned.runs,
            export
                .as_ref()
                .map(|e| format!(" (exported to {} first)", e.display()))
                .unwrap_or_default(),
            pruned.modules,
            pruned.ledger_ops
        );
    }
    Ok(0)
}
