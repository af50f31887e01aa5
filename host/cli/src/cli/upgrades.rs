//! `wasaga verify` and `wasaga runs export`, and how a checked deploy is reported: a new
//! version is replayed against the recorded runs of its workflow (this journal's, or exported
//! ones) before it may serve them.

use super::args::{RunSelect, VerifyArgs};
use super::failure::{EXIT_DIVERGED, Failure, host_failure, usage};
use super::host::open;
use super::settings::Settings;
use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use wasaga_runtime::upgrade::ExportedRun;

/// Prints what a deploy's check found and what became of the runs in flight.
pub(crate) fn print_deploy_checks(report: &Value) {
    let checked = report["verified"]["checked"].as_array().map_or(0, Vec::len);
    let diverged = divergences(&report["verified"]);
    if checked == 0 {
        println!("no recorded run of the workflow to replay on it");
    } else if diverged.is_empty() {
        println!("checked {checked} recorded runs: each replays on it");
    } else {
        println!(
            "checked {checked} recorded runs: {} diverge (deployed with --force, or they ran on a version other than the one it replaces; those in flight stay on theirs)",
            diverged.len()
        );
        print_divergences(&report["verified"]);
    }
    let upgraded: Vec<&str> = report["upgraded"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !upgraded.is_empty() {
        println!(
            "moved {} runs in flight to it: {}",
            upgraded.len(),
            shown(&upgraded)
        );
    }
    for pinned in report["pinned"].as_array().into_iter().flatten() {
        println!(
            "run {} stays on module {}: {}",
            pinned["run_id"].as_str().unwrap_or_default(),
            &pinned["module_hash"].as_str().unwrap_or_default()
                [..12.min(pinned["module_hash"].as_str().map_or(0, str::len))],
            pinned["reason"].as_str().unwrap_or_default()
        );
    }
}

/// The checked runs that diverged, as `(run id, call, reason)`.
fn divergences(verified: &Value) -> Vec<(String, Option<u64>, String)> {
    verified["checked"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["replay"] == "diverges")
        .map(|c| {
            (
                c["run_id"].as_str().unwrap_or_default().to_owned(),
                c["call"].as_u64(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Prints each diverging run with the call it diverged at.
pub(crate) fn print_divergences(verified: &Value) {
    for (run_id, call, reason) in divergences(verified) {
        match call {
            Some(call) => println!("  run {run_id} diverges at call {call}: {reason}"),
            None => println!("  run {run_id} diverges: {reason}"),
        }
    }
}

fn shown(ids: &[&str]) -> String {
    let mut text = ids.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > 10 {
        text.push_str(", ...");
    }
    text
}

/// `wasaga verify module.wasm --workflow NAME [--runs exported.jsonl]`.
pub(crate) async fn verify(g: &Settings, args: &VerifyArgs) -> Result<u8, Failure> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))
        .map_err(usage)?;
    let host = open(g).await?;
    let report = match &args.runs {
        Some(file) => {
            let runs = read_exported(file)?;
            host.verify_exported(&args.workflow, &bytes, runs)
                .await
                .map_err(host_failure)?
        }
        None => host
            .verify(
                &args.workflow,
                &bytes,
                args.check_completed.unwrap_or(g.deploy.completed),
            )
            .await
            .map_err(host_failure)?,
    };
    if report.checked.is_empty() {
        return Err(usage(anyhow!(
            "no recorded run of {} was found to replay ({}): nothing was checked; give --workflow the workflow's name, and --runs an export of its runs",
            args.workflow,
            match (&args.runs, report.skipped) {
                (Some(file), 0) => format!("{} holds none", file.display()),
                (Some(file), skipped) => format!(
                    "{} holds {skipped} runs of other workflows, or compensated ones",
                    file.display()
                ),
                (None, _) => "this journal has none completed or in flight".to_owned(),
            }
        )));
    }
    let agrees = report.agrees() && !report.in_flight_capped;
    if g.json {
        println!("{}", json!(report));
    } else {
        let value = json!(report);
        if agrees {
            println!(
                "{} (module {}) replays each of {} recorded runs of {}",
                args.module.display(),
                &report.module_hash[..12],
                report.checked.len(),
                args.workflow
            );
        } else {
            println!("{}", report.summary());
            print_divergences(&value);
        }
        if report.in_flight_capped {
            println!(
                "not every run was checked: only the newest {} unfinished runs were",
                wasaga_runtime::upgrade::CHECKED_IN_FLIGHT_MAX
            );
        }
        if report.skipped > 0 {
            println!(
                "skipped {} exported runs: of other workflows, or compensated",
                report.skipped
            );
        }
    }
    Ok(if agrees { 0 } else { EXIT_DIVERGED })
}

/// The longest line of an export read (one run with its whole journal).
const EXPORTED_LINE_BYTES_MAX: u64 = 64 << 20;

/// Reads exported runs (JSON lines; `-` for stdin), saying which line is wrong.
fn read_exported(file: &Path) -> Result<Vec<ExportedRun>, Failure> {
    use std::io::{BufRead, Read};
    let source: Box<dyn Read> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .with_context(|| format!("cannot read exported runs {}", file.display()))
                .map_err(usage)?,
        )
    };
    let mut reader = std::io::BufReader::new(source);
    let (mut runs, mut line, mut number) = (Vec::new(), Vec::new(), 0);
    loop {
        line.clear();
        number += 1;
        let read = reader
            .by_ref()
            .take(EXPORTED_LINE_BYTES_MAX + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", file.display()))
            .map_err(usage)?;
        if read == 0 {
            return Ok(runs);
        }
        if read as u64 > EXPORTED_LINE_BYTES_MAX {
            return Err(usage(anyhow!(
                "{} line {number} is over {} MiB: not a run `wasaga runs export` writes",
                file.display(),
                EXPORTED_LINE_BYTES_MAX >> 20
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let run = serde_json::from_slice::<ExportedRun>(&line).map_err(|e| {
            usage(anyhow!(
                "{} line {number}: not an exported run ({e}); write the file with `wasaga runs export`",
                file.display()
            ))
        })?;
        runs.push(run);
    }
}

/// `wasaga runs export --out FILE [filters]`: runs with their journals, one JSON object per
/// line, newest first.
pub(crate) async fn export(
    g: &Settings,
    out: &Path,
    select: &RunSelect,
    limit: u32,
) -> Result<u8, Failure> {
    let host = open(g).await?;
    let filter = wasaga_journal::RunFilter {
        workflow: select.workflow.clone(),
        since_ms: select.since,
        until_ms: select.until,
        limit,
        ..Default::default()
    };
    let filter = match select.status.as_deref() {
        Some(status) => filter.with_status(status).ok_or_else(|| {
            usage(anyhow!(
                "unknown status '{status}'; use {}",
                wasaga_journal::STATUS_NAMES
            ))
        })?,
        None => filter,
    };
    let runs = host.journal().runs(filter).await.map_err(|e| anyhow!(e))?;
    let mut written = 0;
    let mut sink: Box<dyn Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(out)
                .with_context(|| format!("cannot create {}", out.display()))
                .map_err(usage)?,
        ))
    };
    for run in runs {
        write_run(host.journal(), &run.run_id, &mut sink).await?;
        written += 1;
    }
    sink.flush().context("cannot write the export")?;
    if out != Path::new("-") && !g.json {
        println!("exported {written} runs to {}", out.display());
        if written >= limit {
            println!("more runs may match: --limit (now {limit}) exports more");
        }
    }
    Ok(0)
}

/// Writes one run and its events as a line of JSON; a run gone meanwhile is skipped.
pub(crate) async fn write_run<W: Write + ?Sized>(
    journal: &wasaga_journal::Journal,
    run_id: &str,
    sink: &mut W,
) -> Result<bool, Failure> {
    let (record, events) = match journal.run_with_events(run_id).await {
        Ok(found) => found,
        Err(wasaga_journal::JournalError::UnknownRun(_)) => return Ok(false),
        Err(e) => return Err(anyhow!(e).into()),
    };
    if record.pruned_at_ms.is_some() {
        // Pruned since it was listed (by another pass): its journal is gone.
        return Ok(false);
    }
    let line = json!({ "run": record, "events": events });
    writeln!(sink, "{line}").context("cannot write the export")?;
    Ok(true)
}
