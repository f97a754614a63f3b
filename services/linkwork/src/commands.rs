//! The one-shot commands of the `linkwork` binary (everything but `serve` and `demo`):
//! each connects to what it needs, does its work and says what it did.

use std::path::Path;

use anyhow::Context;
use chrono::NaiveDate;

use crate::settings::Settings;

/// `linkwork topics apply`: applies the declaration and prints the report. Refusals
/// (partitions a topic ordered by key must not gain) make the command fail after the
/// rest was applied.
pub async fn topics_apply(
    settings: &Settings,
    file: Option<&Path>,
    providers: &[String],
    referrers: &[String],
) -> anyhow::Result<()> {
    let report = crate::topics_command::apply_report(settings, file, providers, referrers).await?;
    println!("{report}");
    if report.refused.is_empty() {
        return Ok(());
    }
    let refusals: Vec<String> = report.refused.iter().map(ToString::to_string).collect();
    anyhow::bail!(
        "refused to add partitions to {} topic(s) ordered by key (everything else was applied):\n{}",
        refusals.len(),
        refusals.join("\n")
    )
}

/// `linkwork replay`: rebuilds every read model from offset 0 beside the live ones and
/// swaps them in.
pub async fn replay(settings: &Settings) -> anyhow::Result<()> {
    let pool = linkwork_store::connect(&settings.database()?).await?;
    linkwork_store::migrate(&pool).await?;
    linkwork_projector::migrate(&pool).await?;
    let config = crate::serve::projector_config(settings)?;
    let report =
        linkwork_projector::replay::replay(&pool, settings.kafka()?, &config, true).await?;
    println!(
        "replayed {} events into {} referrals in {:.1}s ({:.0} events/s); the rebuilt read models are live",
        report.events,
        report.referrals,
        report.elapsed.as_secs_f64(),
        report.events as f64 / report.elapsed.as_secs_f64().max(0.001),
    );
    Ok(())
}

/// `linkwork erase`: erases the person named by NHS number or by one of their
/// referrals, then publishes the `ReferralErased` events at once (a running ingest's
/// relay would too, within a second).
pub async fn erase(
    settings: &Settings,
    nhs_number: Option<&str>,
    referral: Option<&str>,
    by: &str,
) -> anyhow::Result<()> {
    use linkwork_ingest::erasure::{erase, ErasureTarget};
    // `-` reads the number from standard input, so it stays out of the process list
    // and the shell's history.
    let from_stdin;
    let nhs_number = match nhs_number {
        Some("-") => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the NHS number from standard input")?;
            from_stdin = line.trim().to_owned();
            Some(from_stdin.as_str())
        }
        other => other,
    };
    let target = match (nhs_number, referral) {
        (Some(number), None) => {
            ErasureTarget::NhsNumber(linkwork_domain::NhsNumber::parse(number).map_err(
                |error| anyhow::anyhow!("--nhs-number is not a valid NHS number: {error}"),
            )?)
        }
        (None, Some(id)) => ErasureTarget::Referral(
            id.parse()
                .map_err(|_| anyhow::anyhow!("--referral {id:?} is not a referral id"))?,
        ),
        _ => anyhow::bail!("name the person by --nhs-number or by --referral, not both"),
    };
    let by = linkwork_domain::Actor::parse(&format!("admin:{by}"))
        .map_err(|error| anyhow::anyhow!("--by {by:?}: {error}"))?;
    let vault = settings.vault()?;
    let kafka = settings.kafka()?.clone();
    let pool = linkwork_store::connect(&settings.database()?).await?;
    linkwork_store::migrate(&pool).await?;
    linkwork_ingest::migrate(&pool).await?;
    let events = settings.names.topic(linkwork_bus::topics::REFERRAL_EVENTS);
    let erasure = erase(&pool, &vault, &events, &target, by).await?;
    let mut relay = linkwork_bus::relay::OutboxRelay::new(
        pool.clone(),
        &kafka,
        linkwork_bus::relay::RelayConfig::default(),
    )?;
    // Rounds until nothing is pending (other rows of the outbox go out with these).
    for _ in 0..100 {
        if relay.relay_once().await? == 0 {
            break;
        }
    }
    println!(
        "erased: key {}, {} referral(s) redacted{}",
        if erasure.key_destroyed {
            "destroyed"
        } else {
            "already gone (erased before, or never made)"
        },
        erasure.referrals.len(),
        erasure
            .referrals
            .iter()
            .map(|id| format!("\n  {id}"))
            .collect::<String>()
    );
    Ok(())
}

/// `linkwork report`: the evaluation report for a period, as Markdown and HTML.
pub async fn report(
    settings: &Settings,
    from: NaiveDate,
    to: NaiveDate,
    out: &Path,
) -> anyhow::Result<()> {
    if from > to {
        anyhow::bail!("--from {from} is after --to {to}");
    }
    let pool = linkwork_store::connect(&settings.database()?).await?;
    linkwork_store::migrate(&pool).await?;
    linkwork_metrics::migrate(&pool).await?;
    let period = linkwork_metrics::referrals::Period {
        start: from,
        end: to,
    };
    let disclosure = linkwork_metrics::disclosure::Disclosure {
        threshold: settings.small_number_threshold,
    };
    let snapshot = linkwork_metrics::http::snapshot(&pool, period, disclosure).await?;
    let (markdown, html) = linkwork_metrics::report::write(&snapshot, out)?;
    let log = &snapshot.call_log;
    println!(
        "open ASC cases {} -> {} ({} fewer), {} referrals, {} completed",
        log.open_at_baseline,
        log.open_at_end,
        log.reduction,
        snapshot.referrals.referrals,
        snapshot.referrals.completions
    );
    println!("{}\n{}", markdown.display(), html.display());
    Ok(())
}

/// `linkwork dev-token`: a development token, refused here if the server would refuse
/// it.
pub fn dev_token(
    role: linkwork_auth::Role,
    client: &str,
    scopes: &[String],
    ttl: u64,
) -> anyhow::Result<()> {
    let secret = std::env::var("LINKWORK_AUTH_DEV_SECRET")
        .map_err(|_| anyhow::anyhow!("LINKWORK_AUTH_DEV_SECRET is not set"))?;
    let secret = secrecy::SecretString::from(secret);
    linkwork_auth::Verifier::dev(secret.clone())?;
    let scopes: Vec<&str> = if scopes.is_empty() {
        role.default_scopes(client)
    } else {
        scopes.iter().map(String::as_str).collect()
    };
    let token = linkwork_auth::dev_token(&secret, role, client, &scopes, ttl)?;
    let verified = linkwork_auth::Verifier::dev(secret)?.verify(&token)?;
    tracing::debug!(client = %verified.client, "token minted");
    println!("{token}");
    Ok(())
}

/// `linkwork asc import`: an ASC call-log export (CSV) onto `asc.call-log`.
pub async fn asc_import(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let pool = linkwork_store::connect(&settings.database()?).await?;
    linkwork_store::migrate(&pool).await?;
    linkwork_ingest::migrate(&pool).await?;
    let producer = linkwork_bus::Producer::new(settings.kafka()?)?;
    let report = linkwork_ingest::call_log::import(
        &pool,
        &producer,
        &settings.names.topic(linkwork_bus::topics::ASC_CALL_LOG),
        &bytes,
    )
    .await?;
    println!("{report}");
    Ok(())
}
