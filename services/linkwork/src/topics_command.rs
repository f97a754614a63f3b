//! `linkwork topics apply`.

use std::path::Path;

use anyhow::Context;
use linkwork_bus::topics::{self, TopicsFile};
use linkwork_domain::ProviderId;

use crate::settings::Settings;

/// The topics.yaml this binary was built with, for when no file is given.
pub const BUILT_IN: &str = include_str!("../../../topics.yaml");

pub fn load(file: Option<&Path>) -> anyhow::Result<TopicsFile> {
    match file {
        Some(path) => Ok(TopicsFile::load(path)?),
        None => Ok(TopicsFile::parse(BUILT_IN).context("the built-in topics.yaml")?),
    }
}

/// Applies the declaration and returns the report to print.
pub async fn apply(
    settings: &Settings,
    file: Option<&Path>,
    providers: &[String],
) -> anyhow::Result<String> {
    let declaration = load(file)?;
    let providers = providers
        .iter()
        .map(|id| ProviderId::parse(id))
        .collect::<Result<Vec<_>, _>>()?;
    let report = topics::apply(settings.kafka()?, &declaration, &providers).await?;
    Ok(report.to_string())
}
