//! `linkwork-demo`: the pipeline end to end on the synthetic borough of Linkwick,
//! configured from the same environment as `linkwork` (`make demo` sets it up).

use std::process::ExitCode;

use clap::Parser;
use linkwork::settings::Settings;
use linkwork_demo::DemoOptions;

/// Runs every linkwork service in this process on a synthetic borough, drives referrals
/// and providers' answers through the real interfaces, and prints a summary.
#[derive(Debug, Parser)]
#[command(name = "linkwork-demo", version, about)]
struct DemoArgs {
    /// Print the summary and exit instead of serving until Ctrl-C.
    #[arg(long, env = "NO_WAIT", value_parser = clap::builder::FalseyValueParser::new())]
    no_wait: bool,
    /// Seed of the synthetic data: the same seed gives the same borough.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// People in the borough (about one referral each).
    #[arg(long, default_value_t = 600)]
    people: usize,
    /// Days over which referrals arrive (the story runs 120 days more).
    #[arg(long, default_value_t = 500)]
    days: u32,
    /// Real milliseconds per borough day.
    #[arg(long, default_value_t = 150)]
    day_millis: u64,
}

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    linkwork::process::main("linkwork-demo", "demo", || run(args))
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let shutdown = linkwork::shutdown::on_signal();
    let options = DemoOptions {
        seed: args.seed,
        no_wait: args.no_wait,
        people: args.people,
        days: args.days,
        day_millis: args.day_millis,
    };
    linkwork_demo::run(&settings, options, shutdown).await
}
