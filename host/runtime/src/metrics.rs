//! What a host counts of its runs for `/metrics`: runs started and ended per workflow, and how
//! long participant calls take, steps and compensations apart. Label values come from modules
//! (workflow names, participants, actions), so how many distinct ones are kept is bounded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;
use wasaga_core::event::{CallFailure, Event, RunStatus};
use wasaga_core::metrics::{Counter, Family, Histogram, Registry};

/// Distinct label values of one kind kept at most; past it, new ones are counted as `(other)`.
/// A module calling an `http` participant with ever new action names cannot grow the
/// host's memory, or a scrape, without bound.
pub const LABEL_VALUES_MAX: usize = 256;

/// What the label sets of these metrics are.
type Labels = Vec<(&'static str, String)>;

/// A host's counts of its runs, shared by all of them.
#[derive(Debug)]
pub(crate) struct RunMetrics {
    started: Family<Labels, Counter>,
    ended: Family<Labels, Counter>,
    steps: Family<Labels, Histogram>,
    compensations: Family<Labels, Histogram>,
    workflows: Bounded,
    calls: Bounded,
}

impl Default for RunMetrics {
    fn default() -> Self {
        RunMetrics {
            started: Family::default(),
            ended: Family::default(),
            steps: Family::new_with_constructor(wasaga_core::metrics::latency_histogram),
            compensations: Family::new_with_constructor(wasaga_core::metrics::latency_histogram),
            workflows: Bounded::default(),
            calls: Bounded::default(),
        }
    }
}

impl RunMetrics {
    /// Counts what `event`, just made durable for a run of `workflow`, says: a new run, or
    /// one that ended.
    pub fn journaled(&self, workflow: &str, event: &Event) {
        let status = match event {
            Event::Started { .. } => {
                self.started
                    .get_or_create(&vec![("workflow", self.workflows.value(workflow))])
                    .inc();
                return;
            }
            Event::Completed { .. } => RunStatus::Completed,
            Event::Compensated { .. } => RunStatus::Compensated,
            Event::Stuck { .. } => RunStatus::Stuck,
            _ => return,
        };
        self.ended
            .get_or_create(&vec![
                ("workflow", self.workflows.value(workflow)),
                ("status", status.as_str().to_owned()),
            ])
            .inc();
    }

    /// A participant call (with its retries) that began at `began` ended with `outcome`.
    pub fn called(
        &self,
        participant: &str,
        action: &str,
        compensation: bool,
        began: Instant,
        outcome: &Result<String, CallFailure>,
    ) {
        let ended = match outcome {
            Ok(_) => "done",
            Err(CallFailure::Rejected(_)) => "rejected",
            Err(CallFailure::Unavailable(_)) => "unavailable",
            Err(CallFailure::Unknown(_)) => "unknown",
        };
        let (participant, action) = self.calls.pair(participant, action);
        let family = if compensation {
            &self.compensations
        } else {
            &self.steps
        };
        family
            .get_or_create(&vec![
                ("participant", participant),
                ("action", action),
                ("outcome", ended.to_owned()),
            ])
            .observe(wasaga_core::metrics::seconds_since(began));
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "runs_started",
            "Runs this host started (counted once the run exists in the journal)",
            self.started.clone(),
        );
        registry.register(
            "runs_ended",
            "Runs this host drove to an end: completed, compensated or stuck",
            self.ended.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Saga steps' participant calls, retries included, by participant, action and outcome",
            self.steps.clone(),
        );
        registry.register(
            "compensation_duration_seconds",
            "Compensations' participant calls, retries included, by participant, action and outcome",
            self.compensations.clone(),
        );
    }
}

/// A set of label values that stops growing at `LABEL_VALUES_MAX`.
#[derive(Debug, Default)]
struct Bounded {
    seen: Mutex<HashSet<String>>,
}

impl Bounded {
    /// `value` if it is kept (or there is room to keep it), else `(other)`.
    fn value(&self, value: &str) -> String {
        let mut seen = self.seen.lock().expect("label set lock poisoned");
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < LABEL_VALUES_MAX {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        "(other)".to_owned()
    }

    /// A participant and action, kept (or not) as a pair.
    fn pair(&self, participant: &str, action: &str) -> (String, String) {
        match self
            .value(&format!("{participant}\u{0}{action}"))
            .split_once('\u{0}')
        {
            Some((participant, action)) => (participant.to_owned(), action.to_owned()),
            None => ("(other)".to_owned(), "(other)".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &RunMetrics) -> String {
        let mut registry = Registry::with_prefix("wasaga");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn runs_are_counted_once_they_exist_and_once_they_end() {
        let metrics = RunMetrics::default();
        let started = Event::Started {
            workflow: "transfer".to_owned(),
            module_hash: String::new(),
            input: String::new(),
            started_at_ms: 0,
            traceparent: None,
        };
        metrics.journaled("transfer", &started);
        metrics.journaled(
            "transfer",
            &Event::Completed {
                output: "1".to_owned(),
            },
        );
        metrics.journaled(
            "transfer",
            &Event::Log {
                call: None,
                message: String::new(),
            },
        );
        let text = encoded(&metrics);
        assert!(
            text.contains("wasaga_runs_started_total{workflow=\"transfer\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wasaga_runs_ended_total{workflow=\"transfer\",status=\"completed\"} 1"),
            "{text}"
        );
        assert!(!text.contains("status=\"compensated\""), "{text}");
    }

    #[test]
    fn label_values_stop_growing_at_their_bound() {
        let metrics = RunMetrics::default();
        for i in 0..LABEL_VALUES_MAX + 50 {
            metrics.called(
                "psp",
                &format!("action-{i}"),
                false,
                Instant::now(),
                &Ok(String::new()),
            );
        }
        let text = encoded(&metrics);
        let series = text
            .lines()
            .filter(|l| l.starts_with("wasaga_step_duration_seconds_count"))
            .count();
        assert_eq!(series, LABEL_VALUES_MAX + 1, "the bound, and (other)");
        assert!(text.contains("action=\"(other)\""), "{text}");
    }
}
