//! The server itself: its settings, the routes, the claim loop that takes up runs no live
//! host holds, `--watch`, and graceful shutdown.

use crate::auth::{admit, authorize, sign_in, sign_out};
use crate::health::{ready, scrape};
use crate::operations::{list_outbox, retry_outbox};
use crate::responses::error;
use crate::runs::{cancel_run, get_journal, get_run, list_runs, send_signal, start_run};
use crate::state::{
    AppState, CANCEL_BYTES_MAX, CLAIM_BATCH_MAX, InFlight, LISTINGS_CONCURRENT_MAX,
    REQUESTS_CONCURRENT_MAX, ROLLBACK_BYTES_MAX, START_ENVELOPE_BYTES_MAX, UPLOADS_CONCURRENT_MAX,
};
use crate::workflows::{deploy, list_versions, list_workflows, rollback};
use crate::{console, metrics, operations};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use wasaga_participants::outbox::Outbox;
use wasaga_runtime::engine::MODULE_BYTES_MAX;
use wasaga_runtime::executor::{Host, HostError};

/// What `serve` needs besides the host.
pub struct ServerSettings {
    /// The bearer token every `/v1` request must carry.
    pub token: String,
    /// How often the server looks for unfinished runs no live host holds.
    pub claim_interval_ms: u64,
    /// How long shutdown waits for live runs to reach a journal point.
    pub shutdown_grace_ms: u64,
    /// Redeploy `*.wasm` files in this directory when they change (local development).
    pub watch: Option<PathBuf>,
    /// The ledger's transaction records to deliver while serving.
    pub outbox: Option<Arc<Outbox>>,
    /// A second listener that serves `/metrics` without the token (for a Prometheus on a
    /// private network); on the main listener `/metrics` needs the token like `/v1`.
    pub metrics_listener: Option<tokio::net::TcpListener>,
    /// How deploys check a new version unless a request says otherwise.
    pub deploy: wasaga_runtime::upgrade::DeployOptions,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("claim_interval_ms", &self.claim_interval_ms)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("watch", &self.watch)
            .finish()
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Serves the API on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn serve(
    host: Host,
    listener: tokio::net::TcpListener,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = AppState {
        host: host.clone(),
        token: settings.token.clone().into(),
        in_flight: Arc::new(InFlight::default()),
        requests: Arc::new(tokio::sync::Semaphore::new(REQUESTS_CONCURRENT_MAX)),
        uploads: Arc::new(tokio::sync::Semaphore::new(UPLOADS_CONCURRENT_MAX)),
        ready: Arc::new(tokio::sync::Mutex::new(None)),
        wake: Arc::new(Notify::new()),
        scrapes: Arc::new(metrics::Scrapes::new(&host)),
        wake_timers: Arc::default(),
        deploy: settings.deploy,
        refusals: Arc::default(),
        revoked: Arc::default(),
        listings: Arc::new(tokio::sync::Semaphore::new(LISTINGS_CONCURRENT_MAX)),
    };
    let (stop, stopped) = watch::channel(false);
    let claims = tokio::spawn(claim_loop(
        state.clone(),
        settings.claim_interval_ms,
        stopped.clone(),
    ));
    let delivery = settings
        .outbox
        .clone()
        .map(|outbox| tokio::spawn(outbox.run(stopped.clone())));
    let metrics_server = settings.metrics_listener.map(|listener| {
        let router = Router::new()
            .route("/metrics", get(scrape))
            .with_state(state.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!("the metrics listener failed: {e}");
            }
        })
    });
    let watcher = settings.watch.clone().map(|dir| {
        tokio::spawn(watch_modules(
            host.clone(),
            dir,
            settings.deploy,
            stopped.clone(),
        ))
    });
    let signal = {
        let host = host.clone();
        async move {
            shutdown.await;
            // Live runs stop at their next journal point; waiting requests answer now.
            host.stop_runs();
            let _ = stop.send(true);
        }
    };
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .await;
    claims.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Some(delivery) = delivery {
        // Stopped at its pause; a pass cut short leaves leases that lapse, and its records
        // are delivered again under their ids.
        delivery.abort();
    }
    let deadline = Instant::now() + Duration::from_millis(settings.shutdown_grace_ms);
    while state.in_flight.count.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        let idle = state.in_flight.idle.notified();
        let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
    }
    let still = state.in_flight.count.load(Ordering::SeqCst);
    if still > 0 {
        tracing::warn!(
            "{still} runs did not reach a journal point within {} ms; they resume once their leases expire",
            settings.shutdown_grace_ms
        );
    }
    match host.release_runs().await {
        Ok(released) if released > 0 => tracing::info!(
            "released {released} unfinished runs; the next host to start resumes them"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "could not release this host's leases ({e}); its runs resume once the leases expire"
        ),
    }
    served.map_err(ServerError::Http)
}

pub(crate) fn router(state: AppState) -> Router {
    let input_bytes_max = state.host.limits().payload_bytes_max + START_ENVELOPE_BYTES_MAX;
    // Layers run outside in: the token is checked (authorize) before any body is read, and
    // each endpoint reads at most its own kind of body.
    let v1 = Router::new()
        .route("/workflows", get(list_workflows))
        .route(
            "/workflows/{name}/versions",
            get(list_versions)
                .post(deploy)
                .layer(DefaultBodyLimit::max(MODULE_BYTES_MAX)),
        )
        .route(
            "/workflows/{name}/rollback",
            post(rollback).layer(DefaultBodyLimit::max(ROLLBACK_BYTES_MAX)),
        )
        .route(
            "/workflows/{name}/runs",
            post(start_run).layer(DefaultBodyLimit::max(input_bytes_max)),
        )
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/journal", get(get_journal))
        .route(
            "/runs/{id}/signals/{name}",
            post(send_signal).layer(DefaultBodyLimit::max(input_bytes_max)),
        )
        .route(
            "/runs/{id}/cancel",
            post(cancel_run).layer(DefaultBodyLimit::max(CANCEL_BYTES_MAX)),
        )
        .route("/outbox", get(list_outbox))
        .route("/outbox/retry", post(retry_outbox))
        .route("/run-counts", get(operations::run_counts))
        .route(
            "/runs/{id}/retry",
            post(operations::retry_run).layer(DefaultBodyLimit::max(ROLLBACK_BYTES_MAX)),
        )
        .route("/ledger/accounts", get(operations::list_accounts))
        .route(
            "/bulk/retry",
            post(operations::bulk_retry).layer(DefaultBodyLimit::max(CANCEL_BYTES_MAX)),
        )
        .route(
            "/bulk/cancel",
            post(operations::bulk_cancel).layer(DefaultBodyLimit::max(CANCEL_BYTES_MAX)),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    // Behind the token (or the console's session) like `/v1`.
    let guarded = Router::new()
        .route("/metrics", get(scrape))
        .route("/ui/logout", post(sign_out))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    let bounded = Router::new()
        .route("/ui", get(|| async { console::asset("") }))
        .route("/ui/", get(|| async { console::asset("") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { console::asset(&file) }),
        )
        .route(
            "/ui/login",
            post(sign_in).layer(DefaultBodyLimit::max(ROLLBACK_BYTES_MAX)),
        )
        .merge(guarded)
        .nest("/v1", v1)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see the README for the API".to_owned(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit));
    // The probes answer outside the bound on requests: a flood of other requests must not
    // make an orchestrator think the host is dead (they read nothing, `/readyz` asks the
    // journal at most once a second).
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(bounded)
        .with_state(state)
}

/// Takes over unfinished runs that no live host holds (a host died, or shut down) and drives
/// them, as capacity allows.
pub(crate) async fn claim_loop(
    state: AppState,
    interval_ms: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let capacity = state.host.limits().concurrent_runs_max as usize;
    loop {
        if *stopped.borrow() {
            return;
        }
        let busy = state.in_flight.count.load(Ordering::SeqCst);
        let room = capacity.saturating_sub(busy).min(CLAIM_BATCH_MAX as usize) as u32;
        let mut full = false;
        if room > 0 {
            match state.host.claim(room).await {
                Ok(claimed) => {
                    // A full batch: more may be due (many timers at once); look again now.
                    full = claimed.len() >= room as usize;
                    if !claimed.is_empty() {
                        let shown = claimed.len().min(5);
                        tracing::info!(
                            "took up {} runs (due waits, or leases that lapsed): {}{}",
                            claimed.len(),
                            claimed[..shown].join(", "),
                            if claimed.len() > shown { ", ..." } else { "" }
                        );
                    }
                    for run_id in claimed {
                        // A run whose lease lapsed while this host still drives it (its
                        // renewal failed for a while) is taken back, not driven twice.
                        if !state.host.is_live(&run_id) {
                            state.spawn_drive(run_id);
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot look for unfinished runs: {e}"),
            }
        }
        // Holds past their expiry go back to their accounts.
        match wasaga_participants::ledger::void_expired(state.host.ledger_db()).await {
            Ok(0) => {}
            Ok(voided) => tracing::info!("voided {voided} expired holds"),
            Err(e) => tracing::warn!("cannot void expired holds: {e}"),
        }
        if full {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = state.wake.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}

/// The workflow name a module file deploys as: its stem, with `_` read as `-`.
pub fn workflow_name_of(path: &std::path::Path) -> Option<String> {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().replace('_', "-"))
}

/// Reads a module file of the watched directory: a regular file (through a symlink too) of at
/// most `MODULE_BYTES_MAX` bytes, opened without blocking, so a FIFO, a device or a huge file
/// is refused instead of stalling or exhausting the host.
fn read_module_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a module file must be one)",
        ));
    }
    if meta.len() > MODULE_BYTES_MAX as u64 {
        return Err(std::io::Error::other(format!(
            "{} bytes; a module is at most {MODULE_BYTES_MAX} bytes",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MODULE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MODULE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "it grew past {MODULE_BYTES_MAX} bytes while read"
        )));
    }
    Ok(bytes)
}

/// Deploys every `*.wasm` file in `dir` now and again whenever it changes, checked as any
/// deploy is (never forced: a version on which recorded runs diverge is refused); a module that
/// does not validate or is refused is reported and the previous version keeps serving.
pub(crate) async fn watch_modules(
    host: Host,
    dir: PathBuf,
    options: wasaga_runtime::upgrade::DeployOptions,
    mut stopped: watch::Receiver<bool>,
) {
    let options = wasaga_runtime::upgrade::DeployOptions {
        force: false,
        ..options
    };
    let mut seen: std::collections::HashMap<PathBuf, (std::time::SystemTime, u64)> =
        std::collections::HashMap::new();
    tracing::info!("watching {} for *.wasm changes", dir.display());
    loop {
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_none_or(|e| e != "wasm") {
                        continue;
                    }
                    let Ok(meta) = entry.metadata() else { continue };
                    let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
                    if seen.get(&path) == Some(&stamp) {
                        continue;
                    }
                    seen.insert(path.clone(), stamp);
                    let Some(name) = workflow_name_of(&path) else {
                        continue;
                    };
                    let read = {
                        let path = path.clone();
                        tokio::task::spawn_blocking(move || read_module_file(&path)).await
                    };
                    let deployed = match read {
                        Ok(Ok(bytes)) => host.deploy_checked(&name, &bytes, options).await,
                        Ok(Err(e)) => Err(HostError::Input(format!(
                            "cannot read {}: {e}",
                            path.display()
                        ))),
                        Err(e) => Err(HostError::Input(format!(
                            "cannot read {}: {e}",
                            path.display()
                        ))),
                    };
                    match deployed {
                        Ok(report) => match (&report.deployed, &report.refused) {
                            (Some(d), _)
                                if d.new_version || d.previous != Some(d.deployment.version) =>
                            {
                                tracing::info!(
                                    "watch: deployed {} version {} from {}; {} recorded runs replay on it, {} runs in flight moved to it",
                                    name,
                                    d.deployment.version,
                                    path.display(),
                                    report.verified.checked.len(),
                                    report.upgraded.len()
                                )
                            }
                            (Some(_), _) => {}
                            (None, refused) => tracing::warn!(
                                "watch: {} was not deployed, the previous version keeps serving: {}",
                                path.display(),
                                refused.as_deref().unwrap_or("refused")
                            ),
                        },
                        Err(e) => tracing::warn!(
                            "watch: {} was not deployed, the previous version keeps serving: {e}",
                            path.display()
                        ),
                    }
                }
            }
            Err(e) => tracing::warn!("watch: cannot read {}: {e}", dir.display()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_files_name_their_workflow() {
        assert_eq!(
            workflow_name_of(std::path::Path::new("dir/payment_order.wasm")),
            Some("payment-order".to_owned())
        );
    }
}
