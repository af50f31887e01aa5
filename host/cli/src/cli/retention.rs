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
use std::io::Write;
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
    // Held for the whole pass: other passes exporting to the same file (another host, or an
    // operator's `runs prune`) wait their turn instead of interleaving their lines.
    let mut archive = match export {
        Some(path) => Some(open_export(path).await?),
        None => None,
    };
    loop {
        let batch = journal
            .prunable_runs(cutoff_ms, wasaga_journal::PRUNED_PER_BATCH_MAX)
            .await
            .map_err(|e| anyhow!(e))?;
        if batch.is_empty() {
            break;
        }
        if let (Some(file), Some(export)) = (archive.as_mut(), export) {
            // Written whole and synced before anything of them is deleted: a crash in between
            // leaves runs exported twice (or a torn line, cut off by the next pass), never
            // deleted unexported.
            let mut lines = Vec::new();
            for run_id in &batch {
                super::upgrades::write_run(journal, run_id, &mut lines).await?;
            }
            file.write_all(&lines)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", export.display()))?;
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
    }
    Ok(pruned)
}

/// Opens the export file for appending, with an exclusive lock on it (waited for), and cuts
/// off a torn last line a crash left: its runs were not deleted, deletion follows the sync.
async fn open_export(path: &Path) -> Result<std::fs::File, Failure> {
    let path = path.to_owned();
    let file = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        let named = || format!("cannot use the export file {}", path.display());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(named)?;
        if !file.metadata().with_context(named)?.is_file() {
            anyhow::bail!("the export file {} is not a regular file", path.display());
        }
        file.lock().with_context(named)?;
        let kept = whole_lines_len(&mut file).with_context(named)?;
        if kept < file.metadata().with_context(named)?.len() {
            tracing::warn!(
                "{}: cutting off a torn last line (an export a crash interrupted; its runs were not pruned)",
                path.display()
            );
            file.set_len(kept).with_context(named)?;
            file.sync_all().with_context(named)?;
        }
        Ok(file)
    })
    .await
    .map_err(|e| anyhow!("the export file could not be opened: {e}"))??;
    Ok(file)
}

/// The length of `file` up to and with its last newline (0 if it has none).
fn whole_lines_len(file: &mut std::fs::File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut end = file.seek(SeekFrom::End(0))?;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        file.seek(SeekFrom::Start(start))?;
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact(part)?;
        if let Some(at) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
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
