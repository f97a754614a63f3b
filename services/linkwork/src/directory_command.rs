//! `linkwork directory apply|import|show`: the provider directory's versions.

use std::path::Path;

use anyhow::Context;
use linkwork_bus::KafkaSettings;
use linkwork_router::directory::oruk::{self, ImportDefaults};
use linkwork_router::directory::{self, DirectoryDocument, Stored};
use linkwork_store::sqlx::PgPool;

/// Stores the YAML directory at `path` as the newest version (unless unchanged) and
/// creates its providers' queue topics.
pub async fn apply_file(
    pool: &PgPool,
    kafka: KafkaSettings,
    names: &linkwork_bus::Names,
    path: &Path,
) -> anyhow::Result<Stored> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let document =
        DirectoryDocument::parse(&text).with_context(|| format!("{}", path.display()))?;
    store(
        pool,
        kafka,
        names,
        &document,
        &format!("applied from {}", path.display()),
    )
    .await
}

/// Imports Open Referral UK JSON into the newest directory and stores the result.
/// Returns the report to print: each service, what it became, and every guess made.
pub async fn import_oruk(
    pool: &PgPool,
    kafka: KafkaSettings,
    names: &linkwork_bus::Names,
    path: &Path,
    defaults: &ImportDefaults,
) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let imported = oruk::import(&json, defaults)?;
    let mut connection = pool.acquire().await?;
    let mut document = directory::load_current(&mut connection)
        .await?
        .map(|stored| stored.document)
        .unwrap_or(DirectoryDocument {
            bank_holidays: Vec::new(),
            places: Default::default(),
            providers: Vec::new(),
        });
    drop(connection);
    let merged = oruk::merge(&mut document, imported);
    let stored = store(
        pool,
        kafka,
        names,
        &document,
        &format!("Open Referral UK import of {}", path.display()),
    )
    .await?;
    let mut report = String::new();
    for each in &merged {
        report.push_str(&format!(
            "imported {} as {} ({} service)\n",
            each.provider.name,
            each.provider.id,
            each.provider.kind.code()
        ));
        for note in &each.notes {
            report.push_str(&format!("  - {note}\n"));
        }
    }
    report.push_str(&stored.to_string());
    Ok(report)
}

/// The newest version, one line per provider.
pub async fn show(pool: &PgPool) -> anyhow::Result<String> {
    let mut connection = pool.acquire().await?;
    let Some(stored) = directory::load_current(&mut connection).await? else {
        return Ok("no directory stored yet; use `linkwork directory apply FILE`".into());
    };
    let mut report = format!("directory {}\n", stored.label());
    for provider in &stored.document.providers {
        let needs: Vec<&str> = provider.needs.iter().map(|need| need.code()).collect();
        report.push_str(&format!(
            "  {} ({}, {}): capacity {}, {} working days to accept, needs {}{}\n",
            provider.id,
            provider.name,
            provider.kind.code(),
            provider.capacity,
            provider.accept_within_working_days,
            needs.join(", "),
            if provider.active { "" } else { " [inactive]" }
        ));
    }
    Ok(report.trim_end().to_owned())
}

async fn store(
    pool: &PgPool,
    kafka: KafkaSettings,
    names: &linkwork_bus::Names,
    document: &DirectoryDocument,
    note: &str,
) -> anyhow::Result<Stored> {
    let mut transaction = pool.begin().await?;
    let stored = directory::store(&mut transaction, document, note).await?;
    transaction.commit().await?;
    // The queue topics exist before the router can put anything on them.
    let declaration = names.declaration(&crate::topics_command::load(None)?);
    let providers = document.provider_ids();
    linkwork_bus::topics::apply(
        &kafka,
        &declaration,
        &linkwork_bus::topics::Members::providers(&providers),
    )
    .await
    .context("creating the providers' queue topics")?;
    Ok(stored)
}
