//! The read-model schema: its DDL and version, creating it, and swapping a rebuilt copy
//! in. The schema is taken under one advisory lock, so a projector starting up and a
//! replay swapping never see each other half done.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// The schema holding the live read models.
pub const LIVE_SCHEMA: &str = "projection";

/// The DDL of the read models (table names unqualified; run with `search_path` set).
pub const READ_MODELS_SQL: &str = include_str!("../sql/read_models.sql");

/// This crate's migrations: what lives in `public` and survives a swap.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// The version of the read-model DDL, to tell when a rebuild is needed.
pub fn ddl_hash() -> String {
    let digest = Sha256::digest(READ_MODELS_SQL.as_bytes());
    digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Why the live read models cannot be used as they are.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(
        "the read models in schema {schema} were built by another version of the projector; \
         run `linkwork replay` to rebuild them"
    )]
    Outdated { schema: String },
}

/// What [`ensure_schema`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaState {
    /// Built by this DDL already.
    Current,
    /// Missing, and now created empty: whoever builds it must start from offset 0.
    Created,
}

/// Takes the schema lock for the rest of the caller's transaction.
pub async fn lock_schema(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('linkwork.projection.schema'))")
        .execute(connection)
        .await?;
    Ok(())
}

async fn schema_exists(connection: &mut PgConnection, schema: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(connection)
        .await
}

async fn record_built(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_meta (singleton, ddl_hash, built_at) VALUES (TRUE, $1, now())
         ON CONFLICT (singleton) DO UPDATE SET ddl_hash = EXCLUDED.ddl_hash, built_at = now()",
    )
    .bind(ddl_hash())
    .execute(connection)
    .await?;
    Ok(())
}

/// Creates `schema` with empty read models, replacing any schema of that name.
pub async fn create_schema(connection: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(schema);
    let create = format!(
        "DROP SCHEMA IF EXISTS {quoted} CASCADE; CREATE SCHEMA {quoted}; SET LOCAL search_path TO {quoted};"
    );
    sqlx::Executor::execute(&mut *connection, create.as_str()).await?;
    sqlx::Executor::execute(&mut *connection, READ_MODELS_SQL).await?;
    sqlx::query("SELECT set_config('search_path', 'public', true)")
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Inside the caller's transaction: makes sure the live read models exist and were
/// built by this DDL. A missing schema is created empty (and said so, so the caller
/// can reset its position in the same transaction); one built by another DDL is
/// refused.
pub async fn ensure_schema(
    connection: &mut PgConnection,
    schema: &str,
) -> Result<SchemaState, SchemaError> {
    lock_schema(connection).await?;
    if schema_exists(connection, schema).await? {
        let built: Option<String> =
            sqlx::query_scalar("SELECT ddl_hash FROM projection_meta WHERE singleton")
                .fetch_optional(&mut *connection)
                .await?;
        if built.as_deref() != Some(ddl_hash().as_str()) {
            return Err(SchemaError::Outdated {
                schema: schema.to_owned(),
            });
        }
        return Ok(SchemaState::Current);
    }
    create_schema(connection, schema).await?;
    record_built(connection).await?;
    Ok(SchemaState::Created)
}

/// Inside the caller's transaction, which holds [`lock_schema`]: puts the rebuilt
/// schema in place of the live one and records this DDL as the live one's. The caller
/// moves the builder's position over in the same transaction.
pub async fn swap_in(
    connection: &mut PgConnection,
    live: &str,
    rebuilt: &str,
) -> Result<(), sqlx::Error> {
    // A database that never had read models (rebuilt from the log alone) has no live
    // schema to set aside.
    let live_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(live)
            .fetch_one(&mut *connection)
            .await?;
    let previous = quote_ident(&format!("{live}_previous"));
    let (live, rebuilt) = (quote_ident(live), quote_ident(rebuilt));
    let set_aside = if live_exists {
        format!("ALTER SCHEMA {live} RENAME TO {previous};")
    } else {
        String::new()
    };
    let rename = format!(
        "DROP SCHEMA IF EXISTS {previous} CASCADE;
         {set_aside}
         ALTER SCHEMA {rebuilt} RENAME TO {live};
         DROP SCHEMA IF EXISTS {previous} CASCADE;"
    );
    sqlx::Executor::execute(&mut *connection, rename.as_str()).await?;
    record_built(connection).await
}
