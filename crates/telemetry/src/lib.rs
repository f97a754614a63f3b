//! One telemetry setup for every linkwork binary.
//!
//! Logs: `tracing` with an env filter (`RUST_LOG`, default `info`) to stderr, JSON
//! when stderr is not a terminal or `LINKWORK_LOG_FORMAT=json`, compact text otherwise.
//! Traces: spans at INFO and above are also OpenTelemetry spans (filter with
//! `LINKWORK_TRACE_FILTER`), whatever the log level, so W3C trace context exists for
//! the bus to propagate even when logs are quiet and nothing is exported; when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP (HTTP/protobuf)
//! in batches. Call [`TelemetryGuard::shutdown`] before exit to flush them.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Default log filter: our own crates at info, noisy dependencies at warn.
const DEFAULT_LOG_FILTER: &str = "info,rdkafka=warn,sqlx=warn,hyper=warn,tower_http=info";
/// Default trace filter. The exporter's own HTTP client is left out, or exporting
/// would make spans of its own.
const DEFAULT_TRACE_FILTER: &str =
    "info,rdkafka=off,sqlx=off,hyper=off,hyper_util=off,h2=off,reqwest=off,opentelemetry=off";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid filter in {0}")]
    Filter(String),
    #[error("could not build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts down trace export when asked (not on drop: shutting down blocks).
#[derive(Debug)]
#[must_use = "call shutdown() before exit so buffered spans are exported"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            // Logging may already be gone at this point; stderr is all that is left.
            eprintln!("linkwork: trace export shutdown failed: {error}");
        }
    }
}

/// Installs logging and tracing for the process. `service` names the service in
/// exported spans (`service.name`).
pub fn init(service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let log_filter = filter_from("RUST_LOG", DEFAULT_LOG_FILTER)?;
    let trace_filter = filter_from("LINKWORK_TRACE_FILTER", DEFAULT_TRACE_FILTER)?;
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .is_ok_and(|endpoint| !endpoint.trim().is_empty());
    let provider = tracer_provider(service, exporting)?;
    let tracer = provider.tracer("linkwork");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let json = match std::env::var("LINKWORK_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(log_filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(trace_filter),
        )
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if exporting {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Ok(TelemetryGuard {
        provider,
        exporting,
    })
}

fn filter_from(variable: &str, default: &str) -> Result<EnvFilter, TelemetryError> {
    match std::env::var(variable) {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)
            .map_err(|error| TelemetryError::Filter(format!("{variable}: {error}"))),
        _ => Ok(EnvFilter::new(default)),
    }
}

fn tracer_provider(service: &str, exporting: bool) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    if !exporting {
        return Ok(builder.build());
    }
    // Endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    Ok(builder.with_batch_exporter(exporter).build())
}
