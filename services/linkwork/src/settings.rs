//! Typed settings from the environment (DESIGN.md's variables). Each command asks for
//! what it needs, so `dev-token` works without a broker and `topics apply` without a
//! database; a missing variable is named in the error.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use linkwork_bus::KafkaSettings;
use linkwork_store::DatabaseSettings;

/// Everything the binary reads from its environment. Secrets stay wrapped.
#[derive(Debug, Clone)]
pub struct Settings {
    kafka: Option<KafkaSettings>,
    kafka_error: Option<String>,
    /// May hold a password: wrapped, so `Debug` never prints it.
    database_url: Option<secrecy::SecretString>,
    pub http_addr: SocketAddr,
    /// Where `serve` answers `/healthz`, `/readyz` and `/metrics`
    /// (`LINKWORK_ADMIN_ADDR`; port 0 picks a free one).
    pub admin_addr: SocketAddr,
    /// Base of absolute URLs in responses; empty for the listening address.
    pub public_base_url: String,
    /// A provider directory (YAML) the router stores as a new version at start when
    /// it differs from the newest (`LINKWORK_DIRECTORY`).
    pub directory_file: Option<std::path::PathBuf>,
    /// The secret behind data-team pseudonyms (`LINKWORK_PSEUDONYM_KEY`).
    pseudonym_key: Option<secrecy::SecretString>,
    /// The secret that wraps each person's data key and names people in the vault
    /// (`LINKWORK_VAULT_KEY`): what makes erasure possible.
    vault_key: Option<secrecy::SecretString>,
    /// The date the call-log reduction is measured from (`LINKWORK_CALL_LOG_BASELINE`,
    /// YYYY-MM-DD); the first case's day when unset.
    pub call_log_baseline: Option<chrono::NaiveDate>,
    /// How this deployment names its topics and consumer groups
    /// (`LINKWORK_TOPIC_PREFIX`, `LINKWORK_GROUP_PREFIX`).
    pub names: linkwork_bus::Names,
    /// Requests a minute each client identity may make of ingest's HTTP API
    /// (`LINKWORK_REQUESTS_PER_MINUTE`, default 6,000; a tenth of it may come at once).
    pub requests_per_minute: u32,
    /// Published counts below this are suppressed (`LINKWORK_SMALL_NUMBER_THRESHOLD`,
    /// default 5).
    pub small_number_threshold: i64,
    /// The shortest period the metrics are given for
    /// (`LINKWORK_METRICS_MINIMUM_PERIOD_DAYS`, default 28).
    pub minimum_period_days: i64,
    /// The lawful basis on which pseudonymised outcomes go to data teams without
    /// recorded consent (`LINKWORK_EVALUATION_LAWFUL_BASIS`, as the DPIA names it);
    /// unset, only with consent. A national data opt-out keeps a person out of it.
    pub evaluation_lawful_basis: Option<String>,
    /// Postgres connections a process keeps open (`LINKWORK_DATABASE_POOL`, 2-200;
    /// unset, 10). Fewer measured slower at 500 referrals/s (p50 from HTTP 2xx to the
    /// provider queue 65-70 ms with 10 against 104-202 ms with 6 for the router).
    pub database_pool: Option<u32>,
}

/// `LINKWORK_DATABASE_POOL`: a whole number from 2 to 200, or `None` when unset or empty.
fn pool_size(text: Option<String>) -> anyhow::Result<Option<u32>> {
    let Some(text) = text.filter(|text| !text.trim().is_empty()) else {
        return Ok(None);
    };
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|size| (2..=200).contains(size))
        .map(Some)
        .with_context(|| {
            format!("LINKWORK_DATABASE_POOL {text:?} is not a whole number from 2 to 200")
        })
}

/// A whole number of at least 1 from `name`, or `default` when unset or empty.
fn positive(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|value| *value > 0)
            .with_context(|| format!("{name} {text:?} is not a positive whole number")),
        _ => Ok(default),
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let (kafka, kafka_error) = match KafkaSettings::from_env() {
            Ok(kafka) => (Some(kafka), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let http_addr = std::env::var("LINKWORK_HTTP_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:8080".into())
            .parse()
            .context("LINKWORK_HTTP_ADDR is not a socket address (host:port)")?;
        let admin_addr = std::env::var("LINKWORK_ADMIN_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:9464".into())
            .parse()
            .context("LINKWORK_ADMIN_ADDR is not a socket address (host:port)")?;
        let call_log_baseline = match std::env::var("LINKWORK_CALL_LOG_BASELINE") {
            Ok(text) if !text.trim().is_empty() => Some(
                chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").with_context(|| {
                    format!("LINKWORK_CALL_LOG_BASELINE {text:?} is not a date (YYYY-MM-DD)")
                })?,
            ),
            _ => None,
        };
        let requests_per_minute = u32::try_from(positive(
            "LINKWORK_REQUESTS_PER_MINUTE",
            linkwork_ingest::http::HttpConfig::default()
                .requests_per_minute
                .into(),
        )?)
        .context("LINKWORK_REQUESTS_PER_MINUTE is too large")?;
        let small_number_threshold = positive(
            "LINKWORK_SMALL_NUMBER_THRESHOLD",
            linkwork_metrics::disclosure::Disclosure::DEFAULT_THRESHOLD as u64,
        )? as i64;
        let minimum_period_days = positive(
            "LINKWORK_METRICS_MINIMUM_PERIOD_DAYS",
            linkwork_metrics::http::DEFAULT_MINIMUM_PERIOD_DAYS as u64,
        )?
        .min(36_600) as i64;
        let database_pool = pool_size(std::env::var("LINKWORK_DATABASE_POOL").ok())?;
        Ok(Self {
            database_pool,
            evaluation_lawful_basis: std::env::var("LINKWORK_EVALUATION_LAWFUL_BASIS")
                .ok()
                .map(|basis| basis.trim().to_owned())
                .filter(|basis| !basis.is_empty()),
            names: linkwork_bus::Names::from_env(),
            requests_per_minute,
            small_number_threshold: small_number_threshold.min(1_000_000),
            minimum_period_days,
            call_log_baseline,
            kafka,
            kafka_error,
            database_url: std::env::var("LINKWORK_DATABASE_URL")
                .ok()
                .filter(|url| !url.trim().is_empty())
                .map(secrecy::SecretString::from),
            http_addr,
            admin_addr,
            public_base_url: std::env::var("LINKWORK_PUBLIC_BASE_URL")
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            directory_file: std::env::var_os("LINKWORK_DIRECTORY")
                .filter(|path| !path.is_empty())
                .map(std::path::PathBuf::from),
            pseudonym_key: std::env::var("LINKWORK_PSEUDONYM_KEY")
                .ok()
                .filter(|key| !key.is_empty())
                .map(secrecy::SecretString::from),
            vault_key: std::env::var("LINKWORK_VAULT_KEY")
                .ok()
                .filter(|key| !key.is_empty())
                .map(secrecy::SecretString::from),
        })
    }

    /// The Kafka settings; an error naming the variable when they are not set.
    pub fn kafka(&self) -> anyhow::Result<&KafkaSettings> {
        match (&self.kafka, &self.kafka_error) {
            (Some(kafka), _) => Ok(kafka),
            (None, Some(error)) => bail!("{error}"),
            (None, None) => bail!("LINKWORK_KAFKA_BROKERS is not set"),
        }
    }

    /// The pseudonym key; an error naming the variable when it is not set or weak.
    pub fn pseudonym_key(&self) -> anyhow::Result<linkwork_projector::PseudonymKey> {
        use secrecy::ExposeSecret;
        let Some(key) = &self.pseudonym_key else {
            bail!("LINKWORK_PSEUDONYM_KEY is not set (a random secret of at least 32 bytes; it keys the pseudonyms on data-team topics)");
        };
        Ok(linkwork_projector::PseudonymKey::new(
            key.expose_secret().as_bytes(),
        )?)
    }

    /// The vault; an error naming the variable when its secret is not set or weak.
    pub fn vault(&self) -> anyhow::Result<linkwork_vault::Vault> {
        let Some(key) = &self.vault_key else {
            bail!("LINKWORK_VAULT_KEY is not set (a random secret of at least 32 bytes; it seals what identifies each person on the log under a key of their own, which erasure destroys)");
        };
        linkwork_vault::Vault::new(key)
            .map_err(|error| anyhow::anyhow!("LINKWORK_VAULT_KEY: {error}"))
    }

    /// The database URL with any password replaced, for telling people where to look.
    pub fn database_url_for_display(&self) -> Option<String> {
        use secrecy::ExposeSecret;
        self.database_url
            .as_ref()
            .map(|url| redact_password(url.expose_secret()))
    }

    /// The database settings, the pool of `LINKWORK_DATABASE_POOL` connections warmed
    /// (every connection opened at start); an error naming the variable when the URL
    /// is not set.
    pub fn database(&self) -> anyhow::Result<DatabaseSettings> {
        use secrecy::ExposeSecret;
        match &self.database_url {
            Some(url) => {
                let mut database = DatabaseSettings::new(url.expose_secret().to_owned());
                if let Some(size) = self.database_pool {
                    database.max_connections = size;
                }
                Ok(database.warm())
            }
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

    #[test]
    fn the_pool_size_is_a_whole_number_from_2_to_200_or_unset() {
        assert_eq!(pool_size(None).unwrap(), None);
        assert_eq!(pool_size(Some(" ".into())).unwrap(), None);
        assert_eq!(pool_size(Some(" 6 ".into())).unwrap(), Some(6));
        for wrong in ["1", "201", "ten", "-4"] {
            let error = pool_size(Some(wrong.into())).unwrap_err().to_string();
            assert!(error.contains("LINKWORK_DATABASE_POOL"), "{error}");
        }
    }

    #[test]
    fn the_settings_debug_form_never_shows_the_database_password() {
        let settings = Settings {
            kafka: None,
            kafka_error: None,
            database_url: Some(secrecy::SecretString::from(
                "postgres://linkwork:hunter2-not-real@db.internal/linkwork",
            )),
            http_addr: "127.0.0.1:8080".parse().unwrap(),
            admin_addr: "127.0.0.1:9464".parse().unwrap(),
            public_base_url: String::new(),
            directory_file: None,
            pseudonym_key: Some(secrecy::SecretString::from("a-pseudonym-key-not-to-print")),
            vault_key: Some(secrecy::SecretString::from("a-vault-key-not-to-print")),
            call_log_baseline: None,
            names: linkwork_bus::Names::default(),
            requests_per_minute: 6_000,
            small_number_threshold: 5,
            minimum_period_days: 28,
            evaluation_lawful_basis: None,
            database_pool: None,
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("a-pseudonym-key"), "{printed}");
        assert!(!printed.contains("a-vault-key"), "{printed}");
    }
}
