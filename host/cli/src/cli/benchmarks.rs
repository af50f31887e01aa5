//! `wasaga bench transfer | micro | locks`: the benchmark commands, driving `crate::bench`.

use super::failure::{EXIT_FAILURE, Failure, host_failure, usage};
use super::settings::Settings;
use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasaga_db::Location;
use wasaga_runtime::HostConfig;

/// A benchmark database: PostgreSQL URLs default to their own `wasaga_bench` schema, so a
/// benchmark never empties the schema a real journal lives in.
/// A lock backend as the user named it, without a password.
pub(crate) fn lock_backend_name(backend: &wasaga_locks::LockBackend) -> String {
    use wasaga_locks::LockBackend;
    match backend {
        LockBackend::Journal => "journal".to_owned(),
        LockBackend::Sqlite(path) => format!("sqlite:{}", path.display()),
        LockBackend::Redis(url) | LockBackend::ZooKeeper(url) => url.clone(),
        LockBackend::Postgres(url) => wasaga_db::url::without_password(url),
    }
}

/// The benchmark component `file` (`bench_transfer.wasm`, `waiter.wasm`): the one given, or
/// the one the build put beside this binary's target directory
/// (`target/guests/wasm32-wasip2/release/`, for `target/release/wasaga`), or one beside the
/// binary itself, or under `target/guests/...` of the working directory. So the benchmarks
/// run from any directory.
pub(crate) fn bench_module(given: Option<&Path>, file: &str) -> Result<PathBuf, Failure> {
    if let Some(given) = given {
        return Ok(given.to_owned());
    }
    let built = Path::new("guests/wasm32-wasip2/release").join(file);
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        candidates.push(dir.join(file));
        if let Some(target) = dir.parent() {
            candidates.push(target.join(&built));
        }
    }
    candidates.push(Path::new("target").join(&built));
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(usage(anyhow!(
            "cannot find the benchmark module {file} (looked at {}); build it with ./scripts/bench, or `cargo build --release --target wasm32-wasip2 --manifest-path workflows/Cargo.toml --target-dir target/guests` in the repository, or pass --module",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Reads the benchmark module and prepares the benchmark's own journal.
pub(crate) fn bench_files(
    g: &Settings,
    module: &Path,
    journal: &Location,
) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(module)
        .with_context(|| {
            format!(
                "cannot read the benchmark module {}; build it with ./scripts/bench or `cargo build --release --target wasm32-wasip2 --manifest-path workflows/Cargo.toml --target-dir target/guests`",
                module.display()
            )
        })
        .map_err(usage)?;
    if *journal == g.host.journal {
        return Err(usage(anyhow!(
            "the benchmark empties its journal first; give --journal a database other than --db"
        )));
    }
    if let Location::Sqlite(path) = journal
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(bytes)
}

pub(crate) async fn bench_locks(
    g: &Settings,
    backend: &wasaga_locks::LockBackend,
    n: u32,
    c: u32,
    scratch: &Path,
) -> Result<u8, Failure> {
    if Location::Sqlite(scratch.to_owned()) == g.host.journal {
        return Err(usage(anyhow!(
            "the lock benchmark deletes its scratch file; give --scratch a file other than --db"
        )));
    }
    if let Some(dir) = scratch.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let report = crate::bench::locks(backend.clone(), scratch.to_owned(), n, c)
        .await
        .map_err(host_failure)?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| anyhow!(e))?
        );
    } else {
        println!("backend      {}", report.backend);
        println!(
            "pairs        {} acquire+release from {} clients on distinct keys",
            report.n, report.c
        );
        println!("throughput   {:.0} pairs/s", report.pairs_per_s);
        println!(
            "latency      p50 {:.2} ms  p99 {:.2} ms",
            report.p50_ms, report.p99_ms
        );
    }
    Ok(0)
}

pub(crate) async fn bench_micro(
    g: &Settings,
    module: &Path,
    journal: &Location,
) -> Result<u8, Failure> {
    let bytes = bench_files(g, module, journal)?;
    let report = crate::bench::micro(
        journal.clone(),
        HostConfig::new(journal.clone()).cache_dir,
        bytes,
    )
    .await
    .map_err(host_failure)?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| anyhow!(e))?
        );
    } else {
        println!("instantiate            {:.1} us", report.instantiate_us);
        println!(
            "replayed host call     {:.2} us (host cost per step, no participant, no journal write)",
            report.replayed_call_us
        );
        println!(
            "journal appends        {:.0}/s from 1 writer (each waits for its fsync)",
            report.journal_appends_per_s_serial
        );
        println!(
            "journal appends        {:.0}/s from {} writers (group commit)",
            report.journal_appends_per_s_concurrent, report.writers
        );
    }
    Ok(0)
}

pub(crate) async fn bench_waits(
    g: &Settings,
    n: u32,
    c: u32,
    module: &Path,
    journal: &Location,
) -> Result<u8, Failure> {
    let bytes = bench_files(g, module, journal)?;
    if !g.json {
        println!(
            "bench waits: {n} runs sleep at once on {}, then wake",
            journal.describe()
        );
    }
    let cache = HostConfig::new(journal.clone()).cache_dir;
    let r = crate::bench::waits(journal.clone(), cache, bytes, n, c)
        .await
        .map_err(host_failure)?;
    if g.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| anyhow!(e))?);
        return Ok(0);
    }
    println!(
        "started                {:.0} runs/s, each up to its sleep (journaled, instance dropped)",
        r.started_per_s
    );
    println!(
        "{:<23}{} instances, RSS {:.1} MiB (was {:.1}): {:.0} bytes per waiting run",
        format!("while all {} wait", r.runs),
        r.instances_while_waiting,
        r.rss_waiting_mib,
        r.rss_before_mib,
        r.rss_per_waiting_run_bytes
    );
    if r.journal_bytes_per_waiting_run > 0.0 {
        println!(
            "journal                {:.0} bytes per waiting run",
            r.journal_bytes_per_waiting_run
        );
    }
    println!(
        "woken                  {:.0} runs/s once due; the last {} ms after its time",
        r.wakeups_per_s, r.last_woke_after_due_ms
    );
    if r.due_before_all_started > 0 {
        println!(
            "note                   {} runs came due before all had started (a slow start)",
            r.due_before_all_started
        );
    }
    Ok(0)
}

/// The transfer benchmark's accounts and locks.
pub(crate) struct Shape {
    pub(crate) accounts: u32,
    pub(crate) locked: bool,
    pub(crate) locks: wasaga_locks::LockBackend,
    pub(crate) hosts: u32,
    /// The ledger as a separate process over HTTP.
    pub(crate) ledger_http: bool,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn bench_transfer(
    g: &Settings,
    n: u32,
    c: u32,
    seed: u64,
    shape: Shape,
    module: &Path,
    journal: &Location,
    ledger: Option<&Location>,
) -> Result<u8, Failure> {
    let bytes = bench_files(g, module, journal)?;
    if let Some(ledger) = ledger {
        bench_files(g, module, ledger)?;
    }
    let progress: Option<Arc<dyn Fn(u32) + Send + Sync>> = if g.json {
        None
    } else {
        let durability = match journal {
            Location::Sqlite(_) => "WAL fdatasync before every answer",
            Location::Postgres { .. } => "synchronous_commit=on",
        };
        eprintln!(
            "transfer-saga: n={n} c={c} seed={seed} accounts={}{}{} journal={}{} ({durability})",
            shape.accounts,
            if shape.hosts > 1 {
                format!(" hosts={}", shape.hosts)
            } else {
                String::new()
            },
            if shape.locked {
                format!(" locked (locks {})", lock_backend_name(&shape.locks))
            } else {
                String::new()
            },
            journal.describe(),
            ledger
                .map(|l| format!(
                    " ledger={}{}",
                    if shape.ledger_http { "http -> " } else { "" },
                    l.describe()
                ))
                .unwrap_or_default()
        );
        let bar = super::progress::bar(u64::from(n), "sagas");
        Some(Arc::new(move |done| bar.set_position(u64::from(done))))
    };
    let report = crate::bench::transfer(crate::bench::TransferBench {
        n,
        c,
        seed,
        accounts: shape.accounts,
        locked: shape.locked,
        locks: shape.locks.clone(),
        journal: journal.clone(),
        ledger: ledger.cloned(),
        cache_dir: HostConfig::new(journal.clone()).cache_dir,
        module: bytes,
        hosts: shape.hosts,
        ledger_http: shape.ledger_http,
        exe: std::env::current_exe().ok(),
        progress,
    })
    .await
    .map_err(host_failure)?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| anyhow!(e))?
        );
    } else {
        println!(
            "transfers    {} ({} succeeded, {} compensated, {} failed at debit)",
            report.n, report.succeeded, report.compensated, report.failed_debit
        );
        println!(
            "throughput   {:.0} sagas/s over {:.2} s",
            report.throughput, report.elapsed_s
        );
        if report.hosts > 1 {
            println!(
                "hosts        {} processes on one journal, transfers each: {:?}",
                report.hosts, report.transfers_per_host
            );
        }
        println!(
            "latency      p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            report.p50_ms, report.p95_ms, report.p99_ms, report.max_ms
        );
        if report.locked {
            println!(
                "lock waits   p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms; {} runs compensated on a lock wait",
                report.lock_wait_p50_ms,
                report.lock_wait_p99_ms,
                report.lock_wait_max_ms,
                report.lock_timeouts
            );
        }
        println!(
            "journal      {} commits, {:.1} writers' jobs per commit ({:.2} commits per saga)",
            report.commits,
            report.jobs_per_commit,
            report.commits as f64 / f64::from(report.n.max(1))
        );
        for invariant in &report.invariants {
            println!(
                "invariant    {:<50} {}  ({})",
                invariant.name,
                if invariant.ok { "held" } else { "VIOLATED" },
                invariant.detail
            );
        }
    }
    Ok(if report.invariants_ok {
        0
    } else {
        EXIT_FAILURE
    })
}
