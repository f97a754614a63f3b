//! Integration tests against the local stack: the real broker and real Postgres.

// Tests and their helpers panic on failure, with the failing value in the message.
#![allow(clippy::unwrap_used)]

mod broker_killed;
mod consumer;
mod helpers;
mod metrics;
mod outbox;
mod partitioner;
mod projector;
mod provider_loop;
mod router;
mod topics;
mod tracing_context;
