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

/// The statements of the read models' DDL, comments removed: those that make the
/// tables (with their keys) and the view, and the secondary indexes (`CREATE INDEX`),
/// which a bulk load builds once the rows are in. Together they are the whole DDL.
pub fn ddl_statements() -> (Vec<String>, Vec<String>) {
    let uncommented: String = READ_MODELS_SQL
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let (mut tables, mut indexes) = (Vec::new(), Vec::new());
    for statement in uncommented.split(';') {
        let statement = statement.trim();
        if statement.is_empty() {
            continue;
        }
        let upper = statement.to_ascii_uppercase();
        if upper.starts_with("CREATE INDEX") || upper.starts_with("CREATE UNIQUE INDEX") {
            indexes.push(statement.to_owned());
        } else {
            tables.push(statement.to_owned());
        }
    }
    (tables, indexes)
}

/// The tables of `schema`.
async fn tables_of(
    connection: &mut PgConnection,
    schema: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(connection)
    .await
}

/// What a bulk load builds at its end: the statements that give the tables the
/// indexes and unique constraints they were loaded without.
#[derive(Debug, Clone, Default)]
pub struct Deferred {
    statements: Vec<String>,
}

/// Creates `schema` (replacing any schema of that name) for a bulk load: the tables
/// with their primary keys only (no secondary index, no other unique constraint) and
/// autovacuum off. [`finish_load`], given what this returns, makes it what
/// [`create_schema`] makes.
pub async fn create_schema_for_load(
    connection: &mut PgConnection,
    schema: &str,
) -> Result<Deferred, sqlx::Error> {
    let quoted = quote_ident(schema);
    let create = format!("DROP SCHEMA IF EXISTS {quoted} CASCADE; CREATE SCHEMA {quoted};");
    sqlx::Executor::execute(&mut *connection, create.as_str()).await?;
    let (tables, indexes) = ddl_statements();
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(&quoted)
        .execute(&mut *connection)
        .await?;
    for statement in &tables {
        sqlx::Executor::execute(&mut *connection, statement.as_str()).await?;
    }
    sqlx::query("SELECT set_config('search_path', 'public', true)")
        .execute(&mut *connection)
        .await?;
    let mut deferred = Deferred::default();
    // Unique constraints other than primary keys, as the DDL made them.
    let uniques: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::TEXT, c.conname::TEXT, pg_get_constraintdef(c.oid)
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = $1 AND c.contype = 'u' ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(&mut *connection)
    .await?;
    for (table, name, definition) in uniques {
        let name = quote_ident(&name);
        let drop = format!("ALTER TABLE {table} DROP CONSTRAINT {name}");
        sqlx::Executor::execute(&mut *connection, drop.as_str()).await?;
        deferred.statements.push(format!(
            "ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
        ));
    }
    deferred.statements.extend(indexes);
    // Vacuuming tables that are only being appended to, while they are, is wasted work.
    for table in tables_of(connection, schema).await? {
        let alter = format!(
            "ALTER TABLE {quoted}.{} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)",
            quote_ident(&table)
        );
        sqlx::Executor::execute(&mut *connection, alter.as_str()).await?;
    }
    Ok(deferred)
}

/// Ends the bulk load of `schema`: builds the unique constraints and indexes it was
/// loaded without, gives autovacuum the tables back and gathers the planner's
/// statistics.
pub async fn finish_load(
    connection: &mut PgConnection,
    schema: &str,
    deferred: &Deferred,
) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(schema);
    // Index builds sort in memory up to this, rather than spilling to disk.
    sqlx::query(
        "SELECT set_config('search_path', $1, true),
                set_config('maintenance_work_mem', '64MB', true)",
    )
    .bind(&quoted)
    .execute(&mut *connection)
    .await?;
    for statement in &deferred.statements {
        sqlx::Executor::execute(&mut *connection, statement.as_str()).await?;
    }
    sqlx::query("SELECT set_config('search_path', 'public', true)")
        .execute(&mut *connection)
        .await?;
    for table in tables_of(connection, schema).await? {
        let table = format!("{quoted}.{}", quote_ident(&table));
        let reset = format!(
            "ALTER TABLE {table} RESET (autovacuum_enabled, toast.autovacuum_enabled); ANALYZE {table};"
        );
        sqlx::Executor::execute(&mut *connection, reset.as_str()).await?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ddl_splits_into_tables_and_the_indexes_a_load_builds_after() {
        let (tables, indexes) = ddl_statements();
        let count = |prefix: &str, statements: &[String]| {
            statements
                .iter()
                .filter(|statement| statement.starts_with(prefix))
                .count()
        };
        // Every statement is kept, and every one is a CREATE.
        assert!(tables
            .iter()
            .chain(&indexes)
            .all(|statement| statement.starts_with("CREATE ")));
        let in_ddl = |prefix: &str| {
            READ_MODELS_SQL
                .lines()
                .filter(|line| line.starts_with(prefix))
                .count()
        };
        assert_eq!(count("CREATE TABLE", &tables), in_ddl("CREATE TABLE"));
        assert_eq!(count("CREATE VIEW", &tables), in_ddl("CREATE VIEW"));
        assert_eq!(
            indexes.len(),
            in_ddl("CREATE INDEX") + in_ddl("CREATE UNIQUE INDEX")
        );
        assert_eq!(tables.len(), in_ddl("CREATE TABLE") + in_ddl("CREATE VIEW"));
        assert!(indexes.iter().all(|index| !index.contains("--")));
        assert!(!indexes.is_empty());
    }
}
