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
    let (stored_providers, stored_referrers) = stored_members(settings).await?;
    let mut providers = providers
        .iter()
        .map(|id| ProviderId::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    for id in stored_providers {
        if !providers.contains(&id) {
            providers.push(id);
        }
    }
    let mut referrers = referrers
        .iter()
        .map(|id| Source::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    for source in stored_referrers {
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

/// Who has a topic of their own, from the database when one is configured: the
/// providers of the stored directory and every referrer with a projected referral (the
/// registry of referrers). Tables not made yet mean nobody yet.
async fn stored_members(settings: &Settings) -> anyhow::Result<(Vec<ProviderId>, Vec<Source>)> {
    let Ok(database) = settings.database() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let pool = linkwork_store::connect(&database)
        .await
        .context("connecting to LINKWORK_DATABASE_URL for the providers and referrers")?;
    let mut connection = pool.acquire().await?;
    let providers =
        none_if_missing(linkwork_router::directory::load_current(&mut connection).await)?
            .flatten()
            .map(|stored| stored.document.provider_ids())
            .unwrap_or_default();
    let referrers =
        none_if_missing(linkwork_projection::aggregates::referrers(&mut connection).await)?
            .unwrap_or_default();
    Ok((providers, referrers))
}

/// `None` when the query met a table or schema not made yet (42P01, 3F000).
fn none_if_missing<T>(result: Result<T, linkwork_store::sqlx::Error>) -> anyhow::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(linkwork_store::sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("42P01" | "3F000")) =>
        {
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}
