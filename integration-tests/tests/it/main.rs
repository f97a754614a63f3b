//! Integration tests against the local stack: the real broker and real Postgres.

#![expect(
    clippy::unwrap_used,
    reason = "tests and their helpers panic with the failing value"
)]

mod broker_killed;
mod consumer;
mod helpers;
mod metrics;
mod outbox;
mod partitioner;
mod projector;
mod provider_loop;
mod router;
mod store;
mod topics;
mod tracing_context;
mod vault;
