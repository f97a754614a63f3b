//! Identifiers: referrals, events, providers, ASC cases, and the sources that refer.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Implements `JsonSchema` for a type that travels as a constrained string.
macro_rules! string_schema {
    ($type:ty, $pattern:expr, $description:expr) => {
        impl schemars::JsonSchema for $type {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($type).into()
            }

            fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $description,
                })
            }
        }
    };
}
pub(crate) use string_schema;

/// Namespace of linkwork's name-based (UUIDv5) identifiers. Fixed forever: changing it
/// would give every resubmitted referral a new id.
const LINKWORK_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6e6b_776f_5e6b_8000_7265_6665_7272);

/// A referral's id: UUIDv5 of the source system and the source's own ServiceRequest
/// identifier, so a resubmission is the same referral (DESIGN.md principle 2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ReferralId(Uuid);

impl ReferralId {
    /// The referral id of `identifier` (`system` and `value`, as in a FHIR Identifier)
    /// sent by `source`.
    pub fn derive(source: &Source, identifier_system: &str, identifier_value: &str) -> Self {
        // Unit separators keep ("a|b", "c") and ("a", "b|c") apart.
        let name =
            format!("referral\u{1f}{source}\u{1f}{identifier_system}\u{1f}{identifier_value}");
        Self(Uuid::new_v5(&LINKWORK_NAMESPACE, name.as_bytes()))
    }

    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The FHIR Task id of routing attempt `attempt` (1 for the first provider): one
    /// Task per provider asked, so a provider's updates name the request it got.
    pub fn task_id(&self, attempt: u32) -> Uuid {
        Uuid::new_v5(&self.0, format!("task\u{1f}{attempt}").as_bytes())
    }

    /// The FHIR Patient id linkwork gives the referral's subject in the bundles it
    /// sends (the source's own Patient id means nothing to a provider).
    pub fn patient_id(&self) -> Uuid {
        Uuid::new_v5(&self.0, b"patient")
    }
}

impl fmt::Display for ReferralId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl fmt::Debug for ReferralId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ReferralId({})", self.0)
    }
}

impl FromStr for ReferralId {
    type Err = uuid::Error;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(input).map(Self)
    }
}

/// An event's id (CloudEvents `id`, the `ce_id` header). Consumers de-duplicate on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh, time-ordered id, for facts that happen once (a provider's decision).
    pub fn new_random() -> Self {
        Self(Uuid::now_v7())
    }

    /// A name-based id, for facts that may be produced more than once by retries
    /// (re-imports, resubmissions): the same fact always gets the same id.
    pub fn derive(parts: &[&str]) -> Self {
        let name = parts.join("\u{1f}");
        Self(Uuid::new_v5(&LINKWORK_NAMESPACE, name.as_bytes()))
    }

    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "EventId({})", self.0)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(input).map(Self)
    }
}

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not valid: {rule}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

/// A community provider's directory id. It names the provider's queue topic
/// (`provider.<id>.referrals`), so it is restricted to what Kafka topic names allow
/// and kept readable: lower-case letters, digits and hyphens, 1 to 64 characters,
/// starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderId(String);

string_schema!(
    ProviderId,
    r"^[a-z0-9][a-z0-9-]{0,63}$",
    "A community provider's directory id; names its queue topic provider.<id>.referrals"
);

impl ProviderId {
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        let valid = !value.is_empty()
            && value.len() <= 64
            && !value.starts_with('-')
            && value
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidId {
                kind: "provider id",
                value: value.to_owned(),
                rule: "1-64 lower-case letters, digits or hyphens, not starting with a hyphen",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ProviderId({})", self.0)
    }
}

impl TryFrom<String> for ProviderId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ProviderId> for String {
    fn from(id: ProviderId) -> Self {
        id.0
    }
}

/// An identifier as ASC's own system writes it: printable ASCII without commas or
/// spaces, 1 to 64 characters (so it sits in a CSV cell unquoted).
macro_rules! asc_identifier {
    ($(#[$doc:meta])* $type:ident, $kind:expr, $description:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $type(String);

        string_schema!($type, r"^[!-+\--~]{1,64}$", $description);

        impl $type {
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|byte| byte.is_ascii_graphic() && byte != b',');
                if valid {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(InvalidId {
                        kind: $kind,
                        value: value.to_owned(),
                        rule: "1-64 printable ASCII characters without spaces or commas",
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{}({})", stringify!($type), self.0)
            }
        }

        impl TryFrom<String> for $type {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$type> for String {
            fn from(id: $type) -> Self {
                id.0
            }
        }
    };
}

asc_identifier!(
    /// An Adult Social Care call-log case id, as ASC's own system writes it.
    AscCaseId,
    "ASC case id",
    "An Adult Social Care call-log case id: printable ASCII without spaces or commas"
);

asc_identifier!(
    /// The person a call-log case is about, as ASC's own system identifies them (a
    /// person or client number, never an NHS number). It links a person's cases, so a
    /// diverted person who comes back to ASC is seen.
    AscPersonId,
    "ASC person id",
    "The person an Adult Social Care case is about, by ASC's own person id: printable ASCII without spaces or commas"
);

/// Who sent a referral: the authenticated client, never the payload alone.
/// Written as in DESIGN.md: `gp:<ODS code>`, `hospital:<ODS code>`, `contact-centre`,
/// `asc`, `self`, `org:<name>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Source {
    /// A GP practice, by ODS code.
    Gp(String),
    /// A hospital trust or team, by ODS code.
    Hospital(String),
    /// The council contact centre.
    ContactCentre,
    /// Adult Social Care, diverting from its call log.
    Asc,
    /// The person themselves.
    SelfReferral,
    /// Another organisation (housing association, charity), by a short name.
    Org(String),
}

/// The broad kind of a source, for metrics and rules that do not care which GP.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Gp,
    Hospital,
    ContactCentre,
    Asc,
    SelfReferral,
    Org,
}

string_schema!(
    Source,
    r"^(gp:[A-Z0-9]{3,10}|hospital:[A-Z0-9]{3,10}|contact-centre|asc|self|org:[a-z0-9][a-z0-9-]{0,63})$",
    "Who sent a referral: gp:<ODS code>, hospital:<ODS code>, contact-centre, asc, self or org:<name>"
);

impl Source {
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        let invalid = |rule| InvalidId {
            kind: "source",
            value: value.to_owned(),
            rule,
        };
        let ods = |code: &str| {
            let valid = (3..=10).contains(&code.len())
                && code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            valid
                .then(|| code.to_owned())
                .ok_or_else(|| invalid("an ODS code is 3-10 upper-case letters or digits"))
        };
        match value {
            "contact-centre" => Ok(Self::ContactCentre),
            "asc" => Ok(Self::Asc),
            "self" => Ok(Self::SelfReferral),
            _ => {
                if let Some(code) = value.strip_prefix("gp:") {
                    ods(code).map(Self::Gp)
                } else if let Some(code) = value.strip_prefix("hospital:") {
                    ods(code).map(Self::Hospital)
                } else if let Some(name) = value.strip_prefix("org:") {
                    ProviderId::parse(name)
                        .map(|slug| Self::Org(slug.0))
                        .map_err(|_| invalid("an organisation name is 1-64 lower-case letters, digits or hyphens"))
                } else {
                    Err(invalid(
                        "one of gp:<ODS>, hospital:<ODS>, contact-centre, asc, self, org:<name>",
                    ))
                }
            }
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            Self::Gp(_) => SourceKind::Gp,
            Self::Hospital(_) => SourceKind::Hospital,
            Self::ContactCentre => SourceKind::ContactCentre,
            Self::Asc => SourceKind::Asc,
            Self::SelfReferral => SourceKind::SelfReferral,
            Self::Org(_) => SourceKind::Org,
        }
    }

    /// The source as one segment of a Kafka topic name: `gp:A81001` is `gp.A81001`
    /// (topic names have no colon; no source id has a dot, so this is one-to-one).
    pub fn topic_segment(&self) -> String {
        self.to_string().replace(':', ".")
    }

    /// Professional sources must name a requester on the referral.
    pub fn is_professional(&self) -> bool {
        !matches!(self, Self::SelfReferral)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gp(code) => write!(formatter, "gp:{code}"),
            Self::Hospital(code) => write!(formatter, "hospital:{code}"),
            Self::ContactCentre => formatter.write_str("contact-centre"),
            Self::Asc => formatter.write_str("asc"),
            Self::SelfReferral => formatter.write_str("self"),
            Self::Org(name) => write!(formatter, "org:{name}"),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Source({self})")
    }
}

impl FromStr for Source {
    type Err = InvalidId;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl TryFrom<String> for Source {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Source> for String {
    fn from(source: Source) -> Self {
        source.to_string()
    }
}

/// Who did something to a referral, for the audit trail.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Actor {
    /// The referrer.
    Source(Source),
    /// A community provider.
    Provider(ProviderId),
    /// One of linkwork's own services (the router escalating, say).
    System(String),
    /// An administrator's client.
    Admin(String),
}

string_schema!(
    Actor,
    r"^(provider:[a-z0-9][a-z0-9-]{0,63}|system:.+|admin:.+|gp:[A-Z0-9]{3,10}|hospital:[A-Z0-9]{3,10}|contact-centre|asc|self|org:[a-z0-9][a-z0-9-]{0,63})$",
    "Who did something: a source, provider:<id>, system:<service> or admin:<client>"
);

impl Actor {
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        if let Some(id) = value.strip_prefix("provider:") {
            return ProviderId::parse(id).map(Self::Provider);
        }
        let name_ok = |name: &str| {
            !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
        };
        if let Some(name) = value.strip_prefix("system:") {
            if name_ok(name) {
                return Ok(Self::System(name.to_owned()));
            }
        } else if let Some(name) = value.strip_prefix("admin:") {
            if name_ok(name) {
                return Ok(Self::Admin(name.to_owned()));
            }
        } else {
            return Source::parse(value).map(Self::Source);
        }
        Err(InvalidId {
            kind: "actor",
            value: value.to_owned(),
            rule: "a name of 1-128 characters without control characters",
        })
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(source) => source.fmt(formatter),
            Self::Provider(id) => write!(formatter, "provider:{id}"),
            Self::System(name) => write!(formatter, "system:{name}"),
            Self::Admin(name) => write!(formatter, "admin:{name}"),
        }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Actor({self})")
    }
}

impl TryFrom<String> for Actor {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Actor> for String {
    fn from(actor: Actor) -> Self {
        actor.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resubmission_gets_the_same_referral_id() {
        let gp = Source::parse("gp:A81001").unwrap();
        let first = ReferralId::derive(&gp, "https://gp.example/referrals", "R-1");
        let again = ReferralId::derive(&gp, "https://gp.example/referrals", "R-1");
        assert_eq!(first, again);
        assert_eq!(first.as_uuid().get_version_num(), 5);
    }

    #[test]
    fn the_referral_id_depends_on_source_system_and_value() {
        let gp = Source::parse("gp:A81001").unwrap();
        let other_gp = Source::parse("gp:A81002").unwrap();
        let base = ReferralId::derive(&gp, "sys", "R-1");
        assert_ne!(base, ReferralId::derive(&other_gp, "sys", "R-1"));
        assert_ne!(base, ReferralId::derive(&gp, "other-sys", "R-1"));
        assert_ne!(base, ReferralId::derive(&gp, "sys", "R-2"));
        // The separator keeps shifted boundaries apart.
        assert_ne!(
            ReferralId::derive(&gp, "a|b", "c"),
            ReferralId::derive(&gp, "a", "b|c")
        );
    }

    #[test]
    fn the_referral_id_is_stable_across_releases() {
        // Pinned: if this changes, every stored referral would get a new id on resubmission.
        let gp = Source::parse("gp:A81001").unwrap();
        // The literal was computed independently (Python's uuid.uuid5 over the same name).
        let id = ReferralId::derive(&gp, "https://gp.example/referrals", "R-1");
        assert_eq!(id.to_string(), "0f6295e8-5eb0-5250-ab5f-a50613d42abb");
    }

    #[test]
    fn sources_parse_and_print_as_in_the_design() {
        for text in [
            "gp:A81001",
            "hospital:RVY",
            "contact-centre",
            "asc",
            "self",
            "org:age-uk-townley",
        ] {
            assert_eq!(Source::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "gp:",
            "gp:a81001",
            "hospital:R",
            "clinic",
            "org:Age UK",
            "GP:A81001",
            "",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(Source::parse("gp:A81001").unwrap().kind(), SourceKind::Gp);
        assert!(!Source::SelfReferral.is_professional());
    }

    #[test]
    fn provider_ids_are_topic_safe() {
        assert_eq!(
            ProviderId::parse("townley-connectors").unwrap().as_str(),
            "townley-connectors"
        );
        for bad in [
            "",
            "-x",
            "Upper",
            "has space",
            "dot.ted",
            "under_score",
            &"a".repeat(65),
        ] {
            assert!(ProviderId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn actors_round_trip() {
        for text in [
            "gp:A81001",
            "provider:townley-connectors",
            "system:router",
            "admin:ops-console",
            "asc",
        ] {
            assert_eq!(Actor::parse(text).unwrap().to_string(), text);
        }
        assert!(Actor::parse("provider:Bad Id").is_err());
        assert!(Actor::parse("system:").is_err());
    }

    #[test]
    fn asc_case_ids_refuse_commas_and_spaces() {
        assert!(AscCaseId::parse("ASC-000123").is_ok());
        for bad in ["", "a b", "a,b", &"x".repeat(65)] {
            assert!(AscCaseId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn derived_event_ids_are_stable_and_distinct() {
        assert_eq!(EventId::derive(&["a", "b"]), EventId::derive(&["a", "b"]));
        assert_ne!(EventId::derive(&["a", "b"]), EventId::derive(&["a", "c"]));
        assert_ne!(EventId::new_random(), EventId::new_random());
    }
}
