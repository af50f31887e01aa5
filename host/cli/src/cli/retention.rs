//! What is kept how long (`[retention]`): finished runs with their journals for `runs_days`
//! (exported first, if `export` names a file), module versions as long as a run executes them
//! or they are a workflow's active version or the one before, and the ledger's operation
//! records (its idempotency keys) for `ledger_ops_days`; the ledger's entries, its audit trail,
//! are kept. `wasaga runs prune` prunes once; `serve` prunes every hour when the config says
//! how long to keep runs.

use super::failure::Failure;
use super::settings::RetentionSettings;
use anyhow::{Context, anyhow};
use serde::Serialize;
use std::path::Path;
use wasaga_runtime::Host;

/// How often `serve` prunes.
pub const PRUNE_EVERY_MS: u64 = 3_600_000;

/// What one pass pruned.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub runs: u64,
    pub modules: u64,
    pub ledger_ops: u64,
    /// Pruned runs whose ids were let go (their operation records gone too).
    pub forgotten: u64,
}

/// Prunes the finished runs that ended before `cutoff_ms` (exported to `export` first), the
/// module versions no run needs, and, if configured, old ledger operation records.
pub(crate) async fn prune_pass(
    host: &Host,
    cutoff_ms: u64,
    export: Option<&Path>,
    settings: &RetentionSettings,
) -> Result<Pruned, Failure> {
    let journal = host.journal();
    let mut pruned = Pruned::default();
    loop {
        let batch = journal
            .prunable_runs(cutoff_ms, wasaga_journal::PRUNED_PER_BATCH_MAX)
            .await
            .map_err(|e| anyhow!(e))?;
        if batch.is_empty() {
            break;
        }
        if let Some(export) = export {
            // Written and synced before anything of them is deleted: a crash in between
            // leaves runs exported twice, never deleted unexported.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(export)
                .with_context(|| format!("cannot open the export file {}", export.display()))?;
            let mut sink = std::io::BufWriter::new(file);
            for run_id in &batch {
                super::upgrades::write_run(journal, run_id, &mut sink).await?;
            }
            let file = sink
                .into_inner()
                .map_err(|e| anyhow!("cannot write {}: {e}", export.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot sync {}", export.display()))?;
        }
        let deleted = journal
            .prune_runs(&batch, cutoff_ms)
            .await
            .map_err(|e| anyhow!(e))?;
        pruned.runs += deleted;
        if (batch.len() as u32) < wasaga_journal::PRUNED_PER_BATCH_MAX {
            break;
        }
    }
    pruned.modules = journal.prune_modules().await.map_err(|e| anyhow!(e))?;
    if let Some(days) = settings.ledger_ops_days {
        // Never an operation an unfinished or stuck run may still repeat or undo: only those
        // made before the oldest of them began (an operation is made by a run after it began).
        let by_age = wasaga_core::clock::now_ms().saturating_sub(u64::from(days) * 86_400_000);
        let open = journal.oldest_open_run_ms().await.map_err(|e| anyhow!(e))?;
        let cutoff = open.map_or(by_age, |open| by_age.min(open));
        pruned.ledger_ops = wasaga_participants::ledger::prune_ops(host.ledger_db(), cutoff)
            .await
            .map_err(|e| anyhow!(e))?;
        // Runs that ended before then have no operation record left: their ids are free.
        pruned.forgotten = journal
            .forget_pruned(cutoff)
            .await
            .map_err(|e| anyhow!(e))?;
    }
    Ok(pruned)
}

/// Prunes every `PRUNE_EVERY_MS` while `serve` runs (a minute after it starts first).
pub(crate) async fn prune_periodically(host: Host, settings: RetentionSettings) {
    let Some(days) = settings.runs_days else {
        return;
    };
    let mut pause = std::time::Duration::from_secs(60);
    loop {
        tokio::time::sleep(pause).await;
        pause = std::time::Duration::from_millis(PRUNE_EVERY_MS);
        let cutoff = wasaga_core::clock::now_ms().saturating_sub(u64::from(days) * 86_400_000);
        match prune_pass(&host, cutoff, settings.export.as_deref(), &settings).await {
            Ok(p) if p.runs + p.modules + p.ledger_ops > 0 => tracing::info!(
                "retention: pruned {} runs, {} module versions, {} ledger operation records",
                p.runs,
                p.modules,
                p.ledger_ops
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "retention: pruning failed, tried again in an hour: {:#}",
                e.error
            ),
        }
    }
}
