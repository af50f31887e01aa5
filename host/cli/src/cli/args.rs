//! The command line's arguments, as clap reads them.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use wasaga_core::crash::CrashPoint;
use wasaga_db::Location;

/// Run payment and transaction workflows (Wasm components) as durable sagas.
#[derive(Debug, Parser)]
#[command(name = "wasaga", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Whether the command only reads and prints (no server, no child processes), so that a
    /// closed stdout may simply end it.
    pub fn only_prints(&self) -> bool {
        matches!(
            self.command,
            Command::Runs(RunsCommand::List { .. } | RunsCommand::Show { .. })
                | Command::Ledger(LedgerCommand::List | LedgerCommand::Balance { .. })
                | Command::Versions(_)
                | Command::Outbox(OutboxCommand::List { .. })
                | Command::Validate { .. }
        )
    }
}

#[derive(Debug, Args)]
pub struct Global {
    /// A config file (TOML): journal, ledger, locks, limits, server token, per-workflow grants.
    /// Flags and environment variables override what it says.
    #[arg(long, global = true, env = "WASAGA_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The journal: a SQLite file (created if missing; default wasaga.db) or
    /// postgres://user@host:port/db. The ledger lives in it too unless --ledger says otherwise.
    #[arg(long, global = true, env = "WASAGA_DB", value_parser = Location::parse)]
    pub(crate) db: Option<Location>,
    /// Keep the ledger in a database of its own (a SQLite file or a postgres:// URL).
    #[arg(long, global = true, env = "WASAGA_LEDGER", value_parser = Location::parse)]
    pub(crate) ledger: Option<Location>,
    /// Where locks come from: `journal` (the journal's database, the default), sqlite:<file>,
    /// postgres://..., redis://host:port or zookeeper://host:port.
    #[arg(long, global = true, env = "WASAGA_LOCKS")]
    pub(crate) locks: Option<wasaga_locks::LockBackend>,
    /// A postgres-xa participant for two-phase commits: NAME=postgres://user@host:port/db (repeatable).
    #[arg(long = "xa", global = true, value_name = "NAME=URL", value_parser = parse_xa)]
    pub(crate) xa: Vec<(String, String)>,
    /// This host's name in its leases on runs (one per host sharing databases; default
    /// `wasaga`).
    #[arg(long, global = true, env = "WASAGA_HOST_ID")]
    pub(crate) host_id: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// How log lines are written: text, or one JSON object per line (`serve` logs on stdout;
    /// other commands only warn, on stderr). `WASAGA_LOG=debug` shows more.
    #[arg(
        long,
        global = true,
        env = "WASAGA_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: super::telemetry::LogFormat,
    /// Wall-clock limit for one execution of a module, in milliseconds (default 30000).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) run_timeout_ms: Option<u64>,
    /// Memory limit for a module instance, in MiB (default 64).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) memory_mib: Option<u64>,
    /// Attempts for a compensation before the run is parked as stuck (default 8).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) compensation_retries: Option<u32>,
    /// How long this host's ownership of a run lasts unless renewed, in milliseconds (default
    /// 10000). Another host takes over a dead host's runs after this long.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(300..))]
    pub(crate) run_lease_ms: Option<u64>,
    /// Test hook: SIGKILL this process right before or after its N-th commit (before:N | after:N).
    #[arg(long, global = true, hide = true)]
    pub(crate) crash_at: Option<CrashPoint>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// The ledger's transaction records and their delivery to the configured sinks.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Measure: the transfer-saga workload through the real executor, journal and ledger.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check that a file is a loadable workflow component, without running it.
    Validate {
        /// The component (.wasm).
        module: PathBuf,
    },
    /// Serve the HTTP API: start runs of deployed workflows, deploy new versions, watch runs.
    Serve(ServeArgs),
    /// Make a module the version new runs of a workflow get (in the journal, or on a server).
    Deploy(DeployArgs),
    /// List the deployed versions of a workflow.
    Versions(VersionsArgs),
    /// Send a signal to a run: it gets the payload at its wait for that name (at once if it
    /// waits now, else when it gets there).
    Signal(SignalArgs),
    /// Check that a new version of a workflow replays its recorded runs (this journal's, or
    /// exported ones), without deploying it. Exits 0 if every run replays, 6 if one diverges.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The run to signal.
    pub run_id: String,
    /// The signal's name, as the workflow waits for it (`saga.wait_for("3ds", ..)`).
    pub name: String,
    /// The payload: JSON text, or @path to read it from a file.
    #[arg(long, short, default_value = "null")]
    pub payload: String,
    /// An id for the signal: sending the same id again delivers it once (default: a new one).
    #[arg(long)]
    pub signal_id: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The workflow component (.wasm), built with `cargo build --target wasm32-wasip2`, or the
    /// name of a deployed workflow (its active version runs).
    pub(crate) module: PathBuf,
    /// The input: JSON text, or @path to read it from a file.
    #[arg(long, short, default_value = "{}")]
    pub(crate) input: String,
    /// The workflow's name (default: the file name without .wasm, '_' read as '-').
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Use this run id; starting an existing id again just reports that run.
    #[arg(long)]
    pub(crate) run_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
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
        /// (Default: found beside this binary's build, see `bench_module`.)
        #[arg(long)]
        module: Option<PathBuf>,
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
        /// (Default: found beside this binary's build, see `bench_module`.)
        #[arg(long)]
        module: Option<PathBuf>,
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
        /// Reach the ledger over HTTP: a separate `wasaga ledger serve` process on the ledger's
        /// database (--ledger, default target/bench/ledger.db), called as an `http`
        /// participant, as engines whose ledger is a service do.
        #[arg(long)]
        ledger_http: bool,
    },
    /// Durable waits at scale: N runs sleep at once (holding no instance), then all wake;
    /// prints the host's memory and journal size per waiting run and wake-ups per second.
    Waits {
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        n: u32,
        /// Runs started, and woken, at once.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
        c: u32,
        /// The waiter component.
        /// (Default: found beside this binary's build, see `bench_module`.)
        #[arg(long)]
        module: Option<PathBuf>,
        /// The benchmark's journal: a SQLite file, deleted and recreated, or a postgres:// URL
        /// (its `wasaga_bench` schema is dropped and recreated).
        #[arg(long, default_value = "target/bench/waits.db", value_parser = bench_location)]
        journal: Location,
    },
    /// One of the other host processes of `bench transfer --hosts N`, which starts it.
    #[command(hide = true)]
    TransferPart,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
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
    /// stopped. With --status/--workflow/--since instead of a run id: every matching stuck run.
    Retry {
        #[arg(required_unless_present_any = ["status", "workflow", "since", "until"])]
        run_id: Option<String>,
        #[command(flatten)]
        select: RunSelect,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a run and compensate it (and its unfinished child runs): a waiting run at once, an
    /// executing one at its next journal point. With --status/--workflow/--since instead of a
    /// run id: every matching unfinished run.
    Cancel {
        #[arg(required_unless_present_any = ["status", "workflow", "since", "until"])]
        run_id: Option<String>,
        /// Why, kept in the run's outcome.
        #[arg(long, default_value = "")]
        reason: String,
        /// Who asks (default: the user running the command).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        select: RunSelect,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write runs with their journals as JSON lines (for `wasaga verify --runs`, or to keep
    /// before pruning).
    Export {
        /// The file to write (`-` for stdout).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        select: RunSelect,
        /// Runs at most.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        limit: u32,
    },
    /// Delete finished runs (completed or compensated) older than the retention period, with
    /// their events and signals, and module versions no run or rollback needs any more.
    Prune {
        /// Finished before this many days ago (default: the config's [retention] runs_days).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        older_than_days: Option<u32>,
        /// Export the runs to this file (JSON lines, appended) before deleting them.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Delete without asking when more than a few runs match.
        #[arg(long)]
        yes: bool,
    },
}

/// Which runs a bulk command acts on.
#[derive(Debug, Args, Default)]
pub(crate) struct RunSelect {
    /// Runs in this state: running, waiting, compensating, completed, compensated, stuck.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Runs of this workflow.
    #[arg(long)]
    pub(crate) workflow: Option<String>,
    /// Runs created at or after: milliseconds since the epoch, `2026-12-07T10:00:00Z`, or a
    /// time ago (`90s`, `30m`, `2h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    pub(crate) since: Option<u64>,
    /// Runs created before (the same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<u64>,
    /// Act on this many matching runs without asking (a bulk command over more than 10
    /// runs shows how many match and stops unless given --yes).
    #[arg(long)]
    pub(crate) yes: bool,
}

/// A point in time for --since/--until, in milliseconds since the epoch.
pub(crate) fn parse_time(text: &str) -> Result<u64, String> {
    let now = wasaga_core::clock::now_ms();
    if let Ok(ms) = text.parse::<u64>() {
        return match ms <= i64::MAX as u64 {
            true => Ok(ms),
            false => Err(format!(
                "'{text}' is past the last millisecond a run can have"
            )),
        };
    }
    let ago = |unit_ms: u64| -> Option<u64> {
        let number: u64 = text[..text.len() - 1].parse().ok()?;
        Some(now.saturating_sub(number.saturating_mul(unit_ms)))
    };
    let relative = match text.chars().last() {
        Some('s') => ago(1_000),
        Some('m') => ago(60_000),
        Some('h') => ago(3_600_000),
        Some('d') => ago(86_400_000),
        _ => None,
    };
    relative
        .or_else(|| rfc3339_ms(text))
        .ok_or_else(|| format!("'{text}' is not a time: give milliseconds since the epoch, 2026-12-07T10:00:00Z, or a time ago such as 30m, 2h or 7d"))
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, millis) = match time.split_once('.') {
        Some((hms, fraction)) => (hms, format!("{fraction:0<3}")[..3].parse::<i64>().ok()?),
        None => (time, 0),
    };
    let mut hms = hms.split(':').map(str::parse::<i64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 of a civil date (the proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000) + millis;
    u64::try_from(ms).ok()
}

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Records not delivered yet (or failing, or the latest delivered), oldest first.
    List {
        #[arg(long, value_enum, default_value_t = OutboxStatus::Pending)]
        status: OutboxStatus,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Make every undelivered record due now, after a receiver was fixed.
    Retry,
    /// Deliver what is due now, until nothing is (what `serve` does all along).
    Deliver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutboxStatus {
    Pending,
    Failing,
    Delivered,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
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
    /// Serve this ledger over HTTP, as the `http` participant's protocol has it, to hosts
    /// given `--ledger http://ADDR` (and `bench transfer --ledger-http`). The bearer token
    /// comes from WASAGA_LEDGER_TOKEN.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on (default: the config's [server] listen, or 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// Deploy every *.wasm file in this directory, and again whenever one changes (local
    /// development); the file name is the workflow name.
    #[arg(long)]
    pub watch: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The workflow component (.wasm) to deploy.
    #[arg(required_unless_present = "rollback", conflicts_with = "rollback")]
    pub module: Option<PathBuf>,
    /// The workflow's name (default: the file name without .wasm, '_' read as '-').
    #[arg(long, required_if_eq("rollback", "true"))]
    pub name: Option<String>,
    /// Make the version before the active one the version new runs get (or --version N).
    #[arg(long)]
    pub rollback: bool,
    /// With --rollback: the version to make active.
    #[arg(long, requires = "rollback")]
    pub version: Option<i64>,
    /// Deploy even if a recorded run does not replay on the new version.
    #[arg(long, conflicts_with = "rollback")]
    pub force: bool,
    /// Move the unfinished runs that replay cleanly on the new version (and wait now) to it
    /// (default: the config's [deploy] upgrade_in_flight).
    #[arg(long, conflicts_with = "rollback")]
    pub upgrade_in_flight: bool,
    /// The newest completed runs to replay on the new version (default: [deploy]
    /// check_completed, or 100); every unfinished run is replayed.
    #[arg(long, conflicts_with = "rollback", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub check_completed: Option<u32>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The new version's component (.wasm).
    pub module: PathBuf,
    /// The workflow whose recorded runs it must replay.
    #[arg(long)]
    pub workflow: String,
    /// Exported journals (`wasaga runs export`, JSON lines) to replay instead of this
    /// journal's runs.
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// The newest completed runs to replay from the journal (default 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub check_completed: Option<u32>,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The workflow.
    pub name: String,
    #[command(flatten)]
    pub remote: Remote,
}

/// A participant's name: what grants and workflows call it by.
pub(crate) fn check_participant_name(name: &str) -> Result<(), String> {
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
    Ok(())
}

pub(crate) fn parse_xa(text: &str) -> Result<(String, String), String> {
    let (name, url) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' must be NAME=postgres://user@host:port/db"))?;
    check_participant_name(name)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "participant {name}: '{url}' is not a postgres:// URL"
        ));
    }
    Ok((name.to_owned(), url.to_owned()))
}

pub(crate) fn bench_location(text: &str) -> Result<Location, String> {
    Location::parse_with_schema(text, "wasaga_bench")
}

/// Talking to a running server instead of the journal.
#[derive(Debug, Args)]
pub struct Remote {
    /// Go through a running server's API (http://host:port) instead of the journal.
    #[arg(long, env = "WASAGA_SERVER")]
    pub server: Option<String>,
    /// The server's bearer token (default: the config's [server] token).
    #[arg(long, env = "WASAGA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}
