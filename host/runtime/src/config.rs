//! Host configuration: where the journal and ledger live, the limits every run obeys, and what
//! each workflow is granted. Built and validated by the binary (from flags and the config
//! file) before anything runs; the library never reads files or the environment for it (but
//! for the system's temporary directory, the default module cache of a PostgreSQL journal).

use std::path::PathBuf;
use wasaga_core::crash::CrashPoint;
use wasaga_core::limits::{Grants, Limits};
use wasaga_db::{Location, PoolSizes};
use wasaga_locks::LockBackend;

/// Everything a host needs to start.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The journal's database.
    pub journal: Location,
    /// The ledger's database; `None` shares the journal's (and its transactions).
    pub ledger: Option<Location>,
    /// The ledger reached over HTTP (`wasaga ledger serve`) instead of a database: every
    /// ledger call is then an `http` participant's, and `ledger` is ignored.
    pub ledger_http: Option<wasaga_participants::http::HttpConfig>,
    /// Where precompiled modules are cached, by content hash.
    pub cache_dir: PathBuf,
    pub limits: Limits,
    /// Where locks come from.
    pub locks: LockBackend,
    /// `postgres-xa` participants: name and database URL.
    pub xa: Vec<(String, String)>,
    /// `http` participants.
    pub http: Vec<wasaga_participants::http::HttpConfig>,
    /// Where the ledger's transaction records are delivered (`serve` runs the delivery).
    pub outbox: wasaga_participants::outbox::OutboxConfig,
    /// Names this host in the leases it holds on runs (with its process). Prepared
    /// transactions' global ids derive from their run, not from this.
    pub host_id: String,
    /// Per-workflow grants, if a config file gave them.
    pub grants: Option<Grants>,
    pub pools: PoolSizes,
    /// Test hook: die by SIGKILL at this commit.
    pub crash_at: Option<CrashPoint>,
    /// Whether a step's outcome may reach its module before its write is durable (SQLite's
    /// `write_early`). Off for a command line that prints each step as it happens.
    pub early_answers: bool,
    /// Whether spans are exported: a run started without a `traceparent` then gets one of
    /// its own, so that every drive of it (after a wait, a crash, on another host) is in one
    /// trace.
    pub trace_runs: bool,
}

impl HostConfig {
    /// A config with default limits for the journal at `journal`. Compiled modules are cached
    /// beside a SQLite journal, or in the system's temporary directory
    /// (`wasaga-module-cache`) for PostgreSQL.
    pub fn new(journal: Location) -> Self {
        let cache_dir = match &journal {
            Location::Sqlite(path) => {
                let mut cache = path.clone().into_os_string();
                cache.push(".cache");
                PathBuf::from(cache)
            }
            // Compiled modules are cached on the local machine, whatever the journal: in the
            // system's temporary directory, never relative to where the host was started.
            Location::Postgres { .. } => std::env::temp_dir().join("wasaga-module-cache"),
        };
        HostConfig {
            journal,
            ledger: None,
            ledger_http: None,
            cache_dir,
            limits: Limits::default(),
            locks: LockBackend::Journal,
            xa: Vec::new(),
            http: Vec::new(),
            outbox: Default::default(),
            host_id: "wasaga".to_owned(),
            grants: None,
            pools: PoolSizes::default(),
            crash_at: None,
            early_answers: true,
            trace_runs: false,
        }
    }
}
