//! The command line: argument definitions (clap), then one function per command. Output is
//! human-readable by default and one JSON document with `--json`. Exit codes: 0 completed,
//! 1 host failure, 2 usage or input error, 3 compensated, 4 stuck.

mod args;
mod benchmarks;
mod bulk;
mod failure;
mod host;
mod ledger;
mod outbox;
mod progress;
mod remote;
mod retention;
mod run;
mod runs;
mod serve;
mod settings;
mod telemetry;
mod upgrades;
mod waits;

use anyhow::anyhow;
pub use args::Cli;
use args::{BenchCommand, Command, RunsCommand};
use failure::{Failure, usage};
use serde_json::json;
use settings::Settings;
use std::process::ExitCode;
use wasaga_db::Location;
use wasaga_runtime::bulk::BulkAction;

/// Runs one command: settles its settings, starts the async runtime sized for them, and maps
/// what happened onto a message and an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let json = cli.global.json;
    // Dropped after the runtime, so that the spans of the command's last moments are sent.
    let mut telemetry = None;
    let outcome = match Settings::load(&cli.global) {
        Ok(settings) => {
            let logging = telemetry::Logging {
                format: cli.global.log_format,
                serving: matches!(
                    cli.command,
                    Command::Serve(_) | Command::Ledger(args::LedgerCommand::Serve { .. })
                ),
            };
            match telemetry::init(logging, settings.otlp.as_ref()) {
                Ok(installed) => {
                    telemetry = Some(installed);
                    match runtime(&settings, &cli.command) {
                        Ok(runtime) => runtime.block_on(dispatch(&settings, &cli.command)),
                        Err(e) => Err(Failure::from(anyhow!(
                            "cannot start the async runtime: {e}"
                        ))),
                    }
                }
                Err(e) => Err(usage(e)),
            }
        }
        Err(error) => Err(usage(error)),
    };
    drop(telemetry);
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if json {
                println!("{}", json!({ "error": format!("{:#}", failure.error) }));
            } else {
                eprintln!("error: {:#}", failure.error);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// The tokio runtime. With a SQLite journal, one core is left to the database's writer
/// thread, through which every durable write passes: on the 2-core development machine the
/// transfer benchmark ran 7,700-8,800 sagas/s with one worker against 7,000-7,600 with two.
/// With PostgreSQL there is no such thread and every core is a worker (1,210-1,290 sagas/s
/// against 910-1,030 with one). `TOKIO_WORKER_THREADS` still overrides.
fn runtime(g: &Settings, command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let journal = match command {
        Command::Bench(BenchCommand::Transfer { journal, .. })
        | Command::Bench(BenchCommand::Micro { journal, .. })
        | Command::Bench(BenchCommand::Waits { journal, .. }) => journal,
        // A host of a benchmark with several: they share a PostgreSQL journal.
        Command::Bench(BenchCommand::TransferPart) => return builder.build(),
        _ => &g.host.journal,
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if matches!(journal, Location::Sqlite(_)) && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}

async fn dispatch(g: &Settings, command: &Command) -> Result<u8, Failure> {
    match command {
        Command::Run(args) => run::run(g, args).await,
        Command::Resume => run::resume(g).await,
        Command::Runs(RunsCommand::List { status, limit }) => {
            runs::runs_list(g, status.as_deref(), *limit).await
        }
        Command::Runs(RunsCommand::Show { run_id }) => runs::runs_show(g, run_id).await,
        Command::Runs(RunsCommand::Retry {
            run_id: Some(run_id),
            select,
            ..
        }) => {
            one_run(select)?;
            runs::runs_retry(g, run_id).await
        }
        Command::Runs(RunsCommand::Retry {
            run_id: None,
            select,
            remote,
        }) => bulk::bulk(g, BulkAction::Retry, select, None, remote).await,
        Command::Runs(RunsCommand::Cancel {
            run_id: Some(run_id),
            reason,
            by,
            remote,
            select,
        }) => {
            one_run(select)?;
            waits::cancel(g, run_id, reason, by.as_deref(), remote).await
        }
        Command::Runs(RunsCommand::Cancel {
            run_id: None,
            reason,
            by,
            remote,
            select,
        }) => {
            let by = by.clone().unwrap_or_else(waits::asked_by);
            bulk::bulk(g, BulkAction::Cancel, select, Some((&by, reason)), remote).await
        }
        Command::Runs(RunsCommand::Export { out, select, limit }) => {
            upgrades::export(g, out, select, *limit).await
        }
        Command::Runs(RunsCommand::Prune {
            older_than_days,
            export,
            yes,
        }) => bulk::prune(g, *older_than_days, export.as_deref(), *yes).await,
        Command::Verify(args) => upgrades::verify(g, args).await,
        Command::Signal(args) => waits::signal(g, args).await,
        Command::Ledger(command) => ledger::ledger(g, command).await,
        Command::Outbox(command) => outbox::outbox(g, command).await,
        Command::Validate { module } => run::validate(g, module).await,
        Command::Serve(args) => serve::serve(g, args).await,
        Command::Deploy(args) => serve::deploy(g, args).await,
        Command::Versions(args) => serve::versions(g, args).await,
        Command::Bench(BenchCommand::Locks {
            backend,
            n,
            c,
            scratch,
        }) => benchmarks::bench_locks(g, backend, *n, *c, scratch).await,
        Command::Bench(BenchCommand::Micro { module, journal }) => {
            let module = benchmarks::bench_module(module.as_deref(), "bench_transfer.wasm")?;
            benchmarks::bench_micro(g, &module, journal).await
        }
        Command::Bench(BenchCommand::Waits {
            n,
            c,
            module,
            journal,
        }) => {
            let module = benchmarks::bench_module(module.as_deref(), "waiter.wasm")?;
            benchmarks::bench_waits(g, *n, *c, &module, journal).await
        }
        Command::Bench(BenchCommand::TransferPart) => {
            crate::bench::transfer_part()
                .await
                .map_err(failure::host_failure)?;
            Ok(0)
        }
        Command::Bench(BenchCommand::Transfer {
            n,
            c,
            seed,
            accounts,
            locked,
            module,
            journal,
            ledger,
            hosts,
            ledger_http,
        }) => {
            let shape = benchmarks::Shape {
                accounts: *accounts,
                locked: *locked,
                locks: g.host.locks.clone(),
                hosts: *hosts,
                ledger_http: *ledger_http,
            };
            // The ledger served over HTTP keeps its accounts in a database of its own.
            let ledger = match (ledger, ledger_http) {
                (None, true) => Some(Location::Sqlite(std::path::PathBuf::from(
                    "target/bench/ledger.db",
                ))),
                (ledger, _) => ledger.clone(),
            };
            let module = benchmarks::bench_module(module.as_deref(), "bench_transfer.wasm")?;
            benchmarks::bench_transfer(g, *n, *c, *seed, shape, &module, journal, ledger.as_ref())
                .await
        }
    }
}

/// Refuses a filter given beside a run id: a command acts on one run, or on those a filter
/// matches.
fn one_run(select: &args::RunSelect) -> Result<(), Failure> {
    if select.status.is_some()
        || select.workflow.is_some()
        || select.since.is_some()
        || select.until.is_some()
    {
        return Err(usage(anyhow!(
            "give a run id or a filter (--status, --workflow, --since, --until), not both"
        )));
    }
    Ok(())
}
