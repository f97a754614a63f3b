//! `linkwork`: parse the command line, set up telemetry, run, flush, exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use linkwork::demo::DemoOptions;
use linkwork::settings::Settings;
use tracing::Instrument;

/// linkwork: social-prescribing referrals from GPs, hospitals, the council and ASC to
/// community providers, and outcomes back.
#[derive(Debug, Parser)]
#[command(name = "linkwork", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kafka topics as declared in topics.yaml.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Run the pipeline end to end on synthetic data and print a summary.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create missing topics and add declared partitions; never deletes. Idempotent.
    Apply {
        /// A topics.yaml to apply instead of the one built into this binary.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Provider ids whose queue topics (provider.<id>.referrals) to create.
        #[arg(long = "provider", value_name = "ID")]
        providers: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Print the summary and exit instead of serving until Ctrl-C.
    #[arg(long, env = "NO_WAIT", value_parser = clap::builder::FalseyValueParser::new())]
    no_wait: bool,
    /// Seed of the synthetic data: the same seed gives the same borough.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match linkwork_telemetry::init("linkwork") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("linkwork: {error}");
            return ExitCode::FAILURE;
        }
    };
    let command = match &cli.command {
        Command::Topics { .. } => "topics",
        Command::Demo(_) => "demo",
    };
    let span = tracing::info_span!("linkwork.command", command);
    let outcome = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli).instrument(span)),
        Err(error) => Err(error.into()),
    };
    // After the runtime is gone: flushing blocks.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linkwork: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let shutdown = linkwork::shutdown::on_signal();
    match cli.command {
        Command::Topics {
            action: TopicsAction::Apply { file, providers },
        } => {
            let report =
                linkwork::topics_command::apply(&settings, file.as_deref(), &providers).await?;
            println!("{report}");
            Ok(())
        }
        Command::Demo(args) => {
            let options = DemoOptions {
                seed: args.seed,
                no_wait: args.no_wait,
            };
            linkwork::demo::run(&settings, options, shutdown).await
        }
    }
}
