//! `wasaga bench transfer`: the transfer-saga workload (shared/WORKLOAD.md) through the real
//! executor, journal and ledger, with a closed-loop driver, latency percentiles and the
//! workload's invariants checked afterwards.

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wasaga_core::event::RunStatus;
use wasaga_db::{Database, Location};
use wasaga_runtime::config::HostConfig;
use wasaga_runtime::executor::{Host, HostError};
use wasaga_runtime::store::no_observer;

/// Accounts in the workload by default, ids 1..=ACCOUNTS.
pub const ACCOUNTS: u32 = 1_000;
/// Every account's opening balance.
pub const OPENING_BALANCE: i64 = 1_000_000;

/// What to run.
#[derive(Clone)]
pub struct TransferBench {
    pub n: u32,
    pub c: u32,
    pub seed: u64,
    /// Accounts the transfers move money between, ids 1..=accounts (at least 2).
    pub accounts: u32,
    /// Whether each transfer first locks both its accounts (in one global order, 10 s wait).
    pub locked: bool,
    /// Where the locks come from.
    pub locks: wasaga_locks::LockBackend,
    /// The journal's database (and the ledger's, unless `ledger` is given); emptied first.
    pub journal: Location,
    /// The ledger's own database, if not the journal's; emptied first.
    pub ledger: Option<Location>,
    /// Where compiled modules are cached.
    pub cache_dir: PathBuf,
    /// Host processes driving the workload together, each with its own connections, lock
    /// lines and share of the clients: this one and `hosts - 1` more of `exe` (needs a
    /// PostgreSQL journal, which they share).
    pub hosts: u32,
    /// The ledger is reached over HTTP: `exe ledger serve` on `ledger`, a separate process.
    pub ledger_http: bool,
    /// The `wasaga` binary the other host processes (and the ledger service) run.
    pub exe: Option<PathBuf>,
    /// The bench-transfer workflow component.
    pub module: Vec<u8>,
    /// Called now and then with the number of finished transfers.
    pub progress: Option<Arc<dyn Fn(u32) + Send + Sync>>,
}

impl std::fmt::Debug for TransferBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferBench")
            .field("n", &self.n)
            .field("c", &self.c)
            .field("seed", &self.seed)
            .field("accounts", &self.accounts)
            .field("locked", &self.locked)
            .field("locks", &self.locks)
            .field("hosts", &self.hosts)
            .field("journal", &self.journal)
            .field("ledger", &self.ledger)
            .field("ledger_http", &self.ledger_http)
            .finish()
    }
}

/// One checked invariant.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    pub engine: &'static str,
    pub n: u32,
    pub c: u32,
    pub seed: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub elapsed_s: f64,
    pub invariants_ok: bool,
    pub succeeded: u32,
    pub compensated: u32,
    pub failed_debit: u32,
    pub accounts: u32,
    pub locked: bool,
    /// Host processes that drove the workload together, and the transfers each finished.
    pub hosts: u32,
    pub transfers_per_host: Vec<u32>,
    /// Runs compensated because a lock wait ran out.
    pub lock_timeouts: u32,
    /// How long the granted lock acquires waited, from the runs' journals.
    pub lock_wait_p50_ms: f64,
    pub lock_wait_p99_ms: f64,
    pub lock_wait_max_ms: f64,
    pub journal: &'static str,
    pub ledger: &'static str,
    /// Write transactions the journal's database committed during the run, and the writers'
    /// jobs they carried (group commit puts many jobs in one), over every host.
    pub commits: u64,
    pub jobs_per_commit: f64,
    pub invariants: Vec<Invariant>,
}

#[derive(Debug, Clone)]
struct Transfer {
    from: u32,
    to: u32,
    amount: i64,
}

fn workload(n: u32, seed: u64, accounts: u32) -> Vec<Transfer> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let from = rng.random_range(1..=accounts);
            let mut to = rng.random_range(1..accounts);
            if to >= from {
                to += 1;
            }
            Transfer {
                from,
                to,
                amount: rng.random_range(1..=100),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Outcome {
    Missing,
    Succeeded,
    FailedDebit,
    LockTimeout,
    Compensated,
    Other,
}

/// The host's configuration for the benchmark: `clients` of its own.
fn bench_config(
    journal: &Location,
    ledger: Option<&Location>,
    locks: &wasaga_locks::LockBackend,
    cache_dir: &std::path::Path,
    clients: u32,
) -> HostConfig {
    let mut config = HostConfig::new(journal.clone());
    config.ledger = ledger.cloned();
    config.cache_dir = cache_dir.to_owned();
    config.locks = locks.clone();
    config.limits.concurrent_runs_max = clients.max(1) * 2;
    // PostgreSQL on a small machine does best with a few connections per core: 12 beat 32
    // (same throughput, a third less p99) on the 2-core development machine.
    config.pools.postgres_connections_max = 12;
    // Opened while the accounts are set up, before the clock starts, as a running server's
    // connections are: the figure is of moving money, not of connecting.
    config.pools.postgres_connections_min = 12;
    config
}

/// Runs the workload and checks its invariants.
pub async fn transfer(bench: TransferBench) -> Result<TransferReport, HostError> {
    if bench.accounts < 2 {
        return Err(HostError::Input(format!(
            "a transfer needs two accounts: --accounts {} is too few",
            bench.accounts
        )));
    }
    let hosts = bench.hosts.max(1);
    if hosts > 1 && !matches!(bench.journal, Location::Postgres { .. }) {
        return Err(HostError::Input(format!(
            "--hosts {hosts}: several hosts share one journal only on PostgreSQL; give --journal postgres://..."
        )));
    }
    if hosts > bench.c.max(1) {
        return Err(HostError::Input(format!(
            "--hosts {hosts} with --c {}: every host needs at least one client",
            bench.c
        )));
    }
    Database::destroy(&bench.journal).await?;
    if let Some(ledger) = &bench.ledger {
        Database::destroy(ledger).await?;
    }
    let mut config = bench_config(
        &bench.journal,
        bench.ledger.as_ref(),
        &bench.locks,
        &bench.cache_dir,
        clients_of(bench.c, hosts, 0),
    );
    let service = match (bench.ledger_http, &bench.ledger) {
        (false, _) => None,
        (true, _) if hosts > 1 => {
            return Err(HostError::Input(
                "--ledger-http drives one host: leave out --hosts".to_owned(),
            ));
        }
        (true, None) => {
            return Err(HostError::Input(
                "--ledger-http needs the ledger's database (--ledger)".to_owned(),
            ));
        }
        (true, Some(ledger)) => {
            let db = Database::open(ledger, Default::default(), Default::default()).await?;
            open_accounts(&db, bench.accounts).await?;
            drop(db);
            let service = LedgerService::start(&bench, ledger).await?;
            config.ledger = None;
            config.ledger_http = Some(service.participant(config.limits.concurrent_runs_max));
            Some(service)
        }
    };
    let host = Host::open(&config).await?;
    if bench.locked {
        // A lock backend that is down would compensate every transfer: say so instead.
        let probe = host
            .locks()
            .acquire("wasaga-bench/probe", "wasaga-bench", 1_000, 0)
            .await
            .map_err(|e| HostError::Input(format!("--locked: {e}")))?;
        let _ = host.locks().release(&probe).await;
    }
    if service.is_none() {
        open_accounts(host.ledger_db(), bench.accounts).await?;
    }
    let hash = host.add_module("bench-transfer", &bench.module).await?;

    let transfers = Arc::new(workload(bench.n, bench.seed, bench.accounts));
    let prefix = format!("bench-{}", bench.seed);
    // The other hosts open their own connections and compile the module before the clock
    // starts, and wait to be told to go.
    let mut others = Vec::new();
    if hosts > 1 {
        // One copy of the module for all of them to read.
        let module = bench.cache_dir.join("bench-transfer-part.wasm");
        std::fs::create_dir_all(&bench.cache_dir)
            .and_then(|()| std::fs::write(&module, &bench.module))
            .map_err(|e| HostError::Input(format!("cannot write {}: {e}", module.display())))?;
        for part in 1..hosts {
            others.push(OtherHost::start(&bench, &module, part, hosts).await?);
        }
    }
    let (commits_before, jobs_before) = host.journal().database().commit_stats();
    let done = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    for other in &mut others {
        other.go(done.clone()).await?;
    }
    let progress = bench.progress.clone().map(|report| {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                report(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let part = Part {
        part: 0,
        of: hosts,
        clients: clients_of(bench.c, hosts, 0),
        locked: bench.locked,
    };
    let (mut results, mut first_error) =
        match drive(&host, &hash, &transfers, &prefix, part, done.clone()).await {
            Ok(mine) => (mine, None),
            Err(e) => (Vec::new(), Some(e)),
        };
    let mut transfers_per_host = vec![results.len() as u32];
    let (mut commits, mut jobs) = (0, 0);
    for other in others {
        match other.finish().await {
            Ok(finished) => {
                transfers_per_host.push(finished.results.len() as u32);
                results.extend(finished.results);
                commits += finished.commits;
                jobs += finished.jobs;
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let elapsed = started.elapsed();
    let (commits_after, jobs_after) = host.journal().database().commit_stats();
    commits += commits_after - commits_before;
    jobs += jobs_after - jobs_before;
    let jobs_per_commit = jobs as f64 / commits.max(1) as f64;
    if let Some(progress) = progress {
        progress.abort();
    }
    if let Some(report) = &bench.progress {
        report(done.load(Ordering::Relaxed));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut outcomes = vec![Outcome::Missing; bench.n as usize];
    let mut latencies = Vec::with_capacity(bench.n as usize);
    for (i, micros, outcome) in results {
        outcomes[i as usize] = outcome;
        latencies.push(Duration::from_micros(micros));
    }
    latencies.sort();
    let percentile = |p: f64| percentile_ms(&latencies, p);
    let invariants = match (service, &bench.ledger) {
        (Some(service), Some(ledger)) => {
            // The service's database, read once the service is gone.
            service.stop().await;
            let db = Database::open(ledger, Default::default(), Default::default()).await?;
            check(&db, &prefix, bench.accounts, &transfers, &outcomes).await?
        }
        _ => {
            check(
                host.ledger_db(),
                &prefix,
                bench.accounts,
                &transfers,
                &outcomes,
            )
            .await?
        }
    };
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count() as u32;
    let mut waits = lock_waits(&host).await?;
    waits.sort();
    Ok(TransferReport {
        engine: "wasaga",
        n: bench.n,
        c: bench.c,
        seed: bench.seed,
        throughput: f64::from(bench.n) / elapsed.as_secs_f64(),
        p50_ms: percentile(50.0),
        p95_ms: percentile(95.0),
        p99_ms: percentile(99.0),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1_000.0),
        elapsed_s: elapsed.as_secs_f64(),
        invariants_ok: invariants.iter().all(|i| i.ok),
        succeeded: count(Outcome::Succeeded),
        compensated: count(Outcome::Compensated)
            + count(Outcome::FailedDebit)
            + count(Outcome::LockTimeout),
        failed_debit: count(Outcome::FailedDebit),
        accounts: bench.accounts,
        locked: bench.locked,
        hosts,
        transfers_per_host,
        lock_timeouts: count(Outcome::LockTimeout),
        lock_wait_p50_ms: percentile_ms(&waits, 50.0),
        lock_wait_p99_ms: percentile_ms(&waits, 99.0),
        lock_wait_max_ms: waits.last().map_or(0.0, |d| d.as_secs_f64() * 1_000.0),
        journal: kind(&bench.journal),
        ledger: if bench.ledger_http {
            "http"
        } else {
            kind(bench.ledger.as_ref().unwrap_or(&bench.journal))
        },
        commits,
        jobs_per_commit,
        invariants,
    })
}

/// The clients host `part` of `hosts` runs: `c` shared out, the first hosts taking one more.
fn clients_of(c: u32, hosts: u32, part: u32) -> u32 {
    let c = c.max(1);
    c / hosts + u32::from(part < c % hosts)
}

/// Which transfers one host drives: those whose index is `part` modulo `of`, with `clients`
/// concurrent clients.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Part {
    part: u32,
    of: u32,
    clients: u32,
    locked: bool,
}

/// One finished transfer: its index, latency in microseconds, and outcome.
type Finished = (u32, u64, Outcome);

/// Drives host `part`'s share of `transfers`, counting each finished one in `done`.
async fn drive(
    host: &Host,
    hash: &str,
    transfers: &Arc<Vec<Transfer>>,
    prefix: &str,
    part: Part,
    done: Arc<AtomicU32>,
) -> Result<Vec<Finished>, HostError> {
    let n = transfers.len() as u32;
    let next = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..part.clients.max(1) {
        let (host, hash, transfers, next, done, prefix) = (
            host.clone(),
            hash.to_owned(),
            transfers.clone(),
            next.clone(),
            done.clone(),
            prefix.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut results: Vec<Finished> = Vec::new();
            loop {
                let i = part.part + part.of * next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, HostError>(results);
                }
                let t = &transfers[i as usize];
                let input = format!(
                    r#"{{"i":{i},"from":"{}","to":"{}","amount":{},"locked":{}}}"#,
                    t.from, t.to, t.amount, part.locked
                );
                let began = Instant::now();
                let outcome = host
                    .start_and_drive(
                        // Zero-padded so that run ids sort in start order, as real ones
                        // (time-ordered) do.
                        Some(format!("{prefix}/{i:08}")),
                        "bench-transfer",
                        &hash,
                        &input,
                        no_observer(),
                    )
                    .await?;
                let latency = began.elapsed().as_micros() as u64;
                results.push((i, latency, outcome_of(&outcome)));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut results = Vec::new();
    let mut first_error = None;
    for worker in workers {
        match worker.await {
            Ok(Ok(finished)) => results.extend(finished),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => {
                first_error =
                    first_error.or(Some(HostError::Engine(format!("worker panicked: {e}"))))
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

fn outcome_of(outcome: &wasaga_runtime::executor::RunOutcome) -> Outcome {
    let error_says = |text: &str| outcome.error.as_deref().is_some_and(|e| e.contains(text));
    match outcome.status {
        RunStatus::Completed => Outcome::Succeeded,
        RunStatus::Compensated if error_says("step 'debit'") => Outcome::FailedDebit,
        RunStatus::Compensated if error_says("still held by") => Outcome::LockTimeout,
        RunStatus::Compensated => Outcome::Compensated,
        _ => Outcome::Other,
    }
}

/// What the benchmark tells another host process, as one JSON line on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartSpec {
    n: u32,
    seed: u64,
    accounts: u32,
    locks: wasaga_locks::LockBackend,
    journal: Location,
    ledger: Option<Location>,
    cache_dir: PathBuf,
    /// The bench-transfer component, in a file the first host wrote.
    module: PathBuf,
    part: Part,
}

/// What another host process answers when it has driven its part.
#[derive(Debug, Serialize, Deserialize)]
struct PartReport {
    results: Vec<Finished>,
    commits: u64,
    jobs: u64,
}

/// How often another host process says how many of its transfers have finished.
const PART_PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Another host process of the benchmark (`wasaga bench transfer-part`).
struct OtherHost {
    part: u32,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: Option<tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>>,
    /// Reads its progress and then its report, once it has been told to go.
    report: Option<tokio::task::JoinHandle<Option<PartReport>>>,
}

impl OtherHost {
    /// Starts host `part` of `hosts`, which reads the module from `module`, and waits until
    /// it is ready to go.
    async fn start(
        bench: &TransferBench,
        module: &std::path::Path,
        part: u32,
        hosts: u32,
    ) -> Result<OtherHost, HostError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let exe = bench.exe.clone().ok_or_else(|| {
            HostError::Input("--hosts needs the wasaga binary to start the other hosts".into())
        })?;
        let spec = PartSpec {
            n: bench.n,
            seed: bench.seed,
            accounts: bench.accounts,
            locks: bench.locks.clone(),
            journal: bench.journal.clone(),
            ledger: bench.ledger.clone(),
            cache_dir: bench.cache_dir.clone(),
            module: module.to_owned(),
            part: Part {
                part,
                of: hosts,
                clients: clients_of(bench.c, hosts, part),
                locked: bench.locked,
            },
        };
        let failed = |e: std::io::Error| {
            HostError::Engine(format!("benchmark host {part} ({}): {e}", exe.display()))
        };
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench", "transfer-part"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(failed)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut stdout =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut line =
            serde_json::to_string(&spec).map_err(|e| HostError::Engine(e.to_string()))?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.map_err(failed)?;
        match stdout.next_line().await.map_err(failed)? {
            Some(ready) if ready == "ready" => {}
            other => {
                return Err(HostError::Engine(format!(
                    "benchmark host {part} did not start (it said {other:?}); its error is above"
                )));
            }
        }
        Ok(OtherHost {
            part,
            child,
            stdin,
            stdout: Some(stdout),
            report: None,
        })
    }

    /// Tells it to go; its finished transfers are counted into `done` as it reports them.
    async fn go(&mut self, done: Arc<AtomicU32>) -> Result<(), HostError> {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(b"go\n")
            .await
            .map_err(|e| HostError::Engine(format!("benchmark host {}: {e}", self.part)))?;
        let mut stdout = self.stdout.take().expect("told to go once");
        self.report = Some(tokio::spawn(async move {
            let mut counted = 0;
            while let Ok(Some(line)) = stdout.next_line().await {
                if let Some(finished) = line.strip_prefix("done ") {
                    let finished: u32 = finished.parse().unwrap_or(counted);
                    done.fetch_add(finished.saturating_sub(counted), Ordering::Relaxed);
                    counted = counted.max(finished);
                } else {
                    let report: Option<PartReport> = serde_json::from_str(&line).ok();
                    if let Some(report) = &report {
                        let all = report.results.len() as u32;
                        done.fetch_add(all.saturating_sub(counted), Ordering::Relaxed);
                    }
                    return report;
                }
            }
            None
        }));
        Ok(())
    }

    async fn finish(mut self) -> Result<PartReport, HostError> {
        let report = match self.report.take() {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        let _ = self.child.wait().await;
        report.ok_or_else(|| {
            HostError::Engine(format!(
                "benchmark host {} stopped without a report; its error is above",
                self.part
            ))
        })
    }
}

/// `wasaga bench transfer-part`: one of the other host processes of a benchmark with
/// `--hosts`. Reads its [`PartSpec`] from stdin, says `ready` once its host is open, drives
/// its part when told `go`, and answers with its results as one JSON line.
pub async fn transfer_part() -> Result<(), HostError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let io = |e: std::io::Error| HostError::Engine(format!("benchmark host: {e}"));
    let line = stdin.next_line().await.map_err(io)?.unwrap_or_default();
    let spec: PartSpec = serde_json::from_str(&line).map_err(|e| {
        HostError::Input(format!(
            "bench transfer-part is started by `wasaga bench transfer --hosts N`, which writes its part as JSON on stdin: {e}"
        ))
    })?;
    let mut config = bench_config(
        &spec.journal,
        spec.ledger.as_ref(),
        &spec.locks,
        &spec.cache_dir,
        spec.part.clients,
    );
    config.host_id = format!("bench-host-{}", spec.part.part);
    let host = Host::open(&config).await?;
    let module = std::fs::read(&spec.module)
        .map_err(|e| HostError::Input(format!("cannot read {}: {e}", spec.module.display())))?;
    let hash = host.add_module("bench-transfer", &module).await?;
    let transfers = Arc::new(workload(spec.n, spec.seed, spec.accounts));
    let prefix = format!("bench-{}", spec.seed);
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await.map_err(io)?;
    stdout.flush().await.map_err(io)?;
    if stdin.next_line().await.map_err(io)?.as_deref() != Some("go") {
        return Ok(());
    }
    let (commits_before, jobs_before) = host.journal().database().commit_stats();
    let done = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = {
        let (done, finished) = (done.clone(), finished.clone());
        tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            loop {
                tokio::time::sleep(PART_PROGRESS_EVERY).await;
                // Stopped between lines, never within one: the report follows on its own.
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                let line = format!("done {}\n", done.load(Ordering::Relaxed));
                if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err()
                {
                    return;
                }
            }
        })
    };
    let results = drive(&host, &hash, &transfers, &prefix, spec.part, done).await;
    finished.store(true, Ordering::SeqCst);
    let _ = progress.await;
    let results = results?;
    let (commits_after, jobs_after) = host.journal().database().commit_stats();
    let report = PartReport {
        results,
        commits: commits_after - commits_before,
        jobs: jobs_after - jobs_before,
    };
    let mut line = serde_json::to_string(&report).map_err(|e| HostError::Engine(e.to_string()))?;
    line.push('\n');
    stdout.write_all(line.as_bytes()).await.map_err(io)?;
    stdout.flush().await.map_err(io)?;
    Ok(())
}

/// How long each granted lock acquire of the runs waited, from their `lock-acquired` events.
async fn lock_waits(host: &Host) -> Result<Vec<Duration>, HostError> {
    let bodies = host
        .journal()
        .database()
        .read(|tx| {
            Box::pin(async move {
                let rows = tx
                    .fetch_all("SELECT body FROM events WHERE kind = 'lock-acquired'", &[])
                    .await?;
                rows.iter()
                    .map(|r| r.text(0))
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(wasaga_journal::JournalError::from)
            })
        })
        .await?;
    Ok(bodies
        .iter()
        .filter_map(|body| serde_json::from_str::<wasaga_core::event::Event>(body).ok())
        .filter_map(|event| match event {
            wasaga_core::event::Event::LockAcquired { waited_ms, .. } => {
                Some(Duration::from_millis(waited_ms))
            }
            _ => None,
        })
        .collect())
}

/// Opens the benchmark's accounts, ids `1..=accounts`, in the ledger in `db`.
async fn open_accounts(db: &Database, accounts: u32) -> Result<(), HostError> {
    db.write(move |tx| {
        Box::pin(async move {
            for id in 1..=accounts {
                wasaga_participants::ledger::open_account(tx, &id.to_string(), OPENING_BALANCE)
                    .await?;
            }
            Ok::<_, wasaga_participants::ledger::OpenError>(())
        })
    })
    .await
    .map_err(|e| HostError::Input(format!("cannot open the benchmark accounts: {e}")))
}

/// `wasaga ledger serve` on the benchmark's ledger, as a child process on a free port.
struct LedgerService {
    child: tokio::process::Child,
    url: String,
    token: String,
}

impl LedgerService {
    async fn start(bench: &TransferBench, ledger: &Location) -> Result<LedgerService, HostError> {
        use tokio::io::AsyncBufReadExt;
        let exe = bench
            .exe
            .clone()
            .ok_or_else(|| HostError::Input("cannot find the wasaga binary to run".to_owned()))?;
        let token: String = (0..24)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let db = match ledger {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres { url, schema } => {
                let join = if url.contains('?') { '&' } else { '?' };
                format!("{url}{join}schema={schema}")
            }
        };
        let mut child = tokio::process::Command::new(exe)
            .args(["--db", &db, "ledger", "serve", "--listen", "127.0.0.1:0"])
            .env("WASAGA_LEDGER_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HostError::Input(format!("cannot start the ledger service: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .map_err(|e| HostError::Input(format!("the ledger service: {e}")))?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| HostError::Input(format!("the ledger service did not start: {line:?}")))?
            .to_owned();
        Ok(LedgerService { child, url, token })
    }

    /// The `http` participant that reaches it, with as many calls in flight as runs.
    fn participant(&self, runs: u32) -> wasaga_participants::http::HttpConfig {
        let mut config = wasaga_participants::http::HttpConfig::new("ledger", &self.url);
        config.two_phase = true;
        config.concurrency_max = runs.max(1);
        config.timeout_ms = 30_000;
        config.headers = vec![("Authorization".to_owned(), format!("Bearer {}", self.token))];
        config
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The workload's five invariants, from the ledger's own records.
async fn check(
    db: &Database,
    prefix: &str,
    account_count: u32,
    transfers: &[Transfer],
    outcomes: &[Outcome],
) -> Result<Vec<Invariant>, HostError> {
    let pattern = format!("{prefix}/%");
    let (accounts, entries, applied) = db
        .read(move |tx| {
            Box::pin(async move {
                let accounts = wasaga_participants::ledger::accounts(tx).await?;
                let rows = tx
                    .fetch_all(
                        "SELECT op_id, account, delta FROM ledger_entries WHERE op_id NOT LIKE '#open/%'",
                        &[],
                    )
                    .await?;
                let mut entries: Vec<(String, String, i64)> = Vec::with_capacity(rows.len());
                for row in &rows {
                    entries.push((row.text(0)?, row.text(1)?, row.int(2)?));
                }
                let rows = tx
                    .fetch_all(
                        "SELECT op_id FROM ledger_ops WHERE status = 'applied' AND op_id LIKE $1",
                        wasaga_db::args![&pattern],
                    )
                    .await?;
                let applied = rows
                    .iter()
                    .map(|r| r.text(0))
                    .collect::<Result<Vec<String>, _>>()?;
                Ok::<_, wasaga_journal::JournalError>((accounts, entries, applied))
            })
        })
        .await?;

    // Per transfer: (account -> net delta) and the applied operation names.
    let mut net: HashMap<u32, HashMap<String, i64>> = HashMap::new();
    let mut by_account: HashMap<String, i64> = HashMap::new();
    for (op_id, account, delta) in &entries {
        *by_account.entry(account.clone()).or_default() += delta;
        if let Some(i) = transfer_index(prefix, op_id) {
            *net.entry(i)
                .or_default()
                .entry(account.clone())
                .or_default() += delta;
        }
    }
    let mut ops: HashMap<u32, Vec<String>> = HashMap::new();
    for op_id in &applied {
        if let Some(i) = transfer_index(prefix, op_id) {
            let name = op_id.rsplit('/').next().unwrap_or_default().to_owned();
            ops.entry(i).or_default().push(name);
        }
    }

    let total: i64 = accounts.iter().map(|a| a.balance + a.held).sum();
    let expected_total = i64::from(account_count) * OPENING_BALANCE;
    let mut invariants = vec![Invariant {
        name: "sum of balances is constant",
        ok: total == expected_total,
        detail: format!("sum {total}, expected {expected_total}"),
    }];

    let mut bad_compensated = Vec::new();
    let mut bad_succeeded = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let i = i as u32;
        let t = &transfers[i as usize];
        let nets = net.get(&i);
        let net_of = |account: u32| {
            nets.and_then(|n| n.get(&account.to_string()))
                .copied()
                .unwrap_or(0)
        };
        match outcome {
            Outcome::Compensated | Outcome::FailedDebit | Outcome::LockTimeout
                if net_of(t.from) != 0 || net_of(t.to) != 0 =>
            {
                bad_compensated.push(i);
            }
            Outcome::Succeeded => {
                let mut names = ops.get(&i).cloned().unwrap_or_default();
                names.sort();
                let moved = net_of(t.from) == -t.amount && net_of(t.to) == t.amount;
                if names != ["credit", "debit"] || !moved || i.is_multiple_of(10) {
                    bad_succeeded.push(i);
                }
            }
            _ => {}
        }
    }
    invariants.push(Invariant {
        name: "compensated runs net to zero",
        ok: bad_compensated.is_empty(),
        detail: format!(
            "{} violations {:?}",
            bad_compensated.len(),
            first(&bad_compensated)
        ),
    });
    invariants.push(Invariant {
        name: "succeeded runs applied debit and credit once each",
        ok: bad_succeeded.is_empty(),
        detail: format!(
            "{} violations {:?}",
            bad_succeeded.len(),
            first(&bad_succeeded)
        ),
    });
    let mismatched: Vec<&str> = accounts
        .iter()
        .filter(|a| {
            a.balance + a.held != OPENING_BALANCE + by_account.get(&a.account).copied().unwrap_or(0)
        })
        .map(|a| a.account.as_str())
        .collect();
    invariants.push(Invariant {
        name: "balances equal opening plus applied operations",
        ok: mismatched.is_empty() && accounts.len() == account_count as usize,
        detail: format!(
            "{} accounts differ {:?}",
            mismatched.len(),
            first(&mismatched)
        ),
    });
    let missing = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Missing | Outcome::Other))
        .count();
    invariants.push(Invariant {
        name: "every run has an outcome",
        ok: missing == 0,
        detail: format!("{missing} runs without a final outcome"),
    });
    Ok(invariants)
}

fn kind(location: &Location) -> &'static str {
    match location {
        Location::Sqlite(_) => "sqlite",
        Location::Postgres { .. } => "postgres",
    }
}

/// The nearest-rank `p`th percentile of sorted `latencies`, in milliseconds: the smallest
/// value with at least p% of all values at or below it.
fn percentile_ms(latencies: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * latencies.len() as f64).ceil().max(1.0) as usize;
    latencies
        .get(rank.min(latencies.len()).saturating_sub(1))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn transfer_index(prefix: &str, op_id: &str) -> Option<u32> {
    op_id
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .split('/')
        .next()?
        .parse()
        .ok()
}

fn first<T: Clone>(items: &[T]) -> Vec<T> {
    items.iter().take(5).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_deterministic_and_in_range() {
        let a = workload(500, 42, ACCOUNTS);
        let b = workload(500, 42, ACCOUNTS);
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.from == y.from && x.to == y.to && x.amount == y.amount)
        );
        for t in &a {
            assert!((1..=ACCOUNTS).contains(&t.from) && (1..=ACCOUNTS).contains(&t.to));
            assert_ne!(t.from, t.to);
            assert!((1..=100).contains(&t.amount));
        }
        assert!(
            workload(500, 43, ACCOUNTS)
                .iter()
                .zip(&a)
                .any(|(x, y)| x.from != y.from)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&latencies, 50.0), 50.0);
        assert_eq!(percentile_ms(&latencies, 99.0), 99.0);
        assert_eq!(percentile_ms(&latencies[..1], 99.0), 1.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn op_ids_map_back_to_their_transfer() {
        assert_eq!(transfer_index("bench-42", "bench-42/17/debit"), Some(17));
        assert_eq!(
            transfer_index("bench-42", "bench-42/17/credit#undo"),
            Some(17)
        );
        assert_eq!(transfer_index("bench-42", "#open/5"), None);
    }
}

/// Micro figures: what one instantiation, one replayed host call and one durable journal
/// append cost on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct MicroReport {
    /// Mean time to instantiate a workflow (pooling allocator, pre-linked component).
    pub instantiate_us: f64,
    /// Mean cost of one host call answered from the journal (the host's own overhead per
    /// step, with no participant and no journal write), including the guest's own work.
    pub replayed_call_us: f64,
    /// Durable appends per second from one writer waiting for each commit.
    pub journal_appends_per_s_serial: f64,
    /// Durable appends per second from `writers` concurrent writers (group commit).
    pub journal_appends_per_s_concurrent: f64,
    pub writers: u32,
}

/// Measures [`MicroReport`] on a fresh journal at `journal`.
pub async fn micro(
    journal: Location,
    cache_dir: PathBuf,
    module: Vec<u8>,
) -> Result<MicroReport, HostError> {
    Database::destroy(&journal).await?;
    let mut config = HostConfig::new(journal);
    config.cache_dir = cache_dir;
    config.limits.concurrent_runs_max = 64;
    let host = Host::open(&config).await?;
    let db = host.ledger_db().clone();
    for account in ["1", "2"] {
        wasaga_participants::ledger::open(&db, account, OPENING_BALANCE)
            .await
            .map_err(|e| HostError::Input(format!("cannot open accounts: {e}")))?;
    }
    let hash = host.add_module("bench-transfer", &module).await?;
    let input = r#"{"i":1,"from":"1","to":"2","amount":5}"#;
    let (run_id, _) = host
        .start(Some("micro/1".into()), "bench-transfer", &hash, input)
        .await?;
    host.drive(&run_id, no_observer()).await?;

    let rounds = 2_000u32;
    let (mut instantiate, mut replay, mut calls) = (Duration::ZERO, Duration::ZERO, 0);
    for _ in 0..rounds {
        let (i, r, c) = host.replay_only(&run_id).await?;
        instantiate += i;
        replay += r;
        calls = c;
    }
    let instantiate_us = instantiate.as_secs_f64() * 1e6 / f64::from(rounds);
    let replayed_call_us = replay.as_secs_f64() * 1e6 / f64::from(rounds * calls.max(1));

    let serial = appends_per_second(&host, &hash, 1, 300).await?;
    let writers = 32;
    let concurrent = appends_per_second(&host, &hash, writers, 300).await?;
    Ok(MicroReport {
        instantiate_us,
        replayed_call_us,
        journal_appends_per_s_serial: serial,
        journal_appends_per_s_concurrent: concurrent,
        writers,
    })
}

async fn appends_per_second(
    host: &Host,
    hash: &str,
    writers: u32,
    each: u32,
) -> Result<f64, HostError> {
    let mut runs = Vec::new();
    for w in 0..writers {
        let (run_id, _) = host
            .start(
                Some(format!("micro/append-{writers}-{w}")),
                "bench-transfer",
                hash,
                "{}",
            )
            .await?;
        runs.push(run_id);
    }
    let began = Instant::now();
    let mut tasks = Vec::new();
    for run_id in runs {
        let journal = host.journal().clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 2;
            for k in 0..each {
                let event = wasaga_core::event::Event::Log {
                    call: Some(k),
                    message: "append".into(),
                };
                seq = journal.append(&run_id, seq, vec![event]).await?;
            }
            Ok::<_, wasaga_journal::JournalError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| HostError::Engine(format!("append task: {e}")))??;
    }
    Ok(f64::from(writers * each) / began.elapsed().as_secs_f64())
}

/// What `wasaga bench locks` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub backend: String,
    pub n: u32,
    pub c: u32,
    /// Acquire-and-release pairs per second.
    pub pairs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Acquire-and-release pairs on `backend`, from `c` clients on distinct keys, `n` in all.
pub async fn locks(
    backend: wasaga_locks::LockBackend,
    scratch_path: PathBuf,
    n: u32,
    c: u32,
) -> Result<LockReport, HostError> {
    let scratch = Location::Sqlite(scratch_path);
    Database::destroy(&scratch).await?;
    let scratch = Arc::new(Database::open(&scratch, Default::default(), Default::default()).await?);
    let service: Arc<dyn wasaga_locks::LockService> = Arc::from(
        wasaga_locks::connect(&backend, &scratch)
            .await
            .map_err(|e| HostError::Input(e.to_string()))?,
    );
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..c.max(1) {
        let (service, next) = (service.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let key = format!("bench/{worker}");
            let owner = format!("bench-owner-{worker}");
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let began = Instant::now();
                let lease = service.acquire(&key, &owner, 10_000, 10_000).await?;
                service.release(&lease).await?;
                latencies.push(began.elapsed());
            }
            Ok::<_, wasaga_locks::LockError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(
            worker
                .await
                .map_err(|e| HostError::Engine(format!("lock bench worker: {e}")))?
                .map_err(|e| HostError::Input(e.to_string()))?,
        );
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| percentile_ms(&latencies, p);
    Ok(LockReport {
        backend: service.describe(),
        n,
        c,
        pairs_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(50.0),
        p99_ms: percentile(99.0),
    })
}

/// What `wasaga bench waits` measured.
#[derive(Debug, Serialize)]
pub struct WaitsReport {
    pub runs: u32,
    /// Runs started (each up to its sleep, journaled, instance dropped) per second.
    pub started_per_s: f64,
    /// Runs that came due before every run had started (they woke early: a slow start).
    pub due_before_all_started: u64,
    /// Module instances alive while every run waited.
    pub instances_while_waiting: usize,
    pub rss_before_mib: f64,
    pub rss_waiting_mib: f64,
    /// Resident memory per waiting run, in bytes.
    pub rss_per_waiting_run_bytes: f64,
    /// The journal's files (database and WAL) per run while they wait, in bytes.
    pub journal_bytes_per_waiting_run: f64,
    /// Runs woken (claimed, replayed to their sleep, ended) per second once due.
    pub wakeups_per_s: f64,
    /// How long after the timers came due the last run completed.
    pub last_woke_after_due_ms: u64,
}

/// The resident set of this process, in bytes (0 where /proc is missing).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn journal_bytes(journal: &Location) -> u64 {
    match journal {
        Location::Sqlite(path) => ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum(),
        _ => 0,
    }
}

/// `n` runs of the `waiter` workflow each sleep until one moment (far enough ahead for all of
/// them to start first), holding no instance meanwhile; then this host's own claim loop wakes
/// them as a server's does: claim what is due, replay each to its sleep, end it.
pub async fn waits(
    journal: Location,
    cache_dir: PathBuf,
    module: Vec<u8>,
    n: u32,
    c: u32,
) -> Result<WaitsReport, HostError> {
    Database::destroy(&journal).await?;
    let mut config = HostConfig::new(journal.clone());
    config.cache_dir = cache_dir;
    config.limits.concurrent_runs_max = c.max(1);
    let host = Host::open(&config).await?;
    let hash = host.add_module("waiter", &module).await?;
    let (rss_before, bytes_before) = (rss_bytes(), journal_bytes(&journal));
    // Far enough ahead that starting every run (a few thousand a second) ends before.
    let lead_ms = 5_000 + u64::from(n) / 2;
    let due = wasaga_core::clock::now_ms() + lead_ms;
    let input = format!(r#"{{"waits":[{{"sleep_until":{{"at_ms":{due}}}}}]}}"#);
    let began = Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let mut starters = tokio::task::JoinSet::new();
    for _ in 0..c.max(1) {
        let (host, hash, input, next) = (host.clone(), hash.clone(), input.clone(), next.clone());
        starters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, HostError>(());
                }
                host.start_and_drive(
                    Some(format!("wait/{i}")),
                    "waiter",
                    &hash,
                    &input,
                    no_observer(),
                )
                .await?;
            }
        });
    }
    while let Some(started) = starters.join_next().await {
        started.map_err(|e| HostError::Engine(format!("a starter panicked: {e}")))??;
    }
    let start_s = began.elapsed().as_secs_f64();
    let instances_while_waiting = host.live_instances();
    let (rss_waiting, bytes_waiting) = (rss_bytes(), journal_bytes(&journal));
    let now = wasaga_core::clock::now_ms();
    let due_before_all_started = if now >= due {
        let (waiting, _) = host.journal().waiting().await?;
        u64::from(n).saturating_sub(waiting)
    } else {
        tokio::time::sleep(Duration::from_millis(due - now)).await;
        0
    };
    let woke_from = Instant::now();
    let driving = Arc::new(tokio::sync::Semaphore::new(c.max(1) as usize));
    let mut drives = tokio::task::JoinSet::new();
    let mut claimed_all = 0u32;
    while claimed_all < n {
        let claimed = host.claim(CLAIM_BATCH).await?;
        if claimed.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        claimed_all += claimed.len() as u32;
        for run_id in claimed {
            let permit = driving.clone().acquire_owned().await.expect("never closed");
            let host = host.clone();
            drives.spawn(async move {
                let _permit = permit;
                host.drive(&run_id, no_observer()).await
            });
        }
    }
    let mut completed = 0u32;
    while let Some(outcome) = drives.join_next().await {
        let outcome =
            outcome.map_err(|e| HostError::Engine(format!("a drive panicked: {e}")))??;
        if outcome.status == RunStatus::Completed {
            completed += 1;
        }
    }
    if completed != n {
        return Err(HostError::Input(format!(
            "{completed} of {n} sleeping runs completed"
        )));
    }
    let wake_s = woke_from.elapsed().as_secs_f64();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    Ok(WaitsReport {
        runs: n,
        started_per_s: f64::from(n) / start_s,
        due_before_all_started,
        instances_while_waiting,
        rss_before_mib: mib(rss_before),
        rss_waiting_mib: mib(rss_waiting),
        rss_per_waiting_run_bytes: rss_waiting.saturating_sub(rss_before) as f64 / f64::from(n),
        journal_bytes_per_waiting_run: bytes_waiting.saturating_sub(bytes_before) as f64
            / f64::from(n),
        wakeups_per_s: f64::from(n) / wake_s,
        last_woke_after_due_ms: (wasaga_core::clock::now_ms()).saturating_sub(due),
    })
}

/// Due runs one claim of `bench waits` takes.
const CLAIM_BATCH: u32 = 256;
