//! `linkwork topics apply`.

use std::path::Path;

use anyhow::Context;
use linkwork_bus::topics::{self, TopicsFile};
use linkwork_domain::{ProviderId, Source};

use crate::settings::Settings;

/// The topics.yaml this binary was built with, for when no file is given.
pub const BUILT_IN: &str = include_str!("../../../topics.yaml");

pub fn load(file: Option<&Path>) -> anyhow::Result<TopicsFile> {
    match file {
        Some(path) => Ok(TopicsFile::load(path)?),
        None => Ok(TopicsFile::parse(BUILT_IN).context("the built-in topics.yaml")?),
    }
}

/// Applies the declaration and returns the report to print. Refusals are in the report,
/// not an error: the rest was applied.
pub async fn apply(
    settings: &Settings,
    file: Option<&Path>,
    providers: &[String],
    referrers: &[String],
) -> anyhow::Result<String> {
    Ok(apply_report(settings, file, providers, referrers)
        .await?
        .to_string())
}

/// Applies the declaration, for `linkwork topics apply`: the report, whose refusals
/// make the command fail.
pub async fn apply_report(
    settings: &Settings,
    file: Option<&Path>,
    providers: &[String],
    referrers: &[String],
) -> anyhow::Result<topics::ApplyReport> {
    let declaration = load(file)?;
    let mut providers = providers
        .iter()
        .map(|id| ProviderId::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    for id in directory_providers(settings).await? {
        if !providers.contains(&id) {
            providers.push(id);
        }
    }
    let mut referrers = referrers
        .iter()
        .map(|id| Source::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    for source in projected_referrers(settings).await? {
        if !referrers.contains(&source) {
            referrers.push(source);
        }
    }
    let declaration = settings.names.declaration(&declaration);
    Ok(topics::apply(
        settings.kafka()?,
        &declaration,
        &topics::Members {
            providers: &providers,
            referrers: &referrers,
        },
    )
    .await?)
}

/// Every referrer with a projected referral: the registry of referrers, each of which
/// has its outcomes topic.
async fn projected_referrers(settings: &Settings) -> anyhow::Result<Vec<Source>> {
    let Ok(database) = settings.database() else {
        return Ok(Vec::new());
    };
    let pool = linkwork_store::connect(&database)
        .await
        .context("connecting to LINKWORK_DATABASE_URL for the referrers")?;
    let mut connection = pool.acquire().await?;
    match linkwork_projection::aggregates::referrers(&mut connection).await {
        Ok(referrers) => Ok(referrers),
        // No read models yet: nobody has referred.
        Err(linkwork_store::sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("42P01" | "3F000")) =>
        {
            Ok(Vec::new())
        }
        Err(error) => Err(error.into()),
    }
}

/// The providers of the stored directory, when a database is configured and holds one.
async fn directory_providers(settings: &Settings) -> anyhow::Result<Vec<ProviderId>> {
    let Ok(database) = settings.database() else {
        return Ok(Vec::new());
    };
    let pool = linkwork_store::connect(&database)
        .await
        .context("connecting to LINKWORK_DATABASE_URL for the provider directory")?;
    let mut connection = pool.acquire().await?;
    match linkwork_router::directory::load_current(&mut connection).await {
        Ok(stored) => Ok(stored
            .map(|stored| stored.document.provider_ids())
            .unwrap_or_default()),
        // No router tables yet: no directory stored.
        Err(linkwork_store::sqlx::Error::Database(error))
            if error.code().as_deref() == Some("42P01") =>
        {
            Ok(Vec::new())
        }
        Err(error) => Err(error.into()),
    }
}
