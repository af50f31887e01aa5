//! Opening the host a command runs on, and the upkeep every command that drives runs does first:
//! the single-executor lock on a SQLite journal, the sweeps, the resumption of unfinished runs.

use super::failure::{Failure, host_failure, usage};
use super::settings::Settings;
use anyhow::{Context, Result, anyhow};
use std::path::PathBuf;
use wasaga_db::Location;
use wasaga_journal::Takeover;
use wasaga_participants::http::HttpParticipant;
use wasaga_runtime::Host;
use wasaga_runtime::store::no_observer;

/// Opens the host for a one-shot command.
pub(crate) async fn open(g: &Settings) -> Result<Host, Failure> {
    let mut config = g.host.clone();
    // One command runs few modules at once: a small instance pool starts faster.
    if !g.concurrent_runs_configured {
        config.limits.concurrent_runs_max = 16;
    }

    // Host errors already name the file or service and what to do.
    Host::open(&config).await.map_err(|e| anyhow!(e).into())
}

/// [`open`] for a command that prints each step as it happens: every step's outcome is then
/// answered only once durable, so the terminal never shows what a power loss could undo.
pub(crate) async fn open_showing_steps(g: &Settings) -> Result<Host, Failure> {
    let mut g = g.clone();
    g.host.early_answers = false;
    open(&g).await
}

/// Only one process executes runs on a SQLite file at a time: it holds a file lock beside it,
/// which the kernel drops when the process dies, so the holder knows that every earlier
/// executor is dead and may take over all their runs at once. On PostgreSQL many hosts share
/// the journal and take over each other's runs through leases instead (`None`). A command
/// waits for the lock; a server (`wait` false) says who has it instead of hanging.
pub(crate) fn lock_executor(
    location: &Location,
    wait: bool,
) -> Result<Option<std::fs::File>, Failure> {
    let Location::Sqlite(db) = location else {
        return Ok(None);
    };
    let mut path = db.as_os_str().to_owned();
    path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create lock file {}", PathBuf::from(&path).display()))?;
    if file.try_lock().is_err() {
        if !wait {
            return Err(usage(anyhow!(
                "another wasaga process is running workflows on {} (a server, or a `wasaga run`); stop it first, or share a PostgreSQL journal to run many hosts",
                db.display()
            )));
        }
        eprintln!(
            "waiting for another wasaga process that is running workflows on {} (a `wasaga serve`? start runs through its API instead)",
            db.display()
        );
        file.lock()
            .with_context(|| format!("cannot lock {}", PathBuf::from(&path).display()))?;
    }
    Ok(Some(file))
}

/// Warnings for the `http` participants that take no connection now: runs that call them
/// would wait and retry, then fail and compensate, so the operator hears of it at start.
pub(crate) async fn unreachable_services(g: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    for service in &g.host.http {
        // The settings checked each config already.
        if let Ok(participant) = HttpParticipant::new(service.clone())
            && let Err(warning) = participant.reachable().await
        {
            warnings.push(format!("warning: {warning}"));
        }
    }
    warnings
}

/// Resolves in-doubt prepared transactions from the journal.
pub(crate) async fn sweep(g: &Settings, host: &Host) -> Result<(), Failure> {
    for warning in unreachable_services(g).await {
        eprintln!("{warning}");
    }
    let (resolved, skipped) = host.sweep_in_doubt().await.map_err(host_failure)?;
    for reason in skipped {
        eprintln!("warning: {reason}");
    }
    if resolved > 0 && !g.json {
        println!("resolved {resolved} in-doubt prepared transaction(s) from the journal");
    }
    Ok(())
}

/// Voids the ledger's holds whose expiry has passed.
pub(crate) async fn void_expired_holds(g: &Settings, host: &Host) -> Result<(), Failure> {
    let voided = wasaga_participants::ledger::void_expired(host.ledger_db())
        .await
        .map_err(|e| anyhow!(e))?;
    if voided > 0 && !g.json {
        println!("voided {voided} expired hold(s)");
    }
    Ok(())
}

/// Finishes runs a previous process left unfinished, saying so in one line each.
pub(crate) async fn resume_quietly(g: &Settings, host: &Host) -> Result<(), Failure> {
    sweep(g, host).await?;
    void_expired_holds(g, host).await?;
    let resumed = host
        .resume_unfinished(no_observer(), takeover(g))
        .await
        .map_err(host_failure)?;
    if !g.json {
        for outcome in resumed.ended {
            println!(
                "resumed unfinished run {}: {}",
                outcome.run_id, outcome.status
            );
        }
    }
    // A run that cannot go on now does not keep this command from its own run.
    for (run_id, reason) in resumed.unfinished {
        eprintln!("run {run_id} is still unfinished: {reason}");
    }
    Ok(())
}

/// Which unfinished runs this process may take over: every one only on SQLite, where it holds
/// the executor lock.
pub(crate) fn takeover(g: &Settings) -> Takeover {
    match g.host.journal {
        Location::Sqlite(_) => Takeover::Every,
        Location::Postgres { .. } => Takeover::Expired,
    }
}
