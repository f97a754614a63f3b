//! W3C trace context across Kafka: the producing span's context goes into the
//! `traceparent` header, and the consuming span continues it.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` and `tracestate` of `span`, if it belongs to a trace.
pub fn context_of(span: &tracing::Span) -> (Option<String>, Option<String>) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return (None, None);
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let tracestate = carrier
        .remove("tracestate")
        .filter(|state| !state.is_empty());
    (carrier.remove("traceparent"), tracestate)
}

/// The current span's trace context.
pub fn current_context() -> (Option<String>, Option<String>) {
    context_of(&tracing::Span::current())
}

/// Makes `span` a child of the remote span named by `traceparent`. A missing or
/// malformed header leaves the span as the root of a new trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(tracestate) = tracestate {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed; then there is no trace to join.
        let _ = span.set_parent(parent);
    }
}
