//! A private directory per test with its own database, and helpers to drive the CLI in it.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The `wasaga` binary of this build. `cargo test --workspace` builds it (its package, host/cli,
/// has integration tests); a missing binary fails loudly rather than skipping.
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
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p wasaga` first)",
        bin.display()
    );
    bin
}

/// A directory that is removed when the test ends.
pub struct Sandbox {
    pub dir: PathBuf,
    pub db: PathBuf,
    /// The journal as the CLI is given it, when it is not the SQLite file `db`.
    pub journal_url: Option<String>,
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
            journal_url: None,
            extra: Vec::new(),
        }
    }

    /// Keeps the journal (and ledger) in the PostgreSQL database at `url` instead.
    pub fn on_postgres(mut self, url: &str) -> Self {
        self.journal_url = Some(url.to_owned());
        self
    }

    /// Keeps the ledger in its own file, so ledger and journal commit separately.
    pub fn with_separate_ledger(mut self) -> Self {
        let ledger = self.dir.join("ledger.db");
        self.extra = vec!["--ledger".into(), ledger.display().to_string()];
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(wasaga_bin());
        match &self.journal_url {
            Some(url) => command.arg("--db").arg(url),
            None => command.arg("--db").arg(&self.db),
        };
        command.args(&self.extra).args(args);
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

/// Calls `at` with each crash point in turn, `before:N` then `after:N` for N = 1, 2, …, up to
/// `commits_max`, and stops after a commit number at which `at` reached neither (the run made
/// fewer commits). `at` returns whether the process died at its point; the answer is how many
/// points were reached.
pub fn at_every_crash_point(commits_max: u32, mut at: impl FnMut(&str) -> bool) -> u32 {
    let mut reached_points = 0;
    for commit in 1..=commits_max {
        let mut reached = false;
        for point in [format!("before:{commit}"), format!("after:{commit}")] {
            if at(&point) {
                reached = true;
                reached_points += 1;
            }
        }
        if !reached {
            break;
        }
    }
    reached_points
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

pub use wasaga_testkit::rt;

/// The bearer token the test servers are configured with.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A `wasaga serve` child process with its own config file, stopped when dropped.
pub struct Server {
    pub port: u16,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Server {
    /// Writes `config` (TOML; a `[server]` section with the listen address and [`TOKEN`] is
    /// added) to `dir/<name>.toml` and starts a server on it with `extra` arguments; waits until
    /// it answers `/healthz`.
    pub fn start(dir: &Path, name: &str, config: &str, extra: &[&str]) -> Server {
        Server::start_with(dir, name, config, extra, false)
    }

    /// As [`Server::start`], for a server that may die while it starts (one given a crash
    /// point, which resuming runs can reach before it answers): then it is returned stopped.
    pub fn start_may_die(dir: &Path, name: &str, config: &str, extra: &[&str]) -> Server {
        Server::start_with(dir, name, config, extra, true)
    }

    /// As [`Server::start`], with more lines for the `[server]` section (`metrics_listen`).
    pub fn start_serving(
        dir: &Path,
        name: &str,
        config: &str,
        server_lines: &str,
        extra: &[&str],
    ) -> Server {
        Server::start_on(dir, name, config, server_lines, extra, false)
    }

    fn start_with(dir: &Path, name: &str, config: &str, extra: &[&str], may_die: bool) -> Server {
        Server::start_on(dir, name, config, "", extra, may_die)
    }

    fn start_on(
        dir: &Path,
        name: &str,
        config: &str,
        server_lines: &str,
        extra: &[&str],
        may_die: bool,
    ) -> Server {
        let port = crate::services::free_port();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "{config}\n[server]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\nshutdown_grace_ms = 10000\n{server_lines}\n"
            ),
        )
        .expect("write server config");
        let log = dir.join(format!("{name}.log"));
        let mut server = Server {
            port,
            config: path,
            log,
            child: None,
        };
        server.spawn(extra, may_die);
        server
    }

    /// Whether the server process is still alive.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(std::process::Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    fn spawn(&mut self, extra: &[&str], may_die: bool) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let err = out.try_clone().expect("server log");
        let child = Command::new(wasaga_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .args(extra)
            .env_remove("WASAGA_DB")
            .env_remove("WASAGA_LEDGER")
            .env_remove("WASAGA_CONFIG")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("wasaga serve starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut response) = agent().get(&format!("{}/healthz", self.url())).call()
                && response.status() == 200
                && response.body_mut().read_to_string().is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                if may_die {
                    self.child = None;
                    return;
                }
                panic!("wasaga serve exited ({status}):\n{}", self.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wasaga serve did not answer /healthz:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same config (after a stop or a kill).
    pub fn restart(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn(extra, false);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (SIGKILL, SIGTERM, SIGSTOP, SIGCONT) to the server process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// SIGKILLs the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the server and waits for it to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(15);
        let mut child = self.child.take().expect("the server runs");
        child.wait().expect("wait for the server").code()
    }

    /// `POST path` with a JSON body and the token; returns the status and the JSON reply.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        request(
            agent()
                .post(&format!("{}{path}", self.url()))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    /// `POST path` with raw bytes (a module upload) and the token.
    pub fn upload(&self, path: &str, bytes: &[u8]) -> (u16, Value) {
        request(
            agent()
                .post(&format!("{}{path}", self.url()))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("Content-Type", "application/wasm")
                .send(bytes),
        )
    }

    /// `GET path` with the token.
    pub fn get(&self, path: &str) -> (u16, Value) {
        request(
            agent()
                .get(&format!("{}{path}", self.url()))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .call(),
        )
    }

    /// Waits until the runs `GET /v1/runs?<query>` lists are at least `expected` and none is
    /// running or compensating; returns them by id.
    pub fn settled(
        &self,
        query: &str,
        expected: usize,
        timeout: std::time::Duration,
    ) -> std::collections::HashMap<String, Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (status, listed) = self.get(&format!("/v1/runs?{query}"));
            assert_eq!(status, 200, "{listed}");
            let runs: std::collections::HashMap<String, Value> = listed["runs"]
                .as_array()
                .expect("runs")
                .iter()
                .map(|r| (r["run_id"].as_str().expect("id").to_owned(), r.clone()))
                .collect();
            let open = runs
                .values()
                .filter(|r| r["status"] == "running" || r["status"] == "compensating")
                .count();
            if runs.len() >= expected && open == 0 {
                return runs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {expected} runs known, {open} unfinished:\n{}",
                runs.len(),
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts a run of `workflow` on `input` with id `run_id`; returns the status and reply.
    pub fn start_run(&self, workflow: &str, run_id: &str, input: &Value) -> (u16, Value) {
        self.post(
            &format!("/v1/workflows/{workflow}/runs"),
            &serde_json::json!({ "input": input, "run_id": run_id }),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server cannot die of SIGKILL until it is continued.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// An HTTP client that reports 4xx and 5xx as answers, not errors.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .into()
}

pub fn request(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("a body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A run id as a URL path segment ('/' and ':' are allowed in run ids).
pub fn encoded(run_id: &str) -> String {
    run_id
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
}
