//! The command line: argument definitions (clap), then one function per command. Output is
//! human-readable by default and one JSON document with `--json`. Exit codes: 0 completed,
//! 1 host failure, 2 usage or input error, 3 compensated, 4 stuck.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use settings::Settings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use wasaga_core::crash::CrashPoint;
use wasaga_core::event::{Event, RunStatus};
use wasaga_db::Location;
use wasaga_runtime::store::{Observer, no_observer};
use wasaga_runtime::{Host, HostConfig, HostError, RunOutcome};

mod serve;
mod settings;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_COMPENSATED: u8 = 3;
pub const EXIT_STUCK: u8 = 4;

/// Run payment and transaction workflows (Wasm components) as durable sagas.
#[derive(Debug, Parser)]
#[command(name = "wasaga", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// A config file (TOML): journal, ledger, locks, limits, server token, per-workflow grants.
    /// Flags and environment variables override what it says.
    #[arg(long, global = true, env = "WASAGA_CONFIG")]
    config: Option<PathBuf>,
    /// The journal: a SQLite file (created if missing; default wasaga.db) or
    /// postgres://user@host:port/db. The ledger lives in it too unless --ledger says otherwise.
    #[arg(long, global = true, env = "WASAGA_DB", value_parser = Location::parse)]
    db: Option<Location>,
    /// Keep the ledger in a database of its own (a SQLite file or a postgres:// URL).
    #[arg(long, global = true, env = "WASAGA_LEDGER", value_parser = Location::parse)]
    ledger: Option<Location>,
    /// Where locks come from: `journal` (the journal's database, the default), sqlite:<file>,
    /// postgres://..., redis://host:port or zookeeper://host:port.
    #[arg(long, global = true, env = "WASAGA_LOCKS")]
    locks: Option<wasaga_locks::LockBackend>,
    /// A postgres-xa participant for two-phase commits: NAME=postgres://user@host:port/db (repeatable).
    #[arg(long = "xa", global = true, value_name = "NAME=URL", value_parser = parse_xa)]
    xa: Vec<(String, String)>,
    /// This host's name in its leases on runs (one per host sharing databases; default
    /// `wasaga`).
    #[arg(long, global = true, env = "WASAGA_HOST_ID")]
    host_id: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Wall-clock limit for one execution of a module, in milliseconds (default 30000).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    run_timeout_ms: Option<u64>,
    /// Memory limit for a module instance, in MiB (default 64).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memory_mib: Option<u64>,
    /// Attempts for a compensation before the run is parked as stuck (default 8).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    compensation_retries: Option<u32>,
    /// How long this host's ownership of a run lasts unless renewed, in milliseconds (default
    /// 10000). Another host takes over a dead host's runs after this long.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(300..))]
    run_lease_ms: Option<u64>,
    /// Test hook: SIGKILL this process right before or after its N-th commit (before:N | after:N).
    #[arg(long, global = true, hide = true)]
    crash_at: Option<CrashPoint>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow module on an input; resumes unfinished runs first.
    Run(RunArgs),
    /// Finish every unfinished run (after a crash, say).
    Resume,
    /// Inspect runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Open accounts and read balances of the built-in ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Measure: the transfer-saga workload through the real executor, journal and ledger.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check that a file is a loadable workflow component, without running it.
    Validate {
        /// The component (.wasm).
        module: PathBuf,
    },
    /// Serve the HTTP API: start runs of deployed workflows, deploy new versions, watch runs.
    Serve(serve::ServeArgs),
    /// Make a module the version new runs of a workflow get (in the journal, or on a server).
    Deploy(serve::DeployArgs),
    /// List the deployed versions of a workflow.
    Versions(serve::VersionsArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The workflow component (.wasm), built with `cargo build --target wasm32-wasip2`, or the
    /// name of a deployed workflow (its active version runs).
    module: PathBuf,
    /// The input: JSON text, or @path to read it from a file.
    #[arg(long, short, default_value = "{}")]
    input: String,
    /// The workflow's name (default: the file name without .wasm, '_' read as '-').
    #[arg(long)]
    name: Option<String>,
    /// Use this run id; starting an existing id again just reports that run.
    #[arg(long)]
    run_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Lock backend throughput: acquire+release pairs per second and their latency.
    Locks {
        /// journal (a scratch SQLite file), sqlite:<file> or redis://host:port.
        #[arg(long, default_value = "journal")]
        backend: wasaga_locks::LockBackend,
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        n: u32,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        c: u32,
        /// Scratch SQLite file for the journal backend: deleted and recreated.
        #[arg(long, default_value = "target/bench/locks.db")]
        scratch: PathBuf,
    },
    /// Micro figures: instantiation, host cost per replayed call, durable journal appends/s.
    Micro {
        /// The bench-transfer component.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/bench_transfer.wasm"
        )]
        module: PathBuf,
        /// The SQLite file to measure on: deleted and recreated.
        #[arg(long, default_value = "target/bench/micro.db", value_parser = Location::parse)]
        journal: Location,
    },
    /// Closed-loop transfer sagas (debit, credit, settle; every tenth compensated), then the
    /// workload's invariants. Uses a fresh journal; never the one given by --db.
    Transfer {
        /// Number of transfers.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        n: u32,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
        c: u32,
        /// Seed of the transfer generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Accounts the transfers move money between (few accounts: hot ones).
        #[arg(long, default_value_t = crate::bench::ACCOUNTS, value_parser = clap::value_parser!(u32).range(2..=10_000_000))]
        accounts: u32,
        /// Each transfer first locks both its accounts (10 s lock wait), as the `transfer`
        /// example does; the locks come from the global --locks (default: the journal).
        #[arg(long)]
        locked: bool,
        /// The bench-transfer component.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/bench_transfer.wasm"
        )]
        module: PathBuf,
        /// The benchmark's journal (and ledger): a SQLite file, deleted and recreated, or a
        /// postgres:// URL, whose `wasaga_bench` schema (or the URL's ?schema=) is dropped and
        /// recreated.
        #[arg(long, default_value = "target/bench/transfer.db", value_parser = bench_location)]
        journal: Location,
        /// The benchmark's ledger, if not in the journal's database (emptied the same way).
        #[arg(long, value_parser = bench_location)]
        ledger: Option<Location>,
        /// Host processes that drive the workload together on one PostgreSQL journal, each
        /// with its own connections and its share of the clients (this one and N-1 more).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        hosts: u32,
    },
    /// One of the other host processes of `bench transfer --hosts N`, which starts it.
    #[command(hide = true)]
    TransferPart,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs in this state: running, compensating, completed, compensated, stuck.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one run's journal as a timeline.
    Show { run_id: String },
    /// Take up a stuck run again once the cause is fixed: its compensation resumes where it
    /// stopped.
    Retry { run_id: String },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Open an account with an opening balance (integer minor units).
    Open {
        account: String,
        #[arg(long, default_value_t = 0)]
        balance: i64,
    },
    /// One account's balance.
    Balance { account: String },
    /// Every account, and the total.
    List,
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: EXIT_FAILURE,
            error,
        }
    }
}

pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: error.into(),
    }
}

pub(crate) fn host_failure(error: HostError) -> Failure {
    let code = match error {
        HostError::Module(_)
        | HostError::Input(_)
        | HostError::NotGranted(_)
        | HostError::Rejected { .. } => EXIT_USAGE,
        _ => EXIT_FAILURE,
    };
    Failure {
        code,
        error: error.into(),
    }
}

/// Runs one command: settles its settings, starts the async runtime sized for them, and maps
/// what happened onto a message and an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let json = cli.global.json;
    let outcome = match Settings::load(&cli.global) {
        Ok(settings) => match runtime(&settings, &cli.command) {
            Ok(runtime) => runtime.block_on(dispatch(&settings, &cli.command)),
            Err(e) => Err(Failure::from(anyhow!(
                "cannot start the async runtime: {e}"
            ))),
        },
        Err(error) => Err(usage(error)),
    };
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
        | Command::Bench(BenchCommand::Micro { journal, .. }) => journal,
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
        Command::Run(args) => run(g, args).await,
        Command::Resume => resume(g).await,
        Command::Runs(RunsCommand::List { status, limit }) => {
            runs_list(g, status.as_deref(), *limit).await
        }
        Command::Runs(RunsCommand::Show { run_id }) => runs_show(g, run_id).await,
        Command::Runs(RunsCommand::Retry { run_id }) => runs_retry(g, run_id).await,
        Command::Ledger(command) => ledger(g, command).await,
        Command::Validate { module } => validate(g, module).await,
        Command::Serve(args) => serve::serve(g, args).await,
        Command::Deploy(args) => serve::deploy(g, args).await,
        Command::Versions(args) => serve::versions(g, args).await,
        Command::Bench(BenchCommand::Locks {
            backend,
            n,
            c,
            scratch,
        }) => bench_locks(g, backend, *n, *c, scratch).await,
        Command::Bench(BenchCommand::Micro { module, journal }) => {
            bench_micro(g, module, journal).await
        }
        Command::Bench(BenchCommand::TransferPart) => {
            crate::bench::transfer_part().await.map_err(host_failure)?;
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
        }) => {
            let shape = Shape {
                accounts: *accounts,
                locked: *locked,
                locks: g.host.locks.clone(),
                hosts: *hosts,
            };
            bench_transfer(g, *n, *c, *seed, shape, module, journal, ledger.as_ref()).await
        }
    }
}

/// A benchmark database: PostgreSQL URLs default to their own `wasaga_bench` schema, so a
/// benchmark never empties the schema a real journal lives in.
/// A lock backend as the user named it, without a password.
fn lock_backend_name(backend: &wasaga_locks::LockBackend) -> String {
    use wasaga_locks::LockBackend;
    match backend {
        LockBackend::Journal => "journal".to_owned(),
        LockBackend::Sqlite(path) => format!("sqlite:{}", path.display()),
        LockBackend::Redis(url) | LockBackend::ZooKeeper(url) => url.clone(),
        LockBackend::Postgres(url) => wasaga_db::url::without_password(url),
    }
}

fn bench_location(text: &str) -> Result<Location, String> {
    Location::parse_with_schema(text, "wasaga_bench")
}

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
async fn open_showing_steps(g: &Settings) -> Result<Host, Failure> {
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

async fn run(g: &Settings, args: &RunArgs) -> Result<u8, Failure> {
    // A path that does not exist but reads as a workflow name runs the deployed workflow.
    let deployed = !args.module.exists()
        && args
            .module
            .to_str()
            .is_some_and(|s| !s.contains('/') && !s.ends_with(".wasm"));
    let bytes = if deployed {
        None
    } else {
        Some(
            std::fs::read(&args.module)
                .with_context(|| format!("cannot read module {}", args.module.display()))
                .map_err(usage)?,
        )
    };
    let input = match args.input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read input file {path}"))
            .map_err(usage)?,
        None => args.input.clone(),
    };
    // Refuse bad input before anything is written anywhere.
    if let Err(e) = serde_json::from_str::<Value>(&input) {
        return Err(usage(anyhow!("input is not valid JSON: {e}")));
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => {
            wasaga_server::workflow_name_of(&args.module).unwrap_or_else(|| "workflow".to_owned())
        }
    };
    let _lock = lock_executor(&g.host.journal, true)?;
    let host = open_showing_steps(g).await?;
    // Everything that can be checked is checked before anything is stored or resumed.
    host.check_new_run(args.run_id.as_deref(), &name, &input)
        .map_err(|e| usage(anyhow!(e)))?;
    let hash = match &bytes {
        Some(bytes) => host.check_deployable(&name, bytes).await.map_err(|e| {
            usage(anyhow!(e).context(format!("{} cannot run", args.module.display())))
        })?,
        None => {
            host.journal()
                .active(&name)
                .await
                .map_err(|e| usage(anyhow!(e)))?
                .hash
        }
    };
    resume_quietly(g, &host).await?;
    let observer = if g.json { no_observer() } else { printer() };
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(wasaga_runtime::executor::new_run_id);
    let exists = match host.journal().run(&run_id).await {
        Ok(record) => {
            // The run id makes a start idempotent for the same request only: reporting a run
            // of other input as this one's outcome would tell the caller a payment it did
            // not ask for succeeded.
            let same_input = serde_json::from_str::<Value>(&record.input).ok()
                == serde_json::from_str::<Value>(&input).ok();
            if record.workflow != name || !same_input {
                return Err(usage(anyhow!(
                    "run id {run_id} was already used for a run of '{}' with a different input; use a new run id (or the same input to see that run)",
                    record.workflow
                )));
            }
            true
        }
        Err(wasaga_journal::JournalError::UnknownRun(_)) => false,
        Err(e) => return Err(host_failure(e.into())),
    };
    // A new run is created by its first durable write: a module that refuses its input
    // before making one leaves no run behind (exit 2), and its id stays free.
    let outcome = if exists {
        None
    } else {
        if !g.json {
            if g.host.grants.is_none() {
                eprintln!(
                    "note: no config file, so every workflow may use every participant and lock; give --config with [workflows.<name>] grants to allow each only what it needs"
                );
            }
            println!("run {run_id}: {name} (module {})", &hash[..12]);
        }
        match host
            .start_first_write(
                Some(run_id.clone()),
                &name,
                &hash,
                &input,
                observer.clone(),
                None,
            )
            .await
        {
            Err(HostError::RunExists(_)) => None,
            Err(e @ HostError::Rejected { .. }) => return Err(usage(anyhow!(e))),
            other => Some(other.map_err(host_failure)?),
        }
    };
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => {
            if !g.json {
                println!("run {run_id} already exists; reporting it");
            }
            host.drive(&run_id, observer).await.map_err(host_failure)?
        }
    };
    Ok(report(g, &outcome))
}

pub(crate) fn parse_xa(text: &str) -> Result<(String, String), String> {
    let (name, url) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' must be NAME=postgres://user@host:port/db"))?;
    let valid_name = !name.is_empty()
        && name != "ledger"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(format!(
            "participant name '{name}' must be letters, digits, '-' or '_' (and not 'ledger')"
        ));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "participant {name}: '{url}' is not a postgres:// URL"
        ));
    }
    Ok((name.to_owned(), url.to_owned()))
}

/// Resolves in-doubt prepared transactions from the journal.
async fn sweep(g: &Settings, host: &Host) -> Result<(), Failure> {
    let resolved = host.sweep_in_doubt().await.map_err(host_failure)?;
    if resolved > 0 && !g.json {
        println!("resolved {resolved} in-doubt prepared transaction(s) from the journal");
    }
    Ok(())
}

/// Voids the ledger's holds whose expiry has passed.
async fn void_expired_holds(g: &Settings, host: &Host) -> Result<(), Failure> {
    let voided = wasaga_participants::ledger::void_expired(host.ledger_db())
        .await
        .map_err(|e| anyhow!(e))?;
    if voided > 0 && !g.json {
        println!("voided {voided} expired hold(s)");
    }
    Ok(())
}

/// Finishes runs a previous process left unfinished, saying so in one line each.
async fn resume_quietly(g: &Settings, host: &Host) -> Result<(), Failure> {
    sweep(g, host).await?;
    void_expired_holds(g, host).await?;
    let resumed = host
        .resume_unfinished(no_observer(), takeover_all(g))
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

/// Whether this process may take over every unfinished run: only on SQLite, where it holds
/// the executor lock.
fn takeover_all(g: &Settings) -> bool {
    matches!(g.host.journal, Location::Sqlite(_))
}

fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Completed => 0,
        RunStatus::Compensated => EXIT_COMPENSATED,
        RunStatus::Stuck => EXIT_STUCK,
        RunStatus::Running | RunStatus::Compensating => EXIT_FAILURE,
    }
}

fn parse_or_string(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn report(g: &Settings, outcome: &RunOutcome) -> u8 {
    if g.json {
        println!(
            "{}",
            json!({
                "run_id": outcome.run_id,
                "status": outcome.status,
                "output": outcome.output.as_deref().map(parse_or_string),
                "error": outcome.error,
            })
        );
    } else {
        match outcome.status {
            RunStatus::Completed => println!(
                "completed: {}",
                outcome.output.as_deref().unwrap_or_default()
            ),
            status => eprintln!(
                "run {} {status}: {}",
                outcome.run_id,
                outcome.error.as_deref().unwrap_or("no reason recorded")
            ),
        }
    }
    exit_code(outcome.status)
}

/// An observer that prints each step and compensation as it is journaled.
fn printer() -> Observer {
    let steps: Mutex<HashMap<u32, (String, String, String)>> = Mutex::new(HashMap::new());
    Arc::new(move |_run_id, event| {
        let mut steps = steps.lock().expect("printer lock poisoned");
        let name = |steps: &HashMap<u32, (String, String, String)>, call: &u32| {
            steps
                .get(call)
                .cloned()
                .unwrap_or_else(|| (format!("call {call}"), String::new(), String::new()))
        };
        match event {
            Event::StepIntent {
                call,
                name,
                action,
                compensation,
                ..
            } => {
                let undo = compensation
                    .as_ref()
                    .map(|c| format!("{}.{}", c.participant, c.action))
                    .unwrap_or_default();
                steps.insert(
                    *call,
                    (
                        name.clone(),
                        format!("{}.{}", action.participant, action.action),
                        undo,
                    ),
                );
            }
            Event::StepDone { call, output } => {
                let (name, action, _) = name(&steps, call);
                println!("  step  {name:<16} {action:<22} done      {output}");
            }
            Event::StepFailed { call, error } => {
                let (name, action, _) = name(&steps, call);
                println!("  step  {name:<16} {action:<22} failed    {error}");
            }
            Event::StepResolved { call, outcome } => {
                let (name, action, _) = name(&steps, call);
                let outcome = match outcome {
                    Ok(output) => format!("applied   {output}"),
                    Err(e) => format!("not applied ({e})"),
                };
                println!("  check {name:<16} {action:<22} {outcome}");
            }
            Event::Compensating { cause } => println!("  compensating: {cause}"),
            Event::TwoPhaseDecided { commit, reason, .. } => match (commit, reason) {
                (true, _) => println!("  2pc   decision: commit"),
                (false, reason) => println!(
                    "  2pc   decision: abort ({})",
                    reason.as_deref().unwrap_or("no reason")
                ),
            },
            Event::CompensationDone { call, output } => {
                let (name, _, undo) = name(&steps, call);
                println!("  undo  {name:<16} {undo:<22} done      {output}");
            }
            Event::Log { message, .. } => {
                for line in message.lines() {
                    println!("  log   {line}");
                }
            }
            Event::LockAcquired {
                key,
                fencing_token,
                waited_ms,
                ..
            } => {
                println!("  lock  {key:<16} token {fencing_token} (waited {waited_ms} ms)");
            }
            Event::LockFailed { key, reason, .. } => println!("  lock  {key:<16} failed: {reason}"),
            _ => {}
        }
    })
}

async fn resume(g: &Settings) -> Result<u8, Failure> {
    let _lock = lock_executor(&g.host.journal, true)?;
    let host = open_showing_steps(g).await?;
    let observer = if g.json { no_observer() } else { printer() };
    let resumed = host
        .resume_unfinished(observer, takeover_all(g))
        .await
        .map_err(host_failure)?;
    // Once every unfinished run has resolved its own prepared transactions, what is left in
    // doubt belongs to ended runs: resolve it from the journal.
    sweep(g, &host).await?;
    void_expired_holds(g, &host).await?;
    let outcomes = &resumed.ended;
    for (run_id, reason) in &resumed.unfinished {
        eprintln!("run {run_id} is still unfinished: {reason}");
    }
    if g.json {
        println!(
            "{}",
            json!({ "resumed": outcomes, "unfinished": resumed.unfinished })
        );
    } else if outcomes.is_empty() && resumed.unfinished.is_empty() {
        println!("no unfinished runs");
    } else {
        for outcome in outcomes {
            println!(
                "run {} {}{}",
                outcome.run_id,
                outcome.status,
                outcome
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    let failed = if resumed.unfinished.is_empty() {
        0
    } else {
        EXIT_FAILURE
    };
    Ok(outcomes
        .iter()
        .map(|o| exit_code(o.status))
        .chain([failed])
        .max()
        .unwrap_or(0))
}

async fn runs_list(g: &Settings, status: Option<&str>, limit: u32) -> Result<u8, Failure> {
    let status = match status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            usage(anyhow!(
                "unknown status '{s}'; use running, compensating, completed, compensated or stuck"
            ))
        })?),
        None => None,
    };
    let host = open(g).await?;
    let runs = host
        .journal()
        .runs(wasaga_journal::RunFilter {
            status,
            workflow: None,
            limit,
        })
        .await
        .map_err(|e| anyhow!(e))?;
    if g.json {
        println!("{}", json!({ "runs": runs }));
        return Ok(0);
    }
    if runs.is_empty() {
        println!("no runs");
    }
    for run in runs {
        println!(
            "{:<32} {:<16} {:<12} {}",
            run.run_id,
            run.workflow,
            run.status,
            run.error
                .as_deref()
                .or(run.output.as_deref())
                .unwrap_or_default()
        );
    }
    Ok(0)
}

async fn runs_retry(g: &Settings, run_id: &str) -> Result<u8, Failure> {
    let _lock = lock_executor(&g.host.journal, true)?;
    let host = open_showing_steps(g).await?;
    let observer = if g.json { no_observer() } else { printer() };
    let outcome = host
        .retry_stuck(run_id, observer)
        .await
        .map_err(host_failure)?;
    Ok(report(g, &outcome))
}

async fn runs_show(g: &Settings, run_id: &str) -> Result<u8, Failure> {
    let host = open(g).await?;
    let run = host
        .journal()
        .run(run_id)
        .await
        .map_err(|e| usage(anyhow!(e)))?;
    let events = host
        .journal()
        .events(run_id)
        .await
        .map_err(|e| anyhow!(e))?;
    if g.json {
        println!("{}", json!({ "run": run, "events": events }));
        return Ok(0);
    }
    println!("run      {}", run.run_id);
    println!("workflow {} (module {})", run.workflow, run.module_hash);
    println!("status   {}", run.status);
    println!("input    {}", run.input);
    if let Some(output) = &run.output {
        println!("output   {output}");
    }
    if let Some(error) = &run.error {
        println!("reason   {error}");
    }
    println!();
    let start = events.first().map_or(0, |e| e.at_ms);
    let journaled: Vec<Event> = events.iter().map(|e| e.event.clone()).collect();
    let mut steps: HashMap<u32, (String, String, String, u64)> = HashMap::new();
    for stored in &events {
        let at = format!("+{} ms", stored.at_ms.saturating_sub(start));
        let line = match &stored.event {
            Event::Started { .. } => "started".to_owned(),
            Event::StepIntent {
                call,
                name,
                action,
                compensation,
                ..
            } => {
                let undo = compensation.as_ref().map_or("-".to_owned(), |c| {
                    format!("{}.{} {}", c.participant, c.action, c.payload)
                });
                steps.insert(
                    *call,
                    (
                        name.clone(),
                        format!("{}.{}", action.participant, action.action),
                        undo.clone(),
                        stored.at_ms,
                    ),
                );
                format!(
                    "step {name:<14} intent    {}.{} {}  (undo: {undo})",
                    action.participant, action.action, action.payload
                )
            }
            Event::StepDone { call, output } => {
                let (name, action, _, began) = step_of(&steps, *call);
                format!(
                    "step {name:<14} done      {action} -> {output} ({} ms)",
                    stored.at_ms.saturating_sub(began)
                )
            }
            Event::StepFailed { call, error } => {
                let (name, action, _, began) = step_of(&steps, *call);
                format!(
                    "step {name:<14} failed    {action}: {error} ({} ms)",
                    stored.at_ms.saturating_sub(began)
                )
            }
            Event::StepResolved { call, outcome } => {
                let (name, action, _, _) = step_of(&steps, *call);
                match outcome {
                    Ok(output) => {
                        format!("step {name:<14} resolved  {action} had applied: {output}")
                    }
                    Err(e) => format!("step {name:<14} resolved  {action} had not applied: {e}"),
                }
            }
            Event::TwoPhaseStarted { xid, calls, .. } => {
                let branches: Vec<String> = calls
                    .iter()
                    .map(|c| format!("{}.{} {}", c.participant, c.action, c.payload))
                    .collect();
                format!("2pc       {xid} prepare: {}", branches.join("; "))
            }
            Event::TwoPhaseDecided { commit, reason, .. } => match (commit, reason) {
                (true, _) => "2pc       decision: commit".to_owned(),
                (false, reason) => format!(
                    "2pc       decision: abort ({})",
                    reason.as_deref().unwrap_or("no reason")
                ),
            },
            Event::TwoPhaseFinished { outcome, .. } => match outcome {
                Ok(_) => "2pc       committed on every branch".to_owned(),
                Err(e) => format!("2pc       aborted on every branch: {e}"),
            },
            Event::Read {
                participant,
                key,
                outcome,
                ..
            } => match outcome {
                Ok((value, version)) => {
                    format!("read      {participant} '{key}' = {value} (version {version})")
                }
                Err(e) => format!("read      {participant} '{key}' failed: {e}"),
            },
            Event::WriteIf {
                participant,
                key,
                expected_version,
                value,
                outcome,
                ..
            } => match outcome {
                Ok(version) => format!(
                    "write-if  {participant} '{key}' = {value} at version {expected_version} -> version {version}"
                ),
                Err(e) => format!(
                    "write-if  {participant} '{key}' at version {expected_version} refused: {e}"
                ),
            },
            Event::Clock { ms, .. } => format!("clock     {ms}"),
            Event::Random { value, .. } => format!("random    {value}"),
            Event::Log { message, .. } => format!(
                "log       {}",
                message.replace('\n', "\n                    ")
            ),
            Event::LockAcquired {
                key,
                fencing_token,
                waited_ms,
                ..
            } => {
                format!(
                    "lock      {key} acquired after waiting {waited_ms} ms, fencing token {fencing_token}"
                )
            }
            Event::LockFailed { key, reason, .. } => format!("lock      {key} failed: {reason}"),
            Event::LockReacquired {
                key, fencing_token, ..
            } => format!("lock      {key} taken again on resume, fencing token {fencing_token}"),
            Event::LockReleased {
                call: Some(call),
                key,
                fencing_token,
            } if wasaga_runtime::store::guards_compensation(&journaled, key, *call) => format!(
                "lock      {key} release asked (token {fencing_token}); held until the run ends, as a step under it may need undoing"
            ),
            Event::LockReleased {
                key, fencing_token, ..
            } => {
                format!("lock      {key} released (token {fencing_token})")
            }
            Event::Completed { output } => format!("completed {output}"),
            Event::Compensating { cause } => format!("compensating: {cause}"),
            Event::CompensationDone { call, output } => {
                let (name, _, undo, _) = step_of(&steps, *call);
                format!("undo {name:<14} done      {undo} -> {output}")
            }
            Event::Compensated { cause } => format!("compensated ({cause})"),
            Event::Stuck { reason } => format!("STUCK: {reason}"),
        };
        println!("{:>4} {at:>10}  {line}", stored.seq);
    }
    Ok(0)
}

fn step_of(
    steps: &HashMap<u32, (String, String, String, u64)>,
    call: u32,
) -> (String, String, String, u64) {
    steps
        .get(&call)
        .cloned()
        .unwrap_or_else(|| (format!("call {call}"), String::new(), String::new(), 0))
}

async fn ledger(g: &Settings, command: &LedgerCommand) -> Result<u8, Failure> {
    let host = open(g).await?;
    let db = host.ledger_db().clone();
    match command {
        LedgerCommand::Open { account, balance } => {
            let opened = match wasaga_participants::ledger::open(&db, account, *balance).await {
                Ok(account) => account,
                Err(wasaga_participants::ledger::OpenError::Database(e)) => {
                    return Err(anyhow!(e).into());
                }
                Err(e) => return Err(usage(e)),
            };
            if g.json {
                println!("{}", json!(opened));
            } else {
                println!("opened {} with balance {}", opened.account, opened.balance);
            }
        }
        LedgerCommand::Balance { account } => {
            let accounts = list_accounts(&db).await?;
            let found = accounts
                .into_iter()
                .find(|a| &a.account == account)
                .ok_or_else(|| {
                    usage(anyhow!(
                        "unknown account '{account}'; `wasaga ledger list` shows the accounts"
                    ))
                })?;
            if g.json {
                println!("{}", json!(found));
            } else {
                println!(
                    "{} balance {} held {}",
                    found.account, found.balance, found.held
                );
            }
        }
        LedgerCommand::List => {
            let accounts = list_accounts(&db).await?;
            let total: i64 = accounts.iter().map(|a| a.balance + a.held).sum();
            if g.json {
                println!("{}", json!({ "accounts": accounts, "total": total }));
            } else {
                println!("{:<24} {:>16} {:>12}", "account", "balance", "held");
                for a in &accounts {
                    println!("{:<24} {:>16} {:>12}", a.account, a.balance, a.held);
                }
                println!("{:<24} {:>16}", "total (balance + held)", total);
            }
        }
    }
    Ok(0)
}

async fn list_accounts(
    db: &wasaga_db::Database,
) -> Result<Vec<wasaga_participants::ledger::Account>, Failure> {
    Ok(wasaga_participants::ledger::list(db)
        .await
        .map_err(|e| anyhow!(e))?)
}

async fn validate(g: &Settings, module: &Path) -> Result<u8, Failure> {
    let bytes = std::fs::read(module)
        .with_context(|| format!("cannot read module {}", module.display()))
        .map_err(usage)?;
    let engine = wasaga_runtime::engine::WorkflowEngine::new(&g.host.limits, &g.host.cache_dir)
        .map_err(|e| anyhow!("cannot start the wasm engine: {e:#}"))?;
    let hash = engine
        .validate(&bytes)
        .map_err(|e| usage(anyhow!(e).context(format!("{} cannot run", module.display()))))?;
    if g.json {
        println!(
            "{}",
            json!({ "module": module, "hash": hash, "valid": true })
        );
    } else {
        println!(
            "{} is a valid workflow component (hash {hash})",
            module.display()
        );
    }
    Ok(0)
}

/// Reads the benchmark module and prepares the benchmark's own journal.
fn bench_files(g: &Settings, module: &Path, journal: &Location) -> Result<Vec<u8>, Failure> {
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

async fn bench_locks(
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

async fn bench_micro(g: &Settings, module: &Path, journal: &Location) -> Result<u8, Failure> {
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

/// The transfer benchmark's accounts and locks.
struct Shape {
    accounts: u32,
    locked: bool,
    locks: wasaga_locks::LockBackend,
    hosts: u32,
}

#[allow(clippy::too_many_arguments)]
async fn bench_transfer(
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
                .map(|l| format!(" ledger={}", l.describe()))
                .unwrap_or_default()
        );
        Some(Arc::new(move |done| {
            let width = 40;
            let filled = (u64::from(done) * width / u64::from(n.max(1))) as usize;
            eprint!(
                "\r  [{}{}] {done}/{n}",
                "#".repeat(filled),
                ".".repeat(width as usize - filled)
            );
        }))
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
        eprintln!();
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
