//! `linkwork`: parse the command line, set up telemetry, run, flush, exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use linkwork::commands;
use linkwork::settings::Settings;

/// mimalloc rather than glibc's allocator: the services allocate and free many small
/// JSON trees across threads (a quarter of ingest's profile is in the allocator), the
/// case mimalloc is built for. Measured against glibc (BENCHMARKS.md, Memory): faster
/// under load, at the cost of a higher peak resident size. Built without transparent huge
/// pages (`no_thp`): with them every arena chunk it touched became a zeroed 2 MiB page,
/// a fifth of the router's CPU under load and 100 MiB of its resident size.
///
/// The `system-allocator` feature builds with glibc's instead, for heap profilers that
/// see only it (`heaptrack`; BENCHMARKS.md, "Where the time goes").
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run a service until SIGTERM or Ctrl-C.
    Serve {
        #[arg(value_enum)]
        service: linkwork::serve::Service,
    },
    /// Rebuild every read model from offset 0 of referral.events into fresh tables,
    /// with a progress bar, then swap them in (a running projector carries on).
    Replay,
    /// Write an evaluation summary (Markdown and HTML) of the call log, referrals and
    /// outcomes between two dates.
    Report(ReportArgs),
    /// Erase a person (crypto-shredding): destroy their data key, so nothing sealed for
    /// them opens again, and tell the read models, providers and referrer.
    Erase(EraseArgs),
    /// Print a development token (needs LINKWORK_AUTH_DEV_SECRET).
    DevToken(DevTokenArgs),
    /// Adult Social Care call log.
    Asc {
        #[command(subcommand)]
        action: AscAction,
    },
    /// The provider directory the router decides with (versioned in Postgres).
    Directory {
        #[command(subcommand)]
        action: DirectoryAction,
    },
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// First day (YYYY-MM-DD): the call log's baseline and the start of the period.
    #[arg(long)]
    from: chrono::NaiveDate,
    /// Last day (YYYY-MM-DD), included.
    #[arg(long)]
    to: chrono::NaiveDate,
    /// Where to write the two files.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("person").required(true).multiple(false)))]
struct EraseArgs {
    /// The person's NHS number (ten digits), or `-` to read it from standard input
    /// (out of the process list and the shell's history).
    #[arg(long, group = "person")]
    nhs_number: Option<String>,
    /// One of the person's referrals (for a person without an NHS number).
    #[arg(long, group = "person")]
    referral: Option<String>,
    /// Who asked for it, for the erasure record and the event (an administrator's
    /// client id).
    #[arg(long, default_value = "linkwork-cli")]
    by: String,
}

#[derive(Debug, Subcommand)]
enum DirectoryAction {
    /// Store a YAML directory as the newest version (see directory.example.yaml) and
    /// create its providers' queue topics. Unchanged content adds no version.
    Apply {
        /// The YAML file.
        file: PathBuf,
    },
    /// Import Open Referral UK JSON (a service, an array, or an API page) into the
    /// newest directory, reporting every gap ORUK leaves.
    Import {
        /// The ORUK JSON file.
        file: PathBuf,
        /// Area for the imported services: a postcode district (LW1), sector (LW1 4)
        /// or a place code of the directory (repeatable).
        #[arg(long = "area")]
        areas: Vec<String>,
        /// Maximum active caseload (ORUK has no such field).
        #[arg(long, default_value_t = 20)]
        capacity: u32,
        /// Working days to accept before escalation.
        #[arg(long, default_value_t = 5)]
        accept_within: u32,
        /// The services take self-referrals.
        #[arg(long)]
        self_referrals: bool,
    },
    /// Print the newest version.
    Show,
}

#[derive(Debug, Args)]
struct DevTokenArgs {
    /// source, provider, data or admin.
    #[arg(long)]
    role: linkwork_auth::Role,
    /// The client id: gp:A81001, hospital:RVY, contact-centre, asc, self, org:<name>
    /// for a source; the directory id for a provider.
    #[arg(long)]
    client: String,
    /// Scopes to grant instead of the role's defaults (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Debug, Subcommand)]
enum AscAction {
    /// Import a call-log export (CSV: case_id,opened_at,closed_at,closure_reason).
    Import {
        /// The CSV file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create missing topics and add declared partitions; never deletes. Idempotent.
    /// Reports configuration drift without changing it; refuses (and exits non-zero)
    /// to add partitions to a topic ordered by key, after applying the rest.
    Apply {
        /// A topics.yaml to apply instead of the one built into this binary.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Provider ids whose queue topics (provider.<id>.referrals) to create, besides
        /// those of the stored directory (when LINKWORK_DATABASE_URL is set).
        #[arg(long = "provider", value_name = "ID")]
        providers: Vec<String>,
        /// Referrers (gp:<ODS>, hospital:<ODS>, contact-centre, asc, self, org:<name>)
        /// whose outcomes topics (referrer.<source>.outcomes) to create, besides every
        /// referrer with a projected referral (when LINKWORK_DATABASE_URL is set).
        #[arg(long = "referrer", value_name = "SOURCE")]
        referrers: Vec<String>,
    },
}

fn main() -> ExitCode {
    linkwork::memory::settle();
    let cli = Cli::parse();
    let command = match &cli.command {
        Command::Topics { .. } => "topics",
        Command::Serve { .. } => "serve",
        Command::Replay => "replay",
        Command::Report(_) => "report",
        Command::Erase(_) => "erase",
        Command::DevToken(_) => "dev-token",
        Command::Asc { .. } => "asc",
        Command::Directory { .. } => "directory",
    };
    linkwork::process::main("linkwork", command, || run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let shutdown = linkwork::shutdown::on_signal();
    match cli.command {
        Command::Topics {
            action:
                TopicsAction::Apply {
                    file,
                    providers,
                    referrers,
                },
        } => commands::topics_apply(&settings, file.as_deref(), &providers, &referrers).await,
        Command::Serve { service } => linkwork::serve::run(&settings, service, shutdown).await,
        Command::Replay => commands::replay(&settings).await,
        Command::Report(args) => commands::report(&settings, args.from, args.to, &args.out).await,
        Command::Erase(args) => {
            commands::erase(
                &settings,
                args.nhs_number.as_deref(),
                args.referral.as_deref(),
                &args.by,
            )
            .await
        }
        Command::DevToken(args) => {
            commands::dev_token(args.role, &args.client, &args.scopes, args.ttl)
        }
        Command::Directory { action } => {
            let pool = linkwork_store::connect(&settings.database()?).await?;
            linkwork_store::migrate(&pool).await?;
            linkwork_router::migrate(&pool).await?;
            let report = match action {
                DirectoryAction::Apply { file } => linkwork::directory_command::apply_file(
                    &pool,
                    settings.kafka()?.clone(),
                    &settings.names,
                    &file,
                )
                .await?
                .to_string(),
                DirectoryAction::Import {
                    file,
                    areas,
                    capacity,
                    accept_within,
                    self_referrals,
                } => {
                    let defaults = linkwork_router::directory::oruk::ImportDefaults {
                        capacity,
                        accept_within_working_days: accept_within,
                        areas,
                        accepts_self_referrals: self_referrals,
                    };
                    linkwork::directory_command::import_oruk(
                        &pool,
                        settings.kafka()?.clone(),
                        &settings.names,
                        &file,
                        &defaults,
                    )
                    .await?
                }
                DirectoryAction::Show => linkwork::directory_command::show(&pool).await?,
            };
            println!("{report}");
            Ok(())
        }
        Command::Asc {
            action: AscAction::Import { file },
        } => commands::asc_import(&settings, &file).await,
    }
}
