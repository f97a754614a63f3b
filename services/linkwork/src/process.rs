//! How a linkwork binary's `main` runs its command: telemetry first, the command in a
//! multi-threaded runtime under a `linkwork.command` span, telemetry flushed after the
//! runtime is gone, and the first error printed with its causes.

use std::future::Future;
use std::process::ExitCode;

use tracing::Instrument;

/// Runs `work` as the command `command` of the binary `binary`; its exit code.
pub fn main<F, Fut>(binary: &'static str, command: &'static str, work: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = match linkwork_telemetry::init(binary) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{binary}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let span = tracing::info_span!("linkwork.command", command);
    let outcome = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work().instrument(span)),
        Err(error) => Err(error.into()),
    };
    // After the runtime is gone: flushing blocks.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: {error:#}");
            ExitCode::FAILURE
        }
    }
}
