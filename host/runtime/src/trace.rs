//! Spans of runs and of the participant calls they make, and the W3C trace context that ties
//! them to the request that started a run. A run's span is named `run <workflow>` and carries
//! its id, workflow, module and deployed version; a step's span is its child. When the binary
//! exports spans (OTLP), a run started with a `traceparent` joins that trace, on whichever host
//! drives it (the header is kept in the run's `started` event), and participant calls carry
//! the current span's `traceparent` on to HTTP services.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use wasaga_core::event::{CallSpec, Event};

/// Whether `text` is a W3C `traceparent` this host understands: version `00`, a 32-hex trace
/// id and a 16-hex parent id, neither all zeros, and two hex digits of flags.
pub fn is_traceparent(text: &str) -> bool {
    parse(text).is_some()
}

fn parse(text: &str) -> Option<SpanContext> {
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if parts.next().is_some()
        || version != "00"
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// A new trace for a run started without one: a random trace id and parent id, sampled.
pub(crate) fn new_traceparent() -> String {
    let (trace, parent): (u128, u64) = (rand::random(), rand::random());
    // All-zero ids are invalid; one in 2^64 is no reason to lose the trace.
    format!("00-{:032x}-{:016x}-01", trace.max(1), parent.max(1))
}

/// The span of a run whose journal begins with `started`, joined to the trace its starter
/// named, if it named one.
pub(crate) fn run_span(run_id: &str, started: &Event, version: Option<i64>) -> Span {
    let Event::Started {
        workflow,
        module_hash,
        traceparent,
        ..
    } = started
    else {
        return Span::none();
    };
    let span = tracing::info_span!(
        "run",
        run_id,
        workflow = workflow.as_str(),
        module = &module_hash[..module_hash.len().min(12)],
        version = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    if let Some(version) = version {
        span.record("version", version);
    }
    if let Some(context) = traceparent.as_deref().and_then(parse) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
    }
    span
}

/// How a drive of a run ended, as its span records it.
pub(crate) struct Ended<'a> {
    pub status: wasaga_core::event::RunStatus,
    pub waiting: bool,
    pub error: Option<&'a str>,
}

/// Records on a run's span how the drive that it covers ended (`Err`: it stopped before an
/// end, with why).
pub(crate) fn ended(span: &Span, outcome: Result<Ended<'_>, String>) {
    match outcome {
        Ok(outcome) => {
            let status = if outcome.waiting {
                "waiting"
            } else {
                outcome.status.as_str()
            };
            span.record("status", status);
            match (outcome.error, outcome.status) {
                (Some(error), wasaga_core::event::RunStatus::Stuck) => {
                    tracing::warn!(parent: span, "run stuck: {error:?}")
                }
                (Some(error), _) => tracing::info!(parent: span, "run {status}: {error:?}"),
                (None, _) => tracing::info!(parent: span, "run {status}"),
            }
        }
        Err(e) => {
            span.record("status", "interrupted");
            tracing::warn!(parent: span, error = %e, "run stopped before its end");
        }
    }
}

/// What a participant call of a run is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallKind {
    /// A saga step's action.
    Step,
    /// A step's action repeated under its key to learn an unknown outcome.
    Resolve,
    /// The undo of a step.
    Compensation,
}

/// The span of a participant call a run makes, named for its kind.
pub(crate) fn call_span(kind: CallKind, name: &str, call: &CallSpec, number: u32) -> Span {
    // A span's name is fixed where it is made, hence one place per kind.
    macro_rules! span {
        ($kind:literal) => {
            tracing::info_span!(
                $kind,
                step = name,
                participant = call.participant.as_str(),
                action = call.action.as_str(),
                call = number,
                outcome = tracing::field::Empty,
            )
        };
    }
    match kind {
        CallKind::Step => span!("step"),
        CallKind::Resolve => span!("resolve"),
        CallKind::Compensation => span!("compensation"),
    }
}

/// Records a call's outcome on its span.
pub(crate) fn call_ended(span: &Span, outcome: &Result<String, wasaga_core::event::CallFailure>) {
    let ended = match outcome {
        Ok(_) => "done".to_owned(),
        Err(failure) => failure.to_string(),
    };
    span.record("outcome", ended.as_str());
}

/// The `traceparent` a participant call made now should carry: the current span's, when
/// spans are exported, else the one the run was started with (so a service downstream still
/// sees the caller's trace).
pub(crate) fn current_traceparent(started: Option<&Event>) -> Option<String> {
    let context = Span::current().context();
    let span = context.span();
    let current = span.span_context();
    if current.is_valid() {
        return Some(format!(
            "00-{}-{}-{:02x}",
            current.trace_id(),
            current.span_id(),
            current.trace_flags().to_u8()
        ));
    }
    match started {
        Some(Event::Started { traceparent, .. }) => traceparent.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(good));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "../../etc/passwd",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_new_trace_is_well_formed_and_new() {
        let (a, b) = (new_traceparent(), new_traceparent());
        assert!(is_traceparent(&a) && is_traceparent(&b), "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn without_an_exporter_a_call_carries_the_runs_traceparent() {
        let started = Event::Started {
            workflow: "w".to_owned(),
            module_hash: "h".to_owned(),
            input: "{}".to_owned(),
            started_at_ms: 0,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        };
        assert_eq!(
            current_traceparent(Some(&started)).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(current_traceparent(None), None);
    }
}
