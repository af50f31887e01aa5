//! Where the host's logs and spans go: human lines (or JSON lines with `--log-format json`),
//! on stdout for `serve` and on stderr otherwise (where only warnings show, beside a command's
//! own output), and, when the config names an OTLP endpoint, spans exported over OTLP/HTTP
//! (protobuf) to it, batched in the background.

use anyhow::{Context, Result, anyhow};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-07T10:00:00.123Z  INFO run{run_id=...}: message`
    Text,
    /// One JSON object per line, with the span's fields.
    Json,
}

/// Where spans are exported (`[tracing]` in the config).
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP base URL; spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

/// What a command logs where.
#[derive(Debug, Clone, Copy)]
pub struct Logging {
    pub format: LogFormat,
    /// Long-running commands (`serve`) log what they do on stdout; others only warn, on
    /// stderr, beside their output.
    pub serving: bool,
}

/// Keeps the span exporter alive; dropping it sends what is still batched.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last spans could not be exported: {e}");
        }
    }
}

/// Installs the process's subscriber. `WASAGA_LOG` (e.g. `debug` or `info,wasaga_locks=debug`)
/// overrides the level of the log lines.
pub fn init(logging: Logging, otlp: Option<&OtlpSettings>) -> Result<Telemetry> {
    let level = if logging.serving {
        LevelFilter::INFO
    } else {
        LevelFilter::WARN
    };
    let targets = match std::env::var("WASAGA_LOG") {
        Ok(text) => text.parse::<Targets>().map_err(|e| {
            anyhow!("WASAGA_LOG={text}: {e} (e.g. `info` or `info,wasaga_locks=debug`)")
        })?,
        Err(_) => Targets::new().with_default(level),
    };
    let lines = tracing_subscriber::fmt::layer().with_target(false);
    let lines = match (logging.format, logging.serving) {
        (LogFormat::Json, true) => lines
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .boxed(),
        (LogFormat::Json, false) => lines
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        (LogFormat::Text, true) => lines
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .boxed(),
        (LogFormat::Text, false) => lines
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, spans) = match otlp {
        Some(settings) => {
            let provider = exporter(settings)?;
            let tracer = provider.tracer("wasaga");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(LevelFilter::INFO);
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(targets))
        .with(spans)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(Telemetry { provider })
}

fn exporter(settings: &OtlpSettings) -> Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    let url = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(&url)
        .with_timeout(std::time::Duration::from_secs(5))
        .with_headers(Default::default())
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter to {url}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
