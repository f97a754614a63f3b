//! Ingest's API against the local stack: the real service on a random port, a real
//! broker, a fresh database per test.

// Tests and their helpers panic on failure, with the failing value in the message.
#![allow(clippy::unwrap_used)]

mod bars;
mod broker_down;
mod bundles;
mod call_log;
mod conformance;
mod helpers;
mod inbound;
mod properties;
mod refusals;
mod service_request;
