//! `wasaga serve`, `wasaga deploy` and `wasaga versions`: the server, and the registry of
//! deployed workflow versions, used directly on the journal or through a server's API.

use super::args::{DeployArgs, ServeArgs, VersionsArgs};
use super::failure::{Failure, host_failure, usage};
use super::host::{lock_executor, open};
use super::remote::remote;
use super::settings::Settings;
use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::sync::Arc;
use wasaga_journal::{Deployed, Deployment};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub(crate) fn timestamp(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

pub async fn serve(g: &Settings, args: &ServeArgs) -> Result<u8, Failure> {
    let token = g.server.token.clone().ok_or_else(|| {
        usage(anyhow!(
            "the server needs a bearer token: give --config a file with [server] token = \"...\" (or token_env = \"VARIABLE\")"
        ))
    })?;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| g.server.listen.clone());
    if let Some(dir) = &args.watch
        && !dir.is_dir()
    {
        return Err(usage(anyhow!("--watch {}: not a directory", dir.display())));
    }
    // On SQLite one process executes runs; it knows every earlier one is dead, so it takes
    // over all their unfinished runs at once. On PostgreSQL the claim loop takes over runs
    // whose owner's lease has expired.
    let executor_lock = lock_executor(&g.host.journal, false)?;
    let host_config = g.host.clone();
    let host = wasaga_runtime::Host::open(&host_config)
        .await
        .map_err(|e| Failure::from(anyhow!(e)))?;
    for warning in super::host::unreachable_services(g).await {
        tracing::warn!("{warning}");
    }
    let (resolved, skipped) = host.sweep_in_doubt().await.map_err(host_failure)?;
    for reason in skipped {
        tracing::warn!("warning: {reason}");
    }
    if resolved > 0 {
        tracing::info!("resolved {resolved} in-doubt prepared transactions from the journal");
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}; is another server running there? (--listen picks another address)")
        })
        .map_err(usage)?;
    let metrics_listener = match &g.server.metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!("cannot listen on {address} for /metrics ([server] metrics_listen); is something else there?")
                })
                .map_err(usage)?,
        ),
        None => None,
    };
    if let Some(metrics) = &metrics_listener
        && let Ok(at) = metrics.local_addr()
    {
        tracing::info!(
            "metrics on http://{at}/metrics without the token ([server] metrics_listen)"
        );
    }
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    if executor_lock.is_some() {
        let taken = host
            .journal()
            .claim(u32::MAX, wasaga_journal::Takeover::Every)
            .await
            .map_err(|e| Failure::from(anyhow!(e)))?;
        // Taken over now; the claim loop does not see them again until their lease (renewed
        // by nobody) expires, so drive them here.
        for run_id in taken {
            tracing::info!("resuming unfinished run {run_id}");
            let host = host.clone();
            tokio::spawn(async move {
                if let Err(e) = host
                    .drive(&run_id, wasaga_runtime::store::no_observer())
                    .await
                {
                    tracing::warn!("run {run_id} stopped: {:?}", e.to_string());
                }
            });
        }
    }
    tracing::info!(
        "wasaga serving on http://{address} (journal {}, host {}); Ctrl-C or SIGTERM stops it gracefully",
        g.host.journal.describe(),
        host.journal().owner()
    );
    let outbox = wasaga_participants::outbox::Outbox::new(
        host.ledger_db().clone(),
        &g.host.outbox,
        host.journal().owner(),
    )
    .map_err(|e| usage(anyhow!(e)))?;
    if executor_lock.is_some() {
        outbox
            .take_over()
            .await
            .map_err(|e| Failure::from(anyhow!(e)))?;
    }
    let settings = wasaga_server::ServerSettings {
        token,
        outbox: Some(Arc::new(outbox)),
        claim_interval_ms: (host_config.limits.run_lease_ms / 3).clamp(100, 1_000),
        shutdown_grace_ms: g.server.shutdown_grace_ms,
        watch: args.watch.clone(),
        metrics_listener,
        deploy: g.deploy,
    };
    // Pruning writes the export file the config names: the binary's work, not the server's.
    let pruning = tokio::spawn(super::retention::prune_periodically(
        host.clone(),
        g.retention.clone(),
    ));
    let served = wasaga_server::serve(host, listener, settings, shutdown_signal()).await;
    pruning.abort();
    served.map_err(|e| Failure::from(anyhow!(e)))?;
    tracing::info!("stopped");
    drop(executor_lock);
    Ok(0)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: no new work; live runs stop at their next journal point");
}

pub async fn deploy(g: &Settings, args: &DeployArgs) -> Result<u8, Failure> {
    if args.rollback {
        let name = args
            .name
            .clone()
            .ok_or_else(|| usage(anyhow!("--rollback needs --name")))?;
        let deployment = match &args.remote.server {
            Some(server) => {
                let body = match args.version {
                    Some(version) => json!({ "version": version }).to_string(),
                    None => String::new(),
                };
                let reply = remote(
                    g,
                    &args.remote,
                    "POST",
                    &format!(
                        "{}/v1/workflows/{name}/rollback",
                        server.trim_end_matches('/')
                    ),
                    body.into_bytes(),
                    "application/json",
                )
                .await?;
                serde_json::from_value::<Deployment>(reply)
                    .map_err(|e| anyhow!("unexpected reply from the server: {e}"))?
            }
            None => {
                let host = open(g).await?;
                host.journal()
                    .activate(&name, args.version)
                    .await
                    .map_err(|e| usage(anyhow!(e)))?
            }
        };
        if g.json {
            println!("{}", json!(deployment));
        } else {
            println!(
                "{name}: version {} (module {}) is active; new runs get it, runs already started keep theirs",
                deployment.version,
                &deployment.hash[..12]
            );
        }
        return Ok(0);
    }
    let module = args
        .module
        .as_ref()
        .expect("clap requires a module without --rollback");
    let bytes = std::fs::read(module)
        .with_context(|| format!("cannot read module {}", module.display()))
        .map_err(usage)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => wasaga_server::workflow_name_of(module)
            .ok_or_else(|| usage(anyhow!("give the workflow's name with --name")))?,
    };
    let options = wasaga_runtime::upgrade::DeployOptions {
        completed: args.check_completed.unwrap_or(g.deploy.completed),
        force: args.force,
        upgrade_in_flight: args.upgrade_in_flight || g.deploy.upgrade_in_flight,
    };
    let report: Value = match &args.remote.server {
        Some(server) => {
            let url = format!(
                "{}/v1/workflows/{}/versions?force={}&upgrade_in_flight={}&check_completed={}",
                server.trim_end_matches('/'),
                super::remote::path_segment(&name),
                options.force,
                options.upgrade_in_flight,
                options.completed
            );
            remote(g, &args.remote, "POST", &url, bytes, "application/wasm").await?
        }
        None => {
            let host = open(g).await?;
            let report = host
                .deploy_checked(&name, &bytes, options)
                .await
                .map_err(|e| {
                    usage(anyhow!(e).context(format!("{} was not deployed", module.display())))
                })?;
            if let Some(refused) = &report.refused {
                if !g.json {
                    super::upgrades::print_divergences(&report.to_json()["verified"]);
                }
                return Err(usage(anyhow!(
                    "{} was not deployed: {refused}",
                    module.display()
                )));
            }
            report.to_json()
        }
    };
    if g.json {
        println!("{report}");
        return Ok(0);
    }
    let deployed: Deployed = serde_json::from_value(report.clone())
        .map_err(|e| anyhow!("unexpected reply from the server: {e}"))?;
    let d = &deployed.deployment;
    if deployed.new_version {
        println!(
            "deployed {} version {} (module {}); new runs get it",
            d.workflow,
            d.version,
            &d.hash[..12]
        );
    } else if deployed.previous == Some(d.version) {
        println!(
            "{} version {} (module {}) is already the active version; nothing changed",
            d.workflow,
            d.version,
            &d.hash[..12]
        );
    } else {
        println!(
            "{} version {} (module {}) was deployed before; it is the active version again",
            d.workflow,
            d.version,
            &d.hash[..12]
        );
    }
    super::upgrades::print_deploy_checks(&report);
    Ok(0)
}

pub async fn versions(g: &Settings, args: &VersionsArgs) -> Result<u8, Failure> {
    let versions: Vec<Deployment> = match &args.remote.server {
        Some(server) => {
            let reply = remote(
                g,
                &args.remote,
                "GET",
                &format!(
                    "{}/v1/workflows/{}/versions",
                    server.trim_end_matches('/'),
                    args.name
                ),
                Vec::new(),
                "application/json",
            )
            .await?;
            serde_json::from_value(reply["versions"].clone())
                .map_err(|e| anyhow!("unexpected reply from the server: {e}"))?
        }
        None => {
            let host = open(g).await?;
            host.journal()
                .versions(&args.name)
                .await
                .map_err(|e| usage(anyhow!(e)))?
        }
    };
    if g.json {
        println!("{}", json!({ "workflow": args.name, "versions": versions }));
        return Ok(0);
    }
    println!(
        "{:<8} {:<8} {:<24} module",
        "version", "active", "deployed (UTC)"
    );
    for v in &versions {
        println!(
            "{:<8} {:<8} {:<24} {}",
            v.version,
            if v.active { "yes" } else { "" },
            timestamp(v.deployed_at_ms),
            v.hash
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_795_608_369_116), "2026-11-25T12:06:09.116Z");
    }
}
