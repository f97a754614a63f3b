//! Directory versions in Postgres (`directory_versions`): each change stored as a new
//! numbered version, the newest read back for deciding.

use sqlx::PgConnection;

use super::*;

/// A stored directory version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDirectory {
    pub version: i64,
    pub content_hash: String,
    pub document: DirectoryDocument,
}

impl StoredDirectory {
    /// What decisions record: `v<version>-<first 12 hex digits of the hash>`.
    pub fn label(&self) -> String {
        version_label(self.version, &self.content_hash)
    }
}

pub fn version_label(version: i64, content_hash: &str) -> String {
    format!("v{version}-{}", &content_hash[..content_hash.len().min(12)])
}

/// Whether storing changed anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub directory: StoredDirectory,
    /// False when the document equalled the newest version, which is kept.
    pub created: bool,
}

impl std::fmt::Display for Stored {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.created {
            "stored as"
        } else {
            "unchanged; still"
        };
        write!(
            formatter,
            "directory {verb} {} ({} providers)",
            self.directory.label(),
            self.directory.document.providers.len()
        )
    }
}

/// Stores `document` as the newest version unless it equals the newest already, and
/// makes sure every provider has a caseload row. Takes a lock so two writers number
/// their versions one after the other.
pub async fn store(
    connection: &mut PgConnection,
    document: &DirectoryDocument,
    note: &str,
) -> Result<Stored, sqlx::Error> {
    document
        .validate()
        .map_err(|error| sqlx::Error::Protocol(error.to_string()))?;
    sqlx::query!("LOCK TABLE directory_versions IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *connection)
        .await?;
    let hash = document.content_hash();
    if let Some(current) = load_current(connection).await? {
        if current.content_hash == hash {
            return Ok(Stored {
                directory: current,
                created: false,
            });
        }
    }
    let json = serde_json::to_value(document).unwrap_or_default();
    let version = sqlx::query_scalar!(
        r#"
        INSERT INTO directory_versions (content_hash, document, note)
        VALUES ($1, $2, $3)
        RETURNING version
        "#,
        hash,
        json,
        note,
    )
    .fetch_one(&mut *connection)
    .await?;
    let ids: Vec<String> = document
        .providers
        .iter()
        .map(|provider| provider.id.as_str().to_owned())
        .collect();
    sqlx::query!(
        r#"
        INSERT INTO provider_load (provider_id)
        SELECT * FROM UNNEST($1::TEXT[])
        ON CONFLICT (provider_id) DO NOTHING
        "#,
        &ids,
    )
    .execute(&mut *connection)
    .await?;
    Ok(Stored {
        directory: StoredDirectory {
            version,
            content_hash: hash,
            document: document.clone(),
        },
        created: true,
    })
}

/// The newest version's number, or `None` when no directory was ever stored.
pub async fn current_version(connection: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!("SELECT max(version) FROM directory_versions")
        .fetch_one(connection)
        .await
}

/// The newest version.
pub async fn load_current(
    connection: &mut PgConnection,
) -> Result<Option<StoredDirectory>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT version, content_hash, document
        FROM directory_versions
        ORDER BY version DESC
        LIMIT 1
        "#
    )
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let document: DirectoryDocument = serde_json::from_value(row.document)
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
    Ok(Some(StoredDirectory {
        version: row.version,
        content_hash: row.content_hash,
        document,
    }))
}
