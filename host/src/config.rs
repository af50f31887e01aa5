//! Host configuration: where the journal and ledger live, and the limits every run obeys.

use crate::crash::CrashPoint;
use std::path::PathBuf;

/// Limits on what one run may use. Exceeding any ends the run with a named error and
/// compensates it. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one execution of a module may take, including replay.
    pub run_duration_ms_max: u64,
    /// Linear memory one module instance may grow to.
    pub memory_bytes_max: usize,
    /// Size of a run's input, its output, and each participant payload and reply.
    pub payload_bytes_max: usize,
    /// Events in one run's journal.
    pub journal_events_max: u32,
    /// Attempts for a step whose participant is unavailable or whose outcome is unknown.
    pub step_retries_max: u32,
    /// Attempts for one compensation before the run is parked as `stuck`.
    pub compensation_retries_max: u32,
    /// First backoff between retries; doubled each attempt up to `retry_backoff_ms_max`.
    pub retry_backoff_ms_min: u64,
    pub retry_backoff_ms_max: u64,
    /// Runs executing at once in one host (sizes the instance pool).
    pub concurrent_runs_max: u32,
    /// Time a run may wait for one lock.
    pub lock_wait_ms_max: u32,
    /// Longest lease a module may ask for.
    pub lock_ttl_ms_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            run_duration_ms_max: 30_000,
            memory_bytes_max: 64 << 20,
            payload_bytes_max: 64 << 10,
            journal_events_max: 10_000,
            step_retries_max: 5,
            compensation_retries_max: 8,
            retry_backoff_ms_min: 10,
            retry_backoff_ms_max: 1_000,
            concurrent_runs_max: 256,
            lock_wait_ms_max: 30_000,
            lock_ttl_ms_max: 300_000,
        }
    }
}

/// Everything a host needs to start.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The SQLite journal file.
    pub journal_path: PathBuf,
    /// The ledger's SQLite file; `None` shares the journal's file (and its transactions).
    pub ledger_path: Option<PathBuf>,
    /// Where precompiled modules are cached, by content hash.
    pub cache_dir: PathBuf,
    pub limits: Limits,
    /// Where locks come from.
    pub locks: crate::locks::LockBackend,
    /// `postgres-xa` participants: name and database URL.
    pub xa: Vec<(String, String)>,
    /// Names this host in the global ids of its prepared transactions, so that its recovery
    /// finds its own in-doubt transactions and no other host's.
    pub host_id: String,
    /// Test hook: die by SIGKILL at this commit.
    pub crash_at: Option<CrashPoint>,
}

impl HostConfig {
    /// A config with default limits for the journal at `journal_path`, caching compiled
    /// modules beside it.
    pub fn new(journal_path: PathBuf) -> Self {
        let mut cache = journal_path.clone().into_os_string();
        cache.push(".cache");
        HostConfig {
            journal_path,
            ledger_path: None,
            cache_dir: PathBuf::from(cache),
            limits: Limits::default(),
            locks: crate::locks::LockBackend::Journal,
            xa: Vec::new(),
            host_id: "wasaga".to_owned(),
            crash_at: None,
        }
    }
}
