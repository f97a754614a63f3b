//! linkwork's read side: everything about the read models except building them.
//!
//! The projector (`services/projector`) folds `referral.events` into these tables and
//! is their only writer, through [`model`]. The HTTP API reads them through [`read`]
//! and renders them with [`render`]; the provider command side loads current state
//! through [`current`], with the events it has published but the projector has not
//! applied yet laid on top; metrics reads aggregates through [`aggregates`]. No service
//! names a table of this crate in its own SQL.
//!
//! The read models live in their own Postgres schema ([`LIVE_SCHEMA`]), created from
//! `sql/read_models.sql`. Their DDL is unqualified, so one DDL serves the live schema
//! and the one `linkwork replay` builds beside it before swapping it in. What must
//! survive a swap (the pending overlay, which DDL built the live schema) is in
//! `public`, created by this crate's migrations.

pub mod aggregates;
pub mod copy;
pub mod current;
pub mod model;
pub mod read;
pub mod render;
mod schema;

pub use schema::{
    create_schema, create_schema_for_load, ddl_hash, ddl_statements, ensure_schema, finish_load,
    lock_schema, migrate, migrator, quote_ident, swap_in, Deferred, SchemaError, SchemaState,
    LIVE_SCHEMA, READ_MODELS_SQL,
};

/// Why reading the read models failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The schema or its tables do not exist: the projector has never run against this
    /// database. Callers answer "try again later", not "not found".
    #[error(
        "the read models are not built yet: the projector (`linkwork serve projector`) has not run against this database"
    )]
    NotBuilt,
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] model::CorruptRow),
}

impl From<sqlx::Error> for ReadError {
    fn from(error: sqlx::Error) -> Self {
        // 42P01 undefined table, 3F000 invalid schema.
        let code = error
            .as_database_error()
            .and_then(|database| database.code())
            .map(|code| code.into_owned());
        if matches!(code.as_deref(), Some("42P01" | "3F000")) {
            return ReadError::NotBuilt;
        }
        ReadError::Database(error)
    }
}
