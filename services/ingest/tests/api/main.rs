//! Ingest's API against the local stack: the real service on a random port, a real
//! broker, a fresh database per test.

#![expect(
    clippy::unwrap_used,
    reason = "tests and their helpers panic with the failing value"
)]

mod access;
mod bars;
mod broker_down;
mod bundles;
mod call_log;
mod conformance;
mod helpers;
mod inbound;
mod load;
mod properties;
mod refusals;
mod service_request;
