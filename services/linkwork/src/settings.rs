//! Typed settings from the environment (DESIGN.md's variables).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use linkwork_bus::KafkaSettings;
use linkwork_store::DatabaseSettings;

/// Everything the binary reads from its environment. Secrets stay wrapped.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaSettings,
    database_url: Option<String>,
    pub http_addr: SocketAddr,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let kafka = KafkaSettings::from_env()?;
        let http_addr = std::env::var("LINKWORK_HTTP_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:8080".into())
            .parse()
            .context("LINKWORK_HTTP_ADDR is not a socket address (host:port)")?;
        Ok(Self {
            kafka,
            database_url: std::env::var("LINKWORK_DATABASE_URL")
                .ok()
                .filter(|url| !url.trim().is_empty()),
            http_addr,
        })
    }

    /// The database URL with any password replaced, for telling people where to look.
    pub fn database_url_for_display(&self) -> Option<String> {
        self.database_url.as_deref().map(redact_password)
    }

    /// The database settings; an error naming the variable when it is not set.
    pub fn database(&self) -> anyhow::Result<DatabaseSettings> {
        match &self.database_url {
            Some(url) => Ok(DatabaseSettings::new(url.clone())),
            None => bail!("LINKWORK_DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/linkwork)"),
        }
    }
}

/// `postgres://user:secret@host/db` becomes `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_display_form() {
        assert_eq!(
            redact_password("postgres://linkwork:s3cr@t@db.internal:5432/linkwork"),
            "postgres://linkwork:***@db.internal:5432/linkwork"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1:5432/linkwork_demo"),
            "postgres://postgres@127.0.0.1:5432/linkwork_demo"
        );
        assert_eq!(redact_password("not a url"), "not a url");
    }
}
