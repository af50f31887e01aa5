//! A private directory per test with its own database, and helpers to drive the CLI in it.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The `wasaga` binary of this build. `cargo test --workspace` builds it (the host package has
/// integration tests); a missing binary fails loudly rather than skipping.
pub fn wasaga_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/wasaga
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("wasaga");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p host` first)",
        bin.display()
    );
    bin
}

/// A directory that is removed when the test ends.
pub struct Sandbox {
    pub dir: PathBuf,
    pub db: PathBuf,
    /// Extra global arguments for every CLI call (e.g. `--ledger <file>`).
    pub extra: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Sandbox {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wasaga-e2e-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create sandbox dir");
        let db = dir.join("wasaga.db");
        Sandbox {
            dir,
            db,
            extra: Vec::new(),
        }
    }

    /// Keeps the ledger in its own file, so ledger and journal commit separately.
    pub fn with_separate_ledger(mut self) -> Self {
        let ledger = self.dir.join("ledger.db");
        self.extra = vec!["--ledger".into(), ledger.display().to_string()];
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(wasaga_bin());
        command
            .arg("--db")
            .arg(&self.db)
            .args(&self.extra)
            .args(args);
        command.env_remove("WASAGA_DB").env_remove("WASAGA_LEDGER");
        command
    }

    pub fn wasaga(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("wasaga runs")
    }

    /// Runs the CLI expecting success and returns its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.wasaga(&all);
        assert!(
            out.status.success(),
            "wasaga {args:?} failed: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)))
    }

    pub fn open(&self, account: &str, balance: i64) {
        let out = self.wasaga(&["ledger", "open", account, "--balance", &balance.to_string()]);
        assert!(out.status.success(), "open {account}: {}", text(&out));
    }

    /// Every account's balance plus held amount.
    pub fn balances(&self) -> BTreeMap<String, i64> {
        let list = self.json(&["ledger", "list"]);
        list["accounts"]
            .as_array()
            .expect("accounts array")
            .iter()
            .map(|a| {
                let name = a["account"].as_str().expect("account name").to_owned();
                (
                    name,
                    a["balance"].as_i64().expect("balance") + a["held"].as_i64().expect("held"),
                )
            })
            .collect()
    }

    /// Every run, as `(run_id, status, error)`.
    pub fn runs(&self) -> Vec<(String, String, Option<String>)> {
        let list = self.json(&["runs", "list", "--limit", "1000"]);
        list["runs"]
            .as_array()
            .expect("runs array")
            .iter()
            .map(|r| {
                (
                    r["run_id"].as_str().expect("run id").to_owned(),
                    r["status"].as_str().expect("status").to_owned(),
                    r["error"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// The events of a run, as JSON objects with a `kind`.
    pub fn events(&self, run_id: &str) -> Vec<Value> {
        let shown = self.json(&["runs", "show", run_id]);
        shown["events"].as_array().expect("events array").clone()
    }

    /// Path of the database the ledger lives in.
    pub fn ledger_db(&self) -> PathBuf {
        match self.extra.iter().position(|a| a == "--ledger") {
            Some(i) => PathBuf::from(&self.extra[i + 1]),
            None => self.db.clone(),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last non-empty line of stderr.
pub fn last_error_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

/// Opens a connection on a sandbox database, for checks the CLI does not expose.
pub fn sql(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open sqlite for checks");
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .expect("busy timeout");
    conn
}

/// The first column of the first row of `query`, on a sandbox database.
pub fn scalar<T: rusqlite::types::FromSql>(path: &Path, query: &str) -> T {
    sql(path)
        .query_row(query, [], |row| row.get(0))
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// Checks the ledger's audit invariants: every account's balance plus holds equals the sum of
/// its journaled entries plus what is held, and no operation key appears twice (the schema's
/// primary key makes the second half hold by construction; the first catches double effects).
pub fn assert_ledger_consistent(path: &Path) {
    let conn = sql(path);
    let mut statement = conn
        .prepare("SELECT a.account, a.balance, COALESCE(SUM(e.delta), 0) FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account = a.account GROUP BY a.account")
        .expect("audit query");
    let rows: Vec<(String, i64, i64)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("audit query")
        .collect::<Result<_, _>>()
        .expect("audit rows");
    for (account, balance, entries) in rows {
        assert_eq!(
            balance, entries,
            "account {account}: balance {balance} but entries sum to {entries}"
        );
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
