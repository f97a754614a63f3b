//! What the `linkwork` binary's test files share: the binary itself, and the
//! process-test helpers of `linkwork_testkit::process`.

#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary compiles this module and uses a part of it (expect would fail in the binaries that use it all)"
)]

use std::process::Command;

pub use linkwork_testkit::process::*;

/// The binary, pointed at `brokers`, logging warnings only.
pub fn linkwork_on(brokers: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_linkwork"));
    command
        .env("LINKWORK_KAFKA_BROKERS", brokers)
        .env("RUST_LOG", "warn,tower_http=off");
    command
}
