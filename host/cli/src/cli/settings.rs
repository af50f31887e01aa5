//! The settings a command runs with: flags and environment variables first, then the config
//! file given by `--config`, then defaults. Everything is parsed and checked here, before
//! anything runs, so that a mistake in the config is one clear message naming the file and
//! what to change.

use super::args::{Global, check_participant_name, parse_xa};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wasaga_core::limits::{Grant, Grants};
use wasaga_db::Location;
use wasaga_locks::LockBackend;
use wasaga_participants::http::{HttpConfig, HttpParticipant};
use wasaga_participants::outbox::{OutboxConfig, SinkConfig};
use wasaga_runtime::HostConfig;

/// Where a server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Bearer tokens shorter than this are refused: they can be guessed.
pub const TOKEN_CHARS_MIN: usize = 16;

/// The config file, as written. Unknown keys are errors, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// The journal: a SQLite file (relative to the config file) or a postgres:// URL.
    journal: Option<String>,
    ledger: Option<String>,
    locks: Option<String>,
    host_id: Option<String>,
    cache_dir: Option<PathBuf>,
    /// `postgres-xa` participants: name = URL.
    #[serde(default)]
    xa: BTreeMap<String, String>,
    /// Participants by name: `[participants.<name>]` with a `kind`.
    #[serde(default)]
    participants: BTreeMap<String, ParticipantFile>,
    /// Where the ledger's transaction records go.
    #[serde(default)]
    outbox: OutboxFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    server: ServerFile,
    /// Where spans are exported.
    #[serde(default)]
    tracing: TracingFile,
    /// How deploys check a new version.
    #[serde(default)]
    deploy: DeployFile,
    /// What is kept how long.
    #[serde(default)]
    retention: RetentionFile,
    /// Grants by workflow name; with this table present, everything not granted is denied.
    workflows: Option<BTreeMap<String, GrantFile>>,
}

/// One `[participants.<name>]` table.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum ParticipantFile {
    #[serde(rename = "http")]
    Http(HttpFile),
    #[serde(rename = "postgres-xa")]
    PostgresXa { url: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    url: String,
    timeout_ms: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, HeaderFile>,
    concurrency_max: Option<u32>,
    rate_per_s: Option<f64>,
    /// PEM certificates to trust (relative to the config file).
    ca_file: Option<PathBuf>,
    body_bytes_max: Option<usize>,
    #[serde(default)]
    two_phase: bool,
    actions: Option<Vec<String>>,
    /// Before every key the service sees: one per journal, when journals share the service.
    key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxFile {
    /// Delivered records are kept this long, then pruned (default 168: a week).
    retention_hours: Option<u64>,
    #[serde(default)]
    sinks: Vec<SinkFile>,
}

/// One `[[outbox.sinks]]` table.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum SinkFile {
    #[serde(rename = "webhook")]
    Webhook {
        name: String,
        url: String,
        /// The HMAC-SHA256 key the receiver checks signatures with.
        secret: HeaderFile,
        timeout_ms: Option<u64>,
    },
    #[serde(rename = "redis")]
    Redis {
        name: String,
        url: String,
        stream: String,
    },
}

/// A header's value, or the environment variable holding it (a secret stays out of the file).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeaderFile {
    Value(String),
    Env { env: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    run_duration_ms_max: Option<u64>,
    memory_mib_max: Option<u64>,
    payload_bytes_max: Option<usize>,
    journal_events_max: Option<u32>,
    step_retries_max: Option<u32>,
    compensation_retries_max: Option<u32>,
    concurrent_runs_max: Option<u32>,
    lock_wait_ms_max: Option<u32>,
    lock_ttl_ms_max: Option<u32>,
    run_lease_ms: Option<u64>,
    postgres_connections_max: Option<u32>,
    wait_ms_max: Option<u64>,
    signals_per_run_max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    listen: Option<String>,
    /// The bearer token, or
    token: Option<String>,
    /// the environment variable holding it (keeps the secret out of the file).
    token_env: Option<String>,
    shutdown_grace_ms: Option<u64>,
    /// A second address serving `/metrics` without the token.
    metrics_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    /// Finished runs (completed, compensated) are pruned this many days after they ended.
    runs_days: Option<u32>,
    /// The ledger's operation records are pruned this many days after they were made.
    ledger_ops_days: Option<u32>,
    /// A file (relative to the config) runs are appended to before they are pruned.
    export: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployFile {
    /// The newest completed runs a deploy replays on the new version (default 100).
    check_completed: Option<u32>,
    /// Move the unfinished runs that replay cleanly (and wait now) to the new version.
    upgrade_in_flight: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracingFile {
    /// An OTLP/HTTP collector (`http://host:4318`): spans are exported there.
    otlp_endpoint: Option<String>,
    /// The `service.name` of the spans (default `wasaga`).
    service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    #[serde(default)]
    participants: Vec<String>,
    #[serde(default)]
    lock_prefixes: Vec<String>,
    #[serde(default)]
    children: Vec<String>,
}

/// `[retention]`, resolved.
#[derive(Debug, Clone, Default)]
pub struct RetentionSettings {
    /// Finished runs are pruned this many days after they ended.
    pub runs_days: Option<u32>,
    /// The ledger's operation records are pruned this many days after they were made.
    pub ledger_ops_days: Option<u32>,
    /// Runs are appended here (JSON lines, as `runs export` writes) before they are deleted.
    pub export: Option<PathBuf>,
}

/// The server's part of the settings.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: String,
    /// `None` when no token is configured: `serve` refuses to start then.
    pub token: Option<String>,
    pub shutdown_grace_ms: u64,
    /// Where `/metrics` is also served, without the token.
    pub metrics_listen: Option<String>,
}

/// Everything a command needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub json: bool,
    /// Whether the config file sets concurrent_runs_max (else one-shot commands use a small
    /// pool, which starts faster).
    pub concurrent_runs_configured: bool,
    pub host: HostConfig,
    pub server: Server,
    /// Where spans are exported, if anywhere.
    pub otlp: Option<super::telemetry::OtlpSettings>,
    /// How deploys check a new version unless told otherwise.
    pub deploy: wasaga_runtime::upgrade::DeployOptions,
    /// What is kept how long.
    pub retention: RetentionSettings,
}

impl Settings {
    /// Resolves flags, the config file and defaults into checked settings.
    pub fn load(g: &Global) -> Result<Settings> {
        let (file, base) = match &g.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let file: ConfigFile = toml::from_str(&text)
                    .map_err(|e| anyhow!("config file {}: {e}", path.display()))?;
                let base = path
                    .parent()
                    .map(Path::to_owned)
                    .unwrap_or_else(|| PathBuf::from("."));
                (file, Some(base))
            }
            None => (ConfigFile::default(), None),
        };
        let in_file = |what: &str| match &g.config {
            Some(path) => format!("{what} in {}", path.display()),
            None => what.to_owned(),
        };
        // Relative paths in the config file are relative to the file, not the working directory.
        let relative = |location: Location| match (location, &base) {
            (Location::Sqlite(path), Some(base)) if path.is_relative() => {
                Location::Sqlite(base.join(path))
            }
            (location, _) => location,
        };
        let journal = match (&g.db, &file.journal) {
            (Some(db), _) => db.clone(),
            (None, Some(text)) => {
                relative(Location::parse(text).map_err(|e| anyhow!("{}: {e}", in_file("journal")))?)
            }
            (None, None) => Location::Sqlite(PathBuf::from("wasaga.db")),
        };
        let mut host = HostConfig::new(journal);
        host.ledger = match (&g.ledger, &file.ledger) {
            (Some(ledger), _) => Some(ledger.clone()),
            (None, Some(text)) if text.starts_with("http://") || text.starts_with("https://") => {
                host.ledger_http = Some(ledger_service(text, &in_file("ledger"))?);
                None
            }
            (None, Some(text)) => Some(relative(
                Location::parse(text).map_err(|e| anyhow!("{}: {e}", in_file("ledger")))?,
            )),
            (None, None) => None,
        };
        host.locks = match (&g.locks, &file.locks) {
            (Some(locks), _) => locks.clone(),
            (None, Some(text)) => match text.parse::<LockBackend>() {
                Ok(LockBackend::Sqlite(path)) if path.is_relative() && base.is_some() => {
                    LockBackend::Sqlite(base.as_ref().expect("checked above").join(path))
                }
                Ok(backend) => backend,
                Err(e) => bail!("{}: {e}", in_file("locks")),
            },
            (None, None) => LockBackend::Journal,
        };
        if let Some(dir) = &file.cache_dir {
            host.cache_dir = match &base {
                Some(base) if dir.is_relative() => base.join(dir),
                _ => dir.clone(),
            };
        }
        host.host_id = g
            .host_id
            .clone()
            .or(file.host_id.clone())
            .unwrap_or_else(|| "wasaga".to_owned());
        check_host_id(&host.host_id)?;
        let mut xa: Vec<(String, String)> = file.xa.into_iter().collect();
        for (name, url) in &xa {
            parse_xa(&format!("{name}={url}")).map_err(|e| anyhow!("{}: {e}", in_file("[xa]")))?;
        }
        let section = |name: &str| in_file(&format!("[participants.{name}]"));
        let mut http = Vec::new();
        for (name, participant) in file.participants {
            if xa.iter().any(|(n, _)| *n == name) {
                bail!(
                    "{}: participant '{name}' is also in [xa]; name it once",
                    section(&name)
                );
            }
            match participant {
                ParticipantFile::PostgresXa { url } => {
                    let (name, url) = parse_xa(&format!("{name}={url}"))
                        .map_err(|e| anyhow!("{}: {e}", section(&name)))?;
                    xa.push((name, url));
                }
                ParticipantFile::Http(service) => {
                    http.push(http_config(
                        &name,
                        service,
                        base.as_deref(),
                        &section(&name),
                    )?);
                }
            }
        }
        for (name, url) in &g.xa {
            if http.iter().any(|h| h.name == *name) {
                bail!("--xa {name}: an http participant of that name is configured");
            }
            xa.retain(|(n, _)| n != name);
            xa.push((name.clone(), url.clone()));
        }
        host.xa = xa;
        host.http = http;
        host.outbox = outbox_config(file.outbox, &in_file("[[outbox.sinks]]"))?;

        let limits = &mut host.limits;
        let l = &file.limits;
        set(
            &mut limits.run_duration_ms_max,
            g.run_timeout_ms.or(l.run_duration_ms_max),
        );
        if let Some(mib) = g.memory_mib.or(l.memory_mib_max) {
            limits.memory_bytes_max = (mib as usize) << 20;
        }
        set(&mut limits.payload_bytes_max, l.payload_bytes_max);
        set(&mut limits.journal_events_max, l.journal_events_max);
        set(&mut limits.step_retries_max, l.step_retries_max);
        set(
            &mut limits.compensation_retries_max,
            g.compensation_retries.or(l.compensation_retries_max),
        );
        set(&mut limits.concurrent_runs_max, l.concurrent_runs_max);
        set(&mut limits.lock_wait_ms_max, l.lock_wait_ms_max);
        set(&mut limits.lock_ttl_ms_max, l.lock_ttl_ms_max);
        set(&mut limits.run_lease_ms, g.run_lease_ms.or(l.run_lease_ms));
        set(&mut limits.wait_ms_max, l.wait_ms_max);
        set(&mut limits.signals_per_run_max, l.signals_per_run_max);
        set(
            &mut host.pools.postgres_connections_max,
            l.postgres_connections_max,
        );
        check_limits(&host, &in_file("[limits]"))?;

        // A config file is a deployment: what it does not grant, it denies (a workflow it
        // does not name may not run). Only without any config file (a developer's local
        // `wasaga run`) is everything allowed, and `open` says so.
        if base.is_some() {
            let workflows = file.workflows.unwrap_or_default();
            let mut grants = Grants::default();
            let have: Vec<&str> = std::iter::once("ledger")
                .chain(host.xa.iter().map(|(n, _)| n.as_str()))
                .chain(host.http.iter().map(|h| h.name.as_str()))
                .collect();
            for (name, grant) in workflows {
                for entry in &grant.participants {
                    let (participant, action) = match entry.split_once('.') {
                        Some((participant, action)) => (participant, Some(action)),
                        None => (entry.as_str(), None),
                    };
                    if !have.contains(&participant) {
                        bail!(
                            "{}: workflow '{name}' is granted participant '{participant}', which is not configured (configured: {})",
                            in_file("[workflows]"),
                            have.join(", ")
                        );
                    }
                    let declared = host
                        .http
                        .iter()
                        .find(|h| h.name == participant)
                        .and_then(|h| h.actions.as_ref());
                    if let (Some(action), Some(declared)) = (action, declared)
                        && !declared.iter().any(|a| a == action)
                    {
                        bail!(
                            "{}: workflow '{name}' is granted '{entry}', but participant '{participant}' has no action '{action}' (its actions: {})",
                            in_file("[workflows]"),
                            declared.join(", ")
                        );
                    }
                }
                grants.workflows.insert(
                    name,
                    Grant {
                        participants: grant.participants,
                        lock_prefixes: grant.lock_prefixes,
                        children: grant.children,
                    },
                );
            }
            host.grants = Some(grants);
        }
        host.crash_at = g.crash_at;

        let otlp = otlp_settings(file.tracing, &in_file("[tracing]"))?;
        host.trace_runs = otlp.is_some();
        let max = wasaga_runtime::upgrade::CHECKED_COMPLETED_MAX;
        if file.deploy.check_completed.is_some_and(|n| n > max) {
            bail!(
                "{}: check_completed must be at most {max}",
                in_file("[deploy]")
            );
        }
        let retention =
            retention_settings(file.retention, base.as_deref(), &in_file("[retention]"))?;
        let deploy = wasaga_runtime::upgrade::DeployOptions {
            completed: file
                .deploy
                .check_completed
                .unwrap_or(wasaga_runtime::upgrade::CHECKED_COMPLETED_DEFAULT),
            force: false,
            upgrade_in_flight: file.deploy.upgrade_in_flight.unwrap_or(false),
        };
        let token = match (&file.server.token, &file.server.token_env) {
            (Some(_), Some(_)) => {
                bail!("{}: give token or token_env, not both", in_file("[server]"))
            }
            (Some(token), None) => Some(token.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                anyhow!(
                    "{}: token_env names {var}, which is not set",
                    in_file("[server]")
                )
            })?),
            (None, None) => None,
        };
        if let Some(token) = &token
            && (token.chars().count() < TOKEN_CHARS_MIN || token.chars().any(char::is_whitespace))
        {
            bail!(
                "{}: the token must be at least {TOKEN_CHARS_MIN} characters without spaces (e.g. `openssl rand -hex 24`)",
                in_file("[server]")
            );
        }
        Ok(Settings {
            json: g.json,
            concurrent_runs_configured: file.limits.concurrent_runs_max.is_some(),
            host,
            server: Server {
                listen: file
                    .server
                    .listen
                    .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
                token,
                shutdown_grace_ms: file.server.shutdown_grace_ms.unwrap_or(30_000),
                metrics_listen: file.server.metrics_listen,
            },
            otlp,
            deploy,
            retention,
        })
    }
}

/// Checks `[retention]`: the ledger's operation records outlive the runs that made them (a
/// run's retry or replay within its own retention must find its operations' first outcomes).
fn retention_settings(
    file: RetentionFile,
    base: Option<&Path>,
    section: &str,
) -> Result<RetentionSettings> {
    for (name, days) in [
        ("runs_days", file.runs_days),
        ("ledger_ops_days", file.ledger_ops_days),
    ] {
        if days == Some(0) {
            bail!("{section}: {name} must be at least 1");
        }
    }
    if let (Some(runs), Some(ops)) = (file.runs_days, file.ledger_ops_days)
        && ops <= runs
    {
        bail!(
            "{section}: ledger_ops_days ({ops}) must be more than runs_days ({runs}): the ledger keeps a run's operation records longer than the run"
        );
    }
    if file.ledger_ops_days.is_some() && file.runs_days.is_none() {
        bail!(
            "{section}: ledger_ops_days needs runs_days (the ledger keeps its records longer than the runs)"
        );
    }
    let export = file.export.map(|path| match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    });
    Ok(RetentionSettings {
        runs_days: file.runs_days,
        ledger_ops_days: file.ledger_ops_days,
        export,
    })
}

/// Where spans go: the config's `otlp_endpoint`, else the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, else nowhere.
fn otlp_settings(
    file: TracingFile,
    section: &str,
) -> Result<Option<super::telemetry::OtlpSettings>> {
    let endpoint = match file.otlp_endpoint {
        Some(endpoint) => Some(endpoint),
        None => std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty()),
    };
    let Some(endpoint) = endpoint else {
        if file.service_name.is_some() {
            bail!("{section}: service_name needs otlp_endpoint (where to send the spans)");
        }
        return Ok(None);
    };
    let well_formed = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
    if !well_formed {
        bail!(
            "{section}: otlp_endpoint '{endpoint}' must be an http:// or https:// URL of an OTLP/HTTP collector, e.g. http://127.0.0.1:4318"
        );
    }
    Ok(Some(super::telemetry::OtlpSettings {
        endpoint,
        service_name: file.service_name.unwrap_or_else(|| "wasaga".to_owned()),
    }))
}

/// The ledger served over HTTP at `url` (`wasaga ledger serve`), with the token of
/// WASAGA_LEDGER_TOKEN.
pub(crate) fn ledger_service(url: &str, what: &str) -> Result<HttpConfig> {
    let token = std::env::var("WASAGA_LEDGER_TOKEN").map_err(|_| {
        anyhow!("{what}: a ledger at {url} needs its bearer token in WASAGA_LEDGER_TOKEN")
    })?;
    let mut config = HttpConfig::new("ledger", url);
    config.two_phase = true;
    config.concurrency_max = 64;
    config.headers = vec![("Authorization".to_owned(), format!("Bearer {token}"))];
    HttpParticipant::new(config.clone()).map_err(|e| anyhow!("{what}: {e}"))?;
    Ok(config)
}

/// Checks the `[outbox]` table and resolves its secrets.
fn outbox_config(file: OutboxFile, section: &str) -> Result<OutboxConfig> {
    let mut config = OutboxConfig::default();
    if let Some(hours) = file.retention_hours {
        if hours == 0 {
            bail!("{section}: retention_hours must be at least 1");
        }
        config.retention_ms = hours.saturating_mul(3_600_000);
    }
    for sink in file.sinks {
        let sink = match sink {
            SinkFile::Webhook {
                name,
                url,
                secret,
                timeout_ms,
            } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("{section}: sink {name}: url '{url}' must be http:// or https://");
                }
                let authority = url
                    .split_once("://")
                    .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
                    .unwrap_or_default();
                if authority.contains('@') {
                    bail!(
                        "{section}: sink {name}: url must not hold a user or password (it would be kept in the outbox's errors); the receiver checks the signature made with the sink's secret"
                    );
                }
                let secret = resolve(secret, &format!("{section}: sink {name}: secret"))?;
                if secret.len() < 16 {
                    bail!(
                        "{section}: sink {name}: the secret must be at least 16 characters (e.g. `openssl rand -hex 32`)"
                    );
                }
                SinkConfig::Webhook {
                    name,
                    url,
                    secret,
                    timeout_ms: timeout_ms.unwrap_or(5_000).max(1),
                }
            }
            SinkFile::Redis { name, url, stream } => {
                if !url.starts_with("redis://") {
                    bail!(
                        "{section}: sink {name}: url must be redis://host:port (TLS to Redis is not built in: reach it through a local TLS tunnel)"
                    );
                }
                if stream.is_empty() {
                    bail!("{section}: sink {name}: stream must not be empty");
                }
                SinkConfig::Redis { name, url, stream }
            }
        };
        check_participant_name(sink.name())
            .map_err(|e| anyhow!("{section}: {}", e.replace("participant", "sink")))?;
        if config.sinks.iter().any(|s| s.name() == sink.name()) {
            bail!("{section}: two sinks are named '{}'", sink.name());
        }
        config.sinks.push(sink);
    }
    Ok(config)
}

/// A value from the file, or from the environment variable it names.
fn resolve(value: HeaderFile, what: &str) -> Result<String> {
    match value {
        HeaderFile::Value(value) => Ok(value),
        HeaderFile::Env { env } => std::env::var(&env).map_err(|_| {
            anyhow!(
                "{what} comes from the environment variable {env}, which is not set; export {env} before starting wasaga"
            )
        }),
    }
}

/// Checks one `[participants.<name>]` table of kind `http` and resolves its secrets.
fn http_config(
    name: &str,
    file: HttpFile,
    base: Option<&Path>,
    section: &str,
) -> Result<HttpConfig> {
    check_participant_name(name).map_err(|e| anyhow!("{section}: {e}"))?;
    let mut config = HttpConfig::new(name, &file.url);
    set(&mut config.timeout_ms, file.timeout_ms);
    set(&mut config.concurrency_max, file.concurrency_max);
    set(&mut config.body_bytes_max, file.body_bytes_max);
    config.rate_per_s = file.rate_per_s;
    config.two_phase = file.two_phase;
    config.actions = file.actions;
    if let Some(prefix) = file.key_prefix {
        if prefix.len() > 64 || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!("{section}: key_prefix must be at most 64 characters, without spaces");
        }
        config.key_prefix = prefix;
    }
    for (header, value) in file.headers {
        let value = resolve(value, &format!("{section}: header {header}"))?;
        config.headers.push((header, value));
    }
    if let Some(ca_file) = file.ca_file {
        let path = match base {
            Some(base) if ca_file.is_relative() => base.join(ca_file),
            _ => ca_file,
        };
        config.ca_pem = Some(
            std::fs::read(&path)
                .with_context(|| format!("{section}: cannot read ca_file {}", path.display()))?,
        );
    }
    // Checked now, so that a mistake is reported before anything runs.
    HttpParticipant::new(config.clone()).map_err(|e| anyhow!("{section}: {e}"))?;
    Ok(config)
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn check_host_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 48
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("host id '{id}' must be 1 to 48 letters, digits, '-' or '_'");
    }
    Ok(())
}

fn check_limits(host: &HostConfig, section: &str) -> Result<()> {
    let l = &host.limits;
    let positive: [(&str, u64); 11] = [
        ("run_duration_ms_max", l.run_duration_ms_max),
        ("memory_mib_max", (l.memory_bytes_max >> 20) as u64),
        ("payload_bytes_max", l.payload_bytes_max as u64),
        ("journal_events_max", u64::from(l.journal_events_max)),
        ("step_retries_max", u64::from(l.step_retries_max)),
        (
            "compensation_retries_max",
            u64::from(l.compensation_retries_max),
        ),
        ("concurrent_runs_max", u64::from(l.concurrent_runs_max)),
        ("lock_ttl_ms_max", u64::from(l.lock_ttl_ms_max)),
        (
            "postgres_connections_max",
            u64::from(host.pools.postgres_connections_max),
        ),
        ("wait_ms_max", l.wait_ms_max),
        ("signals_per_run_max", u64::from(l.signals_per_run_max)),
    ];
    for (name, value) in positive {
        if value == 0 {
            bail!("{section}: {name} must be at least 1");
        }
    }
    if l.memory_bytes_max > 4096 << 20 {
        bail!("{section}: memory_mib_max must be at most 4096");
    }
    if l.concurrent_runs_max > 4096 {
        bail!("{section}: concurrent_runs_max must be at most 4096");
    }
    if l.run_lease_ms < 300 {
        bail!(
            "{section}: run_lease_ms must be at least 300 (a host renews its leases every third of it)"
        );
    }
    Ok(())
}
