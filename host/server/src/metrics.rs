//! `GET /metrics`: the host's metrics in the OpenMetrics text format, for Prometheus. Counters
//! and histograms are kept by the layers that measure them (runs and participant calls by
//! the runtime, commits by the database, leases by the journal, lock waits by the lock
//! service); what is a state rather than an event (live and waiting runs, the outbox's
//! backlog) is read when scraped, at most once a second however often anyone asks.

use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use wasaga_core::metrics::{Gauge, Registry};
use wasaga_runtime::executor::Host;

/// How long a scrape answers from the last one's reading of the databases.
const READ_EVERY_MS: u64 = 1_000;

/// The registry `/metrics` encodes, and the gauges read at scrape time.
pub(crate) struct Scrapes {
    registry: Registry,
    live: Gauge,
    waiting: Gauge,
    stuck: Gauge,
    undelivered: Gauge,
    failing: Gauge,
    /// When the databases were last read, and the text then encoded.
    last: Mutex<Option<(Instant, String)>>,
}

impl Scrapes {
    pub fn new(host: &Host) -> Scrapes {
        let mut registry = Registry::with_prefix("wasaga");
        host.register_metrics(&mut registry);
        let (live, waiting, stuck) = (Gauge::default(), Gauge::default(), Gauge::default());
        let (undelivered, failing) = (Gauge::default(), Gauge::default());
        registry.register(
            "runs_live",
            "Runs this host is driving now (executing, or waiting for a lock)",
            live.clone(),
        );
        registry.register(
            "runs_waiting",
            "Runs that wait durably (timer, signal or child), on every host of the journal",
            waiting.clone(),
        );
        registry.register(
            "runs_stuck",
            "Runs stuck now (a compensation kept failing: an operator must fix its cause and retry it), on every host of the journal",
            stuck.clone(),
        );
        registry.register(
            "outbox_undelivered",
            "The ledger's transaction records not delivered yet (the outbox's backlog)",
            undelivered.clone(),
        );
        registry.register(
            "outbox_failing",
            "Undelivered records whose last delivery failed",
            failing.clone(),
        );
        Scrapes {
            registry,
            live,
            waiting,
            stuck,
            undelivered,
            failing,
            last: Mutex::new(None),
        }
    }

    /// The metrics as text; `Err` with what could not be read.
    pub async fn encode(&self, host: &Host) -> Result<String, String> {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = &*last
            && at.elapsed() < Duration::from_millis(READ_EVERY_MS)
        {
            return Ok(text.clone());
        }
        self.live.set(host.live_runs() as i64);
        let (waiting, _) = host
            .journal()
            .waiting()
            .await
            .map_err(|e| format!("the journal: {e}"))?;
        self.waiting.set(waiting as i64);
        let stuck = host
            .journal()
            .stuck_count()
            .await
            .map_err(|e| format!("the journal: {e}"))?;
        self.stuck.set(stuck as i64);
        let (undelivered, failing) = wasaga_participants::outbox::counts(host.ledger_db())
            .await
            .map_err(|e| format!("the ledger's database: {e}"))?;
        self.undelivered.set(undelivered);
        self.failing.set(failing);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| format!("encoding failed: {e}"))?;
        *last = Some((Instant::now(), text.clone()));
        Ok(text)
    }
}

/// The content type of the OpenMetrics text format, for a scraper that asks for it.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format (0.0.4), for everyone else.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept` header asks for OpenMetrics (as Prometheus's scraper does).
pub(crate) fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The OpenMetrics text in the Prometheus text format: a counter's family is named after its
/// samples (`x_total`), and the OpenMetrics-only `# UNIT` and `# EOF` lines go. Histograms and
/// gauges read the same in both.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut text = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples_in_the_prometheus_format() {
        let openmetrics = "# HELP a_runs Runs.\n# TYPE a_runs counter\na_runs_total{w=\"x\"} 3\n# HELP b Live.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_runs_total Runs.\n# TYPE a_runs_total counter\na_runs_total{w=\"x\"} 3\n# HELP b Live.\n# TYPE b gauge\nb 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")) && !wants_openmetrics(None));
    }
}
